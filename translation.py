"""Use a trained generator: translate slices, NIfTI volumes and DICOM series.

The flow is one way, as in training: files (`scan_io`) -> float32 slices -> the training
preprocessing (N4, normalization to [0, 1], resampling to the model size: per slice with
`preprocessing.preprocess_slice`, or for a model trained on volumes one pass over the whole
volume with `preprocessing.preprocess_volume`, then cut) -> the generator
(`inference.Generator`, through `uncertainty.TranslationMaps`) -> [0, 1] -> resampled back
to each slice's own size -> the output intensity scale -> files with the input's geometry.
On request, maps go the same way beside the translation: the mean and standard deviation
of stochastic passes, and the cycle residual (`uncertainty`).

    generator = load_generator("output/export/t1_to_t2.keras")
    t2 = translate_volume(generator, nib.load("sub-01_T1w.nii.gz"))
    maps = translate_volume_maps(generator, image, uncertainty=8,
                                 back_model=load_generator("output/export", "t2_to_t1"))
    maps["translation"], maps["mean"], maps["uncertainty"], maps["cycle_residual"]
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import nibabel as nib
import numpy as np

from errors import DataError
from inference import DEFAULT_BATCH_SIZE, Generator, as_generator, load_generator
from preprocessing import (
    PREPROCESSED_PER,
    UPPER_PERCENTILE,
    Preprocessed,
    foreground_mask,
    preprocess_slices,
    preprocess_volume,
    resample_to,
)
from scan_io import (
    cast_output,
    check_volume_shape,
    image_dtype,
    nifti_like,
    read_grayscale,
    write_image,
)
from uncertainty import DEFAULT_SEED, DIFFERENCE_MAPS, TranslationMaps, map_path
from volumes import from_generator_view, generator_view

log = logging.getLogger(__name__)

# The Python interface: a generator is loaded here as well as used.
__all__ = [
    "ImageResult",
    "load_generator",
    "translate_image_files",
    "translate_slices",
    "translate_volume",
    "translate_volume_maps",
]

INTENSITIES = ("input", "unit")
# A slice with less foreground than this fraction of its pixels is background: it is
# written as background (0 in [0, 1]) without being shown to the generator.
MIN_FOREGROUND_FRACTION = 0.01


def translate_slices(
    model: Generator | keras.Model,
    slices: Sequence[np.ndarray],
    *,
    n4: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], object] | None = None,
    workers: int | None = 1,
) -> list[np.ndarray]:
    """Translate 2-D slices of any size and intensity scale; each keeps its own size.

    Each slice is preprocessed on its own, as training preprocesses a 2-D image (N4 if
    `n4`, default: as the model was trained; its minimum -> 0 and the 99.5th percentile
    of its foreground -> 1; resampled to the model size), translated in batches of
    `batch_size`, and resampled back (ANTsPy, linear). Returns float32 arrays of the
    input shapes, in [0, 1]. `on_batch(count)` is called after each batch, for progress
    bars. workers: preprocessing processes (`preprocessing.preprocess_slices`; None:
    every core when the slices are many and N4 is on). A pool of processes is spawned:
    from a script, call this under `if __name__ == "__main__":`.
    """
    maker = TranslationMaps(as_generator(model), batch_size=batch_size)
    return slice_maps(maker, slices, n4=n4, on_batch=on_batch, workers=workers)["translation"]


def slice_maps(
    maker: TranslationMaps,
    slices: Sequence[np.ndarray],
    *,
    n4: bool | None = None,
    on_batch: Callable[[int], object] | None = None,
    workers: int | None = 1,
) -> dict[str, list[np.ndarray]]:
    """`translate_slices` with every map of `maker`: {map name: one array per slice}."""
    generator = maker.generator
    check_takes_slices(generator)
    n4 = generator.n4 if n4 is None else n4
    arrays = [np.asarray(array, np.float32) for array in slices]
    for array in arrays:
        if array.ndim != 2:
            raise ValueError(f"slices must be 2-D arrays, got shape {array.shape}")
    maps: dict[str, list[np.ndarray]] = {name: [] for name in maker.names}
    # Closed on the way out, so that a pool of workers stops at once on an error.
    with contextlib.closing(
        preprocess_slices(arrays, *generator.image_shape, n4, workers)
    ) as units:
        for start in range(0, len(arrays), maker.batch_size):
            chunk = arrays[start : start + maker.batch_size]
            batch = np.stack([next(units) for _ in chunk])
            extend(maps, translate_batch(maker, batch, [array.shape for array in chunk]))
            if on_batch is not None:
                on_batch(len(chunk))
    return maps


def check_takes_slices(generator: Generator) -> None:
    """Raise DataError if `generator` needs neighbouring slices (2.5-D), which a 2-D image
    or a slice preprocessed on its own does not have."""
    if generator.context_slices:
        raise DataError(
            f"model {generator.model.name} sees {generator.context_slices} neighbouring "
            "slice(s) on each side (--context_slices): it translates whole volumes (NIfTI, "
            "DICOM) preprocessed per volume, not 2-D images or single slices"
        )


def translate_batch(
    maker: TranslationMaps, batch: np.ndarray, shapes: Sequence[tuple[int, ...]]
) -> dict[str, list[np.ndarray]]:
    """Preprocessed slices, (N, H, W) at the model size in [0, 1], translated with every
    map of `maker`; each resampled to its shape in `shapes` (ANTsPy, linear)."""
    return {
        name: [resample_to(unit, *shape) for unit, shape in zip(units, shapes, strict=True)]
        for name, units in maker(batch).items()
    }


def extend(maps: dict[str, list[np.ndarray]], more: dict[str, list[np.ndarray]]) -> None:
    """Append each map's slices in `more` to its list in `maps`."""
    for name, arrays in more.items():
        maps[name] += arrays


