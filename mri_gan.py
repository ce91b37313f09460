"""The networks and the CycleGAN model.

Two generators (`t1_to_t2`, `t2_to_t1`: the pix2pix U-Net or the paper's ResNet, chosen
by name in `GENERATORS`) and two 70x70 PatchGAN discriminators (`t1_critic`,
`t2_critic`), laid out as in the reference implementation (Isola et al. 2017, Zhu et
al. 2017): one grayscale channel in and out (or a slab of 2K + 1 neighbouring slices
as channels, see `CycleGan`), images in [-1, 1], instance normalization without affine
parameters, and a history pool of generated images for the critics.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

import loss
from config import TrainConfig, unet_levels
from convolutions import conv, conv_transpose
from history_pool import HistoryPool
from network_layers import InstanceNormalization, ReflectionPadding2D
from update_guard import apply_if_finite, scaled_loss

# pix2pix initialises weights from N(0, 0.02).
WEIGHT_INIT = keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
# The terms of the generators' loss (the structure loss only when weighted).
GENERATOR_TERMS = (
    "t1_to_t2_adversarial",
    "t2_to_t1_adversarial",
    "cycle_loss",
    "identity_loss",
    "structure_loss",
)
# The widest layers have 8x the filters of the first, as in pix2pix (64 -> 512).
MAX_FILTER_MULTIPLE = 8


def downsample(x, filters: int, norm: bool = True, activate: bool = True):
    """LeakyReLU(0.2) -> 4x4 stride-2 conv -> instance norm: halves H and W."""
    if activate:
        x = layers.LeakyReLU(0.2)(x)
    x = strided_conv(x, filters)
    return InstanceNormalization()(x) if norm else x


def strided_conv(x, filters: int):
    """A 4x4 stride-2 "same" conv, halving H and W."""
    return conv(x, filters, 4, strides=2, kernel_initializer=WEIGHT_INIT)


def upsampling_conv(x, filters: int, kernel: int, method: str = "transpose"):
    """Double H and W: a `kernel` x `kernel` stride-2 transposed conv, or (`resize`) a
    nearest-neighbour resize then a 3x3 conv, which cannot make checkerboard artifacts
    (Odena et al. 2016)."""
    if method == "resize":
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        return conv(x, filters, 3, kernel_initializer=WEIGHT_INIT)
    return conv_transpose(x, filters, kernel, kernel_initializer=WEIGHT_INIT)


def upsample(x, filters: int, norm: bool = True, dropout: bool = False, method: str = "transpose"):
    """ReLU -> 4x4 stride-2 transposed conv (or resize-conv) -> instance norm (-> dropout
    0.5): doubles H and W."""
    x = layers.ReLU()(x)
    x = upsampling_conv(x, filters, 4, method)
    if norm:
        x = InstanceNormalization()(x)
    return layers.Dropout(0.5)(x) if dropout else x


def unet_generator(
    height: int,
    width: int,
    name: str,
    filters: int = 64,
    upsample_method: str = "transpose",
    channels: int = 1,
) -> keras.Model:
    """The pix2pix U-Net: (batch, height, width, channels) in [-1, 1] -> same shape, tanh.

    Depth follows the image size (8 levels at 256, 7 at 128); at 256x256 it is the
    reference `unet_256` (54.4 M parameters). The three innermost up blocks of the
    widest levels use dropout, as in pix2pix. `filters` is the first level's width (the
    reference's `ngf`); fewer make a small, fast model for tests. `upsample_method` is
    `transpose` (the reference) or `resize` (see `upsampling_conv`). `channels`: 1 for a
    slice, 2K + 1 for a slab of neighbouring slices (`--context_slices`).
    """
    levels = unet_levels(height, width)
    widths = [filters * min(2**level, MAX_FILTER_MULTIPLE) for level in range(levels)]
    inputs = keras.Input((height, width, channels), name=f"{name}_input")

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
        x = upsample(x, widths[level - 1], dropout=level in dropout_levels, method=upsample_method)
        x = layers.Concatenate()([skips.pop(), x])
    x = layers.ReLU()(x)
    x = upsampling_conv(x, channels, 4, upsample_method)
    outputs = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def unpadded_conv(x, filters: int, kernel: int, strides: int = 1, **options):
    """A `kernel` x `kernel` conv without padding (the caller pads)."""
    return conv(
        x, filters, kernel, strides, padding="valid", kernel_initializer=WEIGHT_INIT, **options
    )


def conv_norm_relu(x, filters: int, kernel: int, strides: int = 1):
    """A `kernel` x `kernel` conv without padding (the caller pads), instance norm, ReLU."""
    return layers.ReLU()(InstanceNormalization()(unpadded_conv(x, filters, kernel, strides)))


def residual_block(x, filters: int):
    """x + (reflect-pad, 3x3 conv, norm, ReLU, reflect-pad, 3x3 conv, norm)(x)."""
    y = conv_norm_relu(ReflectionPadding2D(1)(x), filters, 3)
    y = unpadded_conv(ReflectionPadding2D(1)(y), filters, 3)
    return layers.Add()([x, InstanceNormalization()(y)])


def resnet_blocks(height: int, width: int) -> int:
    """Residual blocks of the paper's generator: 9 at 256 px and above, 6 below."""
    return 9 if min(height, width) >= 256 else 6


