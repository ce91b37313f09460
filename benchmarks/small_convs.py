"""Time the U-Net's convolutions both ways: TensorFlow's kernels and one matmul each.

    python -m benchmarks.small_convs --size 256 --batch 2 [--json]

For every strided convolution and transposed convolution of the U-Net at `--size`, on a
batch of `--batch` images, the best time of a forward and backward pass (gradients for
the input and the kernel) with `tf.nn.conv2d` / `tf.nn.conv2d_transpose` and with
`convolutions.conv2d_by_matmul` / `conv2d_transpose_by_matmul`, and which form the generator
uses (the matmul on maps of at most `convolutions.SMALL_MAP_PIXELS` pixels and on the
one-channel input): this shows where that pays.
The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.summary import report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def best_seconds(function, repeats: int) -> float:
    """Best wall time of `repeats` calls of `function`, after one untimed call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def forward_and_backward(apply, inputs, output_gradient):
    """A compiled function running `apply(*inputs)` forward and back, returning the
    gradients for every tensor or variable of `inputs`."""
    import tensorflow as tf

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = apply(*inputs)
        return tape.gradient(y, inputs, output_gradients=output_gradient)

    return lambda: [gradient.numpy() for gradient in run()]


def unet_convolutions(size: int) -> list[tuple[str, int, int, int, bool]]:
    """(kind, input side, channels in, channels out, computed by matmul) of each U-Net
    convolution at `size`."""
    import keras

    import convolutions
    import mri_gan

    generator = mri_gan.unet_generator(size, size, "g")
    by_matmul = (convolutions.MatmulConv2D, convolutions.MatmulConv2DTranspose)
    found = []
    for layer in generator.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kind = "up"
        elif isinstance(layer, keras.layers.Conv2D):
            kind = "down"
        else:
            continue
        side, channels_in = layer.input.shape[1], layer.input.shape[-1]
        found.append((kind, side, channels_in, layer.filters, isinstance(layer, by_matmul)))
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="U-Net image height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    import convolutions

    def stock_down(x, kernel):
        return tf.nn.conv2d(x, kernel, 2, "SAME")

    def stock_up(x, kernel):
        batch, height, width, _ = x.shape
        return tf.nn.conv2d_transpose(
            x, kernel, (batch, 2 * height, 2 * width, kernel.shape[2]), 2, "SAME"
        )

    forms = {
        "down": (stock_down, lambda x, kernel: convolutions.conv2d_by_matmul(x, kernel, 2)),
        "up": (stock_up, lambda x, kernel: convolutions.conv2d_transpose_by_matmul(x, kernel, 2)),
    }
    rows = []
    for kind, side, channels_in, channels_out, by_matmul in unet_convolutions(args.size):
        x = tf.random.normal((args.batch, side, side, channels_in))
        if kind == "down":
            kernel = tf.random.normal((4, 4, channels_in, channels_out))
            out_side = -(-side // 2)
        else:
            kernel = tf.random.normal((4, 4, channels_out, channels_in))
            out_side = 2 * side
        output_gradient = tf.random.normal((args.batch, out_side, out_side, channels_out))
        stock, matmul = (
            best_seconds(forward_and_backward(form, [x, kernel], output_gradient), args.repeats)
            for form in forms[kind]
        )
        rows.append(
            {
                "kind": kind,
                "input_side": side,
                "channels_in": channels_in,
                "channels_out": channels_out,
                "conv_ms": round(stock * 1e3, 2),
                "matmul_ms": round(matmul * 1e3, 2),
                "matmul_used": by_matmul,
            }
        )
        print(
            f"{kind:4} {side:4d}x{side:<4d} {channels_in:5d} -> {channels_out:<5d} "
            f"conv {rows[-1]['conv_ms']:8.2f} ms   matmul {rows[-1]['matmul_ms']:8.2f} ms"
            f"{'   (used)' if rows[-1]['matmul_used'] else ''}"
        )
    used = [row for row in rows if row["matmul_used"]]
    result = {
        "size": args.size,
        "batch": args.batch,
        "layers": rows,
        "used_layers_conv_ms": round(sum(row["conv_ms"] for row in used), 2),
        "used_layers_matmul_ms": round(sum(row["matmul_ms"] for row in used), 2),
    }
    return report(
        f"small_convs unet {args.size}x{args.size} batch {args.batch}: the "
        f"{len(used)} layers the generator computes by matmul take "
        f"{result['used_layers_conv_ms']} ms forward and backward as convolutions, "
        f"{result['used_layers_matmul_ms']} ms as matmuls",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
