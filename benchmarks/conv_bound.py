"""How fast the train step could be with these convolution kernels: an estimate.

    python -m benchmarks.conv_bound --generator unet --size 256 --batch 1 [--json]

Every convolution layer of a generator and a critic, as the model builds it (TensorFlow's
kernel or the matmul form), is timed alone: forward and backward (gradients for its input
and weights), best of `--repeats`, on the batch of 3 x `--batch` images each network
sees in a step, with its data hot in cache. Their sum over the four networks is the
step's convolution time if every layer ran as fast as it does alone and nothing else
took time; the step's counted FLOPs (`benchmarks.flops`) over it, against this
machine's matmul rate, is about the most of the matmul rate the step can reach with
these kernels. Not a strict bound: it times a few gradients the step skips (the first
layer's input gradient; the critic's weight gradient on the new fakes), and one call on
all 3 images where the step makes two. The last line printed is the summary (one JSON
object with --json).
"""

from __future__ import annotations

import os
import sys

from benchmarks.summary import report, step_parser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def layer_seconds(layer, batch: int, repeats: int) -> float:
    """Best time of `layer` forward and backward on `batch` random images of its input."""
    import tensorflow as tf

    from benchmarks.small_convs import best_seconds, forward_and_backward

    x = tf.random.normal((batch, *layer.input.shape[1:]))
    output_gradient = tf.random.normal((batch, *layer.output.shape[1:]))
    # The layer's weights as TensorFlow variables (`.value`), which a tape can watch.
    weights = [weight.value for weight in layer.trainable_variables]
    run = forward_and_backward(lambda x, *_: layer(x), [x, *weights], output_gradient)
    return best_seconds(run, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = step_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mri_gan
    from benchmarks.flops import (
        CRITIC_PASSES,
        GENERATOR_PASSES,
        cyclegan_step_flops,
        layer_forward_flops,
    )
    from benchmarks.train_step import best_matmul_around

    generator = mri_gan.GENERATORS[args.generator](args.size, args.size, "generator")
    critic = mri_gan.patchgan_discriminator(args.size, args.size, "critic")
    # Each network sees 3 batches a step, as benchmarks.flops counts them.
    images = {"generator": GENERATOR_PASSES // 2, "critic": CRITIC_PASSES // 2}

    def time_layers() -> dict:
        seconds = {}
        for network in (generator, critic):
            batch = images[network.name] * args.batch
            for layer in network.layers:
                if layer_forward_flops(layer):
                    seconds[network.name, layer.name] = layer_seconds(layer, batch, args.repeats)
                    print(
                        f"{network.name:>9} {layer.name:<30} "
                        f"{str(layer.input.shape[1:]):>16} -> "
                        f"{str(layer.output.shape[1:]):<16} "
                        f"{1e3 * seconds[network.name, layer.name]:7.1f} ms"
                    )
        return seconds

    seconds, matmul = best_matmul_around(time_layers)
    # Two generators and two critics of the same shapes.
    bound_seconds = 2 * sum(seconds.values())
    gflop = cyclegan_step_flops(generator, critic, args.batch) / 1e9
    result = {
        "generator": args.generator,
        "size": args.size,
        "batch": args.batch,
        "conv_s_per_step": round(bound_seconds, 6),
        "gflop_per_step": round(gflop, 3),
        "gflop_per_s": round(gflop / bound_seconds, 3),
        "matmul_gflop_per_s": round(matmul, 3),
        "fraction_of_matmul": round(gflop / bound_seconds / matmul, 4),
        "layers": [
            {"network": network, "layer": layer, "seconds": round(time, 6)}
            for (network, layer), time in seconds.items()
        ],
    }
    return report(
        f"conv_bound {args.generator} {args.size}x{args.size} batch {args.batch}: "
        f"convolutions alone {bound_seconds:.3f} s/step, {result['gflop_per_s']:.1f} GFLOP/s "
        f"= about {100 * result['fraction_of_matmul']:.0f} % of matmul at most "
        f"({matmul:.1f} GFLOP/s)",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
