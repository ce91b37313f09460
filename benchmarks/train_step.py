"""Time one real CycleGAN training step and compare it with this machine's matmul speed.

    python -m benchmarks.train_step --generator unet --size 256 --batch 1 [--json]

In one process: the best fp32 throughput of a 2048x2048 matmul (before and after the
steps) and the rate it keeps up run back to back (`--sustained_seconds`, after); the
models built as training builds them; the median and spread of the compiled train step
(warm-up excluded); the step's convolution FLOPs counted from the layer shapes
(`benchmarks.flops`); and the peak resident memory. The last line printed is the
summary (one JSON object with --json). Runs on a GPU unchanged when TensorFlow sees one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

from benchmarks.summary import report, step_parser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def square_matmul(size: int):
    """A compiled size x size fp32 matmul, run once, and its FLOPs."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    multiply = tf.function(lambda: tf.matmul(a, b))
    multiply().numpy()
    return lambda: multiply().numpy(), 2 * size**3


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a size x size matmul on TensorFlow's default device."""
    multiply, flops = square_matmul(size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        multiply()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


def best_matmul_around(work):
    """`work()`'s result and the best matmul GFLOP/s (`matmul_gflops`) measured before and
    after it: a matmul slowed by a passing job would otherwise inflate the fraction of it
    that the work is judged by."""
    before = matmul_gflops()
    done = work()
    return done, max(before, matmul_gflops())


def sustained_matmul_gflops(seconds: float, size: int = 2048) -> float:
    """fp32 GFLOP/s of size x size matmuls run back to back for `seconds`: the rate the
    machine keeps up under steady load, as training loads it, not its best single run."""
    multiply, flops = square_matmul(size)
    count, started = 0, time.perf_counter()
    while True:
        multiply()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return flops * count / elapsed / 1e9


def compiled_train_step(config, warmup: int):
    """The model `config` describes and a function running one of its train steps on a
    fixed random batch, already run `warmup` times (traced and warmed up)."""
    import tensorflow as tf

    from training import build_model

    model = build_model(config)
    # Compiled as `fit` compiles it: one tf.function, with XLA only if the model asks.
    step = tf.function(model.train_step, jit_compile=bool(model.jit_compile))
    shape = (config.batch_size, config.img_height, config.img_width, 1)
    batch = (
        tf.random.uniform(shape, -1.0, 1.0, seed=1),
        tf.random.uniform(shape, -1.0, 1.0, seed=2),
    )

    def run_step() -> None:
        float(step(batch)["generator_loss"])

    for _ in range(warmup):
        run_step()
    return model, run_step


def serial_train_step(generator: str, size: int, batch: int, warmup: int):
    """`compiled_train_step` for the default configuration of `generator` at `size` and
    `batch`, with its ops run one at a time (one inter-op thread), so that each op's time
    is its own: the model and the step function. Call before TensorFlow runs any op."""
    import tensorflow as tf

    from config import TrainConfig

    tf.config.threading.set_inter_op_parallelism_threads(1)
    config = TrainConfig(img_height=size, img_width=size, batch_size=batch, generator=generator)
    return compiled_train_step(config, warmup)


def time_train_step(config, steps: int, warmup: int) -> tuple[list[float], object]:
    """Seconds of each of `steps` train steps after `warmup` untimed ones, and the model."""
    model, run_step = compiled_train_step(config, warmup)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run_step()
        seconds.append(time.perf_counter() - started)
    return seconds, model


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = step_parser(__doc__)
    parser.add_argument("--upsample", choices=("transpose", "resize"), default="transpose")
    parser.add_argument(
        "--pool_size", type=int, default=50, help="history pool (0: critics see new fakes only)"
    )
    for switch in ("mixed_precision", "xla"):
        parser.add_argument(
            f"--{switch}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="as main.py: on with a GPU, off on CPU unless given",
        )
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--sustained_seconds",
        type=float,
        default=10.0,
        help="how long to run matmuls back to back for the sustained rate",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    from benchmarks.flops import cyclegan_step_flops
    from config import TrainConfig
    from training import use_mixed_precision, use_xla

    config = TrainConfig(
        img_height=args.size,
        img_width=args.size,
        batch_size=args.batch,
        generator=args.generator,
        upsample=args.upsample,
        pool_size=args.pool_size,
        mixed_precision=args.mixed_precision,
        xla=args.xla,
    )
    (seconds, model), matmul = best_matmul_around(
        lambda: time_train_step(config, args.steps, args.warmup)
    )
    sustained = sustained_matmul_gflops(args.sustained_seconds)
    median = statistics.median(seconds)
    gflop = cyclegan_step_flops(model.t1_to_t2, model.t1_critic, args.batch) / 1e9
    result = {
        "generator": args.generator,
        "upsample": args.upsample,
        "pool_size": args.pool_size,
        "mixed_precision": use_mixed_precision(config),
        "xla": use_xla(config),
        "size": args.size,
        "batch": args.batch,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "steps": args.steps,
        "median_s_per_step": round(median, 4),
        "min_s_per_step": round(min(seconds), 4),
        "max_s_per_step": round(max(seconds), 4),
        "images_per_s": round(args.batch / median, 3),
        "gflop_per_step": round(gflop, 1),
        "gflop_per_s": round(gflop / median, 1),
        "matmul_gflop_per_s": round(matmul, 1),
        "fraction_of_matmul": round(gflop / median / matmul, 3),
        "sustained_matmul_gflop_per_s": round(sustained, 1),
        "fraction_of_sustained_matmul": round(gflop / median / sustained, 3),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    return report(
        f"train_step {args.generator} {args.size}x{args.size} batch {args.batch} "
        f"on {result['device']}: {median:.3f} s/step (min {min(seconds):.3f}, "
        f"max {max(seconds):.3f}), {result['images_per_s']} images/s, "
        f"{result['gflop_per_step']} GFLOP/step, {result['gflop_per_s']} GFLOP/s = "
        f"{100 * result['fraction_of_matmul']:.0f} % of matmul "
        f"({result['matmul_gflop_per_s']} GFLOP/s; "
        f"{100 * result['fraction_of_sustained_matmul']:.0f} % of its sustained "
        f"{result['sustained_matmul_gflop_per_s']}), peak RSS {result['peak_rss_mb']} MB",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
