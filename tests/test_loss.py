"""Each loss against a value computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import loss


def logits(*values: float) -> tf.Tensor:
    """A batch of one 1x len(values) patch map."""
    return tf.constant(np.array(values, np.float32).reshape(1, 1, -1, 1))


def test_lsgan_loss_is_mean_squared_distance_to_the_target():
    # (0.5-1)^2 = 0.25 and (2-1)^2 = 1 -> mean 0.625; against 0: (0.25 + 4) / 2 = 2.125
    np.testing.assert_allclose(loss.lsgan_loss(logits(0.5, 2.0), True), [0.625])
    np.testing.assert_allclose(loss.lsgan_loss(logits(0.5, 2.0), False), [2.125])


def test_bce_loss_matches_the_log_sigmoid_formula():
    x = 0.3
    as_real = -math.log(1 / (1 + math.exp(-x)))
    as_fake = -math.log(1 - 1 / (1 + math.exp(-x)))
    np.testing.assert_allclose(loss.bce_loss(logits(x, x), True), [as_real], rtol=1e-6)
    np.testing.assert_allclose(loss.bce_loss(logits(x, x), False), [as_fake], rtol=1e-6)


def test_losses_are_per_example():
    batch = tf.constant(np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1))
    np.testing.assert_allclose(loss.lsgan_loss(batch, True), [1.0, 0.0])


@pytest.mark.parametrize("name", ["lsgan", "bce"])
def test_critic_loss_is_half_the_sum_of_real_and_fake_terms(name):
    adversarial = loss.ADVERSARIAL_LOSSES[name]
    real, fake = logits(0.9, 0.2), logits(-0.4, 0.1)
    expected = 0.5 * (adversarial(real, True) + adversarial(fake, False))
    np.testing.assert_allclose(loss.critic_loss(adversarial, real, fake), expected)
    # For LSGAN by hand: real (0.01 + 0.64) / 2 = 0.325, fake (0.16 + 0.01) / 2 = 0.085.
    if name == "lsgan":
        np.testing.assert_allclose(loss.critic_loss(adversarial, real, fake), [0.205], rtol=1e-6)


def test_cycle_and_identity_losses_are_weighted_mean_absolute_error():
    real = tf.constant(np.array([[0.0, 1.0], [-1.0, 0.5]], np.float32).reshape(1, 2, 2, 1))
    other = tf.constant(np.array([[0.5, 1.0], [-0.5, -0.5]], np.float32).reshape(1, 2, 2, 1))
    # |diffs| = 0.5, 0, 0.5, 1.0 -> mean 0.5
    np.testing.assert_allclose(loss.cycle_loss(real, other, 10.0), [5.0])
    np.testing.assert_allclose(loss.identity_loss(real, other, 5.0), [2.5])
    np.testing.assert_allclose(loss.cycle_loss(real, real, 10.0), [0.0])


def step_edge(height: int = 12, width: int = 12, column: int = 6) -> np.ndarray:
    """(1, H, W, 1): 0 left of `column`, 1 from it on."""
    image = np.zeros((1, height, width, 1), np.float32)
    image[:, :, column:] = 1.0
    return image


def test_mind_of_a_step_edge_by_hand():
    # One-pixel patches: D is the squared difference with each neighbour. Just left of
    # the edge only the right neighbour differs (D = 1, V = 1/4): exp(-4) there, 1 for
    # the others; far from the edge every D is 0 and every entry is 1.
    descriptor = loss.mind_descriptor(step_edge(), patch_radius=0).numpy()[0]
    right, below, left, above = range(4)  # the order of loss.MIND_OFFSETS
    np.testing.assert_allclose(descriptor[5, 5, right], np.exp(-4.0), rtol=1e-5)
    np.testing.assert_allclose(descriptor[5, 5, [below, left, above]], 1.0)
    np.testing.assert_allclose(descriptor[5, 6, left], np.exp(-4.0), rtol=1e-5)
    np.testing.assert_allclose(descriptor[5, 2], 1.0)


def test_structure_loss_ignores_contrast_and_sees_a_moved_edge():
    rng = np.random.default_rng(0)
    edge = step_edge(32, 32, 16) + rng.normal(0, 0.01, (1, 32, 32, 1)).astype(np.float32)
    inverted = 0.8 - 1.5 * edge  # the same anatomy in another, inverted contrast
    moved = np.roll(edge, 3, axis=2)  # the edge three pixels to the right

    same = float(loss.structure_loss(edge, inverted, 1.0)[0])
    shifted = float(loss.structure_loss(edge, moved, 1.0)[0])

    assert same < 1e-5
    assert shifted > 0.01 and shifted > 1000 * same
    assert float(loss.structure_loss(edge, moved, 2.0)[0]) == pytest.approx(2 * shifted)
