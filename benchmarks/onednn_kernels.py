"""How fast TensorFlow's oneDNN kernels run in the train step, by kind and direction.

    python -m benchmarks.onednn_kernels --generator resnet --size 256 --batch 1 [--json]

Builds and warms up the step as `benchmarks.train_step` does, then runs `--steps` steps
with oneDNN's verbose mode on, which logs every kernel call and its wall time, and
captures only those steps' lines, each step's apart ("calls_per_step" in the JSON). It
sums them by primitive and direction (a
convolution's forward pass; its input gradient, "backward_data"; its weight gradient,
"backward_weights"; reorders, batch norm, the matmuls), and gives each convolution
direction's GFLOP/s from the problem sizes in the lines (2 x batch x c_in / groups x
c_out x output pixels x kernel taps). Ops run one at a time here (one inter-op thread),
so a kernel's time is its own, not shared with a kernel running beside it; the step is
a little slower for it.

It also divides the step's counted FLOPs (`benchmarks.flops`, as `train_step` counts
them) by the time in oneDNN kernels alone and compares that rate with a 2048x2048
matmul measured in the same process (best of 10, before and after the logged steps):
the fraction of the matmul the step would reach, with its ops run one at a time as
here, if nothing but these kernels ran: no Adam update, pads, slices or activations
(oneDNN's own reorders are kernels and count). The last line printed is the summary
(one JSON object with --json).

TensorFlow runs oneDNN kernels by default only on CPUs with AVX-512 (or where
TF_ENABLE_ONEDNN_OPTS=1 turns them on). Where they are off there is nothing to measure:
the benchmark says so in its one summary line (`"onednn": false` in the JSON) and exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import os
import re
import sys
import tempfile

from benchmarks.summary import report, step_parser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A convolution's problem: "g2mb3_ic256oc256_ih66oh64kh3sh1dh0ph0_iw66ow64kw3sw1dw0pw0";
# 3-D ones add "id..od..kd..", 1-D ones have no "h" part.
SIZE = re.compile(r"(g|mb|ic|oc|od|oh|ow|kd|kh|kw)(\d+)")


def convolution_flops(problem: str) -> int:
    """FLOPs of one oneDNN convolution call from its problem description."""
    sizes = {name: int(value) for name, value in SIZE.findall(problem)}
    groups = sizes.get("g", 1)
    per_output = 2 * (sizes["ic"] // groups) * sizes["oc"]
    for side in "dhw":
        per_output *= sizes.get(f"o{side}", 1) * sizes.get(f"k{side}", 1)
    return sizes.get("mb", 1) * per_output


def summarize(lines) -> dict:
    """Calls, milliseconds and (for convolutions) GFLOP and GFLOP/s of every (primitive,
    direction) among oneDNN's verbose `primitive,exec` lines; other lines are skipped."""
    kinds = collections.defaultdict(lambda: {"calls": 0, "ms": 0.0, "gflop": 0.0})
    for line in lines:
        fields = line.strip().split(",")
        # onednn_verbose,[timestamp,]v1,primitive,exec,cpu,<primitive>,<implementation>,
        # <direction>,<memory>,<attributes>,<algorithm>,<problem>,<ms>
        if fields[0] != "onednn_verbose" or "exec" not in fields:
            continue
        at = fields.index("exec")
        if fields[at - 1] != "primitive" or len(fields) < at + 6:
            continue
        primitive, direction = fields[at + 2], fields[at + 4]
        kind = kinds[f"{primitive} {direction}"]
        kind["calls"] += 1
        kind["ms"] += float(fields[-1])
        if primitive == "convolution":
            kind["gflop"] += convolution_flops(fields[-2]) / 1e9
    for kind in kinds.values():
        if kind["gflop"] and kind["ms"] > 0:
            kind["gflop_per_s"] = round(kind["gflop"] / (kind["ms"] / 1e3), 1)
        kind["ms"], kind["gflop"] = round(kind["ms"], 3), round(kind["gflop"], 3)
    return dict(sorted(kinds.items(), key=lambda item: -item[1]["ms"]))


