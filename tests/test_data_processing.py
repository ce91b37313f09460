"""Loading, ANTsPy preprocessing, the preprocessing cache and the tf.data pipeline."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_processing as dp
import preprocessing
import scan_io
from config import TrainConfig
from errors import DataError
from tests.conftest import head_slice, write_png_folder


def config_for(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(img_height=32, img_width=32, batch_size=2, output_dir=tmp_path / "out")
    settings.update(overrides)
    return TrainConfig(**settings)


# --- finding files ---------------------------------------------------------------------


def test_find_images_searches_recursively_sorted_and_ignores_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("b/2.png", "a/deep/1.TIF", "a/0.jpg", "z.bmp", "notes.txt", "a/x.nii"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a directory with an image name is not an image

    found = scan_io.find_images(tmp_path)

    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/0.jpg",
        "a/deep/1.TIF",
        "b/2.png",
        "z.bmp",
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "file.png").write_bytes(b"x") and p / "file.png", "is not a directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no image file"),
    ],
)
def test_find_images_refuses_unusable_dirs_naming_them(tmp_path, make, message):
    data_dir = make(tmp_path)
    with pytest.raises(dp.DataError, match=message) as caught:
        scan_io.find_images(data_dir)
    assert str(data_dir) in str(caught.value)


# --- reading images --------------------------------------------------------------------


def test_read_grayscale_keeps_16_bit_png_values(tmp_path):
    values = np.array([[0, 300], [4095, 65535]], dtype=np.uint16)
    image = np.tile(values, (10, 10))
    Image.fromarray(image).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")

    array = scan_io.read_grayscale(tmp_path / "deep.png")

    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, image.astype(np.float32))


def test_read_grayscale_keeps_16_bit_and_float_tiff(tmp_path):
    deep = (np.arange(400, dtype=np.uint16) * 150).reshape(20, 20)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    real = np.linspace(-1.5, 2000.25, 400, dtype=np.float32).reshape(20, 20)
    Image.fromarray(real, mode="F").save(tmp_path / "real.tiff")

    np.testing.assert_array_equal(scan_io.read_grayscale(tmp_path / "deep.tif"), deep)
    np.testing.assert_array_equal(scan_io.read_grayscale(tmp_path / "real.tiff"), real)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "LA"])
def test_read_grayscale_turns_colour_palette_and_bilevel_into_one_channel(tmp_path, mode):
    gray = np.zeros((20, 24), np.uint8)
    gray[5:15, 6:18] = 255
    Image.fromarray(gray).convert(mode).save(tmp_path / "image.png")

    array = scan_io.read_grayscale(tmp_path / "image.png")

    assert array.shape == (20, 24)
    assert array[10, 10] == 255 and array[0, 0] == 0


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"this is a text file", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "unreadable or truncated"),
    ],
)
def test_read_grayscale_rejects_non_images_with_a_reason(tmp_path, content, reason):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        scan_io.read_grayscale(tmp_path / "bad.png")


def test_read_grayscale_rejects_tiny_and_non_finite_images(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tiny.png")
    nan = np.ones((20, 20), np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")

    with pytest.raises(ValueError, match="smaller than 16 px"):
        scan_io.read_grayscale(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="NaN or Inf"):
        scan_io.read_grayscale(tmp_path / "nan.tif")


# --- preprocessing ---------------------------------------------------------------------


def test_normalize_intensity_maps_min_to_0_and_percentile_to_1():
    array = np.array([[10.0, 20.0], [30.0, 110.0]], np.float32)
    # With upper_percentile=100 the maximum maps to 1: (x - 10) / 100.
    np.testing.assert_allclose(
        preprocessing.normalize_intensity(array, upper_percentile=100), [[0.0, 0.1], [0.2, 1.0]]
    )
    # A mask sets the scale from the masked values only; the rest is clipped.
    mask = np.array([[False, True], [True, False]])
    np.testing.assert_allclose(
        preprocessing.normalize_intensity(array, mask, upper_percentile=100),
        [[0.0, 0.5], [1.0, 1.0]],
    )


def test_normalize_intensity_of_a_constant_image_is_zero_not_nan():
    out = preprocessing.normalize_intensity(np.full((4, 4), 7.0, np.float32))
    assert np.all(out == 0)


def test_preprocess_slice_gives_target_shape_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    # A non-square 16-bit-range slice with a smooth bias field across it.
    image = head_slice(60, 22, 3000, rng)[:, :48] * np.linspace(0.6, 1.4, 48)

    out = preprocessing.preprocess_slice(image, 32, 48)

    assert out.shape == (32, 48) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > 0.9  # the head's bright end reaches the top of the range
    assert out[0, 0] < 0.05  # the air stays dark


def test_n4_flattens_a_bias_field():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    tissue = np.where(np.hypot(yy - 47.5, xx - 47.5) < 40, 1000.0, 0.0)
    biased = tissue * np.exp(0.5 * (xx - 47.5) / 47.5) + rng.normal(0, 5, tissue.shape).clip(0)
    inside = np.hypot(yy - 47.5, xx - 47.5) < 34
    left, right = inside & (xx < 30), inside & (xx > 65)

    def left_right_ratio(out):
        return out[right].mean() / out[left].mean()

    without = preprocessing.preprocess_slice(biased, 96, 96, n4=False)
    corrected = preprocessing.preprocess_slice(biased, 96, 96, n4=True)

    assert left_right_ratio(without) > 1.5
    assert abs(left_right_ratio(corrected) - 1.0) < abs(left_right_ratio(without) - 1.0) / 2


@pytest.mark.parametrize("value", [0.0, 255.0])
def test_preprocess_slice_of_a_constant_image_is_finite_zero(value):
    out = preprocessing.preprocess_slice(np.full((40, 40), value, np.float32), 32, 32)
    assert np.isfinite(out).all() and np.all(out == 0)


def test_preprocess_slices_in_worker_processes_match_one_process_in_order(monkeypatch):
    rng = np.random.default_rng(0)
    # Ten different heads, more than the pool takes ahead (4 a worker), so slices are
    # handed out while earlier ones come back.
    slices = [head_slice(48, 12 + index, 100 + 15 * index, rng) for index in range(10)]
    pools = []
    real_pool = preprocessing.worker_pool

    def counted_pool(workers):
        pools.append(workers)
        return real_pool(workers)

    monkeypatch.setattr(preprocessing, "worker_pool", counted_pool)

    serial = list(preprocessing.preprocess_slices(slices, 32, 32, n4=True, workers=1))
    assert pools == []
    pooled = list(preprocessing.preprocess_slices(slices, 32, 32, n4=True, workers=2))
    assert pools == [2]

    assert len(pooled) == len(slices)
    # The same slices in the same order; ITK's N4 differs in the fourth decimal with the
    # number of threads it runs on (two here, one in each worker).
    np.testing.assert_allclose(np.stack(pooled), np.stack(serial), atol=2e-3)
    for index in range(1, len(slices)):
        assert np.abs(pooled[index] - serial[index - 1]).max() > 0.05


def test_in_order_cancels_the_calls_not_started_when_the_consumer_stops():
    ran = []
    second_started, gate = threading.Event(), threading.Event()

    def work(index):
        if index > 0:
            second_started.set()
            gate.wait(10)
        ran.append(index)
        return index

    with ThreadPoolExecutor(1) as pool:
        results = preprocessing.in_order(pool, work, ((index,) for index in range(10)), 4)
        assert next(results) == 0
        assert second_started.wait(10)
        # Calls 1 (running, held at the gate), 2 and 3 are out; the consumer stops.
        results.close()
        gate.set()
    assert ran == [0, 1]


def test_a_worker_process_that_dies_is_a_one_line_data_error():
    with pytest.raises(DataError, match="worker process ended abruptly"):
        with preprocessing.worker_pool(1) as pool:
            pool.submit(os._exit, 1).result()


# --- cache and scan --------------------------------------------------------------------


def test_cache_key_changes_with_content_and_with_preprocessing_settings(tmp_path):
    cache = dp.PreprocessCache(tmp_path, config_for(tmp_path))
    other_size = dp.PreprocessCache(tmp_path, config_for(tmp_path, img_height=64))
    no_n4 = dp.PreprocessCache(tmp_path, config_for(tmp_path, n4=False))

    keys = {cache.key_of(b"a"), cache.key_of(b"b"), other_size.key_of(b"a"), no_n4.key_of(b"a")}

    assert len(keys) == 4
    assert cache.key_of(b"a") == dp.PreprocessCache(tmp_path / "x", config_for(tmp_path)).key_of(
        b"a"
    )


def test_cache_preprocesses_once_and_serves_the_same_array(tmp_path):
    [path] = write_png_folder(tmp_path / "images", 1, 40, 200, seed=0)
    cache = dp.PreprocessCache(tmp_path / "cache", config_for(tmp_path))
    key = cache.key_of(path.read_bytes())

    first = cache.load_or_make(path, key)
    second = cache.load_or_make(path, key)

    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{key}.npy"]


def test_cache_remakes_an_entry_that_is_corrupt(tmp_path):
    [path] = write_png_folder(tmp_path / "images", 1, 40, 200, seed=0)
    cache = dp.PreprocessCache(tmp_path / "cache", config_for(tmp_path))
    key = cache.key_of(path.read_bytes())
    good = cache.load_or_make(path, key)
    cache.path_of(key).write_bytes(b"\x93NUMPY garbage")

    again = cache.load_or_make(path, key)

    assert cache.misses == 2
    np.testing.assert_array_equal(again, good)


def test_scan_of_a_dir_with_no_readable_image_is_an_error(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_text("nope")
    cache = dp.PreprocessCache(tmp_path / "cache", config_for(tmp_path))
    with pytest.raises(dp.DataError, match="no readable image"):
        dp.scan_images(folder, cache)


# --- the tf.data pipeline --------------------------------------------------------------


def test_training_data_batches_both_domains_in_minus_one_to_one(tiny_dataset, tmp_path):
    t1_dir, t2_dir = tiny_dataset
    # The T2 folder gets a constant image: it must not put NaN into a batch.
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(t2_dir / "zero.png")
    config = config_for(tmp_path, data_dir_t1=t1_dir, data_dir_t2=t2_dir, batch_size=3)

    data = dp.make_training_data(config, shuffle_seed=0)
    t1, t2 = next(iter(data.batches))

    assert data.steps_per_epoch == 5 // 3
    assert t1.shape == (3, 32, 32, 1) and t2.shape == (3, 32, 32, 1)
    for batch in (t1.numpy(), t2.numpy()):
        assert np.isfinite(batch).all()
        assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert len(list((tmp_path / "out" / "cache").glob("*.npy"))) == 9


def test_fewer_images_than_the_batch_size_still_give_full_batches(tiny_dataset, tmp_path):
    t1_dir, t2_dir = tiny_dataset
    config = config_for(tmp_path, data_dir_t1=t1_dir, data_dir_t2=t2_dir, batch_size=6)

    data = dp.make_training_data(config, shuffle_seed=0)
    t1, _ = next(iter(data.batches))

    assert data.steps_per_epoch == 1
    assert t1.shape[0] == 6


def test_sample_images_are_spread_over_the_files_and_preprocessed(tiny_dataset, tmp_path):
    t1_dir, _ = tiny_dataset
    cache = dp.PreprocessCache(tmp_path / "cache", config_for(tmp_path))
    scan = dp.scan_images(t1_dir, cache)

    samples = dp.sample_images(scan.entries, cache, 2)

    # The first and the last of the 4 files.
    expected = (
        preprocessing.preprocess_slice(scan_io.read_grayscale(scan.entries[3].path), 32, 32) * 2 - 1
    )
    assert samples.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(samples[1, ..., 0], expected, atol=1e-6)
    assert dp.sample_images(scan.entries, cache, 9).shape == (4, 32, 32, 1)
