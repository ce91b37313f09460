"""Measure T1 <-> T2 translation on a paired held-out set, against two baselines.

The flow is one way: two folders of slices, paired by file name -> each image
preprocessed once, exactly as in training (`PreprocessCache`: N4, [0, 1], resampled) ->
each direction predicted three ways -> SSIM, PSNR and MAE per slice (`metrics.py`), over
the whole slice and over the head -> an `EvaluationResult`, written as CSV, JSON and a
figure by `evaluate.py`, or summarised for training every few epochs.

The three ways (`METHODS`):
- `model`: the generator of that direction.
- `identity`: the input itself, unchanged. The floor: any model must beat it.
- `histogram_matching`: the input's head histogram matched
  (`skimage.exposure.match_histograms`) to the pooled head histogram of the *training*
  images of the target contrast, never to the target itself. A model that does not
  beat this has learned no more than a grey-level lookup table.

The head mask of a pair is the union of the heads of its two acquired images, so both
directions are scored on the same pixels; see `head_mask`.

With lesion masks (one per pair, same file name: `match_lesion_masks`,
`load_lesion_masks`), every method is also scored on the lesions: how much of the
target's lesion-to-surroundings contrast the prediction keeps, and MAE and SSIM inside
the lesion (`metrics.lesion_metrics`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage.exposure import match_histograms

import metrics
from data_processing import PreprocessCache, scan_images
from directions import DIRECTIONS
from errors import DataError
from inference import Generator, generators_of, middle_slice
from preprocessing import foreground_mask, preprocessed_per, resample_to
from scan_io import find_images, read_grayscale, read_image

if TYPE_CHECKING:
    from mri_gan import CycleGan

log = logging.getLogger(__name__)

METHODS = ("model", "identity", "histogram_matching")
# The keys of `EvaluationResult.summary()`, in order: e.g. columns of history.csv.
SUMMARY_KEYS = (
    *(f"{direction}_{name}" for direction in DIRECTIONS for name in metrics.METRIC_NAMES),
    "mean_ssim",
    "mean_masked_ssim",
)
# The histogram reference of a contrast: this many quantiles of its pooled head pixels.
HISTOGRAM_LEVELS = 10_001
# Enough slices for a stable histogram; more would only cost preprocessing time.
MAX_REFERENCE_IMAGES = 200
# A separate piece of foreground counts as head if it is at least this fraction of the
# largest piece (the cerebellum and temporal lobes of a low slice), not a noise speck.
HEAD_PART_FRACTION = 0.05
# Lesion masks found without --lesion_masks: a folder of this name beside the T1 folder.
SIBLING_MASK_DIR = "masks"
# How many missing or extra mask names an error message lists.
NAMES_SHOWN = 3


# ---------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Pairing:
    """Test files paired by file name, and those without a partner."""

    pairs: tuple[tuple[Path, Path], ...]
    unpaired_t1: tuple[Path, ...]
    unpaired_t2: tuple[Path, ...]


def _files_by_name(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in find_images(folder):
        if path.name in files:
            raise DataError(
                f"two files named {path.name} under {folder} ({files[path.name]} and {path}): "
                "test pairs are matched by file name, so names must be unique"
            )
        files[path.name] = path
    return files


def pair_files(test_dir_t1: Path, test_dir_t2: Path) -> Pairing:
    """Pair the images of two folders (searched recursively) by identical file name.

    A file without a partner is reported with a warning naming it and returned in
    `unpaired_t1` / `unpaired_t2`. Raises DataError if a folder is missing or holds no
    image, if a name occurs twice in one folder, or if there is no pair at all.
    """
    t1 = _files_by_name(Path(test_dir_t1))
    t2 = _files_by_name(Path(test_dir_t2))
    unpaired_t1 = tuple(t1[name] for name in sorted(t1.keys() - t2.keys()))
    unpaired_t2 = tuple(t2[name] for name in sorted(t2.keys() - t1.keys()))
    for unpaired, other in ((unpaired_t1, test_dir_t2), (unpaired_t2, test_dir_t1)):
        for path in unpaired:
            log.warning("warning: %s has no partner of that name in %s; not evaluated", path, other)
    names = sorted(t1.keys() & t2.keys())
    if not names:
        raise DataError(
            f"no pairs: no file name under {test_dir_t1} is also under {test_dir_t2} "
            "(test pairs are matched by file name)"
        )
    return Pairing(tuple((t1[name], t2[name]) for name in names), unpaired_t1, unpaired_t2)


# ---------------------------------------------------------------------- preprocessing


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head of a slice: bool (H, W) from an (H, W) image in [0, 1].

    `preprocessing.foreground_mask` (above 5 % of the bright end), opened with a 3x3
    square to drop the noise specks of the air, the pieces of at least
    `HEAD_PART_FRACTION` of the largest kept, holes filled (the dark skull and any dark
    tissue inside the head count as head).
    """
    mask = ndimage.binary_opening(foreground_mask(image), structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(sizes >= HEAD_PART_FRACTION * sizes.max()) + 1
    return ndimage.binary_fill_holes(np.isin(labels, kept))


def head_masks(images: np.ndarray) -> np.ndarray:
    """`head_mask` of each of (N, H, W) images in [0, 1]: bool (N, H, W)."""
    return np.stack([head_mask(image) for image in images])


def _preprocessed(path: Path, cache: PreprocessCache) -> np.ndarray:
    content = path.read_bytes()
    if not content:
        raise ValueError("empty file")
    return cache.load_or_make(path, cache.key_of(content))


def _preprocess_all(
    paths: Sequence[Path], cache: PreprocessCache
) -> list[np.ndarray | tuple[Path, str]]:
    """Each path's preprocessed image, or (path, reason) if it cannot be used.

    In threads, which the thread-safe cache allows; ANTs holds Python's lock while it
    works, so they overlap reading, hashing and cache hits rather than N4 itself.
    """

    def one(path: Path) -> np.ndarray | tuple[Path, str]:
        try:
            return _preprocessed(path, cache)
        except OSError:
            return (path, "unreadable file")
        except ValueError as error:
            return (path, str(error))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(one, paths))


