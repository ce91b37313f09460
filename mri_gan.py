"""The networks and the CycleGAN model.

Two generators (`t1_to_t2`, `t2_to_t1`: the pix2pix U-Net or the paper's ResNet, chosen
by name in `GENERATORS`) and two 70x70 PatchGAN discriminators (`t1_critic`,
`t2_critic`), laid out as in the reference implementation (Isola et al. 2017, Zhu et
al. 2017): one grayscale channel in and out, images in [-1, 1], instance normalization
without affine parameters, and a history pool of generated images for the critics.
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


def downsample(x, filters: int, norm: bool = True, activate: bool = True):
    """LeakyReLU(0.2) -> 4x4 stride-2 conv -> instance norm: halves H and W."""
    if activate:
        x = layers.LeakyReLU(0.2)(x)
    x = strided_conv(x, filters)
    return InstanceNormalization()(x) if norm else x


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


# Feature maps of at most this many pixels (the U-Net's inner levels, 16x16 and below;
# for a transposed conv, its input) are convolved as one matrix product, and so are
# one-channel images in or out (`strided_conv`, `unpadded_conv`): there TensorFlow's
# convolution kernels run far below a matmul's speed, while on larger maps they run at
# about it (python -m benchmarks.small_convs shows both, layer by layer).
SMALL_MAP_PIXELS = 256


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one dimension: (before, after)."""
    outputs = -(-size // stride)
    total = max((outputs - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d_by_matmul(x, kernel, stride: int):
    """`tf.nn.conv2d(x, kernel, stride, "SAME")` as one product of patches and kernel.

    `kernel` is (kh, kw, c_in, c_out); kh and kw are multiples of `stride`. The padded
    image is cut into stride x stride blocks (`space_to_depth`), so each output pixel's
    patch is the (kh / stride) x (kw / stride) blocks starting at the pixel's own block:
    a few plain slices. The patch is then ordered as the kernel is, rows by columns by
    channels, and is one row of the matrix multiplied by the kernel. The products are
    TensorFlow's; only the order of summing them differs.
    """
    kernel_height, kernel_width, channels_in, channels_out = kernel.shape
    _, height, width, _ = x.shape
    top, bottom = same_padding(height, kernel_height, stride)
    left, right = same_padding(width, kernel_width, stride)
    blocks = tf.nn.space_to_depth(tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]]), stride)
    out_height, out_width = -(-height // stride), -(-width // stride)
    taps_down, taps_across = kernel_height // stride, kernel_width // stride
    # tf.slice, not indexing: its gradient is a pad, far faster than StridedSliceGrad.
    patches = tf.stack(
        [
            tf.slice(blocks, [0, down, across, 0], [-1, out_height, out_width, -1])
            for down in range(taps_down)
            for across in range(taps_across)
        ],
        axis=3,
    )
    # (block row, block column, row in block, column in block, channel) ->
    # (block row, row in block, block column, column in block, channel): the kernel's order.
    patches = tf.reshape(patches, [-1, taps_down, taps_across, stride, stride, channels_in])
    patches = tf.transpose(patches, [0, 1, 3, 2, 4, 5])
    patch_size = kernel_height * kernel_width * channels_in
    y = tf.matmul(tf.reshape(patches, [-1, patch_size]), tf.reshape(kernel, [patch_size, -1]))
    return tf.reshape(y, [-1, out_height, out_width, channels_out])


def conv2d_transpose_by_matmul(x, kernel, stride: int):
    """`Conv2DTranspose(padding="same")` of `x` as one product of pixels and kernel.

    `kernel` is (kh, kw, c_out, c_in), as Keras holds it; kh and kw are multiples of
    `stride`. Every input pixel times the kernel gives a kh x kw x c_out block; block
    tap (a * stride + r) of pixel i lands on output row (i + a) * stride + r, so the
    blocks are summed by shifting each tap group a rows (and columns) before
    interleaving the strides. The full (H - 1) * stride + kh rows are then cropped to
    H * stride as TensorFlow crops them.
    """
    kernel_height, kernel_width, channels_out, channels_in = kernel.shape
    _, height, width, _ = x.shape
    taps_down, taps_across = kernel_height // stride, kernel_width // stride
    # kernel · xᵀ then transposed: faster than x · kernelᵀ for these shapes.
    blocks = tf.transpose(
        tf.matmul(
            tf.reshape(kernel, [-1, channels_in]),
            tf.reshape(x, [-1, channels_in]),
            transpose_b=True,
        )
    )
    blocks = tf.reshape(
        blocks, [-1, height, width, taps_down, stride, taps_across, stride, channels_out]
    )
    # Tap groups taken apart with unstack, whose gradient is a stack: indexing them out
    # of this 8-d tensor would cost a slow StridedSliceGrad each.
    full = tf.add_n(
        [
            tf.pad(
                group,
                [
                    [0, 0],
                    [down, taps_down - 1 - down],
                    [across, taps_across - 1 - across],
                    [0, 0],
                    [0, 0],
                    [0, 0],
                ],
            )
            for down, row_groups in enumerate(tf.unstack(blocks, axis=3))
            for across, group in enumerate(tf.unstack(row_groups, axis=4))
        ]
    )
    full_height = (height + taps_down - 1) * stride
    full_width = (width + taps_across - 1) * stride
    full = tf.reshape(
        tf.transpose(full, [0, 1, 3, 2, 4, 5]), [-1, full_height, full_width, channels_out]
    )
    top, _ = same_padding(height * stride, kernel_height, stride)
    left, _ = same_padding(width * stride, kernel_width, stride)
    return tf.slice(full, [0, top, left, 0], [-1, height * stride, width * stride, -1])


def conv2d_valid_by_matmul(x, kernel):
    """`tf.nn.conv2d(x, kernel, 1, "VALID")` as one matrix product and slices, for convs
    with few channels on one side (a one-channel image in or out), where TensorFlow's
    kernels pad the one channel to a block of many and run far below a matmul's speed.

    With fewer channels in than out, each output pixel's patch (the kh x kw input pixels
    under the kernel, sliced out as shifted views) is one row of the matrix multiplied by
    the kernel. With fewer out, every input pixel times every kernel tap is one product,
    and each tap's map, shifted by the tap's offset, is summed. Either way the products
    are TensorFlow's; only the order of summing them differs.
    """
    kernel_height, kernel_width, channels_in, channels_out = kernel.shape
    _, height, width, _ = x.shape
    out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
    offsets = [(down, across) for down in range(kernel_height) for across in range(kernel_width)]
    taps = len(offsets)
    if channels_in <= channels_out:
        # (tap, pixel, channel) stacked from contiguous slices, then (pixel, tap, channel):
        # faster than stacking the slices along the channel axis.
        patches = tf.stack(
            [
                tf.slice(x, [0, down, across, 0], [-1, out_height, out_width, -1])
                for down, across in offsets
            ]
        )
        patches = tf.transpose(tf.reshape(patches, [taps, -1, channels_in]), [1, 0, 2])
        y = tf.matmul(
            tf.reshape(patches, [-1, taps * channels_in]), tf.reshape(kernel, [-1, channels_out])
        )
        return tf.reshape(y, [-1, out_height, out_width, channels_out])
    # (tap, channel out, channel in) times every pixel: one map per tap and channel out,
    # laid out (tap, channel out, image, row, column) so each tap's shift is a plain slice.
    per_tap = tf.matmul(
        tf.reshape(tf.transpose(kernel, [0, 1, 3, 2]), [-1, channels_in]),
        tf.reshape(x, [-1, channels_in]),
        transpose_b=True,
    )
    per_tap = tf.reshape(per_tap, [taps, channels_out, -1, height, width])
    # unstack, whose gradient is a stack: indexing would cost a StridedSliceGrad per tap.
    y = tf.add_n(
        [
            tf.slice(tap, [0, 0, down, across], [-1, -1, out_height, out_width])
            for (down, across), tap in zip(offsets, tf.unstack(per_tap), strict=True)
        ]
    )
    return tf.transpose(y, [1, 2, 3, 0])


def check_matmul_conv(layer: layers.Layer, valid_stride_one: bool = False) -> None:
    """Refuse options the matmul convolutions do not implement, rather than ignore them.

    `valid_stride_one`: the layer may also be a "valid" conv at stride 1 (`MatmulConv2D`).
    """
    strides, kernel_size = tuple(layer.strides), tuple(layer.kernel_size)
    common = (
        layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and getattr(layer, "groups", 1) == 1
        and getattr(layer, "output_padding", None) is None
    )
    strided_same = (
        layer.padding == "same"
        and strides[0] == strides[1] >= 2
        and all(side % strides[0] == 0 for side in kernel_size)
    )
    valid = valid_stride_one and layer.padding == "valid" and strides == (1, 1)
    if not (common and (strided_same or valid)):
        also = ", or 'valid' padding at stride 1" if valid_stride_one else ""
        raise ValueError(
            f"{type(layer).__name__} needs 'same' padding with equal strides of at least 2 "
            f"and kernel sides that are multiples of them{also}; channels last, no "
            f"dilation or groups; got strides {strides}, kernel {kernel_size}, padding "
            f"{layer.padding!r}"
        )


@keras.saving.register_keras_serializable(package="mri_gan")
class MatmulConv2D(layers.Conv2D):
    """Keras' Conv2D computed by `conv2d_by_matmul` (strided, "same" padding) or
    `conv2d_valid_by_matmul` ("valid", stride 1): the same weights and products."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_matmul_conv(self, valid_stride_one=True)

    def convolution_op(self, inputs, kernel):
        if self.padding == "valid":
            return conv2d_valid_by_matmul(inputs, kernel)
        return conv2d_by_matmul(inputs, kernel, self.strides[0])


def bias_and_activation(layer: layers.Conv2DTranspose, y):
    """The rest of Keras' Conv2DTranspose call after its convolution, for the subclasses
    that replace the call (Conv2DTranspose has no `convolution_op` hook as Conv2D has)."""
    if layer.use_bias:
        y = tf.nn.bias_add(y, layer.bias)
    return layer.activation(y) if layer.activation is not None else y


@keras.saving.register_keras_serializable(package="mri_gan")
class MatmulConv2DTranspose(layers.Conv2DTranspose):
    """Keras' Conv2DTranspose computed by `conv2d_transpose_by_matmul`: the same weights
    and products."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_matmul_conv(self)

    def call(self, inputs):
        return bias_and_activation(
            self, conv2d_transpose_by_matmul(inputs, self.kernel, self.strides[0])
        )


@keras.saving.register_keras_serializable(package="mri_gan")
class CroppedConv2DTranspose(layers.Conv2DTranspose):
    """A "valid" Conv2DTranspose whose full output loses `crop` = ((top, bottom), (left,
    right)) rows and columns, the crop done by the kernel itself (explicit padding).

    The same weights and sums as the layer followed by `Cropping2D(crop)`, without
    computing the rows and columns cut off, or a slice and its gradient afterwards.
    """

    def __init__(self, *args, crop=((0, 0), (0, 0)), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pairs = (
            isinstance(crop, (tuple, list))
            and len(crop) == 2
            and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in crop)
        )
        self.crop = tuple(tuple(int(side) for side in pair) for pair in crop) if pairs else crop
        supported = (
            pairs
            and all(side >= 0 for pair in self.crop for side in pair)
            and self.padding == "valid"
            and self.data_format == "channels_last"
            and tuple(self.dilation_rate) == (1, 1)
            and self.output_padding is None
            # A stride above the kernel makes Keras' "valid" output longer than the sum.
            and all(k >= s for k, s in zip(self.kernel_size, self.strides, strict=True))
        )
        if not supported:
            raise ValueError(
                f"CroppedConv2DTranspose needs crop ((top, bottom), (left, right)) of sides "
                f">= 0, 'valid' padding, channels last, no dilation or output padding, and "
                f"strides no larger than the kernel; got crop {crop!r}, padding "
                f"{self.padding!r}, kernel {self.kernel_size}, strides {self.strides}, "
                f"dilation {self.dilation_rate}, output padding {self.output_padding}, "
                f"data format {self.data_format!r}"
            )

    def cropped_sides(self, height, width):
        """Output height and width for an input of `height` x `width` (known sides are
        checked: the crop must leave at least one row and column)."""
        sides = []
        for side, kernel, stride, (before, after) in zip(
            (height, width), self.kernel_size, self.strides, self.crop, strict=True
        ):
            if side is None:
                sides.append(None)
                continue
            out = (side - 1) * stride + kernel - before - after
            if isinstance(out, int) and out < 1:
                raise ValueError(
                    f"crop {self.crop} leaves nothing of a {side}-pixel input side "
                    f"(full output {out + before + after})"
                )
            sides.append(out)
        return sides

    def call(self, inputs):
        batch, height, width = tf.unstack(tf.shape(inputs)[:3])
        out_height, out_width = self.cropped_sides(height, width)
        (top, bottom), (left, right) = self.crop
        y = tf.nn.conv2d_transpose(
            inputs,
            self.kernel,
            tf.stack([batch, out_height, out_width, self.filters]),
            self.strides,
            padding=[[0, 0], [top, bottom], [left, right], [0, 0]],
        )
        y.set_shape(self.compute_output_shape(inputs.shape))
        return bias_and_activation(self, y)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, *self.cropped_sides(height, width), self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "crop": self.crop}


