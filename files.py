"""Writing files so that a crash, a full disk or a kill never leaves one half-written."""

from __future__ import annotations

import contextlib
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
        pause_point(f"rename:{path.name}")
        os.replace(temporary, path)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


_pause_matches = itertools.count(1)  # next() is atomic: tf.data threads reach points too


def pause_point(point: str) -> None:
    """Tests only: stop here forever if MRI_GAN_TEST_PAUSE names `point`; else do nothing.

    MRI_GAN_TEST_PAUSE=<glob>[@<n>] matches point names such as `checkpoint`, `step` or
    `rename:history.csv`; at the n-th match (default the first) a marker line goes to
    stderr, so that a test can SIGKILL the process at exactly this moment.
    """
    wanted = os.environ.get("MRI_GAN_TEST_PAUSE")
    if not wanted:
        return
    pattern, _, nth = wanted.partition("@")
    if fnmatch.fnmatchcase(point, pattern):
        if next(_pause_matches) == int(nth or 1):
            print(f"MRI_GAN_TEST_PAUSE at {point}", file=sys.stderr, flush=True)
            threading.Event().wait()
