"""Ctrl-C and SIGTERM during training: a checkpoint is saved and the next run resumes."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import BackgroundMain, tiny_run_args, train_in_process
from tests.test_main import history_rows


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, tiny_dataset, sig, code):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    # With --checkpoint_every 1000 the only checkpoint is the one the signal makes.
    common = [*tiny_run_args(t1, t2, output), "--checkpoint_every", "1000"]
    with BackgroundMain([*common, "--epochs", "500"], tmp_path / "logs") as run:
        deadline = time.monotonic() + 300
        while not ((output / "history.csv").is_file() and history_rows(output)):
            finished = run.process.poll() is not None
            assert not finished and time.monotonic() < deadline, f"no epoch: {run.tail()}"
            time.sleep(0.2)
        run.process.send_signal(sig)
        stdout, stderr = run.finish(timeout=300)

    assert run.process.returncode == code, stderr
    assert f"{sig.name} received" in stderr and "Traceback" not in stderr
    done = len(history_rows(output))
    assert f"Stopped by {sig.name} in epoch {done + 1}" in stdout + stderr
    assert list((output / "checkpoints").glob("ckpt-*.index"))

    if sig != signal.SIGTERM:
        return  # the rerun after either signal is the same; it is checked once
    resumed = train_in_process(*common, "--epochs", str(done + 1))

    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} of {done + 1} epochs done, continuing at epoch {done + 1}" in (
        resumed.stdout + resumed.stderr
    )
    assert [row["epoch"] for row in history_rows(output)] == [str(e) for e in range(1, done + 2)]
