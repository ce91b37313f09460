"""Files to batches: find images and volumes, preprocess them with ANTsPy once, batch them.

The flow is one way: image files and NIfTI volumes -> the ANTsPy preprocessing of
`preprocessing.py` (N4, normalization to [0, 1], slicing of volumes, resampling), once per
file, in parallel worker processes -> an on-disk cache keyed by file content and
parameters -> a `tf.data` pipeline that reads the cache, keeps the tensors in memory ->
[-1, 1] tensors -> shuffled, repeated batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from config import TrainConfig
from errors import DataError
from files import atomic_path
from preprocessing import (
    PREPROCESS_VERSION,
    Preprocessed,
    context_problem,
    preprocess_file,
    preprocess_or_reason,
    worker_count,
    worker_pool,
)
from scan_io import find_images
from volumes import is_nifti

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    """One training slice: an image file, or one slice of a NIfTI volume.

    key: the cache key of the file (image or volume). slice_index: None for an image;
    for a volume, the slice's position in `volumes.generator_view` of the volume.
    """

    path: Path
    key: str
    slice_index: int | None = None

    @property
    def cache_key(self) -> str:
        """The key of this slice's own cache entry."""
        return self.key if self.slice_index is None else f"{self.key}-{self.slice_index:04d}"


@dataclass(frozen=True)
class ScanResult:
    """The usable slices of one data dir and the files that were skipped, and why."""

    entries: tuple[ImageEntry, ...]
    skipped: tuple[tuple[Path, str], ...]
    volumes: int = 0

    def summary(self, label: str) -> str:
        reasons = Counter(reason for _, reason in self.skipped)
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        from_volumes = sum(entry.slice_index is not None for entry in self.entries)
        of_volumes = (
            f" ({from_volumes} slices of {self.volumes} volume{'s' * (self.volumes != 1)})"
            if self.volumes
            else ""
        )
        return (
            f"{label}: {len(self.entries)} images used{of_volumes}, "
            f"{len(self.skipped)} skipped" + (f" ({why})" if why else "")
        )


def preprocess_params(config: TrainConfig) -> str:
    """The preprocessing settings that an image's cache entry depends on."""
    return f"v{PREPROCESS_VERSION}|n4={config.n4}|size={config.img_height}x{config.img_width}"


def volume_params(config: TrainConfig) -> str:
    """The settings that a volume's cache entries depend on: an image's, and the slicing."""
    return (
        f"{preprocess_params(config)}|volume|axis={config.slice_axis}"
        f"|min_foreground={config.min_foreground!r}"
        + (f"|context={config.context_slices}" if config.context_slices else "")
    )


@dataclass(frozen=True)
class PendingFile:
    """A file to preprocess: its path, the cache key of its content, and its size in bytes."""

    path: Path
    key: str
    size: int


