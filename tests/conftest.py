"""Shared fixtures: tiny synthetic T1/T2 image folders made by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# Narrow networks (the reference's ngf = ndf = 8 instead of 64) for fast tests of
# behaviour that does not depend on width: 64x fewer parameters, same architecture.
SMALL_NETWORKS = {"generator_filters": 8, "critic_filters": 8}
SMALL_NETWORK_FLAGS = ["--generator_filters", "8", "--critic_filters", "8"]


def tiny_run_args(t1: Path, t2: Path, output: Path) -> list[str]:
    """main.py flags for a fast run on the tiny dataset: 32 px, batch 2, small networks."""
    return [
        *("--data_dir_t1", str(t1), "--data_dir_t2", str(t2), "--output_dir", str(output)),
        *("--img_height", "32", "--img_width", "32", "--batch_size", "2", "--quiet"),
        *SMALL_NETWORK_FLAGS,
    ]


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