def known_map_size(x) -> bool:
    """Whether `x`'s height and width are known when the model is built."""
    _, height, width, _ = x.shape
    return height is not None and width is not None


def small_map(x) -> bool:
    """Whether `x`'s feature map has a known size of at most `SMALL_MAP_PIXELS` pixels."""
    _, height, width, _ = x.shape
    return known_map_size(x) and height * width <= SMALL_MAP_PIXELS


def strided_conv(x, filters: int):
    """A 4x4 stride-2 "same" conv, halving H and W: as a matmul on a small map or a
    one-channel image, else TensorFlow's kernel."""
    by_matmul = small_map(x) or (known_map_size(x) and x.shape[-1] == 1)
    convolution = (MatmulConv2D if by_matmul else layers.Conv2D)(
        filters, 4, strides=2, padding="same", kernel_initializer=WEIGHT_INIT
    )
    return convolution(x)


def upsampling_conv(x, filters: int, kernel: int, method: str = "transpose"):
    """Double H and W: a `kernel` x `kernel` stride-2 transposed conv, or (`resize`) a
    nearest-neighbour resize then a 3x3 conv, which cannot make checkerboard artifacts
    (Odena et al. 2016)."""
    if method == "resize":
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        return layers.Conv2D(filters, 3, padding="same", kernel_initializer=WEIGHT_INIT)(x)
    if kernel % 2:
        # PyTorch's ConvTranspose2d(k, 2, padding=k // 2, output_padding=1), as the
        # reference ResNet has it: the full 2n + 1 output less its first row and column.
        crop = (kernel // 2, kernel // 2 - 1)
        x = CroppedConv2DTranspose(
            filters, kernel, strides=2, crop=(crop, crop), kernel_initializer=WEIGHT_INIT
        )(x)
        # In the place of the Cropping2D layer that once followed: checkpoints find layers
        # by position, so ResNet runs saved before the crop moved into the kernel restore.
        return layers.Identity()(x)
    convolution = (MatmulConv2DTranspose if small_map(x) else layers.Conv2DTranspose)(
        filters, kernel, strides=2, padding="same", kernel_initializer=WEIGHT_INIT
    )
    return convolution(x)


def upsample(x, filters: int, norm: bool = True, dropout: bool = False, method: str = "transpose"):
    """ReLU -> 4x4 stride-2 transposed conv (or resize-conv) -> instance norm (-> dropout
    0.5): doubles H and W."""
    x = layers.ReLU()(x)
    x = upsampling_conv(x, filters, 4, method)
    if norm:
        x = InstanceNormalization()(x)
    return layers.Dropout(0.5)(x) if dropout else x


def unet_generator(
    height: int, width: int, name: str, filters: int = 64, upsample_method: str = "transpose"
) -> keras.Model:
    """The pix2pix U-Net: (batch, height, width, 1) in [-1, 1] -> same shape, tanh.

    Depth follows the image size (8 levels at 256, 7 at 128); at 256x256 it is the
    reference `unet_256` (54.4 M parameters). The three innermost up blocks of the
    widest levels use dropout, as in pix2pix. `filters` is the first level's width (the
    reference's `ngf`); fewer make a small, fast model for tests. `upsample_method` is
    `transpose` (the reference) or `resize` (see `upsampling_conv`).
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
        x = upsample(x, widths[level - 1], dropout=level in dropout_levels, method=upsample_method)
        x = layers.Concatenate()([skips.pop(), x])
    x = layers.ReLU()(x)
    x = upsampling_conv(x, 1, 4, upsample_method)
    outputs = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def unpadded_conv(x, filters: int, kernel: int, strides: int = 1, **options):
    """A `kernel` x `kernel` conv without padding (the caller pads): at stride 1 with a
    one-channel image in or out, of a known size, as matmuls (`conv2d_valid_by_matmul`),
    else TensorFlow's kernel."""
    by_matmul = strides == 1 and known_map_size(x) and 1 in (x.shape[-1], filters)
    convolution = (MatmulConv2D if by_matmul else layers.Conv2D)(
        filters, kernel, strides=strides, kernel_initializer=WEIGHT_INIT, **options
    )
    return convolution(x)


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
    height: int, width: int, name: str, filters: int = 64, upsample_method: str = "transpose"
) -> keras.Model:
    """The CycleGAN paper's ResNet generator: (batch, height, width, 1) in [-1, 1] -> same.

    c7s1-64, d128, d256, 9 (or 6, see `resnet_blocks`) residual blocks of 256, u128, u64,
    c7s1-1 with tanh; reflection padding. At 256x256 it is the reference `resnet_9blocks`
    (11.37 M parameters with one channel in and out).
    """
    inputs = keras.Input((height, width, 1), name=f"{name}_input")
    x = conv_norm_relu(ReflectionPadding2D(3)(inputs), filters, 7)
    for multiple in (2, 4):
        # Zero padding 1 on every side then a valid 3x3 stride-2 conv, as the reference.
        x = conv_norm_relu(layers.ZeroPadding2D(1)(x), filters * multiple, 3, strides=2)
    for _ in range(resnet_blocks(height, width)):
        x = residual_block(x, filters * 4)
    for multiple in (2, 1):
        x = upsampling_conv(x, filters * multiple, 3, upsample_method)
        x = layers.ReLU()(InstanceNormalization()(x))
    x = unpadded_conv(ReflectionPadding2D(3)(x), 1, 7)
    outputs = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