@dataclass(frozen=True)
class PairedImages:
    """The usable test pairs, preprocessed as in training.

    `t1`, `t2`: float32 (N, H, W) in [0, 1], row i the same slice; `masks`: bool
    (N, H, W), the union of the two heads; `names`: the N file names; `lesions`: bool
    (N, H, W) lesion masks, or None (`load_lesion_masks`).
    """

    names: tuple[str, ...]
    t1: np.ndarray
    t2: np.ndarray
    masks: np.ndarray
    skipped: tuple[tuple[Path, str], ...] = ()
    lesions: np.ndarray | None = None

    def of(self, contrast: str) -> np.ndarray:
        return {"t1": self.t1, "t2": self.t2}[contrast]


def load_pairs(pairs: Iterable[tuple[Path, Path]], cache: PreprocessCache) -> PairedImages:
    """Preprocess every pair once (from the cache when it can); skip unusable pairs.

    A pair with an unreadable file is skipped with a warning naming the file.
    Raises DataError if no pair is left.
    """
    pairs = list(pairs)
    loaded = _preprocess_all([path for pair in pairs for path in pair], cache)
    names, t1, t2, skipped = [], [], [], []
    for index, (t1_path, _) in enumerate(pairs):
        images = loaded[2 * index : 2 * index + 2]
        problems = [item for item in images if isinstance(item, tuple)]
        if problems:
            for path, reason in problems:
                log.warning("warning: skipped pair %s: %s: %s", t1_path.name, path, reason)
                skipped.append((path, reason))
            continue
        names.append(t1_path.name)
        t1.append(images[0])
        t2.append(images[1])
    if not names:
        raise DataError("no usable test pair: every pair has a file that cannot be read")
    t1_array, t2_array = np.stack(t1), np.stack(t2)
    masks = head_masks(t1_array) | head_masks(t2_array)
    return PairedImages(tuple(names), t1_array, t2_array, masks, tuple(skipped))


# ------------------------------------------------------------------------- lesions


