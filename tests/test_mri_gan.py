"""Network shapes and sizes, and one real training step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import mri_gan
from config import TrainConfig, image_size_problem, unet_levels
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


def test_instance_normalization_normalizes_each_image_and_channel():
    values = tf.random.normal((2, 8, 8, 3), mean=5.0, stddev=3.0)
    out = mri_gan.InstanceNormalization()(values).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("gan_loss", ["lsgan", "bce"])
def test_one_train_step_changes_every_network_and_stays_finite(gan_loss):
    config = TrainConfig(img_height=32, img_width=32, gan_loss=gan_loss)
    model = build_model(config)
    networks = (*model.generators, *model.critics)
    before = {n.name: [v.numpy().copy() for v in n.trainable_variables] for n in networks}
    t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=1)
    t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=2)

    logs = model.train_step((t1, t2))

    assert set(logs) == set(model.loss_names)
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
    model = build_model(TrainConfig(img_height=32, img_width=32))
    t1 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=3)
    t2 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=4)

    losses = {k: float(v) for k, v in model.losses_of(t1, t2, training=False).items()}

    terms = ("t1_to_t2_adversarial", "t2_to_t1_adversarial", "cycle_loss", "identity_loss")
    assert losses["generator_loss"] == pytest.approx(sum(losses[t] for t in terms), rel=1e-5)
    # Identity weight is lambda_identity * lambda_cycle = 5, cycle weight 10.
    assert losses["identity_loss"] > 0 and losses["cycle_loss"] > 0