def intensity_range(array: np.ndarray) -> tuple[float, float]:
    """(minimum, 99.5th percentile of the foreground) of an image or a whole volume.

    The two values that the training normalization maps to 0 and 1.
    """
    low = float(array.min())
    mask = foreground_mask(array)
    values = array[mask] if mask.any() else array
    return low, float(np.percentile(values, UPPER_PERCENTILE))


def to_intensity(unit: np.ndarray, intensity: str, value_range: tuple[float, float]) -> np.ndarray:
    """[0, 1] values on the output scale: "unit" keeps them, "input" maps them to value_range."""
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
    if intensity == "unit":
        return unit.astype(np.float32)
    low, high = value_range
    return (low + unit * (high - low)).astype(np.float32)


def map_to_intensity(
    name: str, unit: np.ndarray, intensity: str, value_range: tuple[float, float]
) -> np.ndarray:
    """`to_intensity` of map `name`: a map of differences (the uncertainty, the cycle
    residual) is only scaled by the width of `value_range`, so it is in the output's
    units; the translation and the mean are mapped as the output."""
    if name in DIFFERENCE_MAPS:
        low, high = value_range
        value_range = (0.0, high - low)
    return to_intensity(unit, intensity, value_range)


def uncertainty_maps(
    generator: Generator,
    uncertainty: int,
    seed: int,
    back_model: Generator | keras.Model | None,
    batch_size: int,
) -> TranslationMaps:
    """The `TranslationMaps` of a translate call's keyword arguments."""
    back = as_generator(back_model) if back_model is not None else None
    if back is not None and back.model.input_shape[1:] != generator.model.input_shape[1:]:
        raise DataError(
            f"the back-translating generator takes {back.model.input_shape[1:]} inputs, the "
            f"translating one {generator.model.input_shape[1:]}: they are not of one model"
        )
    return TranslationMaps(generator, uncertainty, seed=seed, back=back, batch_size=batch_size)


def is_background(array: np.ndarray) -> bool:
    """True when under 1 % of the image's pixels are foreground (`foreground_mask`)."""
    return float(foreground_mask(array).mean()) < MIN_FOREGROUND_FRACTION


