"""What a data folder may hold, and what becomes of each: used, or skipped with a reason.

Every file here is made by the test. Outcomes: a usable image gives a finite
preprocessed slice in [0, 1]; an unusable one is skipped with a warning naming it.
"""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
from PIL import Image

import data_processing as dp
import preprocessing
from config import TrainConfig
from tests.conftest import head_slice, tiny_run_args, train_in_process, write_png_folder
from tests.test_main import run_main
from tests.test_nifti_input import head_volume, write_volume


def cache_in(tmp_path, **settings) -> dp.PreprocessCache:
    config = TrainConfig(img_height=32, img_width=32, output_dir=tmp_path / "out", **settings)
    return dp.PreprocessCache(tmp_path / "cache", config)


def usable_slice(cache: dp.PreprocessCache, folder) -> np.ndarray:
    """The one usable image of `folder`, preprocessed through the cache."""
    [entry] = dp.scan_images(folder, cache).entries
    return cache.load_or_make(entry.path, entry.key)


def save(folder, name: str, image: Image.Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name)


def assert_skipped_and_warned(scan, caplog, reasons: dict[str, str]) -> None:
    """The scan skipped exactly these files for these reasons, with a warning naming each."""
    assert dict((path.name, reason) for path, reason in scan.skipped) == reasons
    warned = " ".join(record.getMessage() for record in caplog.records)
    for path, _ in scan.skipped:
        assert str(path) in warned


@pytest.mark.parametrize(
    "name, make",
    [
        ("hot_pixel.png", lambda: np.pad(np.full((1, 1), 255, np.uint8), 20)),
        ("zeros.png", lambda: np.zeros((40, 40), np.uint8)),
        (
            "wide.png",
            lambda: head_slice(64, 20, 200, np.random.default_rng(0))[:32].astype(np.uint8),
        ),
        (
            "ü mit leerzeichen.png",
            lambda: head_slice(40, 14, 180, np.random.default_rng(2)).astype(np.uint8),
        ),
    ],
    ids=["one hot pixel", "all zero", "non-square", "non-ASCII name with spaces"],
)
def test_odd_but_valid_images_give_finite_slices_in_the_unit_range(tmp_path, name, make):
    folder = tmp_path / "data"
    save(folder, name, Image.fromarray(make()))

    image = usable_slice(cache_in(tmp_path), folder)

    assert image.shape == (32, 32)
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def test_a_4096_image_is_preprocessed_at_its_size_then_resampled(tmp_path):
    big = np.kron(head_slice(64, 24, 200, np.random.default_rng(1)), np.ones((64, 64)))
    out = preprocessing.preprocess_slice(big, 64, 64)
    small = preprocessing.preprocess_slice(
        head_slice(64, 24, 200, np.random.default_rng(1)), 64, 64
    )
    # The same anatomy at 64x the pixel count gives nearly the same training slice.
    assert np.abs(out - small).mean() < 0.05


def test_each_bad_file_is_skipped_with_its_reason(tmp_path, caplog):
    folder = tmp_path / "data"
    write_png_folder(folder, 1, 40, 200, seed=0)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("a text file with an image name")
    good = (folder / "slice_00.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 3])
    (folder / "folder.png").mkdir()
    save(folder, "tiny.png", Image.fromarray(np.full((8, 8), 9, np.uint8)))
    nan = np.ones((20, 20), np.float32)
    nan[2, 2], nan[3, 3] = np.nan, np.inf
    save(folder, "nan.tif", Image.fromarray(nan, mode="F"))

    with caplog.at_level(logging.WARNING):
        scan = dp.scan_images(folder, cache_in(tmp_path))

    assert [entry.path.name for entry in scan.entries] == ["slice_00.png"]
    assert_skipped_and_warned(
        scan,
        caplog,
        {
            "cut.png": "unreadable or truncated image",
            "empty.png": "empty file",
            "nan.tif": "contains NaN or Inf",
            "notes.png": "not an image",
            "tiny.png": "smaller than 16 px",
        },
    )
    assert scan.summary("T1") == (
        "T1: 1 images used, 5 skipped (1 contains NaN or Inf, 1 empty file, 1 not an image, "
        "1 smaller than 16 px, 1 unreadable or truncated image)"
    )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "I;16"])
def test_every_pixel_format_becomes_one_channel(tmp_path, mode):
    base = head_slice(40, 14, 200, np.random.default_rng(3))
    image = (
        Image.fromarray((base * 257).astype(np.uint16))
        if mode == "I;16"
        else Image.fromarray(base.astype(np.uint8)).convert(mode)
    )
    folder = tmp_path / "data"
    save(folder, "slice.png", image)

    slice_ = usable_slice(cache_in(tmp_path), folder)

    assert slice_.max() > 0.9 and slice_[0, 0] < 0.1


