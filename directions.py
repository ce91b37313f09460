"""The two translation directions, defined once: each direction's name, its input and
target contrast, and the contrasts' full names."""

from __future__ import annotations

# direction -> (input contrast, target contrast); also the generators' names.
DIRECTIONS: dict[str, tuple[str, str]] = {"t1_to_t2": ("t1", "t2"), "t2_to_t1": ("t2", "t1")}
CONTRAST_NAMES = {"t1": "T1-weighted", "t2": "T2-weighted"}


def contrast_names(direction: str) -> tuple[str, str]:
    """("T1-weighted", "T2-weighted") for "t1_to_t2": the input's and the output's names."""
    source, target = DIRECTIONS[direction]
    return CONTRAST_NAMES[source], CONTRAST_NAMES[target]


def reverse_of(direction: str) -> str:
    """The direction that translates back: "t2_to_t1" for "t1_to_t2"."""
    source, target = DIRECTIONS[direction]
    return next(name for name, pair in DIRECTIONS.items() if pair == (target, source))