def translate_volume(
    model: Generator | keras.Model,
    image: nib.Nifti1Image,
    *,
    axis: str | int | None = None,
    preprocess_per: str | None = None,
    n4: bool | None = None,
    intensity: str = "input",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    workers: int | None = 1,
) -> nib.Nifti1Image:
    """Translate a 3-D NIfTI image slice by slice; same shape, affine and header.

    axis: "axial", "coronal", "sagittal" (the voxel axis closest to that plane's normal
    in the affine; "axial" is the third voxel axis for the usual axial acquisition), or a
    voxel axis 0, 1, 2; default: the plane a model trained on volumes was cut along,
    else "axial". Each slice is shown to the generator as the training PNGs were made
    (`dataset/make_demo.py`): taken from the volume flipped to RAS, rotated 90 degrees so
    anterior (or superior) is up; the result goes back to the voxel order of the input.
    Slices with under 1 % foreground (measured against the whole volume) are not
    translated and stay background.

    preprocess_per: "volume" preprocesses the whole volume as training preprocesses a
    NIfTI volume (`preprocessing.preprocess_volume`: one 3-D N4, minimum -> 0 and the
    99.5th percentile of the volume's foreground -> 1), then cuts it and resamples each
    slice to the model size; "slice" preprocesses each slice on its own, as training
    preprocesses a 2-D image (`preprocessing.preprocess_slice`); None (default): as the
    model's training inputs were (`Generator.preprocessed_per`; per slice when not
    recorded). n4: N4 on or off in either; None (default): as in training.

    intensity "input" maps [0, 1] to [minimum, 99.5th percentile of the foreground] of
    the whole input volume; "unit" keeps [0, 1]. Returns a float32 image of the input's
    class with its affine, qform/sform and zooms.

    workers: processes for per-slice preprocessing (`translate_slices`; None: every core
    when it pays); one 3-D N4 already uses every core. A pool of processes is spawned:
    from a script, call this under `if __name__ == "__main__":`.
    """
    return translate_volume_maps(
        model,
        image,
        axis=axis,
        preprocess_per=preprocess_per,
        n4=n4,
        intensity=intensity,
        batch_size=batch_size,
        progress=progress,
        workers=workers,
    )["translation"]