def resnet_generator(
    height: int,
    width: int,
    name: str,
    filters: int = 64,
    upsample_method: str = "transpose",
    channels: int = 1,
) -> keras.Model:
    """The CycleGAN paper's ResNet generator: (batch, height, width, channels) in [-1, 1]
    -> same.

    c7s1-64, d128, d256, 9 (or 6, see `resnet_blocks`) residual blocks of 256, u128, u64,
    c7s1-1 with tanh; reflection padding. At 256x256 it is the reference `resnet_9blocks`
    (11.37 M parameters with one channel in and out).
    """
    inputs = keras.Input((height, width, channels), name=f"{name}_input")
    x = conv_norm_relu(ReflectionPadding2D(3)(inputs), filters, 7)
    for multiple in (2, 4):
        # Zero padding 1 on every side then a valid 3x3 stride-2 conv, as the reference.
        x = conv_norm_relu(layers.ZeroPadding2D(1)(x), filters * multiple, 3, strides=2)
    for _ in range(resnet_blocks(height, width)):
        x = residual_block(x, filters * 4)
    for multiple in (2, 1):
        x = upsampling_conv(x, filters * multiple, 3, upsample_method)
        x = layers.ReLU()(InstanceNormalization()(x))
    x = unpadded_conv(ReflectionPadding2D(3)(x), channels, 7)
    outputs = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


# Generator architectures by name, as the reference's `define_G`.
GENERATORS = {"unet": unet_generator, "resnet": resnet_generator}


def patchgan_discriminator(
    height: int, width: int, name: str, filters: int = 64, channels: int = 1
) -> keras.Model:
    """The 70x70 PatchGAN (C64-C128-C256-C512): one logit per overlapping 70x70 patch.

    (batch, height, width, channels) in [-1, 1] -> (batch, height/8 - 2, width/8 - 2, 1)
    logits. `filters` is the first layer's width (the reference's `ndf`); a slab of
    `channels` slices is judged whole, so a fake must look right across its slices too.
    """
    inputs = keras.Input((height, width, channels), name=f"{name}_input")
    x = inputs
    for index in range(3):
        x = strided_conv(x, filters * 2**index)
        if index > 0:
            x = InstanceNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    # The reference pads 1 pixel and convolves 4x4 at stride 1, losing one pixel per side pair.
    x = layers.ZeroPadding2D(1)(x)
    x = unpadded_conv(x, filters * 8, 4)
    x = InstanceNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.ZeroPadding2D(1)(x)
    logits = unpadded_conv(x, 1, 4, dtype="float32")
    return keras.Model(inputs, logits, name=name)


def split_batch(images: tf.Tensor, parts: int) -> list[tf.Tensor]:
    """Split a batch made by concatenating `parts` equal batches back into them."""
    return tf.split(images, parts, axis=0)