# Generator architectures by name, as the reference's `define_G`.
GENERATORS = {"unet": unet_generator, "resnet": resnet_generator}


def patchgan_discriminator(height: int, width: int, name: str, filters: int = 64) -> keras.Model:
    """The 70x70 PatchGAN (C64-C128-C256-C512): one logit per overlapping 70x70 patch.

    (batch, height, width, 1) in [-1, 1] -> (batch, height/8 - 2, width/8 - 2, 1) logits.
    `filters` is the first layer's width (the reference's `ndf`).
    """
    inputs = keras.Input((height, width, 1), name=f"{name}_input")
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


def query_pool(
    stored: tf.Tensor,
    count: tf.Tensor,
    images: tf.Tensor,
    coins: tf.Tensor,
    slots: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One query of the reference's image pool, with its random draws given.

    `stored` (size, H, W, C) holds `count` images so far; `images` (batch, H, W, C) are
    new fakes; `coins` (batch,) in [0, 1) and `slots` (batch,) in [0, size) are the
    draws. Image by image: while the pool is filling, store it and return it; once
    full, if its coin is below 0.5 return the stored image at its slot and store the new
    one there, else return the new one. Returns (images for the critic, stored, count).
    """
    size = tf.shape(stored)[0]

    def one(index, stored, count, returned):
        image = images[index]
        filling = count < size
        swap = tf.logical_and(tf.logical_not(filling), coins[index] < 0.5)
        slot = tf.where(filling, count, slots[index])
        old = stored[slot]
        stored = tf.tensor_scatter_nd_update(
            stored, [[slot]], [tf.where(tf.logical_or(filling, swap), image, old)]
        )
        returned = returned.write(index, tf.where(swap, old, image))
        return index + 1, stored, count + tf.cast(filling, count.dtype), returned

    batch = tf.shape(images)[0]
    returned = tf.TensorArray(images.dtype, size=batch, element_shape=images.shape[1:])
    _, stored, count, returned = tf.while_loop(
        lambda index, *_: index < batch, one, (tf.constant(0), stored, count, returned)
    )
    return tf.reshape(returned.stack(), tf.shape(images)), stored, count


class HistoryPool:
    """The last `size` generated images of one contrast, shown to its critic (Shrivastava
    et al. 2017, as in the CycleGAN paper) so it does not forget older generator modes.

    Under tf.distribute each replica keeps a pool of its own. The pool is not part of
    a checkpoint (nor is it in the reference): a resumed run refills it.
    """

    def __init__(self, size: int, image_shape: tuple[int, int, int], name: str) -> None:
        # A plain object, not a Keras layer, so that the pool stays out of the weights.
        per_replica = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.NONE,
        }
        self.size = size
        self.stored = tf.Variable(tf.zeros((size, *image_shape)), name=name, **per_replica)
        self.count = tf.Variable(0, name=f"{name}_count", **per_replica)

    def query(self, images: tf.Tensor) -> tf.Tensor:
        """Fakes for the critic: `images` (batch, H, W, C) mixed with older fakes."""
        batch = tf.shape(images)[0]
        coins = tf.random.uniform((batch,))
        slots = tf.random.uniform((batch,), 0, self.size, tf.int32)
        returned, stored, count = query_pool(
            self.stored.read_value(),
            self.count.read_value(),
            tf.cast(images, self.stored.dtype),
            coins,
            slots,
        )
        self.stored.assign(stored)
        self.count.assign(count)
        return tf.cast(returned, images.dtype)


def replicas_agree_finite(values: list[tf.Tensor]) -> tf.Tensor:
    """True when every value is finite on every replica, so all take the same branch."""
    bad = tf.cast(
        tf.logical_not(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values])),
        tf.float32,
    )
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return tf.equal(bad, 0.0)


def run_if(condition: tf.Tensor, action) -> None:
    """Run `action()`, which updates variables the way Keras does in the cross-replica
    context (e.g. a loss scale), where `condition`, the same on every replica, holds."""
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, action, lambda: None)
        return

    def cross_replica(strategy, condition):
        tf.cond(strategy.experimental_local_results(condition)[0], action, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition,))


def apply_if(condition: tf.Tensor, apply, gradients) -> None:
    """Run `apply(gradients)` (which calls optimizers) only where `condition` holds.

    Optimizers synchronise replicas through `merge_call`, which TensorFlow does not
    allow inside a `tf.cond` in a replica context; as Keras' LossScaleOptimizer does,
    the condition is then taken in the cross-replica context and `apply` runs on every
    replica from there. `condition` must be the same on every replica.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: apply(gradients), lambda: None)
        return

    def cross_replica(strategy, condition, gradients):
        agreed = strategy.experimental_local_results(condition)[0]

        def on_every_replica():
            strategy.extended.call_for_each_replica(apply, args=(gradients,))

        tf.cond(agreed, on_every_replica, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, gradients))


