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
