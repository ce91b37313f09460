"""What the benchmarks share: the train-step benchmarks' common flags, and how every
benchmark ends (its summary line, then with --json one JSON object)."""

from __future__ import annotations

import argparse
import json


def step_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by `doc`'s first paragraph, with the flags every benchmark of
    the train step takes: --generator, --size, --batch and --json."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--generator", choices=("unet", "resnet"), default="unet")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    return parser


def report(line: str, result: dict, as_json: bool) -> dict:
    """Print the summary `line` and, if `as_json`, `result` as the last line; return it."""
    print(line)
    if as_json:
        print(json.dumps(result))
    return result


def machine_description() -> str:
    """The machine a benchmark ran on, in a phrase: CPU model, cores, memory, GPUs."""
    import os
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else "unknown CPU"
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB"
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    return f"{len(os.sched_getaffinity(0))} cores of {cpu}{memory}, " + (
        f"{gpus} GPU{'s' * (gpus > 1)}" if gpus else "no GPU"
    )