class CycleGan(keras.Model):
    """Both generators and both discriminators, trained together by `fit`.

    `train_step` takes a (t1_batch, t2_batch) pair, each (batch, H, W, 1) in [-1, 1],
    and updates the generators and the critics with one optimizer each, as the
    reference does (Adam is per weight, so one optimizer over both networks is two).
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
        generator: str = "unet",
        upsample: str = "transpose",
        pool_size: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        make_generator = GENERATORS[generator]
        self.t1_to_t2 = make_generator(height, width, "t1_to_t2", generator_filters, upsample)
        self.t2_to_t1 = make_generator(height, width, "t2_to_t1", generator_filters, upsample)
        self.t1_critic = patchgan_discriminator(height, width, "t1_critic", critic_filters)
        self.t2_critic = patchgan_discriminator(height, width, "t2_critic", critic_filters)
        self.adversarial = loss.ADVERSARIAL_LOSSES[gan_loss]
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = lambda_identity
        self.pools = (
            {
                domain: HistoryPool(pool_size, (height, width, 1), f"{domain}_pool")
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
        fake_t2, same_t2 = split_batch(
            self.t1_to_t2(tf.concat([real_t1, real_t2], 0), training=training), 2
        )
        fake_t1, same_t1, cycled_t1 = split_batch(
            self.t2_to_t1(tf.concat([real_t2, real_t1, fake_t2], 0), training=training), 3
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
                loss.identity_loss(real_t1, same_t1, identity_weight)
                + loss.identity_loss(real_t2, same_t2, identity_weight)
            ),
            "t1_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t1_logits, pooled_t1_logits)
            ),
            "t2_critic_loss": average(
                loss.critic_loss(self.adversarial, real_t2_logits, pooled_t2_logits)
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
            # The critics' losses are summed: each depends on its own critic's weights
            # only, so the sum's gradient is each loss's gradient for its critic.
            objectives = {
                "generators": losses["generator_loss"],
                "critics": losses["t1_critic_loss"] + losses["t2_critic_loss"],
            }
            # Under mixed precision the optimizers are LossScaleOptimizers.
            objectives = {
                group: self.network_optimizers[group].scale_loss(objective)
                if isinstance(self.network_optimizers[group], keras.optimizers.LossScaleOptimizer)
                else objective
                for group, objective in objectives.items()
            }
        # One backward pass of the joint generator loss serves both generators; the
        # critics are differentiated only through their own losses, so the fakes they
        # saw act as constants for them, as with `detach()` in the reference.
        groups = tuple(objectives)
        gradients = [
            tape.gradient(objectives[group], self.group_variables(group)) for group in groups
        ]
        del tape

        def apply_updates(gradients):
            for group, group_gradients in zip(groups, gradients, strict=True):
                self.network_optimizers[group].apply_gradients(
                    zip(group_gradients, self.group_variables(group), strict=True)
                )

        # A NaN or Inf loss would poison every weight it touched: skip that step's
        # updates instead, and count it, so the run can stop if it keeps happening.
        finite = replicas_agree_finite(list(losses.values()))
        scalers = [
            optimizer
            for optimizer in self.network_optimizers.values()
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ]
        if scalers:
            # float16 gradients that overflow on any replica skip the update everywhere
            # and halve the loss scales: Keras' own check sees one replica's gradients
            # only, before they are summed. Not a diverging loss: not counted as one.
            fits = replicas_agree_finite([g for group in gradients for g in group if g is not None])

            def lower_scales():
                for scaler in scalers:
                    scaler.dynamic_scale.assign(scaler.dynamic_scale * 0.5)
                    scaler.step_counter.assign(0)

            run_if(tf.logical_and(finite, tf.logical_not(fits)), lower_scales)
            apply_if(tf.logical_and(finite, fits), apply_updates, gradients)
        else:
            apply_if(finite, apply_updates, gradients)
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
        generator_filters=config.generator_filters,
        critic_filters=config.critic_filters,
        generator=config.generator,
        upsample=config.upsample,
        pool_size=config.pool_size,
    )