def test_mixed_sizes_and_an_unbalanced_pair_of_folders_train_in_full_batches(tmp_path):
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    rng = np.random.default_rng(4)
    for index, size in enumerate((40, 48, 64, 96, 40, 56, 72, 80, 128)):
        save(
            t1,
            f"{index}.png",
            Image.fromarray(head_slice(size, size / 3, 200, rng).astype(np.uint8)),
        )
    save(t2, "only.png", Image.fromarray(head_slice(40, 14, 120, rng).astype(np.uint8)))
    config = TrainConfig(
        data_dir_t1=t1,
        data_dir_t2=t2,
        img_height=32,
        img_width=32,
        batch_size=2,
        output_dir=tmp_path / "out",
    )

    data = dp.make_training_data(config, shuffle_seed=0)
    batches = list(data.batches.take(data.steps_per_epoch))

    assert data.steps_per_epoch == 9 // 2  # an epoch is a pass over the larger folder
    assert all(t1.shape == (2, 32, 32, 1) and t2.shape == (2, 32, 32, 1) for t1, t2 in batches)


@pytest.mark.parametrize("flag", ["--output_dir", "--cache_dir"])
def test_an_unwritable_output_or_cache_dir_is_a_one_line_error(tmp_path, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    target = blocker / "sub"
    result = run_main(
        flag, str(target), *(["--output_dir", str(tmp_path / "o")] if flag == "--cache_dir" else [])
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert str(target) in result.stderr and "Traceback" not in result.stderr


def test_each_bad_volume_is_skipped_with_its_reason(tmp_path, caplog):
    folder = tmp_path / "data"
    write_volume(folder / "good.nii.gz", head_volume())
    whole = write_volume(tmp_path / "whole.nii.gz", head_volume(1)).read_bytes()
    (folder / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.nii").write_text("a text file with a NIfTI name")
    write_volume(folder / "flat.nii.gz", head_volume()[:, :, 5])
    write_volume(folder / "series.nii.gz", np.stack([head_volume()] * 2, axis=-1))
    nan = head_volume()
    nan[20, 20, 5], nan[3, 3, 3] = np.nan, np.inf
    write_volume(folder / "nan.nii.gz", nan)
    write_volume(folder / "air.nii.gz", np.zeros((40, 48, 12), np.float32))
    (folder / "empty.nii.gz").write_bytes(b"")
    # A header whose datatype code (bytes 70-71 of a NIfTI-1 header) nibabel does not know.
    header = bytearray(gzip.decompress((folder / "good.nii.gz").read_bytes()))
    header[70:72] = (999).to_bytes(2, "little")
    (folder / "odd_type.nii").write_bytes(bytes(header))

    with caplog.at_level(logging.WARNING):
        scan = dp.scan_images(folder, cache_in(tmp_path, n4=False), workers=1)

    assert {entry.path.name for entry in scan.entries} == {"good.nii.gz"}
    assert_skipped_and_warned(
        scan,
        caplog,
        {
            "air.nii.gz": "no axial slice with 5% foreground",
            "cut.nii.gz": "unreadable or truncated NIfTI",
            "empty.nii.gz": "empty file",
            "flat.nii.gz": "2-D, not a 3-D volume",
            "nan.nii.gz": "contains NaN or Inf",
            "notes.nii": "unreadable or truncated NIfTI",
            "odd_type.nii": "unreadable or truncated NIfTI",
            "series.nii.gz": "4-D, not a 3-D volume",
        },
    )
    assert scan.summary("T1") == (
        "T1: 8 images used (8 slices of 1 volume), 8 skipped (1 2-D, not a 3-D volume, "
        "1 4-D, not a 3-D volume, 1 contains NaN or Inf, 1 empty file, "
        "1 no axial slice with 5% foreground, 3 unreadable or truncated NIfTI)"
    )


def test_a_dir_of_bad_volumes_is_a_one_line_error(tmp_path):
    t1 = tmp_path / "t1"
    write_volume(t1 / "air.nii.gz", np.zeros((40, 48, 12), np.float32))
    write_png_folder(tmp_path / "t2", 2, 40, 120, seed=0)

    result = train_in_process(*tiny_run_args(t1, tmp_path / "t2", tmp_path / "out"))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: data dir {t1} holds no readable image"
    assert "air.nii.gz: no axial slice with 5% foreground" in result.stderr
    assert "Traceback" not in result.stderr