@contextlib.contextmanager
def captured_stdout(path: str):
    """Send this process's standard output, C libraries' included, to `path`."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with open(path, "w") as target:
        os.dup2(target.fileno(), 1)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)


def onednn_in_use() -> bool | None:
    """Whether this TensorFlow runs oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, or TensorFlow's
    own choice by CPU); None if TensorFlow does not say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def report_onednn_off(args, why: str) -> dict:
    """The summary of a machine where oneDNN runs no convolution of the step."""
    switch = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    return report(
        f"onednn_kernels {args.generator} {args.size}x{args.size} batch {args.batch}: "
        f"not measured: {why} (TF_ENABLE_ONEDNN_OPTS={switch}; TensorFlow turns oneDNN on "
        "by default only on CPUs with AVX-512; TF_ENABLE_ONEDNN_OPTS=1 turns it on)",
        {"generator": args.generator, "size": args.size, "batch": args.batch, "onednn": False},
        args.json,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = step_parser(__doc__)
    parser.add_argument("--steps", type=int, default=1, help="logged steps")
    parser.add_argument("--warmup", type=int, default=2, help="unlogged steps first")
    args = parser.parse_args(argv)

    # Read by oneDNN when it first runs a kernel: every call is logged from then on, and
    # only the lines written while `captured_stdout` holds the output are kept. Set here,
    # not on import: importing this module must not make other programs log (a child
    # process inherits the variable and floods its output with kernel lines).
    os.environ["ONEDNN_VERBOSE"] = "1"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.flops import cyclegan_step_flops
    from benchmarks.train_step import best_matmul_around, serial_train_step

    if onednn_in_use() is False:
        return report_onednn_off(args, "TensorFlow's oneDNN kernels are off on this machine")

    with tempfile.TemporaryDirectory() as scratch:
        logs = [os.path.join(scratch, f"onednn_{step}.log") for step in range(args.steps)]

        def logged_steps() -> None:
            for log in logs:  # a log per step: each step's calls can be counted
                with captured_stdout(log):
                    run_step()

        # Building, warm-up and the matmuls log too: their lines go nowhere.
        with captured_stdout(os.devnull):
            model, run_step = serial_train_step(args.generator, args.size, args.batch, args.warmup)
            _, matmul = best_matmul_around(logged_steps)
        per_step = []
        for log in logs:
            with open(log, encoding="utf-8", errors="replace") as lines:
                per_step.append(summarize(lines))
        with contextlib.ExitStack() as stack:
            opened = [stack.enter_context(open(log, errors="replace")) for log in logs]
            kinds = summarize(itertools.chain(*opened))
    if not any(name.startswith("convolution ") for name in kinds):
        return report_onednn_off(args, "oneDNN ran none of the step's convolutions")
    for name, kind in kinds.items():
        rate = f"  {kind['gflop_per_s']:6.1f} GFLOP/s" if "gflop_per_s" in kind else ""
        print(f"{name:40} {kind['calls']:6d} calls {kind['ms']:10.1f} ms{rate}")
    seconds = sum(kind["ms"] for kind in kinds.values()) / 1e3 / args.steps
    gflop = cyclegan_step_flops(model.t1_to_t2, model.t1_critic, args.batch) / 1e9
    rates = ", ".join(
        f"{name.removeprefix('convolution ')} {kind['gflop_per_s']:.0f}"
        for name, kind in kinds.items()
        if "gflop_per_s" in kind
    )
    return report(
        f"onednn_kernels {args.generator} {args.size}x{args.size} batch {args.batch}: "
        f"{seconds:.3f} s a step in oneDNN kernels; the step's {gflop:.1f} GFLOP in that "
        f"time alone: {gflop / seconds:.1f} GFLOP/s = {100 * gflop / seconds / matmul:.0f} % "
        f"of matmul ({matmul:.1f} GFLOP/s); convolutions in GFLOP/s: {rates or 'none'}",
        {
            "generator": args.generator,
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "onednn": True,
            "onednn_s_per_step": round(seconds, 4),
            "gflop_per_step": round(gflop, 1),
            "matmul_gflop_per_s": round(matmul, 1),
            "kernels_only_gflop_per_s": round(gflop / seconds, 1),
            "kernels_only_fraction_of_matmul": round(gflop / seconds / matmul, 3),
            "kinds": kinds,
            "calls_per_step": [
                {name: kind["calls"] for name, kind in step.items()} for step in per_step
            ],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
