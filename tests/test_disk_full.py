"""A write that fails (a full disk) ends the run with one line; the last checkpoint stays."""

from __future__ import annotations

import resource
import signal

import pytest
import tensorflow as tf

from tests.conftest import tiny_run_args, train_in_process
from tests.test_main import history_rows, run_main


def limit_file_size() -> None:
    """In the child: files may not grow past 1 MB, and such a write fails with EFBIG
    (SIGXFSZ ignored) as a write to a full disk fails with ENOSPC."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, tiny_dataset):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    common = tiny_run_args(t1, t2, output)
    assert train_in_process(*common, "--epochs", "1").returncode == 0

    # A process of its own: the file-size limit must not reach this one.
    full = run_main(*common, "--epochs", "2", preexec_fn=limit_file_size)

    assert full.returncode == 1, full.stderr
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: could not write checkpoint {output / 'checkpoints'}")
    assert "File too large" in last_line and "ckpt-1) is intact" in last_line
    assert "Traceback" not in full.stderr
    assert not list((output / "checkpoints").glob("ckpt-2*"))
    # The rerun resumes from ckpt-1, as after a kill while checkpoint 2 was written
    # (tests/test_kill.py).
    assert tf.train.latest_checkpoint(str(output / "checkpoints")).endswith("ckpt-1")


@pytest.mark.parametrize(
    "point, written",
    [
        # Epoch 2's row; the epoch figure is written the same way (files.atomic_path).
        ("rename:history.csv@2", "history.csv"),
        ("rename:*.npy@3", "cache/"),  # the third preprocessed image
    ],
    ids=["history", "cache"],
)
def test_a_full_disk_while_writing_history_or_cache_is_one_line(
    tmp_path, tiny_dataset, point, written
):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    common = tiny_run_args(t1, t2, output)

    full = train_in_process(*common, "--epochs", "2", env={"MRI_GAN_TEST_DISK_FULL": point})

    assert full.returncode == 1, full.stderr
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: No space left on device: ")
    assert str(output / written).rstrip("/") in last_line
    assert "Traceback" not in full.stderr
    assert not list(output.rglob(".*.tmp*"))  # the failed write left no temporary file
    if point != "rename:*.npy@3":
        # Epoch 2 failed before its checkpoint: epoch 1's is the newest, and intact.
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(output / "checkpoints")))
        assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 1

    if point == "rename:history.csv@2":
        # The rerun completes. After a failed cache write it starts from the state a
        # kill in preprocessing leaves, which tests/test_kill.py resumes from.
        resumed = train_in_process(*common, "--epochs", "2")

        assert resumed.returncode == 0, resumed.stderr
        assert [row["epoch"] for row in history_rows(output)] == ["1", "2"]
