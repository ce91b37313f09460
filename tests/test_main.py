"""The command line, end to end: main.py's argument checks as real subprocess runs, and
training runs through `main.main` in this process (`tests.conftest.train_in_process`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from config import load_config
from main import parse_config
from tests.conftest import REPO, run_in_process, tiny_run_args, train_in_process, write_png_folder


def run_main(*args: str, timeout: float = 600, **how) -> subprocess.CompletedProcess:
    """Run main.py with `args` from the repo; `how` goes to subprocess.run (env, …)."""
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        **how,
    )


def test_defaults_follow_the_design():
    config = parse_config([])
    assert (config.img_height, config.img_width, config.batch_size) == (256, 256, 16)
    assert (config.buffer_size, config.epochs, config.lr) == (1000, 125, 2e-4)
    assert config.data_dir_t1 == Path("dataset/Tr1") and config.data_dir_t2 == Path("dataset/Tr2")
    assert (config.lambda_cycle, config.lambda_identity, config.gan_loss) == (10.0, 0.5, "lsgan")
    assert config.output_dir == Path("output")
    assert config.resolved_cache_dir == Path("output/cache")


def test_help_explains_every_flag():
    result = run_main("--help")
    assert result.returncode == 0
    for flag in (
        "--data_dir_t1",
        "--img_height",
        "--buffer_size",
        "--lambda_identity",
        "--gan_loss",
        "--checkpoint_every",
        "--keep_checkpoints",
        "--cache_dir",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], "must be a positive integer"),
        (["--epochs", "-3"], "must be a positive integer"),
        (["--img_height", "100"], "not a multiple of 16"),
        (["--img_width", "16"], "below the minimum of 32"),
        (["--lr", "0"], "must be a positive number"),
        (["--gan_loss", "wgan"], "invalid choice"),
        (["--max_minutes", "0"], "must be a positive number"),
        (["--steps_per_epoch", "0"], "must be a positive integer"),
    ],
)
def test_invalid_values_are_refused_before_any_work(args, message):
    result = run_main(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_data_dir_is_a_one_line_error(tmp_path):
    result = run_main(
        "--data_dir_t1", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data dir {tmp_path / 'nowhere'} does not exist"
    )
    assert "Traceback" not in result.stderr


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, tiny_dataset):
    t1, t2 = tiny_dataset
    (tmp_path / "out").write_text("a file")
    result = run_main(
        "--data_dir_t1", str(t1), "--data_dir_t2", str(t2), "--output_dir", str(tmp_path / "out")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: output dir {tmp_path / 'out'} is not a directory"


def history_rows(output: Path) -> list[dict[str, str]]:
    with open(output / "history.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_train_and_score_two_epochs_then_resume_to_three_using_the_cache(tmp_path, tiny_dataset):
    t1, t2 = tiny_dataset
    # A bad file among good ones: skipped with a warning naming it, training goes on.
    (t2 / "broken.png").write_text("not a png")
    test_t1, test_t2 = tmp_path / "Test" / "T1", tmp_path / "Test" / "T2"
    write_png_folder(test_t1, 3, 40, 200, seed=7)
    write_png_folder(test_t2, 3, 40, 120, seed=7)
    output = tmp_path / "run"
    common = [
        *tiny_run_args(t1, t2, output, n4=True),
        *("--test_dir_t1", str(test_t1), "--test_dir_t2", str(test_t2), "--eval_every", "1"),
    ]

    first = train_in_process(*common, "--epochs", "2")

    assert first.returncode == 0, first.stderr
    log = first.stdout + first.stderr
    assert f"skipped {t2 / 'broken.png'}: not an image" in log
    assert "T2: 4 images used, 1 skipped (1 not an image)" in log
    assert "14 images preprocessed" in log  # 8 training images and 3 test pairs
    assert sorted(p.name for p in (output / "epochs").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
    ]
    assert (output / "checkpoints" / "checkpoint").is_file()
    assert load_config(output / "config.json").image_shape == (32, 32)
    rows = history_rows(output)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"generator_loss", "cycle_loss", "t1_critic_loss", "seconds", "minutes"} <= set(rows[0])
    assert 0 < float(rows[0]["minutes"]) < float(rows[1]["minutes"])
    cache_files = {p: p.stat().st_mtime_ns for p in (output / "cache").glob("*.npy")}
    assert len(cache_files) == 14
    with Image.open(output / "training.gif") as gif:
        assert gif.n_frames == 2
    assert (output / "loss_curves.png").is_file()
    assert list((output / "tensorboard").rglob("events.out.tfevents.*"))

    # The test set, scored each epoch: its means in the history, the best generators kept.
    for row in rows:
        assert 0 < float(row["learning_rate"]) and -1 <= float(row["mean_ssim"]) <= 1
        assert float(row["t1_to_t2_psnr"]) > 0 and float(row["t2_to_t1_mae"]) >= 0
    best = json.loads((output / "checkpoints" / "best" / "best.json").read_text())
    # history.csv keeps 6 significant digits.
    assert best["mean_ssim"] == pytest.approx(
        max(float(row["mean_ssim"]) for row in rows), abs=1e-5
    )
    assert str(best["epoch"]) == max(rows, key=lambda row: float(row["mean_ssim"]))["epoch"]
    import evaluate

    scored = run_in_process(
        evaluate.main,
        *("--checkpoint_dir", str(output / "checkpoints" / "best")),
        *("--test_dir_t1", str(test_t1), "--test_dir_t2", str(test_t2)),
        *("--output_dir", str(tmp_path / "evaluation")),
    )
    assert scored.returncode == 0, scored.stderr
    summary = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert summary["metrics"]["t1_to_t2"]["model"]["ssim"]["mean"] == pytest.approx(
        float(best["t1_to_t2_ssim"]), abs=1e-4
    )

    second = train_in_process(*common, "--epochs", "3")

    assert second.returncode == 0, second.stderr
    log = second.stdout + second.stderr
    assert "2 of 3 epochs done, continuing at epoch 3" in log
    assert "Epoch 3/3" in log and "Epoch 1/3" not in log
    assert "0 images preprocessed" in log
    assert {p: p.stat().st_mtime_ns for p in (output / "cache").glob("*.npy")} == cache_files
    assert [row["epoch"] for row in history_rows(output)] == ["1", "2", "3"]
    assert (output / "epochs" / "epoch_003.png").is_file()
    with Image.open(output / "training.gif") as gif:
        assert gif.n_frames == 3

    third = train_in_process(*common, "--epochs", "3")

    assert third.returncode == 0, third.stderr
    assert "Training already finished: 3 of 3 epochs done" in third.stdout + third.stderr
    assert [row["epoch"] for row in history_rows(output)] == ["1", "2", "3"]
