"""ANTsPy preprocessing of one input file: an image or a NIfTI volume -> [0, 1] training slices.

Images: grayscale float32 -> N4 bias correction -> normalization to [0, 1] -> resampling
to the training size. Volumes: read once -> one 3-D N4 -> normalization over the whole
volume -> cut into slices as translation shows them (`volumes.generator_view`) -> slices
with too little head dropped -> each resampled to the training size. `preprocessed_per`
says which of the two most slices of a data dir get, so that translation can repeat it.

No TensorFlow here, so the worker processes that run this in parallel start in seconds.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np

from config import TrainConfig
from errors import DataError
from scan_io import MIN_INPUT_SIDE, find_images, read_grayscale, read_volume
from volumes import generator_view, is_nifti, view_shape

# Bump when preprocessing changes, so old cache entries are never reused.
PREPROCESS_VERSION = 1
# A worker process takes about 3 s to start (Python, nibabel, ANTsPy); below this much
# input, a few seconds of preprocessing, one process is done before a pool has started.
POOL_MIN_BYTES = 2_000_000
# How many slices each worker process may be given before the first is taken back.
SLICES_AHEAD_PER_WORKER = 4
# N4 needs enough foreground to fit its B-spline bias field.
MIN_N4_FOREGROUND = 64
# Normalization maps this percentile of the foreground to 1 (`normalize_intensity`);
# translation's `--intensity input` inverts it.
UPPER_PERCENTILE = 99.5
# N4 works on a grid shrunk to about this many voxels per side: ANTs' default shrink
# factor 4 at 256 px, and a bounded cost for larger inputs.
N4_GRID_SIDE = 64
# What training preprocesses as one unit (`preprocess_file`): a 2-D image ("slice": its
# own N4 and normalization) or a whole NIfTI volume ("volume": one 3-D N4 and one
# normalization, then cut into slices). Translation repeats what the model was trained on.
PREPROCESSED_PER = ("slice", "volume")

T = TypeVar("T")


@dataclass(frozen=True)
class Preprocessed:
    """The training slices of one file, and how much ANTs work making them took.

    slices: float32 (count, height, width) in [0, 1], or (count, height, width, 2K + 1)
    slabs when made with K context slices (the slice in the middle channel).
    indices: for a volume, the position of each slice in `volumes.generator_view` of the
    volume; (0,) for an image.
    n4_calls: how many times N4 ran (0 or 1: a volume is corrected in one 3-D call).
    """

    slices: np.ndarray
    indices: tuple[int, ...]
    n4_calls: int


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Pixels brighter than 5 % of the bright end of the image: the head, not the air."""
    low = float(array.min())
    high = float(np.percentile(array, 99))
    return array > low + 0.05 * (high - low)


def normalize_intensity(
    array: np.ndarray, mask: np.ndarray | None = None, upper_percentile: float = UPPER_PERCENTILE
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


def n4_shrink_factor(shape: tuple[int, ...]) -> int:
    """N4's shrink factor for an image or volume of `shape`: about N4_GRID_SIDE per side.

    Volumes round up: a 3-D fit costs far more per grid point, and 4 at 1 mm for a whole
    head (177 x 214 x 107: 41 s here, against 78 s at 3) is what ANTs' own brain
    pipelines use.
    """
    if len(shape) == 3:
        return max(1, math.ceil(max(shape) / N4_GRID_SIDE))
    return max(1, round(max(shape) / N4_GRID_SIDE))


def n4_correct(
    array: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...] | None = None
) -> np.ndarray:
    """ANTs N4 bias-field correction of a positive 2-D or 3-D array within `mask`.

    spacing: the voxel size in mm, so that N4's B-spline mesh is isotropic in space.
    """
    import ants  # imported where used: it takes seconds to load

    spacing = tuple(float(side) for side in spacing) if spacing else (1.0,) * array.ndim
    image = ants.from_numpy(np.ascontiguousarray(array, np.float32), spacing=spacing)
    ants_mask = ants.from_numpy(mask.astype(np.float32), spacing=spacing)
    corrected = ants.n4_bias_field_correction(
        image, mask=ants_mask, shrink_factor=n4_shrink_factor(array.shape)
    )
    return corrected.numpy()


