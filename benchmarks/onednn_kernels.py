"""How fast TensorFlow's oneDNN kernels ran, by kind, from a oneDNN verbose log.

    TF_NUM_INTEROP_THREADS=1 ONEDNN_VERBOSE=1 python -m benchmarks.train_step \\
        --generator resnet --steps 2 --warmup 2 > verbose.log
    python -m benchmarks.onednn_kernels verbose.log [--json]

oneDNN prints one line per kernel call with its wall time when `ONEDNN_VERBOSE=1`. This
sums them by primitive and direction (a convolution's forward pass, its input gradient
"backward_data", its weight gradient "backward_weights"; reorders, batch norm, the
matmuls) and gives each convolution kind's GFLOP/s from the problem sizes in the line
(2 x batch x c_in x c_out x output pixels x kernel taps, over groups). One inter-op
thread makes the kernels run one at a time, so their times are their own, not shared
with a kernel running beside them. Lines without a time (kernel creation, info) are
skipped. The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

from benchmarks.summary import report

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
    """Calls, milliseconds and (for convolutions) GFLOP of every (primitive, direction)."""
    kinds = collections.defaultdict(lambda: {"calls": 0, "ms": 0.0, "gflop": 0.0})
    for line in lines:
        fields = line.strip().split(",")
        # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<impl>,<direction>,...,<problem>,<ms>
        if len(fields) < 9 or fields[0] != "onednn_verbose" or "exec" not in fields[2:4]:
            continue
        at = fields.index("exec")
        primitive, direction = fields[at + 2], fields[at + 4]
        kind = kinds[f"{primitive} {direction}"]
        kind["calls"] += 1
        kind["ms"] += float(fields[-1])
        if primitive == "convolution":
            kind["gflop"] += convolution_flops(fields[-2]) / 1e9
    for kind in kinds.values():
        kind["ms"] = round(kind["ms"], 3)
        if kind["gflop"]:
            kind["gflop_per_s"] = round(kind["gflop"] / (kind["ms"] / 1e3), 1)
        kind["gflop"] = round(kind["gflop"], 3)
    return dict(sorted(kinds.items(), key=lambda item: -item[1]["ms"]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a log written with ONEDNN_VERBOSE=1 (- for stdin)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    if args.log == "-":
        kinds = summarize(sys.stdin)
    else:
        try:
            with open(args.log, encoding="utf-8", errors="replace") as log:
                kinds = summarize(log)
        except OSError as error:
            sys.exit(f"error: cannot read the oneDNN log {args.log}: {error.strerror}")
    if not kinds:
        sys.exit(f"error: no oneDNN kernel calls in {args.log}: was ONEDNN_VERBOSE=1 set?")
    for name, kind in kinds.items():
        rate = f"  {kind['gflop_per_s']:6.1f} GFLOP/s" if "gflop_per_s" in kind else ""
        print(f"{name:40} {kind['calls']:6d} calls {kind['ms']:10.1f} ms{rate}")
    total_ms = sum(kind["ms"] for kind in kinds.values())
    rates = ", ".join(
        f"{name.removeprefix('convolution ')} {kind['gflop_per_s']:.0f}"
        for name, kind in kinds.items()
        if "gflop_per_s" in kind
    )
    return report(
        f"onednn_kernels: {total_ms / 1e3:.3f} s in oneDNN kernels; convolutions in "
        f"GFLOP/s: {rates or 'none'}",
        {"total_s": round(total_ms / 1e3, 4), "kinds": kinds},
        args.json,
    )


if __name__ == "__main__":
    main()
