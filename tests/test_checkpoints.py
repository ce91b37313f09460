"""Checkpoints: numbering, fallback past a corrupt one, refusal of a changed size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from checkpoints import RunCheckpoints
from config import TrainConfig
from errors import DataError
from tests.conftest import SMALL_NETWORKS
from training import build_model


def small_model(size: int = 32):
    return build_model(TrainConfig(img_height=size, img_width=size, **SMALL_NETWORKS))


def first_kernel(model) -> np.ndarray:
    return model.t1_to_t2.trainable_variables[0].numpy().copy()


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_index"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    model = small_model()
    checkpoints = RunCheckpoints(model, tmp_path, keep=3)
    checkpoints.save(1)
    kept = first_kernel(model)
    model.t1_to_t2.trainable_variables[0].assign(kept + 1.0)
    newest = checkpoints.save(2)
    target = (
        next(tmp_path.glob("ckpt-2.data-*"))
        if damage == "truncate_data"
        else tmp_path / "ckpt-2.index"
    )
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])

    fresh = small_model()
    restored = RunCheckpoints(fresh, tmp_path, keep=3)
    epoch, path = restored.restore()

    assert (epoch, path) == (1, str(tmp_path / "ckpt-1"))
    np.testing.assert_array_equal(first_kernel(fresh), kept)
    assert any("ckpt-2 cannot be read" in r.getMessage() for r in caplog.records)
    assert target.exists()  # the damaged checkpoint is left for the user
    # The next save does not overwrite the damaged one.
    assert restored.save(2) == str(tmp_path / "ckpt-3") and newest != str(tmp_path / "ckpt-3")


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    checkpoints = RunCheckpoints(small_model(), tmp_path, keep=3)
    checkpoints.save(1)
    for path in tmp_path.glob("ckpt-1.*"):
        path.write_bytes(b"")
    with pytest.raises(DataError, match="no readable checkpoint"):
        RunCheckpoints(small_model(), tmp_path, keep=3).restore()


def test_a_checkpoint_of_another_image_size_is_refused(tmp_path):
    RunCheckpoints(small_model(64), tmp_path, keep=3).save(1)
    with pytest.raises(DataError, match="does not fit this configuration"):
        RunCheckpoints(small_model(32), tmp_path, keep=3).restore()


def test_an_empty_checkpoint_dir_starts_at_epoch_zero(tmp_path):
    assert RunCheckpoints(small_model(), tmp_path / "none", keep=3).restore() == (0, None)


def test_best_json_naming_older_generators_than_the_best_checkpoint_is_not_trusted(tmp_path):
    from checkpoints import BestGenerators

    model = small_model()

    def tracker():
        return BestGenerators(model, tmp_path / "best")

    first = tracker()
    assert first.score == -math.inf
    first.save(1, {"mean_ssim": 0.5})
    assert tracker().score == 0.5
    # Killed after saving newer best generators, before best.json named them.
    first.manager.save(checkpoint_number=2)
    assert tracker().score == -math.inf


def test_a_run_resumes_with_or_without_mixed_precision(tmp_path):
    plain = small_model()
    RunCheckpoints(plain, tmp_path, keep=3).save(2)

    mixed = build_model(
        TrainConfig(img_height=32, img_width=32, mixed_precision=True, **SMALL_NETWORKS)
    )
    epochs, restored = RunCheckpoints(mixed, tmp_path, keep=3).restore()

    assert epochs == 2 and restored.endswith("ckpt-1")
    np.testing.assert_array_equal(first_kernel(mixed), first_kernel(plain))
    RunCheckpoints(mixed, tmp_path, keep=3).save(3)
    assert RunCheckpoints(small_model(), tmp_path, keep=3).restore()[0] == 3
