"""Network shapes and sizes, and one real training step."""

from __future__ import annotations

import keras
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
            lambda x, k: mri_gan.conv2d_by_matmul(x, k, stride), x, kernel, output_gradient
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
            lambda x, k: mri_gan.conv2d_transpose_by_matmul(x, k, stride),
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
        value_and_gradients(mri_gan.conv2d_valid_by_matmul, x, kernel, output_gradient),
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
    ours = mri_gan.CroppedConv2DTranspose(**options, crop=crop, bias_initializer="random_normal")
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
        mri_gan.CroppedConv2DTranspose(2, **options)


def test_cropped_transposed_conv_refuses_a_crop_that_leaves_nothing():
    layer = mri_gan.CroppedConv2DTranspose(2, 3, strides=2, crop=((3, 2), (0, 0)))
    with pytest.raises(ValueError, match="leaves nothing of a 2-pixel input side"):
        layer(tf.zeros((1, 2, 2, 1)))


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
        getattr(mri_gan, layer)(filters=2, **options)


def test_only_the_matmul_conv_takes_valid_padding_at_stride_1():
    assert mri_gan.MatmulConv2D(filters=2, kernel_size=3, padding="valid").padding == "valid"
    with pytest.raises(ValueError, match="needs 'same' padding"):
        mri_gan.MatmulConv2DTranspose(filters=2, kernel_size=4, padding="valid")
    with pytest.raises(ValueError, match="or 'valid' padding at stride 1"):
        mri_gan.MatmulConv2D(filters=2, kernel_size=3, padding="valid", dilation_rate=2)


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
    matmul = getattr(mri_gan, ours)(**options, bias_initializer="random_normal")
    kernels = getattr(keras.layers, stock)(**options)
    matmul.build(images.shape)
    kernels.build(images.shape)
    kernels.set_weights(matmul.get_weights())

    np.testing.assert_allclose(matmul(images), kernels(images), rtol=1e-5, atol=1e-5)


def test_small_maps_and_one_channel_images_are_convolved_by_matmul():
    by_matmul = (mri_gan.MatmulConv2D, mri_gan.MatmulConv2DTranspose)

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


def test_instance_normalization_normalizes_each_image_and_channel():
    values = tf.random.normal((2, 8, 8, 3), mean=5.0, stddev=3.0)
    out = mri_gan.InstanceNormalization()(values).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_fused_and_unfused_paths_agree_forward_and_backward(batch):
    norm = mri_gan.InstanceNormalization()
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
    scale = 1 / np.sqrt(variance + mri_gan.FUSED_MIN_EPSILON)
    y = deviation * scale
    dx = scale * (
        g - g.mean(axis=(1, 2), keepdims=True) - y * (g * y).mean(axis=(1, 2), keepdims=True)
    )
    for got in (fused, unfused):
        np.testing.assert_allclose(got[0], y, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1], dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gan_loss", ["lsgan", "bce"])
def test_one_train_step_changes_every_network_and_stays_finite(gan_loss):
    config = TrainConfig(img_height=32, img_width=32, gan_loss=gan_loss)
    model = build_model(config)
    networks = (*model.generators, *model.critics)
    before = {n.name: [v.numpy().copy() for v in n.trainable_variables] for n in networks}
    t1 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=1)
    t2 = tf.random.uniform((2, 32, 32, 1), -1, 1, seed=2)

    logs = model.train_step((t1, t2))

    assert set(logs) == {*model.loss_names, "skipped_steps"}
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
    model = build_model(TrainConfig(img_height=32, img_width=32))
    t1 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=3)
    t2 = tf.random.uniform((1, 32, 32, 1), -1, 1, seed=4)

    losses = {k: float(v) for k, v in model.losses_of(t1, t2, training=False).items()}

    terms = ("t1_to_t2_adversarial", "t2_to_t1_adversarial", "cycle_loss", "identity_loss")
    assert losses["generator_loss"] == pytest.approx(sum(losses[t] for t in terms), rel=1e-5)
    # Identity weight is lambda_identity * lambda_cycle = 5, cycle weight 10.
    assert losses["identity_loss"] > 0 and losses["cycle_loss"] > 0


def test_batched_passes_give_the_losses_of_separate_passes():
    import loss

    model = build_model(TrainConfig(img_height=32, img_width=32))
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
