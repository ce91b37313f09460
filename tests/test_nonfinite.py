"""A NaN or Inf loss skips the step's updates; too many of them stop the run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from callbacks import NonFiniteGuard
from config import TrainConfig
from tests.conftest import SMALL_NETWORKS
from training import build_model


def weights_of(model) -> list[np.ndarray]:
    return [v.numpy().copy() for n in (*model.generators, *model.critics) for v in n.weights]


def test_a_non_finite_step_leaves_every_weight_and_the_loss_means_untouched():
    model = build_model(TrainConfig(img_height=32, img_width=32, **SMALL_NETWORKS))
    before = weights_of(model)
    good = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=1)
    poisoned = tf.tensor_scatter_nd_update(good, [[0, 3, 3, 0]], [np.nan])

    logs = model.train_step((poisoned, good))

    assert int(logs["skipped_steps"]) == 1
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(model), before, strict=True))
    assert all(int(opt.iterations) == 0 for opt in model.network_optimizers.values())
    assert all(np.isfinite(float(v)) for k, v in logs.items())

    logs = model.train_step((good, good))

    assert int(logs["skipped_steps"]) == 1
    assert not all(np.array_equal(a, b) for a, b in zip(weights_of(model), before, strict=True))


def test_fit_stops_after_more_than_max_nonfinite_skipped_steps(caplog):
    model = build_model(TrainConfig(img_height=32, img_width=32, **SMALL_NETWORKS))
    nan = tf.fill((1, 32, 32, 1), np.nan)
    batches = tf.data.Dataset.from_tensors((nan, nan)).repeat()
    guard = NonFiniteGuard(limit=2)

    model.fit(batches, epochs=5, steps_per_epoch=4, callbacks=[guard], verbose=0, shuffle=False)

    assert guard.diverged and guard.seen == 3  # stopped at the third, not the twentieth
    messages = [r.getMessage() for r in caplog.records]
    assert any("non-finite loss in epoch 1 at step 3" in m for m in messages)