def resample_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] 2-D array resampled to (height, width) with ANTsPy (voxels, linear), clipped."""
    if array.shape == (height, width):
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    import ants

    resampled = ants.resample_image(
        ants.from_numpy(np.ascontiguousarray(array, np.float32)),
        (height, width),
        use_voxels=True,
        interp_type=0,
    )
    return np.clip(resampled.numpy(), 0.0, 1.0).astype(np.float32)


def preprocess_image(array: np.ndarray, height: int, width: int, n4: bool = True) -> Preprocessed:
    """`preprocess_slice` of one image, with the count of N4 calls it took."""
    array = np.asarray(array, np.float32)
    if not float(array.max() - array.min()) > 0:
        return Preprocessed(np.zeros((1, height, width), np.float32), (0,), 0)
    # N4 works on log intensities, so it needs positive values.
    array = array - array.min()
    mask = foreground_mask(array)
    n4_calls = 0
    if n4 and mask.sum() >= MIN_N4_FOREGROUND:
        array = n4_correct(array, mask)
        n4_calls = 1
    normalized = normalize_intensity(array, mask)
    return Preprocessed(resample_to(normalized, height, width)[np.newaxis], (0,), n4_calls)


def preprocess_slice(array: np.ndarray, height: int, width: int, n4: bool = True) -> np.ndarray:
    """N4 bias correction, normalization to [0, 1] and resampling with ANTsPy.

    Takes a 2-D float array of any size; returns float32 (height, width) in [0, 1].
    """
    return preprocess_image(array, height, width, n4).slices[0]


def preprocess_volume(
    image: nib.Nifti1Image,
    height: int,
    width: int,
    *,
    n4: bool = True,
    slice_axis: str = "axial",
    min_foreground: float = 0.05,
    context_slices: int = 0,
) -> Preprocessed:
    """A 3-D volume's training slices: float32 (count, height, width) in [0, 1], or with
    `context_slices` K > 0 each slice's slab (count, height, width, 2K + 1) (`slabs`).

    One 3-D N4 call over the whole volume (its foreground as the mask, its voxel size as
    the spacing), normalization over the whole volume (minimum -> 0, 99.5th percentile of
    the foreground -> 1), then the slices along `slice_axis` exactly as translation shows
    them to the generator (`volumes.generator_view`). A slice whose foreground (by the
    whole volume's threshold, as in translation) covers less than `min_foreground` of its
    pixels is dropped. Raises ValueError if the slices are too small or none is kept.
    """
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if min(view_shape(data.shape, image.affine, slice_axis)[1:]) < MIN_INPUT_SIDE:
        raise ValueError(f"{slice_axis} slices smaller than {MIN_INPUT_SIDE} px")
    mask = foreground_mask(data - data.min())
    coverage = generator_view(mask, image.affine, slice_axis).mean(axis=(1, 2))
    chosen = tuple(int(index) for index in np.flatnonzero(coverage >= min_foreground))
    if not chosen:
        raise ValueError(f"no {slice_axis} slice with {min_foreground:.0%} foreground")
    n4_calls = int(n4 and mask.sum() >= MIN_N4_FOREGROUND)
    unit = unit_volume(data, image.header.get_zooms()[:3], n4)
    view = generator_view(unit, image.affine, slice_axis)
    if context_slices:
        return Preprocessed(slabs(view, chosen, context_slices, height, width), chosen, n4_calls)
    slices = np.stack([resample_to(view[index], height, width) for index in chosen])
    return Preprocessed(slices, chosen, n4_calls)


def slab_indices(index: int, context_slices: int, count: int) -> list[int]:
    """The slices of the slab around slice `index` of a stack of `count`: its K
    neighbours on each side, in order; past either end of the stack the end slice repeats
    (as reflection-free padding: the head does not continue beyond the scan)."""
    return [
        min(max(index + step, 0), count - 1) for step in range(-context_slices, context_slices + 1)
    ]


def slabs(
    view: np.ndarray, chosen: Sequence[int], context_slices: int, height: int, width: int
) -> np.ndarray:
    """float32 (len(chosen), height, width, 2K + 1): for each chosen slice of `view`
    ((slices, rows, columns) in [0, 1]), its slab (`slab_indices`), each slice resampled to
    height x width once however many slabs it is in."""
    needed = sorted({i for index in chosen for i in slab_indices(index, context_slices, len(view))})
    resampled = {i: resample_to(view[i], height, width) for i in needed}
    return np.stack(
        [
            np.stack([resampled[i] for i in slab_indices(index, context_slices, len(view))], -1)
            for index in chosen
        ]
    )


def unit_volume(data: np.ndarray, spacing: Sequence[float], n4: bool) -> np.ndarray:
    """A whole volume normalized as training normalizes one, at its own resolution:
    float32 in [0, 1], the shape of `data`.

    The minimum subtracted, one 3-D N4 on the foreground (if `n4` and the foreground has
    at least `MIN_N4_FOREGROUND` voxels; `spacing`: the voxel size in mm), then the
    minimum -> 0 and the 99.5th percentile of the foreground -> 1, clipped.
    """
    data = np.asarray(data, np.float32)
    data = data - data.min()
    mask = foreground_mask(data)
    if n4 and mask.sum() >= MIN_N4_FOREGROUND:
        data = n4_correct(data, mask, tuple(spacing))
    return normalize_intensity(data, mask)


def preprocess_file(path: Path, config: TrainConfig) -> Preprocessed:
    """The training slices of an image or NIfTI file, preprocessed as `config` says.

    Raises ValueError with a short reason if the file cannot be used.
    """
    height, width = config.image_shape
    if is_nifti(path):
        return preprocess_volume(
            read_volume(path),
            height,
            width,
            n4=config.n4,
            slice_axis=config.slice_axis,
            min_foreground=config.min_foreground,
            context_slices=config.context_slices,
        )
    if config.context_slices:
        raise ValueError("a 2-D image has no neighbouring slices (--context_slices)")
    return preprocess_image(read_grayscale(path), height, width, config.n4)


def context_problem(data_dir: Path, context_slices: int) -> str | None:
    """Why `data_dir` cannot give slabs of `context_slices` neighbours per side, or None:
    it holds 2-D images, which have no neighbouring slices (with K = 0, never)."""
    if not context_slices:
        return None
    try:
        images = [path for path in find_images(data_dir, volumes=True) if not is_nifti(path)]
    except DataError:
        return None  # reported by the data dir checks
    if not images:
        return None
    return (
        f"--context_slices {context_slices} needs NIfTI volumes, but data dir {data_dir} "
        f"holds {len(images)} 2-D image{'s' * (len(images) > 1)} (e.g. {images[0].name}), "
        "which have no neighbouring slices"
    )


def preprocessed_per(data_dir: Path, slice_axis: str = "axial") -> str | None:
    """How training preprocesses most slices of `data_dir` (`PREPROCESSED_PER`).

    "volume" when NIfTI volumes give more of its slices than 2-D images do (a volume
    counts its slices along `slice_axis`, read from its header: empty ones included),
    else "slice". None when the dir cannot be searched now (moved, another machine).
    """
    try:
        paths = find_images(data_dir, volumes=True)
    except DataError:
        return None
    images = sum(not is_nifti(path) for path in paths)
    volume_slices = 0
    for path in filter(is_nifti, paths):
        try:
            header = nib.load(path)  # the header only, not the voxels
            if len(header.shape) == 3:
                volume_slices += view_shape(header.shape, header.affine, slice_axis)[0]
        except (
            nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError,
            OSError,
            EOFError,
            ValueError,
            zlib.error,
        ):
            continue  # training skips it too
    return "volume" if volume_slices > images else "slice"


def preprocess_or_reason(path: Path, config: TrainConfig) -> Preprocessed | str:
    """`preprocess_file`, with a bad file's reason returned rather than raised."""
    try:
        return preprocess_file(path, config)
    except ValueError as error:
        return str(error)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(input_bytes: int) -> int:
    """Processes worth starting for `input_bytes` of preprocessing: every core when there
    is enough work to pay for starting them (POOL_MIN_BYTES), else 1.

    ANTs holds Python's lock while it runs, so only processes, not threads, run it in
    parallel.
    """
    return available_cores() if input_bytes >= POOL_MIN_BYTES else 1


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` fresh ('spawn') preprocessing processes, for a `with` block.

    Not forked: the parent may have TensorFlow's threads running, which a fork would copy
    in an unknown state. A worker imports this module and the caller's main module (a
    script's `if __name__ == "__main__":` part does not run in it); the command-line
    tools' main modules do not import TensorFlow at the top, so their workers start in
    seconds. Each worker gets an equal share of the cores for ITK's own threads, so that
    they do not oversubscribe the machine.

    Leaving the block cancels the tasks not yet started (after an error, Ctrl-C or a
    consumer that stopped early) and waits for the running ones. A worker that dies (out
    of memory, killed) is a DataError.
    """
    itk_threads = max(1, available_cores() // workers)
    pool = ProcessPoolExecutor(
        workers, multiprocessing.get_context("spawn"), start_worker, (itk_threads,)
    )
    try:
        yield pool
    except BrokenExecutor as error:
        raise DataError(
            "a preprocessing worker process ended abruptly (out of memory, or killed)"
        ) from error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_order(
    pool: Executor, function: Callable[..., T], arguments: Iterable[tuple], ahead: int
) -> Iterator[T]:
    """`function(*args)` of each of `arguments`, run in `pool`, yielded in order.

    At most `ahead` calls are submitted and not yet yielded, so a long input is not all
    handed to the workers at once. If the consumer stops early (closes the iterator) or a
    call raises, the calls not yet started are cancelled.
    """
    pending: deque[Future[T]] = deque()
    try:
        for args in arguments:
            pending.append(pool.submit(function, *args))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def preprocess_slices(
    slices: Sequence[np.ndarray],
    height: int,
    width: int,
    n4: bool = True,
    workers: int | None = 1,
) -> Iterator[np.ndarray]:
    """`preprocess_slice` of each 2-D array, in order, as each is ready.

    workers: processes (`worker_pool`) when above 1; None: `worker_count` of the input's
    float32 bytes with N4 on, 1 without (then each slice takes milliseconds). A pool runs
    only SLICES_AHEAD_PER_WORKER slices a worker ahead of the consumer (`in_order`).
    Close the iterator (`contextlib.closing`) if you may stop before its end, so the pool
    is shut down at once.
    """
    if workers is None:
        input_bytes = sum(np.asarray(array).size * 4 for array in slices)
        workers = worker_count(input_bytes) if n4 else 1
    workers = max(1, min(workers, len(slices)))
    if workers == 1:
        for array in slices:
            yield preprocess_slice(array, height, width, n4)
        return
    arguments = ((array, height, width, n4) for array in slices)
    with worker_pool(workers) as pool:
        yield from in_order(pool, preprocess_slice, arguments, SLICES_AHEAD_PER_WORKER * workers)


def start_worker(itk_threads: int) -> None:
    """Set up a preprocessing worker process: ITK's thread count, and no Ctrl-C of its own.

    Run before the worker imports ANTsPy, since ITK reads its thread count then.
    """
    import signal

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(itk_threads)
    # The parent handles Ctrl-C; workers just stop when it shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
