"""The error type for input a run cannot use, and how errors are shown in one line.

Kept free of heavy imports so that command-line front ends can report errors before
TensorFlow loads.
"""

from __future__ import annotations


class DataError(Exception):
    """Input that a run cannot use at all (data, checkpoint, model); the message names it."""


class RunFailed(Exception):
    """A training run cannot go on (a checkpoint could not be written, losses diverged);
    the message says why and what was kept."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
