"""Where the time of one training step goes, op by op, from TensorFlow's profiler.

    python -m benchmarks.profile_step --generator unet --size 256 --batch 1 [--json]

Builds and warms up the step as `benchmarks.train_step` does, traces `--steps` steps
with `tf.profiler`, and sums each TensorFlow op's time by kind (convolution kernels,
the convolutions computed as matmuls, Adam, instance normalization, the rest) and by
layer, with each convolution layer's GFLOP/s. Ops run one at a time here (one
inter-op thread), so their times add up to the step's; training runs independent ops
side by side and is a little faster. The trace stays in `--logdir` for TensorBoard's
profile tab. The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

from benchmarks.summary import report, step_parser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KINDS = ("convolution kernels", "matmul convolutions", "Adam", "instance norm", "other")
# An op's name in the trace: its graph name, a colon, its type.
OP_EVENT = re.compile(r"^(?P<name>[^:\s]+):(?P<type>\w+)$")
# Keras scopes a layer's ops as <network>_<call>/<layer>_<call>/...; the layer's part
# always ends in its call number, which must come off: "conv2d_1_2" is layer "conv2d_1",
# "conv2d_1" is layer "conv2d".
LAYER_SCOPE = re.compile(r"(?P<network>t[12]_to_t[12]|t[12]_critic)_\d+/(?P<layer>\w+)_\d+/")


def op_kind(name: str, op_type: str) -> str:
    """Which of `KINDS` a traced op belongs to."""
    if "matmul_conv2d" in name:  # the matmul, slices and pads of a MatmulConv2D*
        return "matmul convolutions"
    if "Conv2D" in op_type:
        return "convolution kernels"
    if "ApplyAdam" in op_type:
        return "Adam"
    if "instance_normalization" in name:
        return "instance norm"
    return "other"


def op_times(logdir: str) -> dict[str, float]:
    """Total seconds of each traced TensorFlow op ("name:type") in the trace in `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if OP_EVENT.match(name):
                        totals[name] += event.duration_ps / 1e12
    return totals


def main(argv: list[str] | None = None) -> dict:
    parser = step_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3, help="traced steps")
    parser.add_argument("--warmup", type=int, default=3, help="untraced steps first")
    parser.add_argument("--top", type=int, default=12, help="slowest layers to list")
    parser.add_argument("--logdir", help="where the trace goes (default: a temporary folder)")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    from benchmarks.flops import FORWARD_AND_BACKWARD, GENERATOR_PASSES, layer_forward_flops
    from benchmarks.train_step import serial_train_step

    model, run_step = serial_train_step(args.generator, args.size, args.batch, args.warmup)
    logdir = args.logdir or tempfile.mkdtemp(prefix="profile_step_")
    tf.profiler.experimental.start(logdir)
    started = time.perf_counter()
    for _ in range(args.steps):
        run_step()
    seconds_per_step = (time.perf_counter() - started) / args.steps
    tf.profiler.experimental.stop()

    networks = (model.t1_to_t2, model.t2_to_t1, model.t1_critic, model.t2_critic)
    by_kind = dict.fromkeys(KINDS, 0.0)
    by_layer: dict[tuple[str, str], float] = collections.Counter()
    for event, seconds in op_times(logdir).items():
        name, op_type = OP_EVENT.match(event).group("name", "type")
        by_kind[op_kind(name, op_type)] += seconds / args.steps
        scope = LAYER_SCOPE.search(name)
        if scope:
            by_layer[scope.group("network", "layer")] += seconds / args.steps

    # Every network sees 3 batches a step (GENERATOR_PASSES over the two generators;
    # each critic: real, pooled and new fakes), counted forward and backward as
    # benchmarks.train_step counts them, though a few passes need only one of the
    # two gradients (the critic's on the new fakes needs none for its weights).
    images = GENERATOR_PASSES // 2 * args.batch
    layers = []
    for network in networks:
        for layer in network.layers:
            gflop = layer_forward_flops(layer) * images * FORWARD_AND_BACKWARD / 1e9
            seconds = by_layer.get((network.name, layer.name), 0.0)
            if gflop and seconds:
                layers.append(
                    {
                        "network": network.name,
                        "layer": layer.name,
                        "input": list(layer.input.shape[1:]),
                        "output": list(layer.output.shape[1:]),
                        "seconds": round(seconds, 4),
                        "gflop": round(gflop, 6),
                        "gflop_per_s": round(gflop / seconds, 3),
                    }
                )
    layers.sort(key=lambda row: -row["seconds"])
    for row in layers[: args.top]:
        print(
            f"{row['network']:>9} {row['layer']:<30} {str(row['input']):>16} -> "
            f"{str(row['output']):<16} {1e3 * row['seconds']:7.1f} ms "
            f"{row['gflop_per_s']:6.1f} GFLOP/s"
        )
    op_seconds = sum(by_kind.values())
    result = {
        "generator": args.generator,
        "size": args.size,
        "batch": args.batch,
        "s_per_step": round(seconds_per_step, 4),
        "op_s_per_step": round(op_seconds, 4),
        "by_kind_s": {kind: round(seconds, 4) for kind, seconds in by_kind.items()},
        "layers": layers,
        "logdir": logdir,
    }
    shares = ", ".join(
        f"{kind} {seconds:.3f} s ({100 * seconds / op_seconds:.0f} %)"
        for kind, seconds in by_kind.items()
    )
    return report(
        f"profile_step {args.generator} {args.size}x{args.size} batch {args.batch}: "
        f"{seconds_per_step:.3f} s/step traced, ops {op_seconds:.3f} s: {shares}",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