def translate_volume_maps(
    model: Generator | keras.Model,
    image: nib.Nifti1Image,
    *,
    uncertainty: int = 0,
    seed: int = DEFAULT_SEED,
    back_model: Generator | keras.Model | None = None,
    axis: str | int | None = None,
    preprocess_per: str | None = None,
    n4: bool | None = None,
    intensity: str = "input",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    workers: int | None = 1,
) -> dict[str, nib.Nifti1Image]:
    """`translate_volume`, and maps beside it: {"translation": the same image, and the
    maps asked for}, each a float32 image with the input's geometry.

    uncertainty: 0, or N >= 2 stochastic passes (`uncertainty.StochasticPasses`, drawn
    from `seed`): "mean", their mean, and "uncertainty", their per-voxel standard
    deviation. back_model: the other direction's generator, for "cycle_residual",
    |back-translation of the translation - input|. The translation and the mean are on
    the output's intensity scale; the uncertainty and the cycle residual are in its units
    (scaled by the width of its range, not shifted). Other arguments as `translate_volume`.
    """
    generator = as_generator(model)
    maker = uncertainty_maps(generator, uncertainty, seed, back_model, batch_size)
    per = preprocessing_of(generator, preprocess_per)
    if per == "slice":
        check_takes_slices(generator)
    if axis is None:
        axis = generator.volume_axis
    n4 = generator.n4 if n4 is None else n4
    data = volume_data(image)
    slices = generator_view(data, image.affine, axis)
    # The foreground threshold comes from the whole volume, so a slice through the edge of
    # the head counts as the head, and one through air as air.
    chosen = np.flatnonzero(foreground_mask(slices).mean(axis=(1, 2)) >= MIN_FOREGROUND_FRACTION)

    started = time.perf_counter()
    whole = None
    if per == "volume" and len(chosen):
        whole = preprocess_whole_volume(
            image, data, generator.image_shape, axis, n4, generator.context_slices
        )
        chosen = np.asarray(whole.indices)
    bar = keras.utils.Progbar(len(chosen), unit_name="slice") if progress and len(chosen) else None
    on_batch = bar.add if bar is not None else None
    if whole is not None:
        translated = {name: [] for name in maker.names}
        for start in range(0, len(chosen), batch_size):
            batch = whole.slices[start : start + batch_size]
            extend(translated, translate_batch(maker, batch, [slices.shape[1:]] * len(batch)))
            if on_batch is not None:
                on_batch(len(batch))
    else:
        translated = slice_maps(
            maker, [slices[index] for index in chosen], n4=n4, on_batch=on_batch, workers=workers
        )
    seconds = time.perf_counter() - started
    log.info(
        "Translated %d of %d slices (the other %d are background), preprocessed per %s%s%s, "
        "in %.1f s: %.2f slices/s",
        len(chosen),
        len(slices),
        len(slices) - len(chosen),
        per,
        f", each with {generator.context_slices} neighbour(s) per side"
        if generator.context_slices
        else "",
        f", with {uncertainty} stochastic passes" if uncertainty else "",
        seconds,
        len(chosen) / seconds if seconds > 0 else 0.0,
    )
    value_range = intensity_range(data)
    what = generator.direction or "translation"
    images = {}
    for name, arrays in translated.items():
        unit = np.zeros(slices.shape, np.float32)
        if len(chosen):
            unit[chosen] = np.stack(arrays)
        values = map_to_intensity(
            name, from_generator_view(unit, image.affine, axis), intensity, value_range
        )
        label = what if name == "translation" else f"{what} {name}"
        images[name] = nifti_like(image, values, f"mri-gan {label} (synthetic, research only)")
    return images


def preprocessing_of(generator: Generator, preprocess_per: str | None = None) -> str:
    """The preprocessing to use, "slice" or "volume": `preprocess_per` if given, else how
    the generator's training inputs were preprocessed, else (not recorded) "slice"."""
    if preprocess_per is not None:
        if preprocess_per not in PREPROCESSED_PER:
            raise ValueError(
                f"preprocess_per must be one of {PREPROCESSED_PER} or None, got {preprocess_per!r}"
            )
        return preprocess_per
    if generator.preprocessed_per is None and generator.context_slices:
        return "volume"  # a 2.5-D model is trained on volumes only
    if generator.preprocessed_per is None:
        log.info(
            "The model does not record whether it was trained on volumes: preprocessing "
            "per slice (preprocess_per='volume', --preprocess_per volume, if it was)"
        )
        return "slice"
    return generator.preprocessed_per


def preprocess_whole_volume(
    image: nib.Nifti1Image,
    data: np.ndarray,
    image_shape: tuple[int, int],
    axis: str | int,
    n4: bool,
    context_slices: int = 0,
) -> Preprocessed:
    """The slices of `image` (voxels `data`) with under 1 % foreground left out, made as
    training makes those of a NIfTI volume (`preprocessing.preprocess_volume`): one N4
    and one normalization for the whole volume, then cut along `axis` and resampled to
    `image_shape`; with `context_slices` K, each slice's slab of 2K + 1. Raises DataError
    if the slices are too small to use."""
    log.info("Preprocessing the whole volume (N4 %s), as in training", "on" if n4 else "off")
    try:
        return preprocess_volume(
            nifti_like(image, data),
            *image_shape,
            n4=n4,
            slice_axis=axis,
            min_foreground=MIN_FOREGROUND_FRACTION,
            context_slices=context_slices,
        )
    except ValueError as error:
        raise DataError(f"volume cannot be preprocessed as a whole: {error}") from error


