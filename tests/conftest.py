"""Shared fixtures: tiny synthetic T1/T2 image folders made by the tests themselves."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread per TensorFlow process, the test workers' and the main.py runs they start
# alike: two workers on two cores then share them without oversubscribing, where
# TensorFlow's thread pools would spin for work. Tiny images lose nothing by it.
THREAD_LIMITS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
for _name, _value in THREAD_LIMITS.items():
    os.environ.setdefault(_name, _value)


import tensorflow as tf  # noqa: E402

# Grappler's graph rewrites make the tiny test models' steps no faster but cost seconds
# at every trace: off in the test processes (main.py runs in subprocesses keep them).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def default_threads_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the thread limits above, plus `extra`: for
    runs whose workers or replicas wait on each other, which keep TensorFlow's threads."""
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_LIMITS}
    return {**environment, **extra}


REPO = Path(__file__).resolve().parents[1]
# Narrow networks (the reference's ngf = ndf = 8 instead of 64) for fast tests of
# behaviour that does not depend on width: 64x fewer parameters, same architecture.
SMALL_NETWORKS = {"generator_filters": 8, "critic_filters": 8}
SMALL_NETWORK_FLAGS = ["--generator_filters", "8", "--critic_filters", "8"]


def tiny_run_args(t1: Path, t2: Path, output: Path, n4: bool = False) -> list[str]:
    """main.py flags for a fast run on the tiny dataset: 32 px, batch 2, small networks,
    and no N4 unless `n4` (the N4 of ANTsPy takes about 0.5 s a tiny image; its own tests
    and the train-then-resume run keep it)."""
    return [
        *("--data_dir_t1", str(t1), "--data_dir_t2", str(t2), "--output_dir", str(output)),
        *("--img_height", "32", "--img_width", "32", "--batch_size", "2", "--quiet"),
        *SMALL_NETWORK_FLAGS,
        *([] if n4 else ["--no_n4"]),
    ]


def run_in_process(
    entry: Callable[[list[str]], None], *args: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command line's `main(argv)` (main.py's, evaluate.py's, a benchmark's) in
    this process, as its command would run: its exit code, and what it printed and
    logged. `env` adds environment variables for the run (the test hooks of `files`,
    counted afresh as in a new process). For behaviour that needs no process of its own:
    it saves starting Python and TensorFlow again; signals, kills and resource limits
    still get real processes. What a run changes for the whole process (signal handlers,
    logger levels, the random generators' state) is put back afterwards."""
    import files

    stdout, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(name) for name in ("", "tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    random_state, numpy_state = random.getstate(), np.random.get_state()
    saved = {name: os.environ.get(name) for name in env or {}}
    code = 0
    loggers[0].addHandler(handler)
    loggers[0].setLevel(logging.INFO)
    os.environ.update(env or {})
    files.reset_test_hooks()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                entry(list(args))
            except SystemExit as stop:
                # sys.exit(None) is success; sys.exit("text") prints it and fails.
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for sig, previous in signals.items():
            signal.signal(sig, previous)
        random.setstate(random_state)
        np.random.set_state(numpy_state)
        files.reset_test_hooks()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return subprocess.CompletedProcess(
        [entry.__module__, *args], code, stdout.getvalue(), stderr.getvalue()
    )


def train_in_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python main.py *args`, run in this process (see `run_in_process`)."""
    import main

    return run_in_process(main.main, *args, env=env)


class BackgroundMain:
    """main.py started in the background, its output going to files in `log_dir`, not
    to pipes: a child blocked writing to a full pipe the test is not reading yet would
    hang the test (and, with two workers, its partner too). As a context manager, the
    run is killed on leaving if it is still going."""

    def __init__(self, args: list[str], log_dir: Path, env: dict | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
        # Unbuffered, so that what the run printed is in the files even if it is killed.
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "main.py"), *args],
                cwd=REPO,
                stdout=stdout,
                stderr=stderr,
                env=env,
            )

    def __enter__(self) -> BackgroundMain:
        return self

    def __exit__(self, *exception) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill the run if it is still going, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> tuple[str, str]:
        """What the run has written so far to stdout and stderr."""
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def tail(self) -> str:
        """For a failure message: the exit code, the end of stderr, where the logs are."""
        return (
            f"main.py exit code {self.process.returncode}, logs in {self.stderr_path.parent}; "
            f"stderr ends:\n{self.output()[1][-3000:]}"
        )

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for the run to end (killing it after `timeout` s, then failing); its
        stdout and stderr."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout} s; {self.tail()}") from None
        return self.output()


def save_as_trained(model, config, epoch: int) -> None:
    """`model` saved as training saves a run: its checkpoint at `epoch` in
    `config.checkpoint_dir`, and config.json beside that folder."""
    import tensorflow as tf

    from checkpoints import make_checkpoint
    from config import CONFIG_FILE_NAME, save_config

    epoch_variable = tf.Variable(epoch, dtype=tf.int64, trainable=False)
    manager = tf.train.CheckpointManager(
        make_checkpoint(model, epoch_variable), str(config.checkpoint_dir), max_to_keep=1
    )
    manager.save(checkpoint_number=epoch)
    save_config(config, config.output_dir / CONFIG_FILE_NAME)


def head_slice(size: int, radius: float, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """A bright disk ('head') with a darker core and noise, in [0, 255]: a toy MRI slice."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    distance = np.hypot(yy, xx)
    image = np.where(distance < radius, brightness, 0.0)
    image = np.where(distance < radius / 2, brightness * 0.5, image)
    image += rng.normal(0, 4, (size, size)) * (distance < radius)
    return np.clip(image, 0, 255)


def write_png_folder(
    folder: Path, count: int, size: int, brightness: float, seed: int
) -> list[Path]:
    """`count` 8-bit grayscale PNG slices of `size` px under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        image = head_slice(size, size * (0.3 + 0.02 * index), brightness, rng)
        path = folder / f"slice_{index:02d}.png"
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders, T1 (nested layout) and T2 (flat layout), of 4 PNGs of 40 px each."""
    t1 = tmp_path / "Tr1"
    t2 = tmp_path / "Tr2"
    write_png_folder(t1 / "TrainT1", 4, 40, 200, seed=1)
    write_png_folder(t2, 4, 40, 120, seed=2)
    return t1, t2


# The files that take longest, longest first (by `--durations=0`). The suite runs in two
# workers, a file at a time each, in this order (pyproject.toml): longest first keeps one
# worker from being left to run a long file alone at the end.
LONGEST_FIRST = (
    "test_benchmarks.py",
    "test_paper_options.py",
    "test_distribute.py",
    "test_disk_full.py",
    "test_kill.py",
    "test_interrupt.py",
    "test_main.py",
    "test_translate.py",
    "test_nifti_input.py",
    "test_context_slices.py",
    "test_mri_gan.py",
    "test_evaluate.py",
    "test_uncertainty.py",
    "test_volume_evaluation.py",
    "test_make_demo.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
