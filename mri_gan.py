"""The networks and the CycleGAN model.

Two pix2pix U-Net generators (`t1_to_t2`, `t2_to_t1`) and two 70x70 PatchGAN
discriminators (`t1_critic`, `t2_critic`), laid out as in the reference
implementation (Isola et al. 2017, Zhu et al. 2017): one grayscale channel in and out,
images in [-1, 1], instance normalization without affine parameters.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

import loss
from config import TrainConfig, unet_levels

# pix2pix initialises weights from N(0, 0.02).
WEIGHT_INIT = keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
# The widest layers have 8x the filters of the first, as in pix2pix (64 -> 512).
MAX_FILTER_MULTIPLE = 8


@keras.saving.register_keras_serializable(package="mri_gan")
class InstanceNormalization(layers.Layer):
    """Normalize each image's channels to zero mean, unit variance over H and W.

    Input and output (batch, H, W, C); statistics in float32 even under mixed precision.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        values = tf.cast(inputs, tf.float32)
        mean, variance = tf.nn.moments(values, axes=[1, 2], keepdims=True)
        normalized = (values - mean) * tf.math.rsqrt(variance + self.epsilon)
        return tf.cast(normalized, inputs.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


def downsample(x, filters: int, norm: bool = True, activate: bool = True):
    """LeakyReLU(0.2) -> 4x4 stride-2 conv -> instance norm: halves H and W."""
    if activate:
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Conv2D(filters, 4, strides=2, padding="same", kernel_initializer=WEIGHT_INIT)(x)
    return InstanceNormalization()(x) if norm else x


def upsample(x, filters: int, norm: bool = True, dropout: bool = False):
    """ReLU -> 4x4 stride-2 transposed conv -> instance norm (-> dropout 0.5): doubles H, W."""
    x = layers.ReLU()(x)
    x = layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", kernel_initializer=WEIGHT_INIT
    )(x)
    if norm:
        x = InstanceNormalization()(x)
    return layers.Dropout(0.5)(x) if dropout else x


def unet_generator(height: int, width: int, name: str, filters: int = 64) -> keras.Model:
    """The pix2pix U-Net: (batch, height, width, 1) in [-1, 1] -> same shape, tanh.

    Depth follows the image size (8 levels at 256, 7 at 128); at 256x256 it is the
    reference `unet_256` (54.4 M parameters). The three innermost up blocks of the
    widest levels use dropout, as in pix2pix. `filters` is the first level's width (the
    reference's `ngf`); fewer make a small, fast model for tests.
    """
    levels = unet_levels(height, width)
    widths = [filters * min(2**level, MAX_FILTER_MULTIPLE) for level in range(levels)]
    inputs = keras.Input((height, width, 1), name=f"{name}_input")

    skips = []
    x = inputs
    for level, level_filters in enumerate(widths):
        outermost, innermost = level == 0, level == levels - 1
        x = downsample(x, level_filters, norm=not (outermost or innermost), activate=not outermost)
        skips.append(x)

    # Up path: from the bottleneck back to level 1, concatenating the matching skip.
    # As in pix2pix, the `levels - 5` blocks just outside the innermost one use dropout.
    dropout_levels = range(4, levels - 1)
    x = skips.pop()
    for level in reversed(range(1, levels)):
        x = upsample(x, widths[level - 1], dropout=level in dropout_levels)
        x = layers.Concatenate()([skips.pop(), x])
    x = layers.ReLU()(x)
    x = layers.Conv2DTranspose(1, 4, strides=2, padding="same", kernel_initializer=WEIGHT_INIT)(x)
    outputs = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def patchgan_discriminator(height: int, width: int, name: str, filters: int = 64) -> keras.Model:
    """The 70x70 PatchGAN (C64-C128-C256-C512): one logit per overlapping 70x70 patch.

    (batch, height, width, 1) in [-1, 1] -> (batch, height/8 - 2, width/8 - 2, 1) logits.
    `filters` is the first layer's width (the reference's `ndf`).
    """
    inputs = keras.Input((height, width, 1), name=f"{name}_input")
    x = inputs
    for index in range(3):
        x = layers.Conv2D(
            filters * 2**index, 4, strides=2, padding="same", kernel_initializer=WEIGHT_INIT
        )(x)
        if index > 0:
            x = InstanceNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    # The reference pads 1 pixel and convolves 4x4 at stride 1, losing one pixel per side pair.
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(filters * 8, 4, kernel_initializer=WEIGHT_INIT)(x)
    x = InstanceNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.ZeroPadding2D(1)(x)
    logits = layers.Conv2D(1, 4, kernel_initializer=WEIGHT_INIT, dtype="float32")(x)
    return keras.Model(inputs, logits, name=name)


def split_batch(images: tf.Tensor, parts: int) -> list[tf.Tensor]:
    """Split a batch made by concatenating `parts` equal batches back into them."""
    return tf.split(images, parts, axis=0)


