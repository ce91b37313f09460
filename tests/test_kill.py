"""SIGKILL at chosen moments: the next run resumes from the last complete checkpoint.

Real runs of main.py in a subprocess, stopped where MRI_GAN_TEST_PAUSE (files.pause_point)
makes them wait, and killed there with SIGKILL, so that no handler or clean-up code runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from checkpoints import RunCheckpoints
from tests.conftest import REPO, tiny_run_args, train_in_process
from tests.test_checkpoints import small_model

EPOCHS = 3
STEPS_PER_EPOCH = 2  # 4 images per contrast in batches of 2
MARKER = "MRI_GAN_TEST_PAUSE at "


def kill_at(point: str, args: list[str]) -> str:
    """Run main.py until it pauses at `point`, SIGKILL it there; its stderr up to then."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *args],
        cwd=REPO,
        env={**os.environ, "MRI_GAN_TEST_PAUSE": point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(300, process.kill)  # a run that never pauses fails, not hangs
    watchdog.start()
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if line.startswith(MARKER):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        process.wait()
        process.stderr.close()
    stderr = "".join(lines)
    assert lines and lines[-1].startswith(MARKER), f"never paused at {point}:\n{stderr}"
    assert process.returncode == -signal.SIGKILL
    return stderr


def newest_checkpoint(checkpoint_dir: Path):
    """The path of the checkpoint the manager's index names newest, and a reader of it."""
    path = tf.train.latest_checkpoint(str(checkpoint_dir))
    assert path is not None
    return path, tf.train.load_checkpoint(path)


def epochs_and_steps(reader) -> tuple[int, int]:
    """A checkpoint's epoch counter and its two optimizers' step count (one if they agree)."""
    steps = {
        int(reader.get_tensor(f"{group}_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
        for group in ("generators", "critics")
    }
    assert len(steps) == 1, f"the optimizers disagree: {steps}"
    return int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")), steps.pop()


def history(output: Path) -> list[dict[str, str]]:
    with open(output / "history.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def cache_entries(output: Path) -> list[Path]:
    """The cache's entries: its files named `<key>.npy`, not the hidden temporaries."""
    return [path for path in (output / "cache").glob("*.npy") if not path.name.startswith(".")]


def resumed_from(stderr: str, checkpoint: Path, epochs_done: int) -> bool:
    return f"Resuming from {checkpoint}: {epochs_done} of {EPOCHS} epochs done" in stderr


def test_sigkill_at_four_points_then_the_run_completes_consistently(tmp_path, tiny_dataset):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    checkpoints = output / "checkpoints"
    args = [*tiny_run_args(t1, t2, output), "--epochs", str(EPOCHS)]

    # 1. Preprocessing: the third cache entry is written but not yet renamed.
    kill_at("rename:*.npy@3", args)
    assert len(cache_entries(output)) == 2 and list((output / "cache").glob(".*.tmp.npy"))

    # 2. The checkpoint of epoch 2: its files written, the manager's index not yet updated.
    kill_at("checkpoint@2", args)
    assert (checkpoints / "ckpt-2.index").is_file()
    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "ckpt-1")
    assert [row["epoch"] for row in history(output)] == ["1", "2"]

    # 3. Mid-epoch: after the first step of epoch 3 (epoch 2 redone, checkpointed as
    # ckpt-3). The history's own half-written file is test_disk_full's.
    stderr = kill_at(f"step@{STEPS_PER_EPOCH + 1}", args)
    assert resumed_from(stderr, checkpoints / "ckpt-1", 1), stderr
    path, reader = newest_checkpoint(checkpoints)
    assert path == str(checkpoints / "ckpt-3") and epochs_and_steps(reader) == (2, 4)

    # 4. Training done and checkpointed; the export is half done.
    stderr = kill_at("rename:t2_to_t1.keras", args)
    assert resumed_from(stderr, checkpoints / "ckpt-3", 2), stderr
    assert (output / "export" / "t1_to_t2.keras").is_file()
    assert not (output / "export" / "model.json").exists()

    final = train_in_process(*args)

    assert final.returncode == 0, final.stderr
    assert "Training already finished: 3 of 3 epochs done" in final.stderr
    path, reader = newest_checkpoint(checkpoints)
    # The optimizers' step counters match the steps of the complete epochs: none lost to
    # a kill, none counted twice by a redone epoch.
    assert epochs_and_steps(reader) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.isfinite(reader.get_tensor(name)).all(), name

    rows = history(output)
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(1, EPOCHS + 1)]
    for row in rows:
        assert None not in row and None not in row.values(), row
        assert all(math.isfinite(float(value)) for value in row.values()), row

    entries = cache_entries(output)
    assert len(entries) == 8  # 4 images of each contrast
    for entry in entries:
        array = np.load(entry, allow_pickle=False)
        assert array.shape == (32, 32) and array.dtype == np.float32, entry

    export = output / "export"
    assert json.loads((export / "model.json").read_text())["epoch"] == EPOCHS
    assert (export / "t1_to_t2.keras").is_file() and (export / "t2_to_t1.keras").is_file()


# Killed from within while TensorFlow writes checkpoint 2: no Python runs inside that
# write, so a thread watches for TensorFlow's temporary folder and kills the process.
KILLED_WHILE_WRITING = """
import os, signal, sys, threading
from pathlib import Path
from config import TrainConfig
from checkpoints import RunCheckpoints
from training import build_model

directory = Path(sys.argv[1])
config = TrainConfig(img_height=32, img_width=32, generator_filters=8, critic_filters=8)
checkpoints = RunCheckpoints(build_model(config), directory, keep=3)
checkpoints.save(1)

def kill_once_writing():
    while not (directory / "ckpt-2_temp").exists():
        pass
    os.kill(os.getpid(), signal.SIGKILL)

threading.Thread(target=kill_once_writing, daemon=True).start()
checkpoints.save(2)
"""


def test_a_checkpoint_killed_while_written_is_skipped_and_its_files_cleaned(tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "ckpt-2_temp").is_dir() and not (tmp_path / "ckpt-2.index").exists()

    checkpoints = RunCheckpoints(small_model(), tmp_path, keep=3)

    assert checkpoints.restore() == (1, str(tmp_path / "ckpt-1"))
    assert checkpoints.save(2) == str(tmp_path / "ckpt-2")
    assert not list(tmp_path.glob("ckpt-*_temp*"))
    assert checkpoints.restore() == (2, str(tmp_path / "ckpt-2"))
