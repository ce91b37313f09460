"""Count the convolution FLOPs of the models from their layer shapes.

A multiply-add counts as 2 FLOPs. Conv2D: 2·kh·kw·c_in·c_out·H_out·W_out.
Conv2DTranspose: 2·kh·kw·c_in·c_out·H_in·W_in (every input pixel scatters a kernel).
Normalization, activations and the optimizer update are not counted: they are
memory-bound and small next to the convolutions.
"""

from __future__ import annotations

import keras
from keras import layers

# One CycleGAN step, as the reference implementation runs it: 6 generator passes
# (fake, cycled and identity images of both contrasts) and 6 discriminator passes
# (real and fake for the critic losses, fake again for the generator loss).
GENERATOR_PASSES = 6
CRITIC_PASSES = 6
# Backward ≈ 2× forward (gradients for inputs and for weights), so a pass costs 3× forward.
FORWARD_AND_BACKWARD = 3


def layer_forward_flops(layer: layers.Layer) -> int:
    """Forward FLOPs of one image through `layer`: 0 unless it is a convolution."""
    if isinstance(layer, layers.Conv2DTranspose):
        _, height, width, channels_in = layer.input.shape
    elif isinstance(layer, layers.Conv2D):
        _, height, width, _ = layer.output.shape
        channels_in = layer.input.shape[-1]
    else:
        return 0
    kernel_height, kernel_width = layer.kernel_size
    return 2 * kernel_height * kernel_width * channels_in * layer.filters * height * width


def forward_conv_flops(model: keras.Model, batch: int = 1) -> int:
    """Forward-pass convolution FLOPs of `model` for a batch of `batch` images."""
    return batch * sum(layer_forward_flops(layer) for layer in model.layers)


def cyclegan_step_flops(generator: keras.Model, critic: keras.Model, batch: int = 1) -> int:
    """Convolution FLOPs of one CycleGAN training step (forward and backward, all passes)."""
    per_step = GENERATOR_PASSES * forward_conv_flops(generator, batch)
    per_step += CRITIC_PASSES * forward_conv_flops(critic, batch)
    return FORWARD_AND_BACKWARD * per_step
