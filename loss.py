"""CycleGAN losses as small pure functions.

Each returns one value per example (shape (batch,)), so the caller decides how to
average over the global batch (`tf.nn.compute_average_loss` under tf.distribute).
Images are (batch, H, W, C) in [-1, 1]; critic outputs are (batch, h, w, 1) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

AdversarialLoss = Callable[[tf.Tensor, bool], tf.Tensor]


def _per_example_mean(values: tf.Tensor) -> tf.Tensor:
    values = tf.cast(values, tf.float32)
    return tf.reduce_mean(tf.reshape(values, (tf.shape(values)[0], -1)), axis=1)


def lsgan_loss(logits: tf.Tensor, target_is_real: bool) -> tf.Tensor:
    """Least-squares GAN loss: mean (logit - target)^2, target 1 for real, 0 for fake."""
    target = 1.0 if target_is_real else 0.0
    return _per_example_mean(tf.square(tf.cast(logits, tf.float32) - target))


def bce_loss(logits: tf.Tensor, target_is_real: bool) -> tf.Tensor:
    """Binary cross-entropy on logits against an all-real or all-fake target."""
    logits = tf.cast(logits, tf.float32)
    target = tf.ones_like(logits) if target_is_real else tf.zeros_like(logits)
    return _per_example_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {"lsgan": lsgan_loss, "bce": bce_loss}


def critic_loss(
    adversarial: AdversarialLoss, real_logits: tf.Tensor, fake_logits: tf.Tensor
) -> tf.Tensor:
    """A discriminator's loss: real as real plus fake as fake, halved as in the paper."""
    return 0.5 * (adversarial(real_logits, True) + adversarial(fake_logits, False))


def weighted_l1(first: tf.Tensor, second: tf.Tensor, weight: float) -> tf.Tensor:
    """weight * mean |first - second| per example."""
    difference = tf.cast(first, tf.float32) - tf.cast(second, tf.float32)
    return weight * _per_example_mean(tf.abs(difference))


def cycle_loss(real: tf.Tensor, cycled: tf.Tensor, weight: float) -> tf.Tensor:
    """Cycle consistency: weight * mean |real - translated and translated back|."""
    return weighted_l1(real, cycled, weight)


def identity_loss(real: tf.Tensor, same: tf.Tensor, weight: float) -> tf.Tensor:
    """Identity: weight * mean |real - generator(real)|, real already in the target contrast."""
    return weighted_l1(real, same, weight)