def volume_data(image: nib.Nifti1Image) -> np.ndarray:
    """The voxels of a 3-D image as float32; NaN and Inf become the finite minimum."""
    check_volume_shape(image.shape, "volume")
    data = np.asarray(image.get_fdata(dtype=np.float32))
    finite = np.isfinite(data)
    if not finite.all():
        if not finite.any():
            raise DataError("volume holds no finite value")
        log.warning("warning: %d NaN/Inf voxels set to the volume minimum", int((~finite).sum()))
        data = np.where(finite, data, data[finite].min())
    return data


@dataclass(frozen=True)
class ImageResult:
    """What `translate_image_files` did: the translations written, the inputs it skipped,
    and the maps written beside the translations."""

    written: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]
    maps: tuple[Path, ...] = ()


def translate_image_files(
    model: Generator | keras.Model,
    inputs: Sequence[Path],
    output_path: Callable[[Path, str], Path],
    *,
    n4: bool | None = None,
    intensity: str = "input",
    output_dtype: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    uncertainty: int = 0,
    seed: int = DEFAULT_SEED,
    back_model: Generator | keras.Model | None = None,
    map_output_path: Callable[[Path, str], Path] = map_path,
) -> ImageResult:
    """Translate image files, each written to `output_path(input, dtype)`.

    Each image is preprocessed on its own (`translate_slices`). output_dtype: uint8,
    uint16 or float32; default each input's own (8-bit -> uint8, 16-bit -> uint16, float
    or 32-bit -> float32). intensity "input" maps [0, 1] to [minimum, 99.5th percentile
    of the foreground] of each input image; "unit" keeps [0, 1] (integer files: the full
    0..255 or 0..65535). An unreadable file is skipped with a warning naming it; a
    nearly empty image (under 1 % foreground) is written as background. Values that
    `output_dtype` cannot hold raise DataError: never clipped.

    uncertainty, seed, back_model: the maps of `translate_volume_maps`, each written as
    its translation is (dtype, intensity) to `map_output_path(translation path, map
    name)`, by default `uncertainty.map_path` (a.png -> a_uncertainty.png).
    """
    generator = as_generator(model)
    check_takes_slices(generator)
    maker = uncertainty_maps(generator, uncertainty, seed, back_model, batch_size)
    sources = {Path(path).resolve() for path in inputs}
    written: list[Path] = []
    maps_written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    bar = keras.utils.Progbar(len(inputs), unit_name="image") if progress and inputs else None
    for start in range(0, len(inputs), batch_size):
        loaded = []
        for path in inputs[start : start + batch_size]:
            try:
                loaded.append((path, read_grayscale(path), output_dtype or image_dtype(path)))
            except (OSError, ValueError) as error:
                reason = str(error) if isinstance(error, ValueError) else "unreadable file"
                log.warning("warning: skipped %s: %s", path, reason)
                skipped.append((path, reason))
        foreground = [index for index, entry in enumerate(loaded) if not is_background(entry[1])]
        translated = slice_maps(maker, [loaded[index][1] for index in foreground], n4=n4)
        units = {
            name: dict(zip(foreground, arrays, strict=True)) for name, arrays in translated.items()
        }
        for index, (path, array, dtype) in enumerate(loaded):
            target = output_path(path, dtype)
            if target in written:  # a.png and a.jpg would both become a.png
                raise DataError(f"two inputs would be written to {target}; {path} is the second")
            value_range = intensity_range(array)
            for name, by_index in units.items():
                unit = by_index.get(index, np.zeros(array.shape, np.float32))
                if name == "translation":
                    destination = target
                else:
                    destination = map_output_path(target, name)
                    if destination.resolve() in sources:
                        raise DataError(f"the {name} map of {path} would overwrite {destination}")
                values = map_to_intensity(name, unit, intensity, value_range)
                write_image(destination, cast_output(values, dtype, intensity, str(destination)))
                (written if name == "translation" else maps_written).append(destination)
        if bar is not None:
            bar.add(len(inputs[start : start + batch_size]))
    return ImageResult(tuple(written), tuple(skipped), tuple(maps_written))
