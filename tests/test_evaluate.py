"""Evaluation: the metrics, the pairing, the baselines, and evaluate.py end to end.

The model is a 32x32 CycleGAN after one training step, saved as training saves it; the
test slices are tiny generated PNGs.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
import evaluation
import metrics
import reports
from checkpoints import restore_run
from config import CONFIG_FILE_NAME, TrainConfig, save_config
from data_processing import PreprocessCache
from directions import DIRECTIONS
from errors import DataError
from tests.conftest import REPO, SMALL_NETWORKS, run_in_process, save_as_trained, write_png_folder
from training import build_model

SIZE = 32


def random_pair(shape, seed=0, noise=0.1):
    """A target in [0, 0.8] and a noisy prediction of it in [0, 1]."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.0, 0.8, shape).astype(np.float32)
    prediction = np.clip(target + rng.normal(0.0, noise, shape), 0.0, 1.0).astype(np.float32)
    return prediction, target


# ------------------------------------------------------------------------- metrics


def test_identical_images_score_perfectly_and_psnr_is_capped():
    image, _ = random_pair((40, 40))
    mask = np.zeros((40, 40), bool)
    mask[8:30, 5:25] = True
    assert float(metrics.ssim(image, image)) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics.mae(image, image)) == 0.0
    assert float(metrics.psnr(image, image)) == metrics.MAX_PSNR_DB == 100.0
    assert float(metrics.ssim(image, image, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics.mae(image, image, mask)) == 0.0
    assert float(metrics.psnr(image, image, mask)) == 100.0


def test_a_constant_shift_gives_the_known_mae_and_psnr():
    _, target = random_pair((32, 48))
    prediction = target + 0.1
    assert float(metrics.mae(prediction, target)) == pytest.approx(0.1, abs=1e-6)
    # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert float(metrics.psnr(prediction, target)) == pytest.approx(20.0, abs=1e-4)
    expected = tf.image.psnr(prediction[None, ..., None], target[None, ..., None], max_val=1.0)
    assert float(metrics.psnr(prediction, target)) == pytest.approx(float(expected[0]), abs=1e-3)


def test_masked_metrics_use_only_the_pixels_in_the_mask():
    _, target = random_pair((48, 48))
    mask = np.zeros((48, 48), bool)
    mask[:, :24] = True
    inside = target.copy()
    inside[:, :24] += 0.2  # error only in the mask: half the pixels
    assert float(metrics.mae(inside, target, mask)) == pytest.approx(0.2, abs=1e-6)
    assert float(metrics.mae(inside, target)) == pytest.approx(0.1, abs=1e-6)
    assert float(metrics.psnr(inside, target, mask)) == pytest.approx(
        10 * np.log10(1 / 0.04), abs=1e-4
    )
    assert float(metrics.psnr(inside, target)) == pytest.approx(10 * np.log10(1 / 0.02), abs=1e-4)

    outside = target.copy()
    # Far enough from the mask that no 11x11 window centred in it sees the change.
    outside[:, 35:] = 1.0 - outside[:, 35:]
    assert float(metrics.mae(outside, target, mask)) == 0.0
    assert float(metrics.psnr(outside, target, mask)) == 100.0
    assert float(metrics.ssim(outside, target, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics.ssim(outside, target)) < 0.8


def test_an_empty_mask_gives_nan_not_a_number_that_looks_real():
    prediction, target = random_pair((32, 32))
    empty = np.zeros((32, 32), bool)
    for metric in (metrics.mae, metrics.psnr, metrics.ssim):
        assert np.isnan(metric(prediction, target, empty))
    assert metrics.mean_and_std([0.5, np.nan, 0.7]) == pytest.approx((0.6, 0.1))


@pytest.mark.parametrize("shape", [(32, 32), (3, 40, 56)])
def test_the_mean_of_the_ssim_map_is_tf_image_ssim(shape):
    prediction, target = random_pair(shape, seed=1, noise=0.2)
    local = metrics.ssim_map(prediction, target)
    assert local.shape == (*shape[:-2], shape[-2] - 10, shape[-1] - 10)
    expected = tf.image.ssim(
        prediction.reshape(-1, *shape[-2:], 1), target.reshape(-1, *shape[-2:], 1), max_val=1.0
    ).numpy()
    np.testing.assert_allclose(local.mean(axis=(-2, -1)).reshape(-1), expected, atol=1e-5)
    np.testing.assert_allclose(metrics.ssim(prediction, target).reshape(-1), expected, atol=1e-5)
    assert 0.0 < expected.min() < 0.99  # a real, imperfect match


def test_the_ssim_map_entry_is_the_window_centred_on_the_pixel_it_is_cropped_to():
    _, target = random_pair((48, 48), seed=2)
    prediction = target.copy()
    prediction[20, 30] = 1.0 - prediction[20, 30]
    local = metrics.ssim_map(prediction, target)
    affected = np.abs(local - 1.0) > 1e-6
    rows, columns = np.nonzero(affected)
    # Exactly the windows that contain pixel (20, 30): centres within 5 px of it.
    assert (rows.min(), rows.max()) == (20 - 10, 20 - 0)
    assert (columns.min(), columns.max()) == (30 - 10, 30 - 0)
    crop = metrics.window_centre_mask(np.pad(np.ones((1, 1), bool), ((20, 27), (30, 17))))
    assert crop.shape == local.shape and local[crop][0] == local.min()


# -------------------------------------------------------------------------- lesions


def lesion_slice(lesion_value: float, size: int = 40, wm: float = 0.5):
    """White matter at `wm` with a disk lesion of radius 3 px at `lesion_value`, and the
    lesion's mask."""
    rows, columns = np.mgrid[:size, :size]
    lesion = np.hypot(rows - 20, columns - 18) <= 3
    image = np.full((size, size), wm, np.float32)
    image[lesion] = lesion_value
    return image, lesion


def test_the_kept_fraction_is_1_for_a_copied_lesion_and_0_for_an_erased_one():
    target, lesion = lesion_slice(0.8)  # contrast 0.8 / 0.5 = 1.6
    predictions = [lesion_slice(value)[0] for value in (0.8, 0.5, 0.9, 0.2)]
    values = metrics.lesion_metrics(
        np.stack(predictions), np.stack([target] * 4), np.stack([lesion] * 4)
    )
    np.testing.assert_allclose(values["contrast_target"], 1.6, rtol=1e-6)
    np.testing.assert_allclose(values["contrast_prediction"], [1.6, 1.0, 1.8, 0.4], rtol=1e-6)
    # copied, erased (the white matter's value), exaggerated, inverted
    np.testing.assert_allclose(values["kept_fraction"], [1.0, 0.0, 4 / 3, -1.0], atol=1e-6)
    np.testing.assert_allclose(values["lesion_mae"], [0.0, 0.3, 0.1, 0.6], atol=1e-6)
    assert values["lesion_ssim"][0] == pytest.approx(1.0, abs=1e-6)
    assert values["lesion_ssim"][1] < 0.5


def test_a_lesion_the_target_does_not_show_gets_no_kept_fraction():
    faint, lesion = lesion_slice(0.51)  # contrast 1.02: within MIN_TARGET_CONTRAST of 1
    values = metrics.lesion_metrics(faint[None], faint[None], lesion[None])
    assert np.isnan(values["kept_fraction"][0]) and values["lesion_mae"][0] == 0.0
    nothing = metrics.lesion_metrics(faint[None], faint[None], np.zeros((1, 40, 40), bool))
    assert all(np.isnan(value[0]) for value in nothing.values())


def test_the_ring_is_the_head_pixels_more_than_1_and_at_most_4_px_from_the_lesion():
    lesion = np.zeros((21, 21), bool)
    lesion[10, 10] = True
    ring = metrics.lesion_ring(lesion)
    assert ring[11, 11] and ring[10, 14] and ring[12, 13]  # sqrt 2, 4, sqrt 13
    assert not ring[10, 11] and not ring[10, 15] and not ring[13, 13]  # 1, 5, sqrt 18
    assert ring.sum() == 49 - 5  # integer points within 4 px, less those within 1 px
    head = np.zeros((21, 21), bool)
    head[:, :10] = True
    assert np.array_equal(metrics.lesion_ring(lesion, head), ring & head)
    # The ring is measured from the nearest lesion pixel, so lesions never sit in it.
    lesion[10, 12] = True
    assert not (metrics.lesion_ring(lesion) & lesion).any()
    # What the contrast divides by is the ring's mean.
    image = np.where(ring, 0.4, 0.9).astype(np.float32)
    image[lesion] = 0.8
    assert float(metrics.lesion_contrast(image, lesion, metrics.lesion_ring(lesion))) < 2.0


def lesion_pairs(t1_lesion: float, t2_lesion: float) -> evaluation.PairedImages:
    """Three paired disk heads with a lesion each, as evaluation loads them."""
    t1, t2, lesions = [], [], []
    for seed in range(3):
        for images, low, value in ((t1, 0.5, t1_lesion), (t2, 0.2, t2_lesion)):
            image = disk_slice(48, low, low + 0.05, seed)
            image[18 + seed : 24 + seed, 20:26] = value
            images.append(image)
        mask = np.zeros((48, 48), bool)
        mask[18 + seed : 24 + seed, 20:26] = True
        lesions.append(mask)
    t1_array, t2_array = np.stack(t1), np.stack(t2)
    heads = evaluation.head_masks(t1_array) | evaluation.head_masks(t2_array)
    return evaluation.PairedImages(
        ("a", "b", "c"), t1_array, t2_array, heads, lesions=np.stack(lesions)
    )


def test_the_baselines_get_lesion_numbers_too_and_a_monotonic_map_cannot_keep_them(tmp_path):
    # As in the scans: the lesion is dark on T1 and bright on T2.
    images = lesion_pairs(t1_lesion=0.35, t2_lesion=0.6)
    references = {
        "t1": np.linspace(0.0, 1.0, evaluation.HISTOGRAM_LEVELS, dtype=np.float32),
        "t2": np.linspace(0.0, 0.8, evaluation.HISTOGRAM_LEVELS, dtype=np.float32),
    }
    result = evaluation.evaluate_pairs(None, images, references)
    assert set(result.lesion_values) == {
        (d, m) for d in DIRECTIONS for m in ("identity", "histogram_matching")
    }
    for direction in DIRECTIONS:
        for method in ("identity", "histogram_matching"):
            kept = result.lesion_values[(direction, method)]["kept_fraction"]
            assert np.all(kept < 0), (direction, method, kept)  # inverted
    assert result.lesion_values[("t1_to_t2", "identity")]["contrast_target"].min() > 2.0
    assert list(result.lesion_pixels) == [36, 36, 36]

    statistics = result.lesion_statistics()["t1_to_t2"]["identity"]["kept_fraction"]
    assert set(statistics) == {"median", "q1", "q3", "n"} and statistics["n"] == 3
    assert statistics["q1"] <= statistics["median"] <= statistics["q3"] < 0
    reports.write_lesion_csv(result, tmp_path / "lesion_metrics.csv")
    with open(tmp_path / "lesion_metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * 2 * 2 and set(metrics.LESION_METRIC_NAMES) <= set(rows[0])
    document = reports.metrics_document(result)
    assert document["lesions"]["n_slices_with_lesion"] == 3
    assert "kept contrast" in reports.format_lesion_table(result)


def write_mask_folder(folder: Path, names: list[str], size: int = 40) -> None:
    """Masks of a 6x8 px lesion at (10..15, 12..19), 255 = lesion, one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    mask[10:16, 12:20] = 255
    for name in names:
        Image.fromarray(mask).save(folder / name)


def test_lesion_masks_are_resampled_as_their_images_and_must_be_of_their_size(tmp_path):
    for contrast in ("T1", "T2"):
        write_png_folder(tmp_path / "lesions" / contrast, 2, 40, 150, seed=1)
    write_mask_folder(tmp_path / "lesions" / "masks", ["slice_00.png", "slice_01.png"])
    assert (
        evaluation.sibling_mask_dir(tmp_path / "lesions" / "T1") == tmp_path / "lesions" / "masks"
    )
    assert evaluation.sibling_mask_dir(tmp_path / "lesions") is None
    pairing = evaluation.pair_files(tmp_path / "lesions" / "T1", tmp_path / "lesions" / "T2")
    masks = evaluation.match_lesion_masks(tmp_path / "lesions" / "masks", pairing)
    config = TrainConfig(img_height=SIZE, img_width=SIZE, n4=False)
    images = evaluation.load_pairs(pairing.pairs, PreprocessCache(tmp_path / "cache", config))
    images = evaluation.load_lesion_masks(images, masks, pairing.pairs)
    assert images.lesions.shape == (2, SIZE, SIZE)
    # 48 px at 40 px are about 48 * (32 / 40)^2 = 31 px at 32, where the images put them.
    assert 24 <= images.lesions[0].sum() <= 40
    rows, columns = np.nonzero(images.lesions[0])
    assert rows.mean() == pytest.approx(12.5 * 31 / 39, abs=1.0)
    assert columns.mean() == pytest.approx(15.5 * 31 / 39, abs=1.0)

    write_mask_folder(tmp_path / "small", ["slice_00.png", "slice_01.png"], size=36)
    small = evaluation.match_lesion_masks(tmp_path / "small", pairing)
    with pytest.raises(DataError, match=r"small/slice_00.png is 36x36 px but its slice"):
        evaluation.load_lesion_masks(images, small, pairing.pairs)


# ------------------------------------------------------------------------- pairing


def touch_pngs(folder: Path, names: list[str]) -> None:
    write_png_folder(folder, len(names), 40, 150, seed=len(names))
    for index, name in enumerate(names):
        (folder / f"slice_{index:02d}.png").rename(folder / name)


def test_pairing_is_by_file_name_and_names_the_file_without_a_partner(tmp_path, caplog):
    touch_pngs(tmp_path / "T1", ["a.png", "b.png", "only_t1.png"])
    touch_pngs(tmp_path / "T2" / "nested", ["b.png", "a.png", "only_t2.png"])
    with caplog.at_level(logging.WARNING):
        pairing = evaluation.pair_files(tmp_path / "T1", tmp_path / "T2")
    assert [(t1.name, t2.name) for t1, t2 in pairing.pairs] == [
        ("a.png", "a.png"),
        ("b.png", "b.png"),
    ]
    assert [path.name for path in pairing.unpaired_t1] == ["only_t1.png"]
    assert [path.name for path in pairing.unpaired_t2] == ["only_t2.png"]
    assert "only_t1.png" in caplog.text and "only_t2.png" in caplog.text


def test_no_pair_at_all_is_an_error(tmp_path):
    touch_pngs(tmp_path / "T1", ["a.png"])
    touch_pngs(tmp_path / "T2", ["b.png"])
    with pytest.raises(DataError, match="no pairs"):
        evaluation.pair_files(tmp_path / "T1", tmp_path / "T2")


def test_a_pair_with_an_unreadable_file_is_skipped_by_name_and_the_rest_kept(tmp_path, caplog):
    touch_pngs(tmp_path / "T1", ["a.png", "b.png"])
    touch_pngs(tmp_path / "T2", ["a.png", "b.png"])
    (tmp_path / "T2" / "b.png").write_bytes(b"not an image")
    config = TrainConfig(img_height=SIZE, img_width=SIZE, n4=False)
    cache = PreprocessCache(tmp_path / "cache", config)
    pairs = evaluation.pair_files(tmp_path / "T1", tmp_path / "T2").pairs
    with caplog.at_level(logging.WARNING):
        images = evaluation.load_pairs(pairs, cache)
    assert images.names == ("a.png",)
    assert images.t1.shape == images.t2.shape == images.masks.shape == (1, SIZE, SIZE)
    assert 0.0 <= images.t1.min() and images.t2.max() <= 1.0
    assert images.skipped == ((tmp_path / "T2" / "b.png", "not an image"),)
    assert str(tmp_path / "T2" / "b.png") in caplog.text


# ------------------------------------------------------------------------ baselines


def disk_slice(size: int, low: float, high: float, seed: int) -> np.ndarray:
    """A head: a disk of values spread over [low, high] in a dark, faintly noisy field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    inside = np.hypot(yy, xx) < size * 0.35
    image = rng.uniform(0.0, 0.01, (size, size))
    image[inside] = rng.uniform(low, high, inside.sum())
    return image.astype(np.float32)


def test_histogram_matching_follows_the_training_reference_not_the_target():
    image = disk_slice(48, 0.3, 0.7, seed=0)
    reference = np.quantile(
        np.random.default_rng(1).uniform(0.8, 0.9, 5000), np.linspace(0, 1, 101)
    )
    matched = evaluation.match_to_reference(image, reference)
    head = evaluation.head_mask(image)
    assert 0.3 < head.mean() < 0.5
    assert matched[head].min() >= 0.8 - 1e-6 and matched[head].max() <= 0.9 + 1e-6
    assert np.median(matched[head]) == pytest.approx(0.85, abs=0.01)
    np.testing.assert_array_equal(matched[~head], image[~head])  # the air is left alone


def test_the_baseline_of_each_direction_uses_the_reference_of_its_target_contrast():
    t1 = np.stack([disk_slice(48, 0.3, 0.7, seed) for seed in range(3)])
    t2 = np.stack([disk_slice(48, 0.1, 0.5, seed + 10) for seed in range(3)])
    masks = evaluation.head_masks(t1) | evaluation.head_masks(t2)
    images = evaluation.PairedImages(("a", "b", "c"), t1, t2, masks)
    # Training references far from both targets: the baseline must land on them.
    references = {
        "t1": np.full(evaluation.HISTOGRAM_LEVELS, 0.05, np.float32),
        "t2": np.full(evaluation.HISTOGRAM_LEVELS, 0.95, np.float32),
    }
    result = evaluation.evaluate_pairs(None, images, references)
    assert result.methods == ("identity", "histogram_matching")
    matching = {
        d: result.values[(d, "histogram_matching")]["masked_mae"] for d in ("t1_to_t2", "t2_to_t1")
    }
    expected_t2 = metrics.mae(np.full_like(t2, 0.95), t2, masks)
    expected_t1 = metrics.mae(np.full_like(t1, 0.05), t1, masks)
    np.testing.assert_allclose(matching["t1_to_t2"], expected_t2, atol=1e-3)
    np.testing.assert_allclose(matching["t2_to_t1"], expected_t1, atol=1e-3)
    identity = result.values[("t1_to_t2", "identity")]["mae"]
    np.testing.assert_allclose(identity, np.abs(t1 - t2).mean(axis=(1, 2)), atol=1e-6)


# ---------------------------------------------------------------- the model and CLI


@dataclass(frozen=True)
class Run:
    """A saved 32x32 run, its test folders, and one evaluate.py subprocess on it."""

    model: object
    config: TrainConfig
    test_t1: Path
    test_t2: Path
    output_dir: Path
    process: subprocess.CompletedProcess


def evaluate_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("evaluate")
    write_png_folder(root / "Tr1", 4, 40, 200, seed=1)
    write_png_folder(root / "Tr2", 4, 40, 120, seed=2)
    write_png_folder(root / "Test" / "T1", 4, 40, 190, seed=3)
    write_png_folder(root / "Test" / "T2", 3, 40, 110, seed=4)  # slice_03 has no T2 partner
    config = TrainConfig(
        data_dir_t1=root / "Tr1",
        data_dir_t2=root / "Tr2",
        img_height=SIZE,
        img_width=SIZE,
        output_dir=root / "run",
        **SMALL_NETWORKS,
    )
    keras.utils.set_random_seed(0)
    model = build_model(config)
    rng = np.random.default_rng(0)
    batch = [tf.constant(rng.uniform(-1, 1, (2, SIZE, SIZE, 1)), tf.float32) for _ in range(2)]
    model.train_step(tuple(batch))  # weights that no fresh model has
    save_as_trained(model, config, epoch=1)
    output_dir = root / "evaluation"
    process = evaluate_command(
        "--checkpoint_dir",
        str(config.checkpoint_dir),
        "--test_dir_t1",
        str(root / "Test" / "T1"),
        "--test_dir_t2",
        str(root / "Test" / "T2"),
        "--output_dir",
        str(output_dir),
    )
    return Run(model, config, root / "Test" / "T1", root / "Test" / "T2", output_dir, process)


def test_cli_writes_a_row_per_slice_direction_and_method_and_a_summary(run):
    assert run.process.returncode == 0, run.process.stderr
    with open(run.output_dir / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * 2 * 3  # pairs x directions x methods
    assert {(row["direction"], row["method"]) for row in rows} == {
        (direction, method) for direction in DIRECTIONS for method in evaluation.METHODS
    }
    assert set(metrics.METRIC_NAMES) <= set(rows[0])
    assert all(0.0 <= float(row["masked_mae"]) <= 1.0 for row in rows)

    document = json.loads((run.output_dir / "metrics.json").read_text())
    assert document["n_pairs"] == 3 and document["epoch"] == 1
    for direction in DIRECTIONS:
        for method in evaluation.METHODS:
            for name in metrics.METRIC_NAMES:
                assert set(document["metrics"][direction][method][name]) == {"mean", "std"}
        verdicts = document["model_beats_histogram_matching"][direction]
        assert set(verdicts) == {*metrics.METRIC_NAMES, "all"}
        assert all(isinstance(won, bool) for won in verdicts.values())
        assert verdicts["all"] == all(verdicts[name] for name in metrics.METRIC_NAMES)
    assert (run.output_dir / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in run.output_dir.iterdir()) == [
        "examples.png",
        "metrics.csv",
        "metrics.json",
    ]
    assert "model beats histogram matching" in run.process.stdout


def test_cli_scores_the_restored_generators_as_the_model_in_memory_scores(run):
    cache = PreprocessCache(run.config.output_dir / "cache", run.config)
    images = evaluation.load_pairs(evaluation.pair_files(run.test_t1, run.test_t2).pairs, cache)
    summary = evaluation.evaluate_pairs(run.model, images, baselines=False).summary()
    document = json.loads((run.output_dir / "metrics.json").read_text())
    for direction in DIRECTIONS:
        for name in metrics.METRIC_NAMES:
            assert document["metrics"][direction]["model"][name]["mean"] == pytest.approx(
                summary[f"{direction}_{name}"], abs=1e-4
            )
    assert tuple(summary) == evaluation.SUMMARY_KEYS
    directions = list(DIRECTIONS)
    assert summary["mean_ssim"] == pytest.approx(
        np.mean([summary[f"{d}_ssim"] for d in directions])
    )


def test_cli_names_the_test_file_without_a_partner(run):
    assert "slice_03.png" in run.process.stderr and "no partner" in run.process.stderr
    document = json.loads((run.output_dir / "metrics.json").read_text())
    assert [Path(path).name for path in document["unpaired"]] == ["slice_03.png"]


def test_a_checkpoint_of_another_image_size_is_refused(run, tmp_path):
    other = tmp_path / "run"
    (other / "checkpoints").mkdir(parents=True)
    for path in run.config.checkpoint_dir.iterdir():
        (other / "checkpoints" / path.name).write_bytes(path.read_bytes())
    save_config(
        TrainConfig(img_height=64, img_width=64, **SMALL_NETWORKS), other / CONFIG_FILE_NAME
    )
    with pytest.raises(DataError, match="does not fit the 64x64"):
        restore_run(other / "checkpoints")


@pytest.mark.parametrize(
    "case",
    ["missing test dir", "no checkpoint", "no pairs", "one volume dir", "no volume pairs"],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(run, tmp_path, case):
    checkpoint_dir, test_t1, test_t2 = run.config.checkpoint_dir, run.test_t1, run.test_t2
    volumes = []
    if case == "one volume dir":
        volumes = ["--test_volumes_t1", str(tmp_path)]
    elif case == "no volume pairs":
        (tmp_path / "t1").mkdir()
        (tmp_path / "t2").mkdir()
        # Named by the rule, but of two subjects: a warning names each, no pair is left.
        (tmp_path / "t1" / "sub-01_T1w.nii.gz").write_bytes(b"")
        (tmp_path / "t2" / "sub-02_T2w.nii.gz").write_bytes(b"")
        volumes = ["--test_volumes_t1", str(tmp_path / "t1"), "--test_volumes_t2"]
        volumes.append(str(tmp_path / "t2"))
    elif case == "missing test dir":
        test_t2 = tmp_path / "nowhere"
    elif case == "no checkpoint":
        checkpoint_dir = tmp_path / "checkpoints"
        checkpoint_dir.mkdir()
    else:
        write_png_folder(tmp_path / "other", 2, 40, 100, seed=5)
        for path in (tmp_path / "other").iterdir():
            path.rename(path.with_name(f"other_{path.name}"))
        test_t2 = tmp_path / "other"
    result = run_in_process(
        evaluate.main,
        "--checkpoint_dir",
        str(checkpoint_dir),
        "--test_dir_t1",
        str(test_t1),
        "--test_dir_t2",
        str(test_t2),
        "--output_dir",
        str(tmp_path / "out"),
        *volumes,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    expected = {
        "missing test dir": f"--test_dir_t2 {test_t2} does not exist",
        "no checkpoint": "holds no checkpoint",
        "no pairs": "no pairs",
        "one volume dir": "--test_volumes_t1 and --test_volumes_t2 go together",
        "no volume pairs": "no volume pair",
    }[case]
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["a pair without mask", "a mask of no test file"])
def test_lesion_masks_that_do_not_match_the_pairs_are_a_one_line_error(tmp_path, case):
    # Checked before the checkpoint is restored: an empty checkpoint folder is enough.
    (tmp_path / "checkpoints").mkdir()
    lesions = tmp_path / "lesions"
    for contrast in ("T1", "T2"):
        write_png_folder(lesions / contrast, 3, 40, 150, seed=1)
    names = ["slice_00.png", "slice_01.png", "slice_02.png"]
    flags = []
    if case == "a pair without mask":
        mask_dir = lesions / "masks"  # found beside T1 without a flag
        write_mask_folder(mask_dir, names[:2])
        expected = "no mask for 1 of the 3 test pairs (slice_02.png)"
    else:
        mask_dir = tmp_path / "other_masks"
        write_mask_folder(mask_dir, [*names, "sub-99_z050.png"])
        flags = ["--lesion_masks", str(mask_dir)]
        expected = "1 of its 4 masks name no test file (sub-99_z050.png)"
    result = run_in_process(
        evaluate.main,
        *("--checkpoint_dir", str(tmp_path / "checkpoints")),
        *("--test_dir_t1", str(lesions / "T1"), "--test_dir_t2", str(lesions / "T2")),
        *("--output_dir", str(tmp_path / "out"), *flags),
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert f"lesion masks {mask_dir}" in errors[0] and expected in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_scores_the_lesions_of_a_lesion_set(run, tmp_path):
    lesions = tmp_path / "lesions"
    for contrast, brightness in (("T1", 190), ("T2", 110)):
        write_png_folder(lesions / contrast, 3, 40, brightness, seed=3)
    write_mask_folder(lesions / "masks", ["slice_00.png", "slice_01.png", "slice_02.png"])
    result = run_in_process(
        evaluate.main,
        *("--checkpoint_dir", str(run.config.checkpoint_dir)),
        *("--test_dir_t1", str(lesions / "T1"), "--test_dir_t2", str(lesions / "T2")),
        *("--output_dir", str(tmp_path / "out")),
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "lesion_metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * 2 * 3  # pairs x directions x methods
    assert {row["lesion_pixels"] for row in rows} == {"30"}  # 48 px at 40 -> 32 px
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert document["lesion_masks"] == str(lesions / "masks")
    for direction in DIRECTIONS:
        for method in evaluation.METHODS:
            kept = document["lesions"]["metrics"][direction][method]["kept_fraction"]
            assert set(kept) == {"median", "q1", "q3", "n"}
    assert (tmp_path / "out" / "lesions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kept contrast" in result.stdout
