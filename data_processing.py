"""Files to batches: find images, read them, preprocess them with ANTsPy once, batch them.

The flow is one way: image files -> grayscale float32 arrays -> N4 bias correction,
normalization to [0, 1] and resampling (ANTsPy, in `tf.py_function` inside a parallel
`tf.data` map) -> an on-disk cache keyed by file content and parameters, and an
in-memory `tf.data` cache -> [-1, 1] tensors -> shuffled, repeated batches.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from config import TrainConfig
from errors import DataError
from files import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
# Below this an image holds too little anatomy to resample to a training size.
MIN_INPUT_SIDE = 16
# Bump when preprocessing changes, so old cache entries are never reused.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class ImageEntry:
    """One usable image file and the cache key of its preprocessed form."""

    path: Path
    key: str


@dataclass(frozen=True)
class ScanResult:
    """The usable images of one data dir and why the others were skipped."""

    entries: tuple[ImageEntry, ...]
    skipped: tuple[tuple[Path, str], ...]

    def summary(self, label: str) -> str:
        reasons = Counter(reason for _, reason in self.skipped)
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return f"{label}: {len(self.entries)} images used, {len(self.skipped)} skipped" + (
            f" ({why})" if why else ""
        )


def find_images(data_dir: Path) -> list[Path]:
    """All image files under `data_dir`, searched recursively, sorted by path.

    Raises DataError if `data_dir` is missing, is not a directory, or holds no image file.
    """
    if not data_dir.exists():
        raise DataError(f"data dir {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} is not a directory")
    paths = sorted(
        path
        for path in data_dir.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not paths:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"data dir {data_dir} holds no image file ({suffixes})")
    return paths


def read_grayscale(path: Path) -> np.ndarray:
    """Read an image file as one float32 channel of shape (H, W), at full precision.

    16-bit and 32-bit images keep their values (a 16-bit PNG gives 0..65535);
    colour, palette and bilevel images are converted to 8-bit grayscale first.
    Raises ValueError with a short reason if the file cannot be used.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "F") and not image.mode.startswith("I;16"):
                image = image.convert("L")
            array = np.asarray(image, dtype=np.float32)
    except UnidentifiedImageError as error:
        raise ValueError("not an image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError("unreadable or truncated image") from error
    if array.ndim != 2:
        raise ValueError(f"unexpected image shape {array.shape}")
    if min(array.shape) < MIN_INPUT_SIDE:
        raise ValueError(f"smaller than {MIN_INPUT_SIDE} px")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or Inf")
    return array


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Pixels brighter than 5 % of the bright end of the image: the head, not the air."""
    low = float(array.min())
    high = float(np.percentile(array, 99))
    return array > low + 0.05 * (high - low)


def normalize_intensity(
    array: np.ndarray, mask: np.ndarray | None = None, upper_percentile: float = 99.5
) -> np.ndarray:
    """Map an image to [0, 1]: its minimum to 0, its `upper_percentile` to 1, clipped.

    The percentile is taken over `mask` when given, so a few hot pixels or a small
    head in a large field of view do not set the scale. A constant image gives zeros.
    """
    low = float(array.min())
    values = array[mask] if mask is not None and mask.any() else array
    high = float(np.percentile(values, upper_percentile))
    if not high - low > 1e-12:
        return np.zeros(array.shape, np.float32)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def preprocess_slice(array: np.ndarray, height: int, width: int, n4: bool = True) -> np.ndarray:
    """N4 bias correction, normalization to [0, 1] and resampling with ANTsPy.

    Takes a 2-D float array of any size; returns float32 (height, width) in [0, 1].
    """
    import ants

    array = np.asarray(array, np.float32)
    if not float(array.max() - array.min()) > 0:
        return np.zeros((height, width), np.float32)
    # N4 works on log intensities, so it needs positive values.
    array = array - array.min()
    mask = foreground_mask(array)
    image = ants.from_numpy(array)
    # N4 needs enough foreground to fit its B-spline bias field.
    if n4 and mask.sum() >= 64:
        # Shrink so N4 works on about a 64-pixel grid: ANTs' default (4) at 256 px,
        # and bounded cost for larger images.
        shrink = max(1, round(max(array.shape) / 64))
        ants_mask = ants.from_numpy(mask.astype(np.float32))
        image = ants.n4_bias_field_correction(image, mask=ants_mask, shrink_factor=shrink)
    normalized = normalize_intensity(image.numpy(), mask)
    resampled = ants.resample_image(
        ants.from_numpy(normalized), (height, width), use_voxels=True, interp_type=0
    )
    return np.clip(resampled.numpy(), 0.0, 1.0).astype(np.float32)


def preprocess_params(config: TrainConfig) -> str:
    """The preprocessing settings that an image's cache entry depends on."""
    return f"v{PREPROCESS_VERSION}|n4={config.n4}|size={config.img_height}x{config.img_width}"


class PreprocessCache:
    """Preprocessed images on disk, keyed by file content and preprocessing settings.

    Entries are written to a temporary name and renamed, so a crash never leaves a
    half-written entry under a real key. Thread-safe: tf.data calls it in parallel.
    """

    def __init__(self, cache_dir: Path, config: TrainConfig) -> None:
        self.cache_dir = cache_dir
        self.config = config
        self.params = preprocess_params(config)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def key_of(self, content: bytes) -> str:
        return hashlib.sha256(self.params.encode() + b"\0" + content).hexdigest()

    def path_of(self, key: str) -> Path:
        return self.cache_dir / f"{key}.npy"

    def has(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def load_or_make(self, path: Path, key: str) -> np.ndarray:
        """The preprocessed image of `path` in [0, 1], from the cache or made now."""
        entry = self.path_of(key)
        try:
            array = np.load(entry, allow_pickle=False)
            if array.shape == self.config.image_shape and array.dtype == np.float32:
                with self._lock:
                    self.hits += 1
                return array
        except (OSError, ValueError):
            pass
        array = preprocess_slice(
            read_grayscale(path), self.config.img_height, self.config.img_width, self.config.n4
        )
        self._write(entry, array)
        with self._lock:
            self.misses += 1
        return array

    def _write(self, entry: Path, array: np.ndarray) -> None:
        with atomic_path(entry) as temporary, open(temporary, "wb") as stream:
            np.save(stream, array, allow_pickle=False)


def scan_images(data_dir: Path, cache: PreprocessCache) -> ScanResult:
    """Find the images of `data_dir`, key each by content, and skip unusable files.

    A file already in the cache is known good and is not decoded again; any other is
    decoded once here so that a bad file is reported now, with a warning naming it.
    """
    entries: list[ImageEntry] = []
    skipped: list[tuple[Path, str]] = []
    for path in find_images(data_dir):
        try:
            content = path.read_bytes()
            if not content:
                raise ValueError("empty file")
            key = cache.key_of(content)
            if not cache.has(key):
                read_grayscale(path)
        except OSError:
            reason = "unreadable file"
        except ValueError as error:
            reason = str(error)
        else:
            entries.append(ImageEntry(path, key))
            continue
        log.warning("warning: skipped %s: %s", path, reason)
        skipped.append((path, reason))
    if not entries:
        raise DataError(f"data dir {data_dir} holds no readable image")
    return ScanResult(tuple(entries), tuple(skipped))


def preprocessed_dataset(
    entries: tuple[ImageEntry, ...], cache: PreprocessCache
) -> tf.data.Dataset:
    """Preprocessed images in [-1, 1], shape (H, W, 1), in file order, cached in memory."""
    height, width = cache.config.image_shape

    def load(path: tf.Tensor, key: tf.Tensor) -> np.ndarray:
        return cache.load_or_make(Path(path.numpy().decode()), key.numpy().decode())

    def load_tensor(path: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        image = tf.py_function(load, [path, key], tf.float32)
        image = tf.ensure_shape(image, (height, width))
        return image[..., tf.newaxis] * 2.0 - 1.0

    paths = [str(entry.path) for entry in entries]
    keys = [entry.key for entry in entries]
    return (
        tf.data.Dataset.from_tensor_slices((paths, keys))
        .map(load_tensor, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
    )


# The paper's jitter: images are resized from 256 to 286 px, then cropped back.
JITTER_SCALE = 286 / 256


def jitter(image: tf.Tensor) -> tf.Tensor:
    """Random jitter of one (H, W, C) image in [-1, 1]: resize up by `JITTER_SCALE`
    (bilinear, so no overshoot), crop a random H x W window, flip left-right with
    probability 1/2 (the head's left-right axis: a mirrored brain is still a brain)."""
    height, width, channels = image.shape
    larger = (round(height * JITTER_SCALE), round(width * JITTER_SCALE))
    image = tf.image.resize(image, larger, method="bilinear")
    image = tf.image.random_crop(image, (height, width, channels))
    return tf.image.random_flip_left_right(image)


def training_batches(
    images: tf.data.Dataset, batch_size: int, buffer_size: int, seed: int, augment: bool = False
) -> tf.data.Dataset:
    """An endless stream of shuffled (batch, H, W, 1) batches of one domain, each image
    jittered anew at every epoch when `augment` (after the cache, so it stays cheap)."""
    images = images.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    if augment:
        images = images.map(jitter, num_parallel_calls=tf.data.AUTOTUNE)
    return images.batch(batch_size, drop_remainder=True)


@dataclass(frozen=True)
class TrainingData:
    """What training needs from the data: paired batches, epoch length, sample images."""

    batches: tf.data.Dataset
    steps_per_epoch: int
    t1_scan: ScanResult
    t2_scan: ScanResult
    cache: PreprocessCache


def make_training_data(config: TrainConfig, shuffle_seed: int) -> TrainingData:
    """Scan both data dirs and build the (t1_batch, t2_batch) stream.

    An epoch is one pass over the larger domain; the smaller one repeats, as in the
    reference CycleGAN. Raises DataError for a data dir training cannot use.
    """
    cache = PreprocessCache(config.resolved_cache_dir, config)
    t1_scan = scan_images(config.data_dir_t1, cache)
    t2_scan = scan_images(config.data_dir_t2, cache)
    for label, scan in (("T1", t1_scan), ("T2", t2_scan)):
        log.info("%s", scan.summary(label))
    t1_batches = training_batches(
        preprocessed_dataset(t1_scan.entries, cache),
        config.batch_size,
        config.buffer_size,
        shuffle_seed,
        config.augment,
    )
    t2_batches = training_batches(
        preprocessed_dataset(t2_scan.entries, cache),
        config.batch_size,
        config.buffer_size,
        shuffle_seed + 1,
        config.augment,
    )
    batches = tf.data.Dataset.zip((t1_batches, t2_batches)).prefetch(tf.data.AUTOTUNE)
    larger = max(len(t1_scan.entries), len(t2_scan.entries))
    steps_per_epoch = max(1, larger // config.batch_size)
    return TrainingData(batches, steps_per_epoch, t1_scan, t2_scan, cache)


def sample_images(
    entries: tuple[ImageEntry, ...], cache: PreprocessCache, count: int
) -> np.ndarray:
    """The first `count` images of a domain, preprocessed, as (count, H, W, 1) in [-1, 1]."""
    chosen = entries[:count]
    arrays = [cache.load_or_make(entry.path, entry.key) for entry in chosen]
    return np.stack(arrays)[..., np.newaxis] * 2.0 - 1.0
