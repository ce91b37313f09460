"""The paper's options: ResNet generator, resize-convolution, history pool, linear
learning-rate decay, jitter; and the GPU switches (mixed precision, XLA) run on CPU."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import history_pool
import mri_gan
import network_layers
from callbacks import LearningRateLog, LinearDecay, decayed_learning_rate
from config import TrainConfig
from data_processing import jitter
from tests.conftest import SMALL_NETWORKS, tiny_run_args, train_in_process
from training import build_model, make_strategy

SMALL = {"img_height": 32, "img_width": 32, **SMALL_NETWORKS}


def test_resnet_generator_is_the_reference_resnet_9blocks_at_256_and_6_blocks_below():
    at_256 = mri_gan.resnet_generator(256, 256, "g")
    at_128 = mri_gan.resnet_generator(128, 128, "g")
    # resnet_9blocks with one channel in and out; each block holds two 3x3x256x256 convs.
    assert at_256.count_params() == 11_365_633
    block = 2 * (3 * 3 * 256 * 256 + 256)
    assert at_128.count_params() == 11_365_633 - 3 * block
    assert at_256.output_shape == (None, 256, 256, 1)


@pytest.mark.parametrize("generator", ["unet", "resnet"])
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_every_generator_and_upsampling_keeps_the_shape_and_range(generator, upsample):
    network = mri_gan.GENERATORS[generator](64, 48, "g", 8, upsample)
    images = tf.random.uniform((2, 64, 48, 1), -1, 1, seed=1)
    translated = network(images).numpy()
    assert translated.shape == (2, 64, 48, 1)
    assert np.abs(translated).max() <= 1.0
    uses_transpose = any(isinstance(x, keras.layers.Conv2DTranspose) for x in network.layers)
    assert uses_transpose == (upsample == "transpose")


def test_reflection_padding_mirrors_without_repeating_the_edge():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
    padded = network_layers.ReflectionPadding2D(2)(image).numpy()
    expected = np.pad(image[0, ..., 0], 2, mode="reflect")
    np.testing.assert_array_equal(padded[0, ..., 0], expected)


def test_odd_kernel_transposed_conv_crops_as_pytorch_output_padding():
    inputs = keras.Input((2, 3, 1))
    model = keras.Model(inputs, mri_gan.upsampling_conv(inputs, 1, 3))
    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype(np.float32)
    conv = next(x for x in model.layers if isinstance(x, keras.layers.Conv2DTranspose))
    conv.set_weights([kernel, np.zeros(1, np.float32)])
    image = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1)
    # The full stride-2 transposed conv: each pixel adds the kernel at twice its place.
    full = np.zeros((5, 7))
    for row in range(2):
        for column in range(3):
            full[2 * row : 2 * row + 3, 2 * column : 2 * column + 3] += (
                image[0, row, column, 0] * kernel[..., 0, 0]
            )
    # PyTorch's padding=1, output_padding=1 keeps rows and columns 1 .. 2n.
    np.testing.assert_allclose(model(image).numpy()[0, ..., 0], full[1:, 1:], rtol=1e-5)


def test_query_pool_against_hand_computed_values():
    images = tf.constant([1.0, 2.0, 3.0, 4.0])[:, None, None, None]
    stored = tf.zeros((2, 1, 1, 1))
    coins = tf.constant([0.9, 0.9, 0.2, 0.7])
    slots = tf.constant([0, 0, 1, 0])

    returned, stored, count = history_pool.query_pool(stored, tf.constant(0), images, coins, slots)

    # 1 and 2 fill the pool and pass; 3 swaps with slot 1 (returns 2); 4 passes.
    assert returned.numpy().ravel().tolist() == [1.0, 2.0, 2.0, 4.0]
    assert stored.numpy().ravel().tolist() == [1.0, 3.0]
    assert int(count) == 2


def test_history_pool_returns_new_fakes_while_filling_then_keeps_the_size():
    pool = history_pool.HistoryPool(3, (4, 4, 1), "pool")
    first = tf.random.uniform((2, 4, 4, 1), seed=1)
    second = tf.random.uniform((2, 4, 4, 1), seed=2)

    np.testing.assert_array_equal(pool.query(first).numpy(), first.numpy())
    returned = pool.query(second).numpy()

    assert int(pool.count.read_value()) == 3
    np.testing.assert_array_equal(returned[0], second.numpy()[0])  # filled the last slot
    # The last image's coin is not fixed here: either it passed and the pool kept its
    # three images, or it swapped with one of them, which was returned.
    full = [*first.numpy(), second.numpy()[0]]
    expected = full
    if not np.array_equal(returned[1], second.numpy()[1]):
        swapped = [i for i, image in enumerate(full) if np.array_equal(returned[1], image)]
        assert len(swapped) == 1
        expected = [second.numpy()[1] if i == swapped[0] else image for i, image in enumerate(full)]
    np.testing.assert_array_equal(pool.stored.read_value().numpy(), np.stack(expected))


def test_linear_decay_against_hand_computed_values():
    rates = [decayed_learning_rate(1.0, epoch, 10, 4) for epoch in range(10)]
    assert rates == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert [decayed_learning_rate(2e-4, e, 5, 0) for e in range(5)] == [2e-4] * 5


def test_decay_sets_both_optimizers_each_epoch_and_continues_on_resume():
    config = TrainConfig(**SMALL, epochs=4, decay_epochs=2, lr=3e-4, pool_size=0)
    model = build_model(config)
    batches = tf.data.Dataset.from_tensors(
        (tf.zeros((1, 32, 32, 1)), tf.zeros((1, 32, 32, 1)))
    ).repeat()
    optimizers = list(model.network_optimizers.values())

    def fit(initial_epoch: int) -> list[float]:
        callbacks = [LinearDecay(optimizers, config), LearningRateLog(optimizers[0])]
        history = model.fit(
            batches,
            epochs=4,
            initial_epoch=initial_epoch,
            steps_per_epoch=1,
            callbacks=callbacks,
            verbose=0,
        )
        return history.history["learning_rate"]

    assert fit(0) == pytest.approx([3e-4, 3e-4, 2e-4, 1e-4])
    assert fit(3) == pytest.approx([1e-4])
    assert float(optimizers[1].learning_rate) == pytest.approx(1e-4)


def test_mixed_precision_builds_and_trains_on_cpu_and_exports_float32(tmp_path):
    config = TrainConfig(**SMALL, mixed_precision=True)
    model = build_model(config)
    assert model.t1_to_t2.layers[1].compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after build
    assert all(
        isinstance(o, keras.optimizers.LossScaleOptimizer)
        for o in model.network_optimizers.values()
    )
    t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=1)
    t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=2)

    step = tf.function(model.train_step)
    scaler = model.network_optimizers["generators"]
    initial_scale = float(scaler.dynamic_scale)
    overflows = 0
    for _ in range(20):
        logs = step((t1, t2))
        if int(scaler.iterations):
            break
        overflows += 1

    # float16 gradients overflow at the initial loss scale of 2^15: the update is skipped
    # and every loss scale halves until they fit; that is not a non-finite loss.
    assert overflows > 0 and int(scaler.iterations) == 1
    for optimizer in model.network_optimizers.values():
        assert float(optimizer.dynamic_scale) == initial_scale / 2**overflows
    assert int(logs["skipped_steps"]) == 0
    assert all(np.isfinite(float(value)) for value in logs.values())
    weights = [v for n in model.generators for v in n.trainable_variables]
    assert all(v.dtype == "float32" and np.isfinite(v.numpy()).all() for v in weights)

    paths = checkpoints.export_generators(model, config, tmp_path)
    exported = keras.models.load_model(paths["t1_to_t2"], safe_mode=True)
    assert exported.layers[1].compute_dtype == "float32"
    np.testing.assert_allclose(
        exported(t1).numpy(), model.t1_to_t2(t1).numpy(), atol=2e-2
    )  # float16 compute in training, float32 in the export


def test_xla_compiled_step_runs_on_cpu():
    # Without the identity passes: a smaller graph to compile; the pool, used by default
    # with XLA on a GPU, stays.
    model = build_model(TrainConfig(**SMALL, xla=True, lambda_identity=0.0))
    batches = tf.data.Dataset.from_tensors(
        (tf.random.uniform((1, 32, 32, 1), -1, 1), tf.random.uniform((1, 32, 32, 1), -1, 1))
    ).repeat()

    history = model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)

    assert model.jit_compile
    assert np.isfinite(history.history["generator_loss"][-1])
    assert int(model.network_optimizers["critics"].iterations) == 2


def test_auto_strategy_is_one_device_without_gpus():
    assert make_strategy("auto").num_replicas_in_sync == 1
    assert make_strategy("default") is tf.distribute.get_strategy()


def test_jitter_keeps_shape_and_range_and_flips_about_half_the_time():
    # Left half dark, right half bright: a flip puts the bright half on the left.
    image = tf.concat([-tf.ones((32, 16, 1)), tf.ones((32, 16, 1))], axis=1)
    tf.random.set_seed(0)
    outputs = np.stack([jitter(image).numpy() for _ in range(40)])

    assert outputs.shape == (40, 32, 32, 1)
    assert outputs.min() >= -1.0 and outputs.max() <= 1.0
    flipped = outputs[:, :, :8].mean(axis=(1, 2, 3)) > 0
    assert 5 < flipped.sum() < 35
    # The crop moves the edge between the halves.
    edges = {int(np.argmax(output[0, :, 0] > 0)) for output in outputs[~flipped]}
    assert len(edges) > 1


def test_main_trains_the_paper_options_end_to_end(tiny_dataset, tmp_path):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    flags = [
        *("--generator", "resnet", "--upsample", "resize", "--augment"),
        *("--pool_size", "3", "--epochs", "2", "--decay_epochs", "1", "--eval_every", "0"),
    ]
    done = train_in_process(*tiny_run_args(t1, t2, output), *flags)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = (output / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    rates = [float(row.split(",")[header.index("learning_rate")]) for row in rows[1:]]
    assert rates == pytest.approx([2e-4, 1e-4])
    restored = checkpoints.restore_run(output / "checkpoints")
    layers = restored.model.t1_to_t2.layers
    assert any(isinstance(layer, network_layers.ReflectionPadding2D) for layer in layers)
    assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in layers)
    exported = keras.models.load_model(output / "export" / "t1_to_t2.keras", safe_mode=True)
    assert exported.count_params() == restored.model.t1_to_t2.count_params()
