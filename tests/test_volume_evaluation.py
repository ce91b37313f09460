"""Tests for whole-volume evaluation (volume_evaluation.py): pairing by subject,
registration, the through-plane metric and the written results, on the demo volumes made
smaller (every other voxel) and tiny untrained generators."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import metrics
import mri_gan
import volume_evaluation as ve
from dataset import make_demo as demo
from errors import DataError
from inference import Generator

VOLUMES = demo.DATASET_DIR / "Test" / "volumes"
OBLIQUE_T2 = demo.DATASET_DIR / demo.OBLIQUE_DIR / "sub-21_T2w.nii.gz"


def _halved(path: Path) -> nib.Nifti1Image:
    """A demo volume at every other voxel: 2 mm, 8x fewer voxels, the same world place."""
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:3, :3] *= 2
    return nib.Nifti1Image(np.asarray(image.dataobj)[::2, ::2, ::2], affine)


@pytest.fixture(scope="module")
def t1_2mm() -> nib.Nifti1Image:
    return _halved(VOLUMES / "sub-21_T1w.nii.gz")


def _head_points(image: nib.Nifti1Image) -> np.ndarray:
    """World points (n, 3) mm of a sample of the head voxels of a demo volume."""
    voxels = np.argwhere(np.asarray(image.dataobj) > 40)[::50].astype(float)
    return voxels @ image.affine[:3, :3].T + image.affine[:3, 3]


def _moved(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


# ---------------------------------------------------------------------------- pairing
def test_volumes_pair_by_subject_under_the_bids_and_ixi_rules():
    t1 = [
        Path("a/sub-01_T1w.nii.gz"),
        Path("a/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"),
        Path("a/sub-03_T1w.nii.gz"),  # no T2 of sub-03
        Path("a/sub-04_run-1_T1w.nii.gz"),  # two T1 of sub-04: which one?
        Path("a/sub-04_run-2_T1w.nii.gz"),
        Path("a/IXI002-Guys-0828-T1.nii.gz"),
        Path("a/notes.nii.gz"),
        Path("a/sub-01_T2w.nii.gz"),  # the other contrast in the T1 folder: ignored
    ]
    t2 = [
        Path("b/sub-01_T2w.nii.gz"),
        Path("b/sub-02_ses-1_acq-fast_T2w.nii.gz"),  # other entities may differ
        Path("b/sub-02_ses-2_T2w.nii.gz"),  # another session: no T1
        Path("b/sub-04_T2w.nii.gz"),
        Path("b/IXI002-Guys-0828-T2.nii.gz"),
        Path("b/IXI002-Guys-0828-PD.nii.gz"),
    ]
    pairing = ve.pair_volume_paths(t1, t2)
    assert pairing.pairs == (
        ("IXI002-Guys-0828", t1[5], t2[4]),
        ("sub-01", t1[0], t2[0]),
        ("sub-02_ses-1", t1[1], t2[1]),
    )
    reasons = dict(pairing.unpaired)
    assert set(reasons) == {t1[2], t1[3], t1[4], t1[6], t2[2], t2[3], t2[5]}
    assert reasons[t1[2]] == "no T2 volume of sub-03"
    assert reasons[t2[2]] == "no T1 volume of sub-02_ses-2"
    assert "more than one" in reasons[t1[3]] and "more than one" in reasons[t2[3]]
    assert reasons[t1[6]] == reasons[t2[5]] == ve.UNRECOGNISED
    assert ve.volume_key(Path("IXI012-HH-1211-T2.nii")) == ("IXI012-HH-1211", "t2")
    assert ve.volume_key(Path("sub-01_T1w.png")) is None


def test_unpaired_volumes_are_named_in_a_warning_and_not_scored(tmp_path, caplog):
    t1_dir, t2_dir = tmp_path / "t1", tmp_path / "t2"
    for path in (t1_dir / "sub-01_T1w.nii.gz", t1_dir / "sub-02_T1w.nii.gz"):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")  # pairing reads names only
    t2_dir.mkdir()
    (t2_dir / "sub-01_T2w.nii.gz").write_bytes(b"")
    (t2_dir / "sub-03_T2w.nii.gz").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        pairing = ve.find_volume_pairs(t1_dir, t2_dir)
    assert [key for key, _, _ in pairing.pairs] == ["sub-01"]
    warned = [record.getMessage() for record in caplog.records]
    assert any(str(t1_dir / "sub-02_T1w.nii.gz") in line for line in warned)
    assert any(str(t2_dir / "sub-03_T2w.nii.gz") in line for line in warned)
    (t1_dir / "sub-01_T1w.nii.gz").unlink()
    with pytest.raises(DataError, match="no volume pair"):
        ve.find_volume_pairs(t1_dir, t2_dir)
    # The demo's folder holds both contrasts: one folder serves as both.
    demo_pairs = ve.find_volume_pairs(VOLUMES, VOLUMES)
    assert demo_pairs.unpaired == () and [p[0] for p in demo_pairs.pairs] == ["sub-21"]


# ---------------------------------------------------------------------------- metrics
def test_through_plane_mae_hand_values():
    rng = np.random.default_rng(0)
    target = rng.random((6, 12, 12))
    mask = np.ones(target.shape, bool)
    assert ve.through_plane_mae(target, target, mask) == 0.0
    # A change the same on every slice is consistent from slice to slice.
    assert ve.through_plane_mae(target + 0.2, target, mask) == pytest.approx(0.0, abs=1e-12)
    c = 0.1
    every_other = (np.arange(6) % 2 * c)[:, None, None]  # 0, c, 0, c, ...: each step is c
    assert ve.through_plane_mae(target + every_other, target, mask) == pytest.approx(c)
    alternating = (np.where(np.arange(6) % 2, -c, c))[:, None, None]  # +c, -c, ...: steps of 2c
    assert ve.through_plane_mae(target + alternating, target, mask) == pytest.approx(2 * c)
    # Only pairs of neighbouring voxels both in the mask count.
    flicker = target.copy()
    flicker[:, :6] += every_other
    half = np.zeros(target.shape, bool)
    half[:, 6:] = True
    assert ve.through_plane_mae(flicker, target, half) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(ve.through_plane_mae(target, target, np.zeros(target.shape, bool)))


def test_volume_ssim_is_the_slice_evaluations_ssim():
    rng = np.random.default_rng(1)
    target = rng.random((3, 24, 30)).astype(np.float32)
    prediction = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    mask = np.zeros(target.shape, bool)
    mask[:, 4:20, 6:25] = True
    scores = ve.volume_metrics(prediction, target, mask)
    local = metrics.ssim_map(prediction, target)
    assert scores["masked_ssim"] == pytest.approx(local[metrics.window_centre_mask(mask)].mean())
    error = (prediction - target)[mask].astype(np.float64)
    assert scores["masked_mae"] == pytest.approx(np.abs(error).mean())
    assert scores["masked_psnr"] == pytest.approx(-10 * np.log10(np.mean(error**2)))
    same = ve.volume_metrics(target, target, mask)
    assert same == pytest.approx(
        {"masked_ssim": 1.0, "masked_psnr": 100.0, "masked_mae": 0.0, "through_plane_mae": 0.0}
    )


# ------------------------------------------------------------------------ registration
def test_registration_recovers_a_known_rigid_transform(t1_2mm):
    # The same volume placed elsewhere in the world: turned 3 and 4 degrees about x and z,
    # shifted by (3, -2, 4) mm.
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", [3.0, 0.0, 4.0], degrees=True).as_matrix()
    centre = t1_2mm.affine[:3, :3] @ (np.array(t1_2mm.shape) / 2) + t1_2mm.affine[:3, 3]
    motion[:3, 3] = centre - motion[:3, :3] @ centre + [3.0, -2.0, 4.0]
    moved = nib.Nifti1Image(np.asarray(t1_2mm.dataobj), motion @ t1_2mm.affine)
    registered = ve.register_t2_to_t1(t1_2mm, moved, "rigid")
    assert registered.registration == "rigid"
    points = _head_points(t1_2mm)
    error = np.linalg.norm(_moved(points, registered.transform) - _moved(points, motion), axis=1)
    assert error.max() < 1.0  # mm: within a voxel of the demo volumes (and half of these)
    # Resampled back onto the T1 grid, it is the T1 again.
    head = np.asarray(t1_2mm.dataobj) > 40
    difference = np.abs(registered.t2 - np.asarray(t1_2mm.dataobj, np.float32))[head]
    assert registered.field_of_view[head].mean() > 0.99 and np.median(difference) < 10


def test_demo_second_t2_registers_to_its_t1_as_the_head_moved(t1_2mm):
    oblique = nib.load(OBLIQUE_T2)
    with pytest.raises(DataError, match=f"{OBLIQUE_T2}.*not on the voxel grid"):
        ve.register_t2_to_t1(t1_2mm, oblique, "none", ("the T1", str(OBLIQUE_T2)))
    registered = ve.register_t2_to_t1(t1_2mm, oblique, "rigid")
    points = _head_points(t1_2mm)
    error = np.linalg.norm(_moved(points, registered.transform) - demo.head_motion(points), axis=1)
    assert error.max() < 1.0
    # Volumes on one grid are taken as aligned, whatever is asked for.
    aligned = ve.register_t2_to_t1(t1_2mm, t1_2mm, "affine")
    assert aligned.registration == "none" and np.array_equal(aligned.transform, np.eye(4))


# ---------------------------------------------------------------------------- end to end
def test_evaluate_volumes_writes_csv_json_and_figure_for_a_registered_pair(
    tmp_path, t1_2mm, caplog
):
    t1_dir, t2_dir = tmp_path / "t1", tmp_path / "t2"
    t1_dir.mkdir()
    t2_dir.mkdir()
    nib.save(t1_2mm, t1_dir / "sub-21_T1w.nii.gz")
    (t2_dir / "sub-21_T2w.nii.gz").write_bytes(OBLIQUE_T2.read_bytes())
    (t2_dir / "sub-22_T2w.nii.gz").write_bytes(b"not read: it has no partner")
    # One generator as trained on volumes, one as trained on slices: both paths.
    generators = {
        direction: Generator(mri_gan.unet_generator(32, 32, direction, 8), direction, False, per)
        for direction, per in (("t1_to_t2", "volume"), ("t2_to_t1", "slice"))
    }
    rng = np.random.default_rng(2)
    references = {contrast: np.sort(rng.beta(2, 3, 1001)).astype(np.float32) for contrast in "12"}
    references = {"t1": references["1"], "t2": references["2"]}
    output = tmp_path / "evaluation"
    with caplog.at_level(logging.INFO):
        result = ve.evaluate_volumes(
            generators, t1_dir, t2_dir, output, histogram_references=references
        )
    assert any(str(t2_dir / "sub-22_T2w.nii.gz") in r.getMessage() for r in caplog.records)

    with open(output / ve.CSV_NAME, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {(row["direction"], row["method"]) for row in rows} == {
        (direction, method)
        for direction in ("t1_to_t2", "t2_to_t1")
        for method in ("model", "identity", "histogram_matching")
    }
    for row in rows:
        assert row["subject"] == "sub-21" and row["registration"] == "rigid"
        values = {name: float(row[name]) for name in ve.VOLUME_METRIC_NAMES}
        assert all(np.isfinite(list(values.values()))), row
        assert -1 <= values["masked_ssim"] <= 1 and 0 <= values["masked_mae"] <= 1
        assert values["through_plane_mae"] >= 0
    # The identity scores alike both ways: every metric is symmetric.
    identity = [row for row in rows if row["method"] == "identity"]
    assert identity[0]["masked_mae"] == identity[1]["masked_mae"]

    document = json.loads(json.dumps(result.document(), allow_nan=False))
    assert document["n_pairs"] == 1 and document["unpaired"][0].startswith(str(t2_dir))
    pair = document["pairs"][0]
    # The demo's head motion turns the head by this angle in all: the rotation's columns
    # are where it takes the unit vectors.
    turn = (demo.head_motion(np.eye(3)) - demo.head_motion(np.zeros(3))).T
    demo_turn = np.degrees(np.arccos((np.trace(turn) - 1) / 2))
    assert pair["t2_to_t1_rotation_deg"] == pytest.approx(demo_turn, abs=0.5)
    assert set(document["metrics"]["t2_to_t1"]) == {"model", "identity", "histogram_matching"}
    assert "through-plane MAE" in result.table()
    assert (output / ve.FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_volume_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "sub-01_T1w.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "sub-01_T2w.nii.gz").write_bytes(b"not a volume")
    generators = {
        direction: Generator(mri_gan.unet_generator(32, 32, direction, 8), direction, False)
        for direction in ("t1_to_t2", "t2_to_t1")
    }
    with pytest.raises(DataError) as raised:
        ve.evaluate_volumes(generators, tmp_path, tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "sub-01_T1w.nii.gz") in message and "\n" not in message
