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


# MIND's neighbourhood in 2-D: each pixel is compared with its four neighbours.
MIND_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0))
# The variance estimate is kept within these multiples of the image's mean, as MIND's
# authors do, so that flat, noise-free regions do not divide by zero.
MIND_VARIANCE_RANGE = (1e-3, 1e3)


def _reflect_pad(images: tf.Tensor, radius: int) -> tf.Tensor:
    return tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")


def mind_descriptor(images: tf.Tensor, patch_radius: int = 1) -> tf.Tensor:
    """MIND, the modality independent neighbourhood descriptor (Heinrich et al. 2012),
    of (batch, H, W, 1) images: (batch, H, W, 4) in (0, 1], float32.

    For each pixel x and neighbour offset r: D(x, r), the mean over a (2 * patch_radius +
    1)^2 patch of the squared difference between the image and the image shifted by r;
    V(x), the mean of D(x, r) over the four offsets (kept within `MIND_VARIANCE_RANGE`
    times the image's mean V); then exp(-D / V), divided by its largest value at x. It
    describes where an image changes, not its intensities: an affine change of
    intensity (a * image + b, a inversion included) leaves it as it is, so a T1w slice
    and a T2w slice of the same anatomy have about the same MIND.
    """
    images = tf.cast(images, tf.float32)
    padded = _reflect_pad(images, 1)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    squared = [
        tf.square(images - padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width, :])
        for dy, dx in MIND_OFFSETS
    ]
    size = 2 * patch_radius + 1
    distances = tf.nn.avg_pool2d(
        _reflect_pad(tf.concat(squared, axis=-1), patch_radius), size, 1, "VALID"
    )
    variance = tf.reduce_mean(distances, axis=-1, keepdims=True)
    mean_variance = tf.reduce_mean(variance, axis=[1, 2, 3], keepdims=True)
    low, high = MIND_VARIANCE_RANGE
    variance = tf.clip_by_value(variance, low * mean_variance, high * mean_variance) + 1e-12
    # exp(-D / V) over its largest value at x, computed as exp(-(D - min D) / V): the same
    # numbers, and the largest stays 1 where every exp(-D / V) would underflow to 0.
    nearest = tf.reduce_min(distances, axis=-1, keepdims=True)
    return tf.exp(-(distances - nearest) / variance)


def structure_loss(source: tf.Tensor, translated: tf.Tensor, weight: float) -> tf.Tensor:
    """Anatomy kept in place across contrasts: weight * mean |MIND(source) -
    MIND(translated)| per example, in [0, weight]. Zero when the translation changes
    intensities only; larger when it moves, adds or removes an edge."""
    difference = mind_descriptor(source) - mind_descriptor(translated)
    return weight * _per_example_mean(tf.abs(difference))
