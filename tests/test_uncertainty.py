"""Uncertainty beside a translation: the rank and ROC helpers, the stochastic passes, the
maps translate.py writes, and evaluate.py --uncertainty.

The model is a 64x64 CycleGAN with narrow networks and its initial (random) weights: the
smallest U-Net with a dropout layer (32 px has none), so the dropout passes are real.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from PIL import Image

import checkpoints
import evaluate
import metrics
import translate
import translation
import uncertainty
from config import TrainConfig
from errors import DataError
from inference import Generator
from mri_gan import unet_generator
from tests.conftest import SMALL_NETWORKS, run_in_process, save_as_trained, write_png_folder
from training import build_model

SIZE = 64


# ------------------------------------------------------------------------- helpers


def test_rank_correlation_matches_hand_values_with_ties_averaged():
    # Ranks 1 2 3 4 against 1 3 2 4: 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8.
    assert metrics.rank_correlation([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Ties share rank 2.5: centred ranks (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5)
    # give 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert metrics.rank_correlation([1, 2, 2, 3], [5, 6, 7, 8]) == pytest.approx(3 / np.sqrt(10))
    assert metrics.rank_correlation([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
    assert np.isnan(metrics.rank_correlation([2, 2, 2], [1, 2, 3]))  # a flat map orders nothing


def test_roc_auc_is_the_mann_whitney_statistic():
    # Of the 4 positive-negative pairs, 3 are ordered right: 0.75.
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # A tie counts half: ranks 1.5 1.5 3, positives 1.5 + 3 - 3 = 1.5 of 2 pairs.
    assert metrics.roc_auc([1, 1, 2], [0, 1, 1]) == pytest.approx(0.75)
    assert metrics.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0
    assert metrics.roc_auc([5, 5, 5, 5], [1, 0, 0, 1]) == 0.5  # a flat map is chance
    assert np.isnan(metrics.roc_auc([1, 2], [1, 1]))


def test_error_detection_scores_a_map_over_the_mask_only():
    rng = np.random.default_rng(0)
    error = rng.uniform(0, 1, (3, 20, 20))
    mask = np.zeros((3, 20, 20), bool)
    mask[:, 5:15, 5:15] = True
    maps = np.stack([error[0], -error[1], np.full((20, 20), 0.3)])
    maps[:, ~mask[0]] = rng.uniform(0, 1, (3, int((~mask[0]).sum())))  # ignored
    lesion = np.zeros_like(mask)
    lesion[0] = error[0] > 0.5

    scores = metrics.error_detection(maps, error, mask, lesion)

    np.testing.assert_allclose(scores["rank_correlation"][:2], [1.0, -1.0])
    assert np.isnan(scores["rank_correlation"][2])
    np.testing.assert_allclose(scores["auc"], [1.0, 0.0, 0.5])
    assert scores["lesion_auc"][0] == 1.0 and np.isnan(scores["lesion_auc"][1:]).all()
    assert metrics.worst_error_pixels(error[0][mask[0]]).mean() == pytest.approx(0.1)


def test_the_sign_test_counts_slices_either_side_of_chance():
    test = metrics.sign_test([0.6] * 9 + [0.5, 0.4, np.nan], 0.5)
    assert (test["above"], test["below"]) == (9, 1)
    assert test["p"] == pytest.approx(11 / 2**10)  # P(at least 9 of 10 heads)


def test_maps_are_named_after_the_output():
    assert uncertainty.map_path(Path("a/t2.nii.gz"), "mean") == Path("a/t2_mean.nii.gz")
    assert uncertainty.map_path(Path("t2.NII"), "uncertainty") == Path("t2_uncertainty.NII")
    assert uncertainty.map_path(Path("x.y.png"), "cycle_residual") == Path("x.y_cycle_residual.png")
    assert uncertainty.map_folder(Path("out/t2"), "uncertainty") == Path("out/t2_uncertainty")


# ------------------------------------------------------------------ stochastic passes


def dropout_only(size: int = 32) -> keras.Model:
    """A "generator" that is only a Dropout layer: its output shows the mask."""
    inputs = keras.Input((size, size, 1))
    return keras.Model(inputs, layers.Dropout(0.5)(inputs), name="t1_to_t2")


def test_kept_dropout_drops_half_and_scales_the_rest_one_mask_per_batch():
    forward = uncertainty.dropout_forward(dropout_only())
    ones = np.ones((3, 32, 32, 1), np.float32)

    first = forward(ones, tf.constant([7, 0], tf.int64)).numpy()
    again = forward(ones[:1], tf.constant([7, 0], tf.int64)).numpy()
    other = forward(ones, tf.constant([7, 1], tf.int64)).numpy()

    assert set(np.unique(first)) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / 0.5
    assert 0.4 < (first == 0).mean() < 0.6
    assert (first == first[:1]).all()  # one thinned network for every image of the batch
    np.testing.assert_array_equal(again[0], first[0])  # whatever the batch
    assert (other != first).any()
    assert uncertainty.dropout_forward(unet_generator(32, 32, "t1_to_t2", filters=8)) is None


def test_dropout_passes_vary_by_seed_flips_mirror_and_the_translation_is_deterministic():
    generator = Generator(unet_generator(SIZE, SIZE, "t1_to_t2", filters=8), "t1_to_t2", False)
    images = np.random.default_rng(1).uniform(0, 1, (2, SIZE, SIZE)).astype(np.float32)

    dropout = uncertainty.StochasticPasses(generator, 3, seed=0, method="dropout")(images)
    again = uncertainty.StochasticPasses(generator, 3, seed=0, method="dropout")(images[1:])
    other = uncertainty.StochasticPasses(generator, 3, seed=1, method="dropout")(images)
    flips = uncertainty.StochasticPasses(generator, 2, method="flips")(images)
    maps = uncertainty.TranslationMaps(generator, 4, seed=0)(images)

    assert dropout.shape == (3, 2, SIZE, SIZE) and dropout.dtype == np.float32
    assert (dropout.std(axis=0) > 0).mean() > 0.5
    np.testing.assert_allclose(again, dropout[:, 1:], atol=1e-6)  # the seed decides
    assert np.abs(other - dropout).max() > 0.01
    deterministic = generator.translate_unit(images)
    np.testing.assert_array_equal(flips[0], deterministic)
    mirrored = generator.translate_unit(images[:, :, ::-1])[:, :, ::-1]
    np.testing.assert_array_equal(flips[1], mirrored)
    np.testing.assert_array_equal(maps["translation"], deterministic)
    assert set(maps) == {"translation", "mean", "uncertainty"}
    assert (maps["uncertainty"] >= 0).all() and maps["uncertainty"].max() > 0


def test_a_generator_without_dropout_cannot_do_dropout_passes_and_both_is_flips(caplog):
    generator = Generator(unet_generator(32, 32, "t1_to_t2", filters=8), "t1_to_t2", False)
    images = np.random.default_rng(2).uniform(0, 1, (1, 32, 32)).astype(np.float32)

    with pytest.raises(DataError, match="no dropout layer"):
        uncertainty.StochasticPasses(generator, 2, method="dropout")
    with caplog.at_level(logging.WARNING):
        both = uncertainty.StochasticPasses(generator, 4, method="both")(images)
    assert "left-right flips only" in caplog.text
    np.testing.assert_array_equal(both[0], both[2])
    with pytest.raises(ValueError, match="at least 2 passes"):
        uncertainty.TranslationMaps(generator, 1)


# ------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Run:
    config: TrainConfig
    test_dirs: tuple[Path, Path]
    export_dir: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A 64x64 CycleGAN saved as training saves it, its export, and tiny PNG folders."""
    root = tmp_path_factory.mktemp("uncertainty")
    write_png_folder(root / "Tr1", 2, 40, 200, seed=1)
    write_png_folder(root / "Tr2", 2, 40, 120, seed=2)
    test_dirs = (root / "Test" / "T1", root / "Test" / "T2")
    write_png_folder(test_dirs[0], 3, 40, 190, seed=3)
    write_png_folder(test_dirs[1], 3, 40, 110, seed=4)
    config = TrainConfig(
        data_dir_t1=root / "Tr1",
        data_dir_t2=root / "Tr2",
        img_height=SIZE,
        img_width=SIZE,
        n4=False,
        output_dir=root / "run",
        **SMALL_NETWORKS,
    )
    keras.utils.set_random_seed(0)
    model = build_model(config)
    save_as_trained(model, config, epoch=1)
    export_dir = root / "export"
    checkpoints.export_generators(model, config, export_dir, epoch=1)
    return Run(config, test_dirs, export_dir)