def sibling_mask_dir(test_dir_t1: Path) -> Path | None:
    """The `SIBLING_MASK_DIR` folder beside the T1 test folder (`lesions/masks` for
    `lesions/T1`), if there is one."""
    folder = Path(test_dir_t1).parent / SIBLING_MASK_DIR
    return folder if folder.is_dir() else None


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def match_lesion_masks(mask_dir: Path, pairing: Pairing) -> dict[str, Path]:
    """The lesion mask of each test pair: {pair file name: mask path}, by identical name.

    Raises DataError naming the folder and the files if a pair has no mask, or if a
    mask names no test file (the masks belong to other slices), or as `pair_files` does
    for an unusable folder.
    """
    masks = _files_by_name(Path(mask_dir))
    names = [t1.name for t1, _ in pairing.pairs]
    missing = sorted(set(names) - masks.keys())
    if missing:
        raise DataError(
            f"lesion masks {mask_dir}: no mask for {len(missing)} of the {len(names)} test "
            f"pairs ({_listed(missing)}); a mask has the file name of its pair"
        )
    test_names = {*names, *(path.name for path in (*pairing.unpaired_t1, *pairing.unpaired_t2))}
    extra = sorted(masks.keys() - test_names)
    if extra:
        raise DataError(
            f"lesion masks {mask_dir}: {len(extra)} of its {len(masks)} masks name no test "
            f"file ({_listed(extra)}): are they the masks of these pairs?"
        )
    return {name: masks[name] for name in names}


def load_lesion_masks(
    images: PairedImages, masks: Mapping[str, Path], pairs: Iterable[tuple[Path, Path]]
) -> PairedImages:
    """`images` with their lesion masks (`PairedImages.lesions`).

    masks: {file name: mask path} (`match_lesion_masks`); pairs: the (T1, T2) paths, for
    the size of each slice. Any non-zero pixel of a mask is lesion. Each mask is resampled
    as its images were (`preprocessing.resample_to`: ANTs, linear) and kept where >= 0.5.
    Raises DataError naming a mask that cannot be read or whose size is not its slice's.
    """
    sources = {t1.name: t1 for t1, _ in pairs}
    height, width = images.t1.shape[1:]
    lesions = []
    for name in images.names:
        mask = read_image(masks[name]) > 0
        source_shape = read_grayscale(sources[name]).shape
        if mask.shape != source_shape:
            raise DataError(
                f"lesion mask {masks[name]} is {mask.shape[1]}x{mask.shape[0]} px but its "
                f"slice {sources[name]} is {source_shape[1]}x{source_shape[0]}"
            )
        lesions.append(resample_to(mask.astype(np.float32), height, width) >= 0.5)
    return replace(images, lesions=np.stack(lesions))


# ------------------------------------------------------------------ histogram matching


def build_histogram_reference(
    data_dir: Path, cache: PreprocessCache, max_images: int = MAX_REFERENCE_IMAGES
) -> np.ndarray:
    """The pooled head histogram of a training folder: (HISTOGRAM_LEVELS,) quantiles in [0, 1].

    Up to `max_images` images, evenly spread over the sorted file list, preprocessed as in
    training (through `cache`), their `head_mask` pixels pooled. A folder of NIfTI volumes
    (`preprocessing.preprocessed_per` "volume") gives its training slices instead, as
    training made them (the middle slice of each slab of a 2.5-D run), from `cache`.
    Unreadable files are skipped with a warning. Raises DataError if the folder gives no
    head pixel.
    """
    data_dir = Path(data_dir)
    if preprocessed_per(data_dir, cache.config.slice_axis) == "volume":
        entries = scan_images(data_dir, cache).entries
        spread = np.linspace(0, len(entries) - 1, min(max_images, len(entries)))
        height, width = cache.config.image_shape
        items = [
            middle_slice(cache.load(entries[index]).reshape(height, width, -1))
            for index in spread.round().astype(int)
        ]
    else:
        paths = find_images(data_dir)
        if len(paths) > max_images:
            chosen = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
            paths = [paths[index] for index in chosen]
        # 2-D images are single slices, whatever the run's context.
        slices = PreprocessCache(cache.cache_dir, replace(cache.config, context_slices=0))
        items = _preprocess_all(paths, slices)
    pooled = []
    for item in items:
        if isinstance(item, tuple):
            log.warning("warning: histogram reference: skipped %s: %s", *item)
        else:
            pooled.append(item[head_mask(item)])
    values = np.concatenate(pooled) if pooled else np.empty(0, np.float32)
    if values.size == 0:
        raise DataError(f"training dir {data_dir} gives no head pixel for the histogram reference")
    return np.quantile(values, np.linspace(0.0, 1.0, HISTOGRAM_LEVELS)).astype(np.float32)


