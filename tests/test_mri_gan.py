"""Network shapes and sizes, and one real training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import mri_gan
import network_layers
from config import TrainConfig, image_size_problem, unet_levels
from tests.conftest import SMALL_NETWORKS
from training import build_model


@pytest.mark.parametrize(
    "height, width, levels",
    [(256, 256, 8), (128, 128, 7), (64, 64, 6), (512, 512, 8), (256, 96, 5)],
)
def test_unet_depth_follows_the_image_size(height, width, levels):
    assert unet_levels(height, width) == levels


@pytest.mark.parametrize(
    "height, width, problem",
    [(256, 256, None), (32, 48, None), (16, 64, "below the minimum"), (100, 64, "not a multiple")],
)
def test_image_size_problem(height, width, problem):
    found = image_size_problem(height, width)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("height, width", [(32, 32), (64, 48), (128, 64)])
def test_generator_and_discriminator_shapes(height, width):
    generator = mri_gan.unet_generator(height, width, "g")
    critic = mri_gan.patchgan_discriminator(height, width, "d")
    images = tf.random.uniform((2, height, width, 1), -1, 1)

    translated = generator(images, training=False)
    patches = critic(images, training=False)

    assert translated.shape == (2, height, width, 1)
    assert float(tf.reduce_max(tf.abs(translated))) <= 1.0  # tanh output
    assert patches.shape == (2, height // 8 - 2, width // 8 - 2, 1)


def test_sizes_at_256_match_the_reference_unet_256_and_70x70_patchgan():
    generator = mri_gan.unet_generator(256, 256, "g")
    critic = mri_gan.patchgan_discriminator(256, 256, "d")
    # pix2pix unet_256 and basic PatchGAN with one input/output channel.
    assert generator.count_params() == 54_403_457
    assert critic.count_params() == 2_762_689
    assert critic.output_shape == (None, 30, 30, 1)


def test_generator_layers_keep_the_positions_earlier_checkpoints_have():
    # tf.train.Checkpoint finds a model's layers by position: the layers with weights
    # must stay where runs saved by earlier versions have them.
    def weighted_positions(network):
        return len(network.layers), [i for i, x in enumerate(network.layers) if x.weights]

    assert weighted_positions(mri_gan.resnet_generator(64, 64, "g", 8)) == (
        72,
        [2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 58, 61, 65, 70],
    )
    assert weighted_positions(mri_gan.unet_generator(64, 64, "g", 8)) == (
        40,
        [1, 3, 6, 9, 12, 15, 17, 21, 26, 30, 34, 38],
    )


def test_instance_normalization_normalizes_each_image_and_channel():
    values = tf.random.normal((2, 8, 8, 3), mean=5.0, stddev=3.0)
    out = network_layers.InstanceNormalization()(values).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_fused_and_unfused_paths_agree_forward_and_backward(batch):
    norm = network_layers.InstanceNormalization()
    values = tf.random.normal((batch, 6, 5, 4), mean=2.0, stddev=3.0, seed=6)
    output_gradient = tf.random.normal(values.shape, seed=7)

    def value_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = norm(x)
        return y, tape.gradient(y, x, output_gradient)

    # A known batch size takes the fused kernel; an unknown one, the separate ops.
    traced = {
        "fused": tf.function(value_and_gradient).get_concrete_function(values),
        "unfused": tf.function(value_and_gradient).get_concrete_function(
            tf.TensorSpec((None, 6, 5, 4), tf.float32)
        ),
    }
    op_types = {
        path: {op.type for op in function.graph.get_operations()}
        for path, function in traced.items()
    }
    assert "FusedBatchNormV3" in op_types["fused"]
    assert "FusedBatchNormV3" not in op_types["unfused"]
    fused, unfused = (function(values) for function in traced.values())
    # By hand: y = (x - mean) / sqrt(var + eps); dx = (g - mean(g) - y mean(g y)) / sqrt(..).
    x, g = values.numpy().astype(np.float64), output_gradient.numpy().astype(np.float64)
    deviation = x - x.mean(axis=(1, 2), keepdims=True)
    variance = (deviation**2).mean(axis=(1, 2), keepdims=True)
    scale = 1 / np.sqrt(variance + network_layers.FUSED_MIN_EPSILON)
    y = deviation * scale
    dx = scale * (
        g - g.mean(axis=(1, 2), keepdims=True) - y * (g * y).mean(axis=(1, 2), keepdims=True)
    )
    for got in (fused, unfused):
        np.testing.assert_allclose(got[0], y, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1], dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gan_loss, lambda_structure", [("lsgan", 0.0), ("bce", 1.0)])
def test_one_train_step_changes_every_network_and_stays_finite(gan_loss, lambda_structure):
    config = TrainConfig(
        img_height=32,
        img_width=32,
        gan_loss=gan_loss,
        lambda_structure=lambda_structure,
        **SMALL_NETWORKS,
    )
    model = build_model(config)
    networks = (*model.generators, *model.critics)
    before = {n.name: [v.numpy().copy() for v in n.trainable_variables] for n in networks}
    t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=1)
    t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=2)

    logs = model.train_step((t1, t2))

    assert set(logs) == {*model.loss_names, "skipped_steps"}
    assert ("structure_loss" in logs) == bool(lambda_structure)
    assert int(logs["skipped_steps"]) == 0
    assert all(np.isfinite(float(value)) for value in logs.values())
    for network in networks:
        after = network.trainable_variables
        assert all(np.isfinite(v.numpy()).all() for v in after)
        changed = [
            not np.array_equal(a.numpy(), b)
            for a, b in zip(after, before[network.name], strict=True)
        ]
        # Every kernel of every network moves (biases of a layer before a norm may not).
        kernels = [c for c, v in zip(changed, after, strict=True) if "kernel" in v.path]
        assert kernels and all(kernels), network.name


def test_generator_loss_is_the_sum_of_its_terms():
    config = TrainConfig(img_height=32, img_width=32, lambda_structure=2.0, **SMALL_NETWORKS)
    model = build_model(config)
    t1 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=3)
    t2 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=4)

    losses = {k: float(v) for k, v in model.losses_of(t1, t2, training=False).items()}

    terms = ("t1_to_t2_adversarial", "t2_to_t1_adversarial", "cycle_loss", "identity_loss")
    terms += ("structure_loss",)
    assert losses["generator_loss"] == pytest.approx(sum(losses[t] for t in terms), rel=1e-5)
    # Identity weight is lambda_identity * lambda_cycle = 5, cycle weight 10.
    assert losses["identity_loss"] > 0 and losses["cycle_loss"] > 0
    # The structure loss compares each input with its own translation, weighted by 2.
    import loss

    structure = loss.structure_loss(t1, model.t1_to_t2(t1, training=False), 2.0)
    structure += loss.structure_loss(t2, model.t2_to_t1(t2, training=False), 2.0)
    assert losses["structure_loss"] == pytest.approx(float(structure[0]), rel=1e-5)


def test_batched_passes_give_the_losses_of_separate_passes():
    import loss

    model = build_model(TrainConfig(img_height=32, img_width=32, **SMALL_NETWORKS))
    real_t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=5)
    real_t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=6)
    g, f = model.t1_to_t2, model.t2_to_t1
    fake_t2, fake_t1 = g(real_t1), f(real_t2)
    cycled_t1, cycled_t2 = f(fake_t2), g(fake_t1)
    same_t2, same_t1 = g(real_t2), f(real_t1)
    lsgan = loss.lsgan_loss
    separate = {
        "t1_to_t2_adversarial": lsgan(model.t2_critic(fake_t2), True),
        "cycle_loss": loss.cycle_loss(real_t1, cycled_t1, 10)
        + loss.cycle_loss(real_t2, cycled_t2, 10),
        "identity_loss": loss.identity_loss(real_t1, same_t1, 5)
        + loss.identity_loss(real_t2, same_t2, 5),
        "t1_critic_loss": loss.critic_loss(
            lsgan, model.t1_critic(real_t1), model.t1_critic(fake_t1)
        ),
    }

    batched = model.losses_of(real_t1, real_t2, training=False)

    for name, per_example in separate.items():
        assert float(batched[name]) == pytest.approx(float(tf.reduce_mean(per_example)), rel=1e-4)


def test_without_identity_loss_the_identity_passes_are_left_out_and_nothing_else_changes():
    config = TrainConfig(img_height=32, img_width=32, **SMALL_NETWORKS)
    with_identity = build_model(config)
    without = build_model(TrainConfig(**{**config.__dict__, "lambda_identity": 0.0}))
    without.set_weights(with_identity.get_weights())
    real_t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=7)
    real_t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=8)

    full = {k: float(v) for k, v in with_identity.losses_of(real_t1, real_t2, False).items()}
    lean = {k: float(v) for k, v in without.losses_of(real_t1, real_t2, False).items()}

    assert full["identity_loss"] > 0 and lean["identity_loss"] == 0
    assert lean["generator_loss"] == pytest.approx(
        full["generator_loss"] - full["identity_loss"], rel=1e-5
    )
    for name in set(full) - {"identity_loss", "generator_loss"}:
        assert lean[name] == pytest.approx(full[name], rel=1e-5), name


def test_fused_adam_matches_keras_adam():
    from training import FusedAdam

    variables = [
        keras.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)) for _ in "ab"
    ]
    optimizers = [keras.optimizers.Adam(0.01, beta_1=0.5), FusedAdam(0.01, beta_1=0.5)]
    for step in range(4):
        gradient = tf.constant(np.sin(np.arange(12) + step).reshape(3, 4), tf.float32)
        for variable, optimizer in zip(variables, optimizers, strict=True):
            optimizer.apply_gradients([(gradient, variable)])

    np.testing.assert_allclose(variables[1].numpy(), variables[0].numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(variables[0].numpy(), np.linspace(-1, 1, 12).reshape(3, 4))
