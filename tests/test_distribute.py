"""tf.distribute on CPU: MirroredStrategy over two logical CPUs, and two workers of
MultiWorkerMirroredStrategy on loopback ports, as GPUs and machines would run them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, BackgroundMain, default_threads_environment, tiny_run_args


def test_mirrored_over_two_devices_gives_the_single_device_losses_and_weights():
    """Also runs the mixed-precision loss scaling across the two replicas."""
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "distributed_step.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    single, mirrored = result["single"], result["mirrored"]

    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["iterations"] == single["iterations"] == {"generators": 2, "critics": 2}
    for name, value in single["losses"].items():
        assert mirrored["losses"][name] == pytest.approx(value, rel=1e-4), name
    assert mirrored["kernels"] == pytest.approx(single["kernels"], rel=1e-4)
    # Mixed precision over the replicas: float16 overflow lowers every loss scale alike
    # (2^15 halved once per skipped step), updates only what all replicas agree on.
    mixed = result["mixed"]
    overflows = 2 - mixed["iterations"]["generators"]
    assert mixed["iterations"]["critics"] == mixed["iterations"]["generators"]
    assert mixed["loss_scales"] == [2.0**15 / 2**overflows] * 2
    assert mixed["finite"] and all(np.isfinite(v) for v in mixed["losses"].values())


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_train_together_and_only_the_chief_writes(tiny_dataset, tmp_path):
    t1, t2 = tiny_dataset
    output = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    runs = []
    try:
        for index in range(2):
            config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            runs.append(
                BackgroundMain(
                    [
                        *tiny_run_args(t1, t2, output),
                        *("--strategy", "multiworker", "--epochs", "1", "--eval_every", "0"),
                    ],
                    tmp_path / f"worker{index}",
                    env=default_threads_environment(TF_CONFIG=json.dumps(config)),
                )
            )
        # Both watched at once: a worker that fails leaves its partner waiting, and the
        # failure message should show both.
        deadline = time.monotonic() + 600
        while any(run.process.poll() is None for run in runs):
            assert time.monotonic() < deadline, "\n".join(run.tail() for run in runs)
            time.sleep(0.5)
    finally:
        for run in runs:
            run.stop()
    outputs = [run.output() for run in runs]

    for run in runs:
        assert run.process.returncode == 0, run.tail()
    assert "over 2 replicas" in outputs[0][1]
    assert (output / "checkpoints" / "checkpoint").is_file()
    assert (output / "export" / "t1_to_t2.keras").is_file()
    rows = (output / "history.csv").read_text().splitlines()
    assert len(rows) == 2  # header and epoch 1, written once, by the chief
    assert not (output / "workers").exists()  # the worker's scratch dir is gone


@pytest.mark.parametrize(
    "tf_config, reason",
    [
        ('{"cluster": ', "Expecting value"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "3"),
    ],
)
def test_a_bad_tf_config_is_one_line_naming_it(tmp_path, tf_config, reason):
    done = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--strategy", "multiworker"],
        env={**os.environ, "TF_CONFIG": tf_config},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TF_CONFIG cannot set up the workers") and reason in last
    assert "Traceback" not in done.stderr