def head_nifti(path: Path) -> nib.Nifti1Image:
    """A toy head volume (axial slices 0 and 5 empty) with an oblique affine, saved."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, side) for side in (40, 36, 6)), indexing="ij")
    radius = np.sqrt(x**2 + y**2 + z**2 / 4)
    volume = np.where(radius < 0.8, 800.0, 0.0) * np.where(radius < 0.4, 0.5, 1.0) * (1 + 0.3 * x)
    volume[:, :, [0, -1]] = 0
    affine = np.diag([-0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = [20.0, -30.0, 10.0]
    image = nib.Nifti1Image(volume.astype(np.int16), affine)
    image.set_sform(affine, code=2)
    nib.save(image, path)
    return nib.load(path)


def test_volume_maps_have_the_input_geometry_and_the_output_units(run, tmp_path):
    image = head_nifti(tmp_path / "t1.nii.gz")
    generator = translation.load_generator(run.export_dir, "t1_to_t2")
    back = translation.load_generator(run.export_dir, "t2_to_t1")

    maps = translation.translate_volume_maps(
        generator, image, uncertainty=3, back_model=back, batch_size=2
    )
    unit = translation.translate_volume_maps(generator, image, uncertainty=3, intensity="unit")

    assert list(maps) == ["translation", "mean", "uncertainty", "cycle_residual"]
    for result in maps.values():
        data = result.get_fdata(dtype=np.float32)
        assert result.shape == image.shape and result.get_data_dtype() == np.float32
        np.testing.assert_array_equal(result.affine, image.affine)
        assert result.header.get_sform(coded=True)[1] == 2
        assert (data[:, :, [0, -1]] == 0).all()  # background slices are not translated
    translated = translation.translate_volume(generator, image, batch_size=2)
    np.testing.assert_array_equal(maps["translation"].dataobj, translated.dataobj)
    low, high = translation.intensity_range(image.get_fdata(dtype=np.float32))
    spread = maps["uncertainty"].get_fdata(dtype=np.float32)
    # A spread on the output scale: the [0, 1] spread times the width of the output range.
    np.testing.assert_allclose(spread, unit["uncertainty"].get_fdata() * (high - low), atol=1e-3)
    assert spread.max() > 0
    assert maps["cycle_residual"].get_fdata()[:, :, 1:-1].max() > 0


def test_translate_writes_maps_beside_a_png_folder_in_sibling_folders(run, tmp_path):
    output = tmp_path / "out"

    process = run_in_process(
        translate.main,
        *("--model", str(run.export_dir), "--direction", "t1_to_t2"),
        *("--input", str(run.test_dirs[0]), "--output", str(output)),
        *("--uncertainty", "2", "--cycle_residual", "--quiet"),
    )

    assert process.returncode == 0, process.stderr
    names = sorted(path.name for path in run.test_dirs[0].iterdir())
    assert sorted(path.name for path in output.iterdir()) == names
    for name in uncertainty.MAP_NAMES:
        folder = tmp_path / f"out_{name}"
        assert sorted(path.name for path in folder.iterdir()) == names
        for file_name in names:
            written = np.asarray(Image.open(folder / file_name))
            assert written.shape == (40, 40) and written.dtype == np.uint8
    assert np.asarray(Image.open(tmp_path / "out_uncertainty" / names[0])).max() > 0


@pytest.mark.parametrize("passes", ["1", "0", "-3"])
def test_fewer_than_two_passes_are_refused_in_one_line(run, tmp_path, passes):
    common = ("--checkpoint_dir", str(tmp_path / "missing"), "--uncertainty", passes)
    translated = run_in_process(
        translate.main,
        *common,
        *("--direction", "t1_to_t2", "--input", "x.png", "--output", "y.png"),
    )
    evaluated = run_in_process(evaluate.main, *common)

    for process in (translated, evaluated):
        # Refused before anything else is looked at, the missing checkpoint included.
        assert process.returncode == 2
        assert process.stderr.strip().splitlines() == [
            f"error: --uncertainty {passes}: give at least 2 passes (the spread of one pass is 0)"
        ]


def test_a_cycle_residual_without_the_other_generator_is_one_error_line(run, tmp_path):
    lone = tmp_path / "t1_to_t2.keras"
    lone.write_bytes((run.export_dir / "t1_to_t2.keras").read_bytes())
    source = tmp_path / "t1.png"
    source.write_bytes(next(run.test_dirs[0].iterdir()).read_bytes())

    process = run_in_process(
        translate.main,
        *("--model", str(lone), "--direction", "t1_to_t2", "--cycle_residual"),
        *("--input", str(source), "--output", str(tmp_path / "t2.png")),
    )

    assert process.returncode == 2
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in process.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "needs the t2_to_t1 generator too" in errors[0]
    assert not (tmp_path / "t2.png").exists()


def test_evaluate_scores_both_maps_against_the_error_and_the_lesions(run, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in run.test_dirs[0].iterdir():
        lesion = np.zeros((40, 40), np.uint8)
        lesion[14:19, 20:25] = 255
        Image.fromarray(lesion).save(masks / path.name)
    output = tmp_path / "evaluation"

    process = run_in_process(
        evaluate.main,
        *("--checkpoint_dir", str(run.config.checkpoint_dir), "--uncertainty", "2"),
        *("--test_dir_t1", str(run.test_dirs[0]), "--test_dir_t2", str(run.test_dirs[1])),
        *("--lesion_masks", str(masks), "--output_dir", str(output)),
    )

    assert process.returncode == 0, process.stderr
    with open(output / "uncertainty_metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["name", "direction", "map", "rank_correlation", "auc", "lesion_auc"]
    assert len(rows) == 3 * 2 * 2  # slices x directions x maps
    assert {row["map"] for row in rows} == {"uncertainty", "cycle_residual"}
    document = json.loads((output / "metrics.json").read_text())["uncertainty"]
    assert (document["passes"], document["seed"], document["method"]) == (2, 0, "both")
    entry = document["metrics"]["t1_to_t2"]["cycle_residual"]["auc"]
    assert set(entry) == {"median", "q1", "q3", "n"} and entry["n"] == 3
    assert set(document["chance"]["t2_to_t1"]["uncertainty"]["auc"]) == {
        "above",
        "below",
        "p",
        "beats_chance",
    }
    assert float(rows[0]["lesion_auc"]) >= 0
    assert (output / "uncertainty.png").stat().st_size > 0
    # No map can beat chance on 3 slices (p >= 1/8), and the table says so plainly.
    assert "DOES NOT BEAT CHANCE" in process.stdout