class CycleGan(keras.Model):
    """Both generators and both discriminators, trained together by `fit`.

    `train_step` takes a (t1_batch, t2_batch) pair, each (batch, H, W, 1) in [-1, 1],
    and updates the four networks with their own optimizers.
    """

    def __init__(
        self,
        height: int,
        width: int,
        gan_loss: str = "lsgan",
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        generator_filters: int = 64,
        critic_filters: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.t1_to_t2 = unet_generator(height, width, "t1_to_t2", generator_filters)
        self.t2_to_t1 = unet_generator(height, width, "t2_to_t1", generator_filters)
        self.t1_critic = patchgan_discriminator(height, width, "t1_critic", critic_filters)
        self.t2_critic = patchgan_discriminator(height, width, "t2_critic", critic_filters)
        self.adversarial = loss.ADVERSARIAL_LOSSES[gan_loss]
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = lambda_identity
        self.loss_names = (
            "generator_loss",
            "t1_to_t2_adversarial",
            "t2_to_t1_adversarial",
            "cycle_loss",
            "identity_loss",
            "t1_critic_loss",
            "t2_critic_loss",
        )
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
        # Steps whose loss was NaN or Inf, over the whole run: their updates were skipped.
        self.skipped_steps = keras.Variable(0, dtype="int64", trainable=False, name="skipped")

    @property
    def metrics(self):
        # Listed here so that Keras resets the running means at each epoch.
        return list(self.loss_trackers.values())

    @property
    def generators(self) -> tuple[keras.Model, keras.Model]:
        return (self.t1_to_t2, self.t2_to_t1)

    @property
    def critics(self) -> tuple[keras.Model, keras.Model]:
        return (self.t1_critic, self.t2_critic)

    def compile(self, optimizers: dict[str, keras.optimizers.Optimizer], **kwargs) -> None:
        """Keep one optimizer per network, keyed by network name, built now.

        Building them before the first step lets a checkpoint restore their slots.
        """
        super().compile(**kwargs)
        self.network_optimizers = optimizers
        for network in (*self.generators, *self.critics):
            optimizers[network.name].build(network.trainable_variables)

    def call(self, inputs, training: bool = False):
        t1, t2 = inputs
        return self.t1_to_t2(t1, training=training), self.t2_to_t1(t2, training=training)

    def losses_of(self, real_t1, real_t2, training: bool = True) -> dict[str, tf.Tensor]:
        """Every loss of one CycleGAN step, each a scalar averaged over the global batch."""

        def average(per_example):
            return tf.nn.compute_average_loss(per_example)

        # Instance norm keeps every image independent, so passes through the same network
        # are batched together: the same maths as separate calls, with larger, faster
        # convolutions and one weight-gradient computation per network instead of two.
        fake_t2, same_t2 = split_batch(
            self.t1_to_t2(tf.concat([real_t1, real_t2], 0), training=training), 2
        )
        fake_t1, same_t1, cycled_t1 = split_batch(
            self.t2_to_t1(tf.concat([real_t2, real_t1, fake_t2], 0), training=training), 3
        )
        cycled_t2 = self.t1_to_t2(fake_t1, training=training)

        # The critics see each fake once; the generator and critic losses share the logits.
        real_t2_logits, fake_t2_logits = split_batch(
            self.t2_critic(tf.concat([real_t2, fake_t2], 0), training=training), 2
        )
        real_t1_logits, fake_t1_logits = split_batch(
            self.t1_critic(tf.concat([real_t1, fake_t1], 0), training=training), 2
        )

        identity_weight = self.lambda_cycle * self.lambda_identity
        losses = {
            "t1_to_t2_adversarial": average(self.adversarial(fake_t2_logits, True)),
            "t2_to_t1_adversarial": average(self.adversarial(fake_t1_logits, True)),
            "cycle_loss": average(
                loss.cycle_loss(real_t1, cycled_t1, self.lambda_cycle)
                + loss.cycle_loss(real_t2, cycled_t2, self.lambda_cycle)
            ),
            "identity_loss": average(
                loss.identity_loss(real_t1, same_t1, identity_weight)
                + loss.identity_loss(real_t2, same_t2, identity_weight)
            ),
            "t1_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t1_logits, fake_t1_logits)
            ),
            "t2_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t2_logits, fake_t2_logits)
            ),
        }
        losses["generator_loss"] = (
            losses["t1_to_t2_adversarial"]
            + losses["t2_to_t1_adversarial"]
            + losses["cycle_loss"]
            + losses["identity_loss"]
        )
        return losses

    def train_step(self, data):
        real_t1, real_t2 = data
        with tf.GradientTape(persistent=True) as tape:
            losses = self.losses_of(real_t1, real_t2, training=True)
        # One backward pass of the joint generator loss serves both generators; each
        # critic is differentiated only through its own loss, so the fakes it saw act
        # as constants for it, as with `detach()` in the reference.
        generator_variables = [network.trainable_variables for network in self.generators]
        gradients = tape.gradient(losses["generator_loss"], generator_variables)
        updates = list(zip(self.generators, generator_variables, gradients, strict=True))
        for network in self.critics:
            variables = network.trainable_variables
            objective = losses[f"{network.name}_loss"]
            updates.append((network, variables, tape.gradient(objective, variables)))
        del tape

        def apply_updates():
            for network, variables, network_gradients in updates:
                optimizer = self.network_optimizers[network.name]
                optimizer.apply_gradients(zip(network_gradients, variables, strict=True))
            return tf.constant(0, tf.int64)

        # A NaN or Inf loss would poison every weight it touched: skip that step's
        # updates instead, and count it, so the run can stop if it keeps happening.
        finite = tf.reduce_all([tf.math.is_finite(value) for value in losses.values()])
        skipped = tf.cond(finite, apply_updates, lambda: tf.constant(1, tf.int64))
        self.skipped_steps.assign_add(skipped)
        weight = tf.cast(finite, tf.float32)
        for name, value in losses.items():
            self.loss_trackers[name].update_state(tf.where(finite, value, 0.0), weight)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        return {**logs, "skipped_steps": self.skipped_steps.value}


def make_cyclegan(config: TrainConfig) -> CycleGan:
    """The (uncompiled) CycleGAN that `config` describes."""
    return CycleGan(
        config.img_height,
        config.img_width,
        gan_loss=config.gan_loss,
        lambda_cycle=config.lambda_cycle,
        lambda_identity=config.lambda_identity,
        generator_filters=config.generator_filters,
        critic_filters=config.critic_filters,
    )