class CycleGan(keras.Model):
    """Both generators and both discriminators, trained together by `fit`.

    `train_step` takes a (t1_batch, t2_batch) pair, each (batch, H, W, 1) in [-1, 1],
    and updates the generators and the critics with one optimizer each, as the
    reference does (Adam is per weight, so one optimizer over both networks is two).

    With `channels` = 2K + 1 (2.5-D, `--context_slices K`) an example is a slab of 2K + 1
    neighbouring slices, and every term is the same CycleGAN's over slabs: each generator
    maps a slab to a slab, the critics judge whole slabs, and the cycle and identity L1
    are over every slice of the slab. Translation keeps the middle slice of each output
    slab (`inference.Generator`).
    """

    def __init__(
        self,
        height: int,
        width: int,
        gan_loss: str = "lsgan",
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        lambda_structure: float = 0.0,
        generator_filters: int = 64,
        critic_filters: int = 64,
        generator: str = "unet",
        upsample: str = "transpose",
        pool_size: int = 0,
        channels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        make_generator = GENERATORS[generator]
        self.t1_to_t2 = make_generator(
            height, width, "t1_to_t2", generator_filters, upsample, channels
        )
        self.t2_to_t1 = make_generator(
            height, width, "t2_to_t1", generator_filters, upsample, channels
        )
        self.t1_critic = patchgan_discriminator(
            height, width, "t1_critic", critic_filters, channels
        )
        self.t2_critic = patchgan_discriminator(
            height, width, "t2_critic", critic_filters, channels
        )
        self.adversarial = loss.ADVERSARIAL_LOSSES[gan_loss]
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = lambda_identity
        self.lambda_structure = lambda_structure
        self.pools = (
            {
                domain: HistoryPool(pool_size, (height, width, channels), f"{domain}_pool")
                for domain in ("t1", "t2")
            }
            if pool_size
            else {}
        )
        self.loss_names = (
            "generator_loss",
            "t1_to_t2_adversarial",
            "t2_to_t1_adversarial",
            "cycle_loss",
            "identity_loss",
            *(("structure_loss",) if lambda_structure else ()),
            "t1_critic_loss",
            "t2_critic_loss",
        )
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
        # Steps whose loss was NaN or Inf, over the whole run: their updates were skipped.
        self.skipped_steps = keras.Variable(
            0, dtype="int64", trainable=False, name="skipped", aggregation="only_first_replica"
        )

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

    @property
    def network_groups(self) -> dict[str, tuple[keras.Model, keras.Model]]:
        """The networks each optimizer trains, by optimizer name."""
        return {"generators": self.generators, "critics": self.critics}

    def group_variables(self, group: str) -> list:
        return [v for network in self.network_groups[group] for v in network.trainable_variables]

    def compile(self, optimizers: dict[str, keras.optimizers.Optimizer], **kwargs) -> None:
        """Keep the optimizers (`generators`, `critics`), built now.

        Building them before the first step lets a checkpoint restore their slots.
        """
        super().compile(**kwargs)
        self.network_optimizers = optimizers
        for group, optimizer in optimizers.items():
            optimizer.build(self.group_variables(group))
        # Every network is built; without this Keras would try to build the model from
        # the data under a strategy, taking the (t1, t2) pair for (inputs, targets).
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras' fit first averages one batch over the replicas to build
        # the model from it; MultiWorkerMirroredStrategy cannot do that eagerly, and the
        # batch is taken from the stream. Every network is built in `compile` already.
        if not self.built:
            super()._maybe_symbolic_build(iterator, data_batch)

    def call(self, inputs, training: bool = False):
        t1, t2 = inputs
        return self.t1_to_t2(t1, training=training), self.t2_to_t1(t2, training=training)

    def critic_logits(self, critic: keras.Model, real, fake, pool: HistoryPool | None, training):
        """The critic's logits for real images, the new fakes, and the fakes it learns
        from: drawn from the history pool when there is one (training only), else the
        new fakes again (then computed once)."""
        if pool is None or not training:
            real_logits, fake_logits = split_batch(
                critic(tf.concat([real, fake], 0), training=training), 2
            )
            return real_logits, fake_logits, fake_logits
        # Two calls, not one batch of three: each backward pass then runs only over the
        # images its loss depends on (the critic loss over real and pooled images, the
        # generator loss over the new fakes), not over all three with zero gradients.
        pooled = pool.query(tf.stop_gradient(fake))
        real_logits, pooled_logits = split_batch(
            critic(tf.concat([real, pooled], 0), training=training), 2
        )
        return real_logits, critic(fake, training=training), pooled_logits

    def losses_of(self, real_t1, real_t2, training: bool = True) -> dict[str, tf.Tensor]:
        """Every loss of one CycleGAN step, each a scalar averaged over the global batch."""

        def average(per_example):
            return tf.nn.compute_average_loss(per_example)

        # Instance norm keeps every image independent, so passes through the same network
        # are batched together: the same maths as separate calls, with larger, faster
        # convolutions and one weight-gradient computation per network instead of two.
        # The identity passes (same_t1, same_t2) only when their loss is weighted: with
        # lambda_identity 0 a step runs four generator passes instead of six.
        identity = self.lambda_identity > 0
        fake_t2, *same_t2 = split_batch(
            self.t1_to_t2(tf.concat([real_t1, *[real_t2] * identity], 0), training=training),
            1 + identity,
        )
        fake_t1, cycled_t1, *same_t1 = split_batch(
            self.t2_to_t1(
                tf.concat([real_t2, fake_t2, *[real_t1] * identity], 0), training=training
            ),
            2 + identity,
        )
        cycled_t2 = self.t1_to_t2(fake_t1, training=training)

        # The generator losses use the critics' view of the new fakes; the critic losses
        # that of the pooled ones.
        real_t2_logits, fake_t2_logits, pooled_t2_logits = self.critic_logits(
            self.t2_critic, real_t2, fake_t2, self.pools.get("t2"), training
        )
        real_t1_logits, fake_t1_logits, pooled_t1_logits = self.critic_logits(
            self.t1_critic, real_t1, fake_t1, self.pools.get("t1"), training
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
                loss.identity_loss(real_t1, same_t1[0], identity_weight)
                + loss.identity_loss(real_t2, same_t2[0], identity_weight)
            )
            if identity
            else tf.constant(0.0),
            "t1_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t1_logits, pooled_t1_logits)
            ),
            "t2_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t2_logits, pooled_t2_logits)
            ),
        }
        if self.lambda_structure:
            # Each translation keeps its input's anatomy: edges in the same places.
            losses["structure_loss"] = average(
                loss.structure_loss(real_t1, fake_t2, self.lambda_structure)
                + loss.structure_loss(real_t2, fake_t1, self.lambda_structure)
            )
        terms = [losses[name] for name in GENERATOR_TERMS if name in losses]
        losses["generator_loss"] = sum(terms[1:], terms[0])
        return losses

    # Traced as written: the step's branches are tf.cond already, and AutoGraph's
    # rewrite of it and every layer it calls took 2-3 s of each run's start.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        real_t1, real_t2 = data
        with tf.GradientTape(persistent=True) as tape:
            losses = self.losses_of(real_t1, real_t2, training=True)
            # The critics' losses are summed: each depends on its own critic's weights
            # only, so the sum's gradient is each loss's gradient for its critic.
            objectives = {
                "generators": losses["generator_loss"],
                "critics": losses["t1_critic_loss"] + losses["t2_critic_loss"],
            }
            objectives = {
                group: scaled_loss(self.network_optimizers[group], objective)
                for group, objective in objectives.items()
            }
        # One backward pass of the joint generator loss serves both generators; the
        # critics are differentiated only through their own losses, so the fakes they
        # saw act as constants for them, as with `detach()` in the reference.
        variables = {group: self.group_variables(group) for group in objectives}
        gradients = {
            group: tape.gradient(objective, variables[group])
            for group, objective in objectives.items()
        }
        del tape
        finite = apply_if_finite(losses, gradients, self.network_optimizers, variables)
        return self.record(losses, finite)

    def record(self, losses: dict[str, tf.Tensor], finite: tf.Tensor) -> dict[str, tf.Tensor]:
        """Add a step's losses to the running means (unless `finite` is false: then count
        the step as skipped) and return the logs Keras shows."""
        self.skipped_steps.assign_add(1 - tf.cast(finite, tf.int64))
        weight = tf.cast(finite, tf.float32)
        # Each replica's losses are its share of the global mean; its tracker records
        # its own mean, and Keras averages the trackers over the replicas.
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        for name, value in losses.items():
            self.loss_trackers[name].update_state(tf.where(finite, value * replicas, 0.0), weight)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        logs["skipped_steps"] = self.skipped_steps.value
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras (3.15) averages logs over workers along an axis 0 that a scalar lacks:
            # give each log that axis; the average is a scalar again.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs


def make_cyclegan(config: TrainConfig) -> CycleGan:
    """The (uncompiled) CycleGAN that `config` describes."""
    return CycleGan(
        config.img_height,
        config.img_width,
        gan_loss=config.gan_loss,
        lambda_cycle=config.lambda_cycle,
        lambda_identity=config.lambda_identity,
        lambda_structure=config.lambda_structure,
        generator_filters=config.generator_filters,
        critic_filters=config.critic_filters,
        generator=config.generator,
        upsample=config.upsample,
        pool_size=config.pool_size,
        channels=config.channels,
    )
