"""The convolutions computed as matmuls, and the cropped transposed conv: the same sums
as TensorFlow's kernels, forward and backward, and chosen where they should be."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import convolutions
import mri_gan


def value_and_gradients(function, x, kernel, output_gradient):
    """function(x, kernel) and its gradients for x and kernel, given the output's."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = function(x, kernel)
    return [y, *tape.gradient(y, [x, kernel], output_gradients=output_gradient)]


# (batch, height, width, kernel, stride): the U-Net's 4x4 stride-2 on maps square and
# not, odd and 1-pixel, then kernels that are not square or not twice the stride.
MATMUL_CASES = [
    (2, 2, 4, (4, 4), 2),
    (1, 1, 1, (4, 4), 2),
    (3, 8, 8, (4, 4), 2),
    (2, 1, 2, (4, 4), 2),
    (2, 3, 5, (4, 4), 2),
    (2, 3, 5, (2, 4), 2),
    (2, 5, 3, (6, 3), 3),
    (1, 2, 3, (4, 8), 4),
]


def assert_same_values_and_gradients(ours, reference):
    for got, expected in zip(ours, reference, strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, height, width, kernel_size, stride", MATMUL_CASES)
def test_conv_by_matmul_is_tensorflows_strided_same_conv_forward_and_backward(
    batch, height, width, kernel_size, stride
):
    rng = np.random.default_rng(height * 10 + width)
    x = tf.constant(rng.normal(size=(batch, height, width, 6)), tf.float32)
    kernel = tf.constant(rng.normal(size=(*kernel_size, 6, 5)), tf.float32)
    output_shape = (batch, -(-height // stride), -(-width // stride), 5)
    output_gradient = tf.constant(rng.normal(size=output_shape), tf.float32)

    assert_same_values_and_gradients(
        value_and_gradients(
            lambda x, k: convolutions.conv2d_by_matmul(x, k, stride), x, kernel, output_gradient
        ),
        value_and_gradients(
            lambda x, k: tf.nn.conv2d(x, k, stride, "SAME"), x, kernel, output_gradient
        ),
    )


@pytest.mark.parametrize("batch, height, width, kernel_size, stride", MATMUL_CASES)
def test_transposed_conv_by_matmul_is_tensorflows_same_transposed_conv_forward_and_backward(
    batch, height, width, kernel_size, stride
):
    rng = np.random.default_rng(height * 10 + width)
    x = tf.constant(rng.normal(size=(batch, height, width, 6)), tf.float32)
    kernel = tf.constant(rng.normal(size=(*kernel_size, 5, 6)), tf.float32)  # (kh, kw, out, in)
    output_shape = (batch, stride * height, stride * width, 5)
    output_gradient = tf.constant(rng.normal(size=output_shape), tf.float32)

    assert_same_values_and_gradients(
        value_and_gradients(
            lambda x, k: convolutions.conv2d_transpose_by_matmul(x, k, stride),
            x,
            kernel,
            output_gradient,
        ),
        value_and_gradients(
            lambda x, k: tf.nn.conv2d_transpose(x, k, output_shape, stride, "SAME"),
            x,
            kernel,
            output_gradient,
        ),
    )


# (batch, height, width, kernel, channels in, channels out): the ResNet's one-channel
# 7x7 convs in and out, the critic's last, then more channels on either side, non-square
# kernels, and a kernel the size of the map.
VALID_MATMUL_CASES = [
    (2, 9, 8, (7, 7), 1, 4),
    (2, 10, 9, (7, 7), 4, 1),
    (1, 6, 6, (4, 4), 5, 1),
    (2, 5, 7, (3, 2), 3, 2),
    (2, 4, 6, (2, 3), 2, 3),
    (1, 3, 3, (3, 3), 1, 1),
]


@pytest.mark.parametrize(
    "batch, height, width, kernel_size, channels_in, channels_out", VALID_MATMUL_CASES
)
def test_valid_conv_by_matmul_is_tensorflows_valid_conv_forward_and_backward(
    batch, height, width, kernel_size, channels_in, channels_out
):
    rng = np.random.default_rng(height * 10 + width)
    x = tf.constant(rng.normal(size=(batch, height, width, channels_in)), tf.float32)
    kernel = tf.constant(rng.normal(size=(*kernel_size, channels_in, channels_out)), tf.float32)
    output_shape = (
        batch,
        height - kernel_size[0] + 1,
        width - kernel_size[1] + 1,
        channels_out,
    )
    output_gradient = tf.constant(rng.normal(size=output_shape), tf.float32)

    assert_same_values_and_gradients(
        value_and_gradients(convolutions.conv2d_valid_by_matmul, x, kernel, output_gradient),
        value_and_gradients(
            lambda x, k: tf.nn.conv2d(x, k, 1, "VALID"), x, kernel, output_gradient
        ),
    )


# (kernel, stride, crop): the reference ResNet's, then uneven crops and kernels.
CROPPED_CASES = [
    (3, 2, ((1, 0), (1, 0))),
    (5, 2, ((2, 1), (0, 3))),
    ((3, 4), 3, ((0, 0), (2, 2))),
]


@pytest.mark.parametrize("kernel_size, stride, crop", CROPPED_CASES)
def test_cropped_transposed_conv_is_the_valid_one_then_cropping_forward_and_backward(
    kernel_size, stride, crop, tmp_path
):
    x = tf.random.normal((2, 3, 5, 6), seed=4)
    options = {"filters": 4, "kernel_size": kernel_size, "strides": stride}
    ours = convolutions.CroppedConv2DTranspose(
        **options, crop=crop, bias_initializer="random_normal"
    )
    stock = keras.layers.Conv2DTranspose(**options)
    ours.build(x.shape)
    stock.build(x.shape)
    stock.set_weights(ours.get_weights())
    cropping = keras.layers.Cropping2D(crop)
    output_gradient = tf.random.normal(ours.compute_output_shape(x.shape), seed=5)

    def value_and_gradients_of(layer, apply):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = apply(x)
        return [y, *tape.gradient(y, [x, *layer.trainable_variables], output_gradient)]

    assert_same_values_and_gradients(
        value_and_gradients_of(ours, ours),
        value_and_gradients_of(stock, lambda x: cropping(stock(x))),
    )
    # The crop survives a .keras round trip.
    inputs = keras.Input((None, None, 6))
    path = tmp_path / "cropped.keras"
    keras.Model(inputs, ours(inputs)).save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x), ours(x), rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 3, "strides": 2, "padding": "same"},
        {"kernel_size": 3, "strides": 2, "crop": ((1, -1), (0, 0))},
        {"kernel_size": 3, "strides": 2, "crop": 1},
        {"kernel_size": 1, "strides": 3},
    ],
)
def test_cropped_transposed_conv_refuses_options_it_does_not_implement(options):
    with pytest.raises(ValueError, match="CroppedConv2DTranspose needs crop"):
        convolutions.CroppedConv2DTranspose(2, **options)


