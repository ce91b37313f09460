"""The two Keras layers of the networks that Keras does not have: instance normalization
(as the reference implementation uses it: no affine parameters) and reflection padding
(the ResNet's). Registered under "mri_gan", so exported `.keras` files name them so."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

# The least epsilon `tf.nn`'s fused batch norm lets through (cuDNN's floor on GPUs).
FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="mri_gan")
class InstanceNormalization(layers.Layer):
    """Normalize each image's channels to zero mean, unit variance over H and W.

    Input and output (batch, H, W, C); statistics in float32 even under mixed precision.
    With a known batch size (training's full batches) each image goes through
    TensorFlow's fused batch-norm kernel (one image is a batch whose per-channel
    statistics are the image's own): the same sums in about half the time of the
    separate ops, which remain for an unknown batch. `epsilon` is at least
    `FUSED_MIN_EPSILON` on both paths.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        values = tf.cast(inputs, tf.float32)
        epsilon = max(self.epsilon, FUSED_MIN_EPSILON)
        batch, channels = values.shape[0], values.shape[-1]
        if batch is None or channels is None:
            mean, variance = tf.nn.moments(values, axes=[1, 2], keepdims=True)
            normalized = (values - mean) * tf.math.rsqrt(variance + epsilon)
        else:
            ones, zeros = tf.ones([channels]), tf.zeros([channels])
            empty = tf.constant([], tf.float32)
            per_image = [
                tf.raw_ops.FusedBatchNormV3(
                    x=image,
                    scale=ones,
                    offset=zeros,
                    mean=empty,
                    variance=empty,
                    epsilon=epsilon,
                    is_training=True,
                )[0]
                for image in tf.split(values, batch)
            ]
            normalized = tf.concat(per_image, 0)
        return tf.cast(normalized, inputs.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="mri_gan")
class ReflectionPadding2D(layers.Layer):
    """Pad H and W by `padding` pixels mirrored from the image, as the reference ResNet does."""

    def __init__(self, padding: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, inputs):
        pad = self.padding
        return tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        grow = 2 * self.padding
        return (
            batch,
            None if height is None else height + grow,
            None if width is None else width + grow,
            channels,
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding}
