"""How every benchmark ends: its summary line, then (with --json) one JSON object."""

from __future__ import annotations

import json


def report(line: str, result: dict, as_json: bool) -> dict:
    """Print the summary `line` and, if `as_json`, `result` as the last line; return it."""
    print(line)
    if as_json:
        print(json.dumps(result))
    return result
