"""Two training steps of the same model and global batch on one device and under
MirroredStrategy over two logical CPUs, and under it with mixed precision; prints the
results as JSON.

Run as a script by tests/test_distribute.py: logical devices must be set up before
TensorFlow starts, which a pytest process has long done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from config import TrainConfig  # noqa: E402

# As in the test processes (tests/conftest.py): no Grappler rewrites for tiny models.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
from training import build_model  # noqa: E402

LOSS_NAMES = ("generator_loss", "cycle_loss", "identity_loss", "t1_critic_loss", "t2_critic_loss")


def one_step(strategy: tf.distribute.Strategy, config: TrainConfig, batch) -> dict:
    """Build the model under `strategy` with seed 0, run two `fit` steps (the second
    sees the first's update), report the mean losses and the kernels' sizes."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build_model(config)
    history = model.fit(
        tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=2, verbose=0
    )
    # Biases before an instance norm get near-zero gradients, whose sign (and so the
    # Adam step) rounding decides; kernels are compared.
    kernels = [
        v.numpy()
        for n in (*model.generators, *model.critics)
        for v in n.weights
        if "kernel" in v.path
    ]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "losses": {name: history.history[name][-1] for name in LOSS_NAMES},
        "kernels": [float(np.abs(kernel).sum()) for kernel in kernels],
        "iterations": {k: int(o.iterations.numpy()) for k, o in model.network_optimizers.items()},
        "loss_scales": [
            float(o.dynamic_scale.numpy())
            for o in model.network_optimizers.values()
            if isinstance(o, keras.optimizers.LossScaleOptimizer)
        ],
        "finite": bool(all(np.isfinite(kernel).all() for kernel in kernels)),
    }


def main() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    config = TrainConfig(
        img_height=32, img_width=32, batch_size=4, generator_filters=8, critic_filters=8
    )
    rng = np.random.default_rng(0)
    batch = tuple(tf.constant(rng.uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32)) for _ in "ab")
    single = one_step(tf.distribute.get_strategy(), config, batch)
    two_cpus = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored = one_step(two_cpus, config, batch)
    mixed = one_step(two_cpus, dataclasses.replace(config, mixed_precision=True), batch)
    print(json.dumps({"single": single, "mirrored": mirrored, "mixed": mixed}))


if __name__ == "__main__":
    main()
