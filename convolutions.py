"""CPU speed machinery for the networks: convolutions computed as matrix products.

On small feature maps (the U-Net's inner levels) and on one-channel images, TensorFlow's
CPU convolution kernels run far below a matmul's speed; there the same sums are computed
as one matrix product of patches and kernel (`python -m benchmarks.small_convs` shows
both forms, layer by layer). The ResNet's odd-kernel transposed convs crop inside the
kernel. The networks call only `conv` and `conv_transpose`, which choose the form; every
form holds the same weights as Keras' own layer, so checkpoints and exports do not
depend on which ran.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

# Feature maps of at most this many pixels (the U-Net's inner levels, 16x16 and below;
# for a transposed conv, its input) are convolved as one matrix product, and so are
# one-channel images in or out (see `conv`): there TensorFlow's
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


def conv(x, filters: int, kernel: int, strides: int = 1, padding: str = "same", **options):
    """A `kernel` x `kernel` Conv2D of `x`, as a matmul where that is faster, else Keras'.

    Matmuls: "same" padding at a stride of 2 or more dividing the kernel, on a small map
    or a one-channel image; "valid" padding at stride 1 with one channel in or out. Both
    need a known map size. `options` go to the layer (initializer, dtype).
    """
    known = known_map_size(x)
    if padding == "same":
        by_matmul = (
            strides >= 2
            and kernel % strides == 0
            and (small_map(x) or (known and x.shape[-1] == 1))
        )
    else:
        by_matmul = strides == 1 and known and 1 in (x.shape[-1], filters)
    layer = MatmulConv2D if by_matmul else layers.Conv2D
    return layer(filters, kernel, strides=strides, padding=padding, **options)(x)


def conv_transpose(x, filters: int, kernel: int, **options):
    """A `kernel` x `kernel` stride-2 transposed conv doubling H and W ("same" sizes).

    An odd kernel is PyTorch's ConvTranspose2d(k, 2, padding=k // 2, output_padding=1),
    as the reference ResNet has it: the full 2n + 1 output less its first row and column,
    cropped inside the kernel. An even kernel on a small map runs as a matmul.
    """
    if kernel % 2:
        crop = (kernel // 2, kernel // 2 - 1)
        x = CroppedConv2DTranspose(filters, kernel, strides=2, crop=(crop, crop), **options)(x)
        # In the place of the Cropping2D layer that once followed: checkpoints find layers
        # by position, so ResNet runs saved before the crop moved into the kernel restore.
        return layers.Identity()(x)
    layer = MatmulConv2DTranspose if small_map(x) else layers.Conv2DTranspose
    return layer(filters, kernel, strides=2, padding="same", **options)(x)
