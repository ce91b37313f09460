"""Writing files so that a crash, a full disk or a kill never leaves one half-written."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import itertools
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to, renamed to `path` when the block ends.

    If the block raises, the temporary file (or folder) is removed and `path` is left as
    it was. The temporary name keeps `path`'s suffix, since writers choose formats by it,
    and names the process and thread, so parallel writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    owner = f"{os.getpid()}-{threading.get_ident()}"
    temporary = path.with_name(f".{path.name}.{owner}.tmp{'' if directory else suffix}")
    if directory:
        temporary.mkdir()
    try:
        yield temporary
        disk_full_point(f"rename:{path.name}", temporary)
        pause_point(f"rename:{path.name}")
        os.replace(temporary, path)
    except BaseException as error:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(temporary)):
            # Name the file the user knows (a full disk: "history.csv"), not the hidden
            # temporary one, which is gone.
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise


HOOK_VARIABLES = ("MRI_GAN_TEST_PAUSE", "MRI_GAN_TEST_DISK_FULL")
# next() is atomic: tf.data threads reach these points too.
_matches = {variable: itertools.count(1) for variable in HOOK_VARIABLES}


def reset_test_hooks() -> None:
    """Count the test hooks' matches from 1 again, as in a new process (tests that run
    `main.main` in their own process use this before each run)."""
    for variable in HOOK_VARIABLES:
        _matches[variable] = itertools.count(1)


def _test_hook_fires(variable: str, point: str) -> bool:
    """Whether the environment variable `variable`, `<glob>[@<n>]`, names this `point`
    for the n-th time (default the first); never when it is unset."""
    wanted = os.environ.get(variable)
    if not wanted:
        return False
    pattern, _, nth = wanted.partition("@")
    return fnmatch.fnmatchcase(point, pattern) and next(_matches[variable]) == int(nth or 1)


def pause_point(point: str) -> None:
    """Tests only: stop here forever if MRI_GAN_TEST_PAUSE names `point`; else do nothing.

    MRI_GAN_TEST_PAUSE=<glob>[@<n>] matches point names such as `checkpoint`, `step` or
    `rename:history.csv`; at the n-th match (default the first) a marker line goes to
    stderr, so that a test can SIGKILL the process at exactly this moment.
    """
    if _test_hook_fires("MRI_GAN_TEST_PAUSE", point):
        print(f"MRI_GAN_TEST_PAUSE at {point}", file=sys.stderr, flush=True)
        threading.Event().wait()


def disk_full_point(point: str, path: Path) -> None:
    """Tests only: fail here as a write to a full disk fails (ENOSPC on `path`) if
    MRI_GAN_TEST_DISK_FULL names `point` (as MRI_GAN_TEST_PAUSE does); else do nothing."""
    if _test_hook_fires("MRI_GAN_TEST_DISK_FULL", point):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
