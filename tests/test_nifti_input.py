"""NIfTI volumes as training input: slicing as translation does, one N4 per volume, the cache.

Every volume here is made by the test: 40 x 48 x 12 voxels, the head in slices 2..9 of
the third voxel axis, the other 4 slices empty.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import data_processing as dp
import preprocessing
import volumes
from config import TrainConfig
from tests.conftest import write_png_folder

SHAPE = (40, 48, 12)
HEAD_SLICES = tuple(range(2, 10))
# Stored left to right reversed with 2 mm slices, as many scanners write axial scans.
AFFINE = np.diag([-1.0, 1.0, 2.0, 1.0])


def head_volume(seed: int = 0, brightness: float = 800.0) -> np.ndarray:
    """A toy head in float32, bright at its anterior right, so orientation shows."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(side) - (side - 1) / 2 for side in SHAPE), indexing="ij")
    inside = (x / 17) ** 2 + (y / 21) ** 2 + (z / 4.6) ** 2 < 1
    volume = np.where(inside, brightness, 0.0) * (1 + 0.3 * y / 24)  # a bias field
    # Voxel x runs right to left (AFFINE), y posterior to anterior.
    volume[inside & (x < -6) & (y > 8)] = 2 * brightness
    volume += rng.normal(0, brightness / 50, SHAPE) * inside
    volume[:, :, [0, 1, 10, 11]] = 0
    return np.clip(volume, 0, None).astype(np.float32)