def build_histogram_references(
    train_dir_t1: Path, train_dir_t2: Path, cache: PreprocessCache
) -> dict[str, np.ndarray]:
    """{"t1": ..., "t2": ...}: the `build_histogram_reference` of each training folder."""
    return {
        "t1": build_histogram_reference(train_dir_t1, cache),
        "t2": build_histogram_reference(train_dir_t2, cache),
    }


def match_to_reference(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The histogram-matching baseline of one slice: float32 (H, W) in [0, 1].

    The pixels of the input's own `head_mask` are mapped so that their histogram matches
    `reference` (quantiles from `build_histogram_reference`); the air outside is left as it is
    (dark in both contrasts). Only the input and the reference are used, never a target.
    """
    image = np.asarray(image, np.float32)
    mask = head_mask(image)
    matched = image.copy()
    if mask.any():
        matched[mask] = match_histograms(image[mask], np.asarray(reference, np.float32))
    return matched


# ----------------------------------------------------------------------- prediction


def _predictions(
    method: str,
    direction: str,
    inputs: np.ndarray,
    generators: Mapping[str, Generator] | None,
    references: Mapping[str, np.ndarray] | None,
    batch_size: int,
) -> np.ndarray:
    if method == "model":
        return generators[direction].translate_unit(inputs, batch_size)
    if method == "identity":
        return inputs
    target_contrast = DIRECTIONS[direction][1]
    return np.stack([match_to_reference(image, references[target_contrast]) for image in inputs])


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvaluationResult:
    """Per-slice metrics of each direction and method.

    `values[(direction, method)][metric]` is a float64 (N,) array in the order of
    `names`; metrics are `metrics.METRIC_NAMES`, on [0, 1] images (PSNR in dB, capped
    at `metrics.MAX_PSNR_DB`). `mask_fraction` (N,) is the share of each slice in the head.
    With lesion masks, `lesion_values[(direction, method)][metric]` holds
    `metrics.LESION_METRIC_NAMES` alike, and `lesion_pixels` (N,) the lesion size.
    """

    names: tuple[str, ...]
    values: dict[tuple[str, str], dict[str, np.ndarray]]
    mask_fraction: np.ndarray
    lesion_values: dict[tuple[str, str], dict[str, np.ndarray]] | None = None
    lesion_pixels: np.ndarray | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        present = {method for _, method in self.values}
        return tuple(method for method in METHODS if method in present)

    def statistics(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{direction: {method: {metric: {"mean": .., "std": ..}}}}, std over slices (ddof 0)."""
        table: dict = {}
        for (direction, method), values in self.values.items():
            table.setdefault(direction, {})[method] = {
                name: dict(zip(("mean", "std"), metrics.mean_and_std(values[name]), strict=True))
                for name in metrics.METRIC_NAMES
            }
        return table

    def summary(self, method: str = "model") -> dict[str, float]:
        """A flat dict of the means of one method, for history.csv and model selection.

        Keys `SUMMARY_KEYS`: `<direction>_<metric>` (e.g. `t1_to_t2_ssim`,
        `t2_to_t1_masked_mae`), and `mean_ssim` / `mean_masked_ssim`, the SSIM averaged
        over the two directions (NaN means are skipped).
        """
        flat = {}
        for direction in DIRECTIONS:
            values = self.values[(direction, method)]
            for name in metrics.METRIC_NAMES:
                flat[f"{direction}_{name}"] = metrics.mean_and_std(values[name])[0]
        for name in ("ssim", "masked_ssim"):
            flat[f"mean_{name}"] = metrics.mean_and_std([flat[f"{d}_{name}"] for d in DIRECTIONS])[
                0
            ]
        return flat

    def model_beats_histogram_matching(self) -> dict[str, dict[str, bool]]:
        """{direction: {metric: does the model's mean beat histogram matching's?, "all": ..}}.

        "all" is True only if the model wins on every metric: SSIM alone can be won by a
        model that learned nothing, as histogram matching, a monotonic map, cannot invert
        the contrast and scores a negative head SSIM. Empty if either method is missing.
        """
        if not {"model", "histogram_matching"} <= set(self.methods):
            return {}
        statistics = self.statistics()
        verdict: dict[str, dict[str, bool]] = {}
        for direction in DIRECTIONS:
            model = statistics[direction]["model"]
            baseline = statistics[direction]["histogram_matching"]
            verdict[direction] = {
                name: bool(
                    model[name]["mean"] > baseline[name]["mean"]
                    if metrics.HIGHER_IS_BETTER[name]
                    else model[name]["mean"] < baseline[name]["mean"]
                )
                for name in metrics.METRIC_NAMES
            }
            verdict[direction]["all"] = all(verdict[direction].values())
        return verdict

    def ranked(self, direction: str, metric: str = "ssim", method: str = "model") -> list[int]:
        """Slice indices from the worst to the best by `metric` (NaN counted as worst)."""
        values = self.values[(direction, method)][metric]
        sign = 1.0 if metrics.HIGHER_IS_BETTER[metric] else -1.0
        return sorted(
            range(len(values)), key=lambda i: np.nan_to_num(sign * values[i], nan=-np.inf)
        )

    def lesion_statistics(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{direction: {method: {lesion metric: {"median", "q1", "q3", "n"}}}}; empty
        without lesion masks. Medians, as a lesion's contrast ratio is skewed."""
        table: dict = {}
        for (direction, method), values in (self.lesion_values or {}).items():
            table.setdefault(direction, {})[method] = {
                name: metrics.median_and_quartiles(values[name])
                for name in metrics.LESION_METRIC_NAMES
            }
        return table

    def lesion_rows(self) -> list[dict[str, object]]:
        """One row per slice, direction and method, with every lesion metric."""
        rows = []
        for (direction, method), values in (self.lesion_values or {}).items():
            for index, name in enumerate(self.names):
                row: dict[str, object] = {"name": name, "direction": direction, "method": method}
                row["lesion_pixels"] = int(self.lesion_pixels[index])
                row.update(
                    {metric: float(values[metric][index]) for metric in metrics.LESION_METRIC_NAMES}
                )
                rows.append(row)
        return rows

    def rows(self) -> list[dict[str, object]]:
        """One row per slice, direction and method, with every metric: for metrics.csv."""
        rows = []
        for (direction, method), values in self.values.items():
            for index, name in enumerate(self.names):
                row: dict[str, object] = {"name": name, "direction": direction, "method": method}
                row.update(
                    {metric: float(values[metric][index]) for metric in metrics.METRIC_NAMES}
                )
                row["mask_fraction"] = float(self.mask_fraction[index])
                rows.append(row)
        return rows


def evaluate_pairs(
    model: Mapping[str, Generator] | CycleGan | None,
    images: PairedImages,
    histogram_references: Mapping[str, np.ndarray] | None = None,
    baselines: bool = True,
    batch_size: int = 16,
) -> EvaluationResult:
    """Score both directions of `model` (and the baselines) on preprocessed pairs.

    `model`: {direction: `inference.Generator`}, or anything holding both generators
    (`mri_gan.CycleGan`), run in batches of `batch_size`; None to score only the
    baselines. Pass the same mapping each time to trace the generators once. `images`: from
    `load_pairs`, preprocessed once and reusable across calls. `baselines`: also score
    `identity`, and `histogram_matching` when `histogram_references` ({"t1": .., "t2": ..}
    from `build_histogram_references`) is given. Training passes `baselines=False` each time:
    the baselines do not change with the model.
    """
    methods = [
        method
        for method, wanted in (
            ("model", model is not None),
            ("identity", baselines),
            ("histogram_matching", baselines and histogram_references is not None),
        )
        if wanted
    ]
    if not methods:
        raise ValueError("nothing to evaluate: no model and no baseline")
    generators = model if model is None or isinstance(model, Mapping) else generators_of(model)
    lesions = images.lesions
    values, lesion_values = {}, {}
    for direction, (source, target) in DIRECTIONS.items():
        inputs, targets = images.of(source), images.of(target)
        for method in methods:
            # In chunks, so that a large test set never holds all predictions at once.
            chunks, lesion_chunks = [], []
            for start in range(0, len(inputs), batch_size):
                part = slice(start, start + batch_size)
                predicted = _predictions(
                    method, direction, inputs[part], generators, histogram_references, batch_size
                )
                chunks.append(metrics.slice_metrics(predicted, targets[part], images.masks[part]))
                if lesions is not None:
                    lesion_chunks.append(
                        metrics.lesion_metrics(
                            predicted, targets[part], lesions[part], images.masks[part]
                        )
                    )
            values[(direction, method)] = _joined(chunks, metrics.METRIC_NAMES)
            if lesions is not None:
                lesion_values[(direction, method)] = _joined(
                    lesion_chunks, metrics.LESION_METRIC_NAMES
                )
    return EvaluationResult(
        images.names,
        values,
        images.masks.mean(axis=(1, 2)),
        lesion_values if lesions is not None else None,
        lesions.sum(axis=(1, 2)) if lesions is not None else None,
    )


def _joined(chunks: list[dict[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-chunk metric arrays joined into one array per metric."""
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in names}


# ---------------------------------------------------------------------------- outputs


def example_rows(
    generators: Mapping[str, Generator], images: PairedImages, result: EvaluationResult
) -> list[tuple[str, tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The rows of `plotting.plot_examples`: per direction, the best, median and worst
    slice by model SSIM, with input, prediction and target."""
    rows = []
    for direction, (source, target) in DIRECTIONS.items():
        order = result.ranked(direction)
        for label, index in (
            ("best", order[-1]),
            ("median", order[len(order) // 2]),
            ("worst", order[0]),
        ):
            inputs = images.of(source)[index]
            prediction = generators[direction].translate_unit(inputs[np.newaxis])[0]
            score = result.values[(direction, "model")]["ssim"][index]
            rows.append(
                (
                    f"{label}: {images.names[index]}\nSSIM {score:.3f}",
                    (
                        f"{source.upper()} input",
                        f"{direction} prediction",
                        f"{target.upper()} target",
                    ),
                    (inputs, prediction, images.of(target)[index]),
                )
            )
    return rows


def lesion_example_rows(
    generators: Mapping[str, Generator], images: PairedImages, result: EvaluationResult
) -> list[tuple[str, tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]:
    """The rows of `plotting.plot_lesion_examples`: per direction, the slices where
    the model keeps the least, the median and the most of the lesion contrast, with input,
    prediction, target and lesion mask. Slices without a kept fraction are left out."""
    rows = []
    for direction, (source, target) in DIRECTIONS.items():
        kept = result.lesion_values[(direction, "model")]["kept_fraction"]
        order = [int(index) for index in np.argsort(kept) if np.isfinite(kept[index])]
        if not order:
            continue
        picks = {}  # index -> label, the first label of a slice picked twice
        for label, index in (
            ("least kept", order[0]),
            ("median", order[len(order) // 2]),
            ("most kept", order[-1]),
        ):
            picks.setdefault(index, label)
        for index, label in picks.items():
            inputs = images.of(source)[index]
            prediction = generators[direction].translate_unit(inputs[np.newaxis])[0]
            rows.append(
                (
                    f"{label}: {images.names[index]}\nkept {kept[index]:.2f}",
                    (
                        f"{source.upper()} input",
                        f"{direction} prediction",
                        f"{target.upper()} target",
                    ),
                    (inputs, prediction, images.of(target)[index]),
                    images.lesions[index],
                )
            )
    return rows