def test_cropped_transposed_conv_refuses_a_crop_that_leaves_nothing():
    layer = convolutions.CroppedConv2DTranspose(2, 3, strides=2, crop=((3, 2), (0, 0)))
    with pytest.raises(ValueError, match="leaves nothing of a 2-pixel input side"):
        layer(tf.zeros((1, 2, 2, 1)))


@pytest.mark.parametrize("layer", ["MatmulConv2D", "MatmulConv2DTranspose"])
@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 4, "strides": 1, "padding": "same"},
        {"kernel_size": 4, "strides": 2, "padding": "valid"},
        {"kernel_size": 3, "strides": 2, "padding": "same"},
        {"kernel_size": 4, "strides": (2, 1), "padding": "same"},
    ],
)
def test_matmul_layers_refuse_options_they_do_not_implement(layer, options):
    with pytest.raises(ValueError, match="needs 'same' padding"):
        getattr(convolutions, layer)(filters=2, **options)


def test_only_the_matmul_conv_takes_valid_padding_at_stride_1():
    assert convolutions.MatmulConv2D(filters=2, kernel_size=3, padding="valid").padding == "valid"
    with pytest.raises(ValueError, match="needs 'same' padding"):
        convolutions.MatmulConv2DTranspose(filters=2, kernel_size=4, padding="valid")
    with pytest.raises(ValueError, match="or 'valid' padding at stride 1"):
        convolutions.MatmulConv2D(filters=2, kernel_size=3, padding="valid", dilation_rate=2)


@pytest.mark.parametrize(
    "ours, stock, options",
    [
        ("MatmulConv2D", "Conv2D", {"kernel_size": 4, "strides": 2, "padding": "same"}),
        ("MatmulConv2D", "Conv2D", {"kernel_size": 3, "padding": "valid"}),
        (
            "MatmulConv2DTranspose",
            "Conv2DTranspose",
            {"kernel_size": 4, "strides": 2, "padding": "same"},
        ),
    ],
)
def test_matmul_layers_give_the_stock_layers_output_with_the_same_weights(ours, stock, options):
    images = tf.random.normal((2, 4, 3, 3), seed=3)
    options = {"filters": 5, **options}
    matmul = getattr(convolutions, ours)(**options, bias_initializer="random_normal")
    kernels = getattr(keras.layers, stock)(**options)
    matmul.build(images.shape)
    kernels.build(images.shape)
    kernels.set_weights(matmul.get_weights())

    np.testing.assert_allclose(matmul(images), kernels(images), rtol=1e-5, atol=1e-5)


def test_small_maps_and_one_channel_images_are_convolved_by_matmul():
    by_matmul = (convolutions.MatmulConv2D, convolutions.MatmulConv2DTranspose)

    def matmul_input_sides(model):
        return [layer.input.shape[1] for layer in model.layers if isinstance(layer, by_matmul)]

    # Maps of at most 16x16 pixels, and the one-channel input (256x256 here).
    assert matmul_input_sides(mri_gan.unet_generator(256, 256, "g")) == [
        *(256, 16, 8, 4, 2),  # down
        *(1, 2, 4, 8, 16),  # up
    ]
    # The critic's one-channel input and its one-channel output (its last conv's input is
    # the 31x31 map, padded); the ResNet's 7x7 convs in and out (256 + 2 x 3 padding).
    assert matmul_input_sides(mri_gan.patchgan_discriminator(256, 256, "d")) == [256, 33]
    assert matmul_input_sides(mri_gan.resnet_generator(256, 256, "g")) == [262, 262]