def write_volume(path: Path, volume: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def cache_for(tmp_path: Path, **settings) -> dp.PreprocessCache:
    values = dict(img_height=32, img_width=32, output_dir=tmp_path / "out", n4=False)
    values.update(settings)
    return dp.PreprocessCache(tmp_path / "cache", TrainConfig(**values))


def slices_of(scan: dp.ScanResult, cache: dp.PreprocessCache) -> np.ndarray:
    return np.stack([cache.load(entry) for entry in scan.entries])


def test_volume_slices_are_cut_as_translation_shows_them_and_empty_ones_skipped(tmp_path):
    volume = head_volume()
    write_volume(tmp_path / "t1" / "sub-01.nii.gz", volume)
    cache = cache_for(tmp_path)

    scan = dp.scan_images(tmp_path / "t1", cache)
    slices = slices_of(scan, cache)

    assert [entry.slice_index for entry in scan.entries] == list(HEAD_SLICES)
    assert scan.summary("T1") == "T1: 8 images used (8 slices of 1 volume), 0 skipped"
    assert slices.shape == (8, 32, 32) and slices.dtype == np.float32
    assert slices.min() >= 0 and slices.max() <= 1
    # Exactly translation's view of the volume, normalized over the volume and resampled.
    view = volumes.generator_view(volume, AFFINE)
    mask = preprocessing.foreground_mask(view)
    normalized = preprocessing.normalize_intensity(view, mask)
    for index, got in zip(HEAD_SLICES, slices, strict=True):
        np.testing.assert_allclose(got, preprocessing.resample_to(normalized[index], 32, 32))
    # Anterior up, right on the right: the bright anterior-right part is in the top right.
    rows, columns = np.nonzero(slices[4] > 0.9)
    assert len(rows) > 10 and rows.max() < 16 and columns.min() >= 16


def test_the_same_anatomy_stored_another_way_gives_the_same_slices(tmp_path):
    volume = head_volume()
    write_volume(tmp_path / "a" / "ras.nii.gz", volume)
    # In-plane voxel axes swapped and the slice order reversed, with the matching affine.
    stored = volume.transpose(1, 0, 2)[:, :, ::-1]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, SHAPE[2] - 1
    write_volume(tmp_path / "b" / "other.nii", stored, AFFINE[:, [1, 0, 2, 3]] @ flip)
    cache = cache_for(tmp_path)

    first, second = dp.scan_data_dirs([tmp_path / "a", tmp_path / "b"], cache)

    assert [e.slice_index for e in first.entries] == [e.slice_index for e in second.entries]
    np.testing.assert_allclose(slices_of(first, cache), slices_of(second, cache), atol=1e-6)


def test_min_foreground_and_slice_axis_choose_the_slices_and_key_the_cache(tmp_path):
    path = write_volume(tmp_path / "t1" / "v.nii.gz", head_volume())
    content = path.read_bytes()
    strict = cache_for(tmp_path, min_foreground=0.5)
    sagittal = cache_for(tmp_path, slice_axis="sagittal")

    kept = [entry.slice_index for entry in dp.scan_images(path.parent, strict).entries]
    with pytest.raises(dp.DataError, match="no readable image"):
        dp.scan_images(path.parent, sagittal)  # its 48 x 12 slices are too small

    assert 0 < len(kept) < len(HEAD_SLICES) and set(kept) <= set(HEAD_SLICES)
    keys = {c.key_of(content, volume=True) for c in (cache_for(tmp_path), strict, sagittal)}
    assert len(keys) == 3


def test_one_n4_call_per_volume_and_no_preprocessing_on_the_second_run(tmp_path, monkeypatch):
    folder = tmp_path / "t1"
    write_volume(folder / "sub-01.nii.gz", head_volume())
    write_png_folder(folder, 1, 40, 200, seed=0)
    first_cache = cache_for(tmp_path, n4=True)

    first = dp.scan_images(folder, first_cache, workers=1)
    made = slices_of(first, first_cache)

    # One 3-D N4 for the volume's 8 slices, one 2-D N4 for the PNG.
    assert (first_cache.files_preprocessed, first_cache.n4_calls) == (2, 2)
    assert first_cache.misses == 9 == len(first.entries)

    # A second run reads the manifest and the slices: it never opens the volume.
    def no_decoding(*args, **kwargs):
        raise AssertionError("the volume was decoded again")

    monkeypatch.setattr(nib, "load", no_decoding)
    second_cache = cache_for(tmp_path, n4=True)
    second = dp.scan_images(folder, second_cache, workers=1)
    again = slices_of(second, second_cache)

    assert (second_cache.files_preprocessed, second_cache.n4_calls, second_cache.misses) == (
        0,
        0,
        0,
    )
    assert second_cache.hits == 9 and second.entries == first.entries
    np.testing.assert_array_equal(again, made)


def test_a_volume_with_a_missing_slice_or_manifest_is_made_again(tmp_path):
    folder = tmp_path / "t1"
    path = write_volume(folder / "v.nii.gz", head_volume())
    cache = cache_for(tmp_path)
    first = dp.scan_images(folder, cache)
    key = first.entries[0].key
    # What a crash leaves: a temporary file of a slice, and no manifest yet.
    entry = cache.path_of(first.entries[3].cache_key)
    entry.rename(entry.with_name(f".{entry.name}.123-4.tmp.npy"))
    assert cache.cached_entries(path, key) is None
    cache.manifest_of(key).unlink()

    again = cache_for(tmp_path)
    second = dp.scan_images(folder, again)

    assert again.files_preprocessed == 1 and second.entries == first.entries
    assert cache.cached_entries(path, key) == first.entries


def test_a_process_pool_makes_the_same_slices_as_one_process(tmp_path):
    for seed in range(2):
        write_volume(tmp_path / "data" / f"v{seed}.nii.gz", head_volume(seed))
    write_png_folder(tmp_path / "data", 2, 40, 200, seed=0)
    alone = dp.PreprocessCache(tmp_path / "alone", cache_for(tmp_path).config)
    pooled = dp.PreprocessCache(tmp_path / "pooled", cache_for(tmp_path).config)

    one = dp.scan_images(tmp_path / "data", alone, workers=1)
    two = dp.scan_images(tmp_path / "data", pooled, workers=2)

    assert one.entries == two.entries and len(one.entries) == 2 * 8 + 2
    assert pooled.files_preprocessed == 4
    np.testing.assert_array_equal(slices_of(one, alone), slices_of(two, pooled))


def test_training_data_mixes_volumes_and_images(tmp_path, caplog):
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    write_volume(t1 / "sub-01_T1w.nii.gz", head_volume(1))
    write_png_folder(t1, 2, 40, 200, seed=1)
    write_volume(t2 / "sub-02_T2w.nii", head_volume(2, brightness=300))
    config = cache_for(tmp_path, data_dir_t1=t1, data_dir_t2=t2, batch_size=4).config

    with caplog.at_level(logging.INFO):
        data = dp.make_training_data(config, shuffle_seed=0)
    t1_batch, t2_batch = next(iter(data.batches))

    assert data.steps_per_epoch == 10 // 4
    assert t1_batch.shape == (4, 32, 32, 1) == t2_batch.shape
    for batch in (t1_batch.numpy(), t2_batch.numpy()):
        assert np.isfinite(batch).all() and batch.min() >= -1 and batch.max() <= 1
    logged = caplog.text
    assert "T1: 10 images used (8 slices of 1 volume), 0 skipped" in logged
    assert "T2: 8 images used (8 slices of 1 volume), 0 skipped" in logged


@pytest.mark.parametrize(
    "volumes_written, pngs, expected",
    [(0, 3, "slice"), (1, 0, "volume"), (1, 3, "volume"), (1, 13, "slice")],
)
def test_a_data_dir_is_preprocessed_per_volume_when_volumes_give_most_slices(
    tmp_path, volumes_written, pngs, expected
):
    # A volume counts its 12 axial slices, empty ones included.
    for index in range(volumes_written):
        write_volume(tmp_path / "data" / f"sub-{index:02d}.nii.gz", head_volume(index))
    if pngs:
        write_png_folder(tmp_path / "data" / "slices", pngs, 40, 200, seed=0)

    assert preprocessing.preprocessed_per(tmp_path / "data") == expected


def test_the_slices_of_a_volume_count_along_the_slice_axis(tmp_path):
    write_volume(tmp_path / "data" / "v.nii.gz", head_volume())  # 40 sagittal slices
    write_png_folder(tmp_path / "data", 13, 40, 200, seed=0)

    assert preprocessing.preprocessed_per(tmp_path / "data", "axial") == "slice"
    assert preprocessing.preprocessed_per(tmp_path / "data", "sagittal") == "volume"


def test_a_data_dir_that_cannot_be_searched_says_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert preprocessing.preprocessed_per(tmp_path / "nowhere") is None
    assert preprocessing.preprocessed_per(tmp_path / "empty") is None
