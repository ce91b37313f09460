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