class PreprocessCache:
    """Preprocessed slices on disk, keyed by file content and preprocessing settings.

    An image is one `<key>.npy`. A volume is one `<key>-<slice>.npy` per kept slice and a
    manifest `<key>.json` listing them, written after them: until the manifest is there,
    the volume is not cached. Every file is written to a temporary name and renamed, so a
    crash never leaves a half-written entry under a real name. Thread-safe: tf.data reads
    it in parallel. Counters: `misses` slices made, `hits` slices read, `n4_calls` and
    `files_preprocessed` the ANTs work done by this process and its workers.
    """

    def __init__(self, cache_dir: Path, config: TrainConfig) -> None:
        self.cache_dir = cache_dir
        self.config = config
        self.params = preprocess_params(config)
        self.volume_params = volume_params(config)
        self.hits = 0
        self.misses = 0
        self.n4_calls = 0
        self.files_preprocessed = 0
        self.processes = 0  # how many processes the last `make_all` ran ANTs in
        self._lock = threading.Lock()

    def key_of(self, content: bytes, volume: bool = False) -> str:
        params = self.volume_params if volume else self.params
        return hashlib.sha256(params.encode() + b"\0" + content).hexdigest()

    def path_of(self, key: str) -> Path:
        return self.cache_dir / f"{key}.npy"

    def manifest_of(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def cached_entries(self, path: Path, key: str) -> tuple[ImageEntry, ...] | None:
        """The slices of `path` (content key `key`) if all are cached, else None.

        Needs no decoding of the file: an image's entry, or a volume's manifest.
        """
        if not is_nifti(path):
            return (ImageEntry(path, key),) if self.has(key) else None
        try:
            indices = json.loads(self.manifest_of(key).read_text())["slices"]
            entries = tuple(ImageEntry(path, key, int(index)) for index in indices)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entries if entries and all(self.has(e.cache_key) for e in entries) else None

    def store(self, path: Path, key: str, made: Preprocessed) -> tuple[ImageEntry, ...]:
        """Write the slices that `preprocess_file` made of `path`; its entries."""
        if not is_nifti(path):
            entries = (ImageEntry(path, key),)
        else:
            entries = tuple(ImageEntry(path, key, index) for index in made.indices)
        for entry, array in zip(entries, made.slices, strict=True):
            self._write(self.path_of(entry.cache_key), array)
        if is_nifti(path):
            # Last, so that a volume whose slices are not all written is not cached.
            with atomic_path(self.manifest_of(key)) as temporary:
                manifest = {"source": path.name, "params": self.volume_params}
                temporary.write_text(json.dumps({**manifest, "slices": list(made.indices)}))
        with self._lock:
            self.misses += len(entries)
            self.n4_calls += made.n4_calls
            self.files_preprocessed += 1
        return entries

    def load(self, entry: ImageEntry) -> np.ndarray:
        """The preprocessed slice of `entry`, (H, W) in [0, 1] (with context slices its slab,
        (H, W, 2K + 1)), from the cache or made now."""
        try:
            array = np.load(self.path_of(entry.cache_key), allow_pickle=False)
            if array.shape == self.config.sample_shape and array.dtype == np.float32:
                with self._lock:
                    self.hits += 1
                return array
        except (OSError, ValueError):
            pass
        made = preprocess_file(entry.path, self.config)
        self.store(entry.path, entry.key, made)
        return made.slices[made.indices.index(entry.slice_index or 0)]

    def load_or_make(self, path: Path, key: str) -> np.ndarray:
        """The preprocessed image of `path` in [0, 1], from the cache or made now."""
        return self.load(ImageEntry(path, key))

    def make_all(
        self, files: Sequence[PendingFile], workers: int | None = None, progress: bool = False
    ) -> dict[str, tuple[ImageEntry, ...] | str]:
        """Preprocess `files` and cache them: each key's entries, or why it was skipped.

        workers: processes to use; None: `preprocessing.worker_count` of the files' bytes.
        """
        if workers is None:
            workers = worker_count(sum(file.size for file in files))
        workers = max(1, min(workers, len(files)))
        self.processes = workers if files else 0
        if files:
            volumes = sum(is_nifti(file.path) for file in files)
            log.info(
                "Preprocessing %d files (%d NIfTI volumes) with ANTsPy in %d process%s; "
                "later runs read them from %s",
                len(files),
                volumes,
                workers,
                "es" * (workers > 1),
                self.cache_dir,
            )
        bar = keras.utils.Progbar(len(files), unit_name="file") if progress and files else None
        outcomes: dict[str, tuple[ImageEntry, ...] | str] = {}
        for file, made in preprocess_in_parallel(files, self.config, workers):
            outcomes[file.key] = (
                made if isinstance(made, str) else self.store(file.path, file.key, made)
            )
            if bar is not None:
                bar.add(1)
        return outcomes

    def _write(self, entry: Path, array: np.ndarray) -> None:
        with atomic_path(entry) as temporary, open(temporary, "wb") as stream:
            np.save(stream, array, allow_pickle=False)


def preprocess_in_parallel(
    files: Sequence[PendingFile], config: TrainConfig, workers: int
) -> Iterator[tuple[PendingFile, Preprocessed | str]]:
    """`preprocess_file` of each file as it finishes: its result, or why it is unusable.

    With more than one worker, in a `preprocessing.worker_pool`.
    """
    if workers <= 1:
        for file in files:
            yield file, preprocess_or_reason(file.path, config)
        return
    # Leaving the pool's block (an error, Ctrl-C) cancels the files not yet started.
    with worker_pool(workers) as pool:
        futures = {pool.submit(preprocess_or_reason, file.path, config): file for file in files}
        for future in as_completed(futures):
            yield futures[future], future.result()


def scan_data_dirs(
    data_dirs: Sequence[Path],
    cache: PreprocessCache,
    workers: int | None = None,
    progress: bool = False,
) -> list[ScanResult]:
    """Find the images and volumes of each data dir, preprocess those not cached, skip bad ones.

    Files are keyed by content; a file already in the cache is not decoded at all (a
    volume's manifest lists its slices). The others are preprocessed once, all dirs
    together, in `workers` processes (see `PreprocessCache.make_all`); a bad file is
    reported with a warning naming it and the reason. Raises DataError for a dir with no
    usable file, or one of 2-D images when slabs with context slices are asked for.
    """
    for data_dir in data_dirs:
        problem = context_problem(data_dir, cache.config.context_slices)
        if problem:
            raise DataError(problem)
    # Per dir: each file with its cached entries, its content key, or why it is unusable.
    found: list[list[tuple[Path, tuple[ImageEntry, ...] | str]]] = []
    pending: dict[str, PendingFile] = {}
    for data_dir in data_dirs:
        files: list[tuple[Path, tuple[ImageEntry, ...] | str]] = []
        for path in find_images(data_dir, volumes=True):
            try:
                content = path.read_bytes()
            except OSError:
                files.append((path, "unreadable file"))
                continue
            if not content:
                files.append((path, "empty file"))
                continue
            key = cache.key_of(content, volume=is_nifti(path))
            cached = cache.cached_entries(path, key)
            if cached is None and key not in pending:
                pending[key] = PendingFile(path, key, len(content))
            files.append((path, cached or key))
        found.append(files)
    made = cache.make_all(list(pending.values()), workers, progress)

    results = []
    for data_dir, files in zip(data_dirs, found, strict=True):
        entries: list[ImageEntry] = []
        skipped: list[tuple[Path, str]] = []
        volumes = 0
        for path, outcome in files:
            if isinstance(outcome, str) and outcome in made:
                outcome = made[outcome]
            if isinstance(outcome, tuple):
                # A copy of a file found elsewhere shares its entries, under its own name.
                entries.extend(replace(entry, path=path) for entry in outcome)
                volumes += is_nifti(path)
                continue
            log.warning("warning: skipped %s: %s", path, outcome)
            skipped.append((path, outcome))
        if not entries:
            raise DataError(f"data dir {data_dir} holds no readable image")
        results.append(ScanResult(tuple(entries), tuple(skipped), volumes))
    return results


def scan_images(
    data_dir: Path, cache: PreprocessCache, workers: int | None = None, progress: bool = False
) -> ScanResult:
    """`scan_data_dirs` of one data dir."""
    [result] = scan_data_dirs([data_dir], cache, workers, progress)
    return result


def preprocessed_dataset(
    entries: tuple[ImageEntry, ...], cache: PreprocessCache
) -> tf.data.Dataset:
    """Preprocessed slices in [-1, 1], shape (H, W, 1) (with context slices (H, W, 2K + 1)),
    in entry order, cached in memory.

    The slices are read from the on-disk cache (`scan_data_dirs` made them); ANTs runs
    here only for an entry that went missing since.
    """
    height, width = cache.config.image_shape
    channels = cache.config.channels

    def load(path: tf.Tensor, key: tf.Tensor, index: tf.Tensor) -> np.ndarray:
        slice_index = int(index.numpy())
        entry = ImageEntry(
            Path(path.numpy().decode()),
            key.numpy().decode(),
            None if slice_index < 0 else slice_index,
        )
        return cache.load(entry).reshape(height, width, channels)

    def load_tensor(path: tf.Tensor, key: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        image = tf.py_function(load, [path, key, index], tf.float32)
        return tf.ensure_shape(image, (height, width, channels)) * 2.0 - 1.0

    paths = [str(entry.path) for entry in entries]
    keys = [entry.key for entry in entries]
    indices = [-1 if entry.slice_index is None else entry.slice_index for entry in entries]
    return (
        tf.data.Dataset.from_tensor_slices((paths, keys, indices))
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


def make_training_data(
    config: TrainConfig, shuffle_seed: int, workers: int | None = None
) -> TrainingData:
    """Scan both data dirs, preprocess what is not cached, build the (t1_batch, t2_batch) stream.

    workers: preprocessing processes (see `PreprocessCache.make_all`; None: automatic).

    An epoch is one pass over the larger domain, the smaller one repeating, as in the
    reference CycleGAN; or `config.steps_per_epoch` steps when that is set. Raises
    DataError for a data dir training cannot use.
    """
    cache = PreprocessCache(config.resolved_cache_dir, config)
    t1_scan, t2_scan = scan_data_dirs(
        [config.data_dir_t1, config.data_dir_t2], cache, workers, progress=config.verbose == 1
    )
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
    steps_per_epoch = config.steps_per_epoch or max(1, larger // config.batch_size)
    return TrainingData(batches, steps_per_epoch, t1_scan, t2_scan, cache)


def sample_images(
    entries: tuple[ImageEntry, ...], cache: PreprocessCache, count: int
) -> np.ndarray:
    """`count` images of a domain spread evenly over its entries (so that a folder of
    volumes shows slices of several levels, not the first few neighbours), preprocessed,
    as (count, H, W, 1) in [-1, 1] (with context slices, (count, H, W, 2K + 1))."""
    height, width = cache.config.image_shape
    chosen = np.unique(np.linspace(0, len(entries) - 1, min(count, len(entries))).round())
    arrays = [cache.load(entries[int(index)]).reshape(height, width, -1) for index in chosen]
    return np.stack(arrays) * 2.0 - 1.0
