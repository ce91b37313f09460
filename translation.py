"""Use a trained generator: translate PNG/TIFF slices, NIfTI volumes and DICOM series.

The flow is one way, as in training: files -> float32 slices -> the training
preprocessing (`data_processing.preprocess_slice`: N4, normalization to [0, 1],
resampling to the model size) -> the generator, in [-1, 1] -> [0, 1] -> resampled back
to each slice's own size -> the output intensity scale -> files with the input's geometry.

`export_generators` saves both generators as Keras `.keras` files with `model.json`
beside them; `load_generator` loads one from there or from a training checkpoint dir.

    generator = load_generator("output/export/t1_to_t2.keras")
    t2 = translate_volume(generator, nib.load("sub-01_T1w.nii.gz"))
"""

from __future__ import annotations

import copy
import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pydicom
import tensorflow as tf
from google.protobuf.message import DecodeError
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DSfloat
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

from config import CONFIG_FILE_NAME, TrainConfig, default_of, image_size_problem, load_config
from data_processing import (
    PREPROCESS_VERSION,
    find_images,
    foreground_mask,
    preprocess_slice,
    read_grayscale,
)
from errors import DataError, first_line
from files import atomic_path

# Importing mri_gan registers InstanceNormalization, so `.keras` files load in safe mode.
from mri_gan import GENERATORS, CycleGan, make_cyclegan
from volumes import from_generator_view, generator_view

log = logging.getLogger(__name__)

DIRECTIONS = ("t1_to_t2", "t2_to_t1")
CONTRASTS = {"t1_to_t2": ("T1-weighted", "T2-weighted"), "t2_to_t1": ("T2-weighted", "T1-weighted")}
MODEL_INFO_NAME = "model.json"
EXPORT_FORMAT_VERSION = 1
# Which image formats can hold which output dtypes; JPEG and BMP are never written.
WRITABLE_DTYPES = {
    ".png": ("uint8", "uint16"),
    ".tif": ("uint8", "uint16", "float32"),
    ".tiff": ("uint8", "uint16", "float32"),
}
OUTPUT_DTYPES = ("uint8", "uint16", "float32")
INTENSITIES = ("input", "unit")
# The training normalization maps this percentile of the foreground to 1
# (data_processing.normalize_intensity); `--intensity input` inverts it.
UPPER_PERCENTILE = 99.5
# A slice with less foreground than this fraction of its pixels is background: it is
# written as background (0 in [0, 1]) without being shown to the generator.
MIN_FOREGROUND_FRACTION = 0.01
DEFAULT_BATCH_SIZE = 8


# --------------------------------------------------------------------------- the model
@dataclass(eq=False)
class Generator:
    """A trained generator and how its inputs were prepared in training.

    model: (batch, img_height, img_width, 1) float32 in [-1, 1] -> the same shape, tanh.
    direction: "t1_to_t2", "t2_to_t1", or "" when unknown. n4: trained on N4-corrected
    slices (the preprocessing default for this generator).
    """

    model: keras.Model
    direction: str
    n4: bool
    _forward: Callable | None = field(default=None, init=False, repr=False)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.model.input_shape[1]), int(self.model.input_shape[2]))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(batch, H, W, 1) in [-1, 1] -> the translated batch, same shape, in [-1, 1]."""
        if self._forward is None:
            height, width = self.image_shape
            spec = tf.TensorSpec((None, height, width, 1), tf.float32)
            # A free batch dimension: one trace serves every batch, the last one included.
            self._forward = tf.function(
                lambda images: self.model(images, training=False), input_signature=[spec]
            )
        return self._forward(tf.convert_to_tensor(batch, tf.float32)).numpy()


def check_generator(model: keras.Model, what: str) -> None:
    """Raise DataError unless `model` maps (batch, H, W, 1) to the same, H and W usable."""
    shapes = (model.input_shape, model.output_shape)
    image_shaped = all(
        isinstance(shape, tuple) and len(shape) == 4 and shape[3] == 1 for shape in shapes
    )
    if not image_shaped or shapes[0][1:3] != shapes[1][1:3] or None in shapes[0][1:3]:
        raise DataError(
            f"{what} takes {shapes[0]} and gives {shapes[1]}; "
            "a generator maps (batch, H, W, 1) images to the same shape"
        )
    problem = image_size_problem(int(shapes[0][1]), int(shapes[0][2]))
    if problem:
        raise DataError(f"{what} cannot be used: {problem}")


def as_generator(model: Generator | keras.Model) -> Generator:
    """`model` itself, or a bare Keras generator wrapped with the training default N4 setting.

    Wrap once and reuse the result: its forward pass is traced on the first call.
    """
    if isinstance(model, Generator):
        return model
    check_generator(model, f"model {model.name}")
    direction = model.name if model.name in DIRECTIONS else ""
    return Generator(model, direction, default_of("n4"))


# ---------------------------------------------------------------------- export and load
def export_generators(
    model: CycleGan, config: TrainConfig, export_dir: Path, *, epoch: int | None = None
) -> dict[str, Path]:
    """Save both generators as `<export_dir>/t1_to_t2.keras` and `t2_to_t1.keras`.

    `model.json` beside them records what translation needs: image size, N4, the value
    range, which file is which direction (and `epoch` when given). The `.keras` files
    load with `keras.models.load_model(path, safe_mode=True)` once `mri_gan` is imported.
    Each file is written to a temporary name and renamed. Returns {direction: path}.
    """
    export_dir = Path(export_dir)
    paths = {}
    for direction in DIRECTIONS:
        paths[direction] = export_dir / f"{direction}.keras"
        generator = getattr(model, direction)
        if generator.dtype_policy.name != "float32":
            # A mixed-precision generator would compute in float16 wherever it is
            # loaded; export a float32 copy of it.
            copy = GENERATORS[config.generator](
                config.img_height,
                config.img_width,
                direction,
                config.generator_filters,
                config.upsample,
            )
            copy.set_weights(generator.get_weights())
            generator = copy
        with atomic_path(paths[direction]) as temporary:
            generator.save(temporary)
    info = {
        "format": "mri-gan generators",
        "format_version": EXPORT_FORMAT_VERSION,
        "generators": {
            direction: {
                "file": paths[direction].name,
                "input": CONTRASTS[direction][0],
                "output": CONTRASTS[direction][1],
            }
            for direction in DIRECTIONS
        },
        "img_height": config.img_height,
        "img_width": config.img_width,
        "n4": config.n4,
        "preprocess_version": PREPROCESS_VERSION,
        "value_range": [-1.0, 1.0],
        "scaling": (
            "input = 2 * preprocessed - 1, where preprocessing maps each slice's minimum "
            f"to 0 and the {UPPER_PERCENTILE}th percentile of its foreground to 1 "
            "(after N4 when n4 is true) and resamples it to img_height x img_width; "
            "output = 2 * translated - 1 (tanh)"
        ),
        "epoch": epoch,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    with atomic_path(export_dir / MODEL_INFO_NAME) as temporary:
        temporary.write_text(json.dumps(info, indent=2) + "\n")
    return paths


@dataclass(frozen=True)
class RestoredRun:
    """Both generators of a training run, restored from its newest checkpoint."""

    model: CycleGan
    config: TrainConfig
    epoch: int
    checkpoint: str


def restore_run(checkpoint_dir: Path) -> RestoredRun:
    """Rebuild a run's CycleGAN from `<output_dir>/config.json` and restore its generators.

    `checkpoint_dir` is `<output_dir>/checkpoints` as written by training. Only the
    generators (and the epoch counter) are read; critics and optimizers are skipped.
    Raises DataError naming the path if it holds no checkpoint that fits.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        what = "does not exist" if not checkpoint_dir.exists() else "is not a directory"
        raise DataError(f"checkpoint dir {checkpoint_dir} {what}")
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest is None:
        hint = (
            f" (did you mean {checkpoint_dir / 'checkpoints'}?)"
            if (checkpoint_dir / "checkpoints").is_dir()
            else ""
        )
        raise DataError(f"checkpoint dir {checkpoint_dir} holds no checkpoint{hint}")
    # config.json is beside `checkpoints/`, or one level up for `checkpoints/best/`.
    config_path = next(
        (
            folder / CONFIG_FILE_NAME
            for folder in (checkpoint_dir.parent, checkpoint_dir.parent.parent)
            if (folder / CONFIG_FILE_NAME).is_file()
        ),
        checkpoint_dir.parent / CONFIG_FILE_NAME,
    )
    if not config_path.is_file():
        raise DataError(
            f"no {config_path} beside checkpoint dir {checkpoint_dir}: "
            "it records the image size the model was trained at"
        )
    try:
        config = load_config(config_path)
    except (ValueError, TypeError) as error:
        raise DataError(f"{config_path} is not a training config: {error}") from error
    problem = image_size_problem(config.img_height, config.img_width)
    if problem:
        raise DataError(f"{config_path}: {problem}")
    # Not training.build_model: its optimizers would allocate Adam slots (about 0.9 GB
    # at 256 px) that translation never uses.
    model = make_cyclegan(config)
    does_not_fit = (
        f"checkpoint {latest} does not fit the {config.img_height}x{config.img_width} "
        f"model that {config_path} describes"
    )
    try:
        saved = saved_shapes(latest)
    except (tf.errors.OpError, KeyError, IndexError, DecodeError) as error:
        raise DataError(f"checkpoint {latest} cannot be read: {first_line(error)}") from error
    for generator in model.generators:
        # Checked before restoring, which would leave TensorFlow warnings behind. Every
        # weight must be saved; non-trainable state (dropout seeds) need not be.
        trainable = Counter(tuple(variable.shape) for variable in generator.trainable_variables)
        every = Counter(tuple(variable.shape) for variable in generator.variables)
        if not trainable <= Counter(saved.get(generator.name, ())) <= every:
            raise DataError(f"{does_not_fit} (another image size or --generator_filters?)")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    # The same names as training.make_checkpoint, so the generators' values are found.
    checkpoint = tf.train.Checkpoint(
        epoch=epoch, **{network.name: network for network in model.generators}
    )
    try:
        # Critics, optimizers: in the checkpoint, deliberately not restored.
        checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError) as error:
        raise DataError(f"{does_not_fit}: {first_line(error)}") from error
    except (tf.errors.OpError, IndexError) as error:
        raise DataError(f"checkpoint {latest} cannot be read: {first_line(error)}") from error
    return RestoredRun(model, config, int(epoch.numpy()), latest)


def saved_shapes(checkpoint: str) -> dict[str, list[tuple[int, ...]]]:
    """The variable shapes saved under each top-level name of a checkpoint (`t1_to_t2`, …).

    Read from the checkpoint's object graph without restoring anything.
    """
    reader = tf.train.load_checkpoint(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    graph = TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    saved: dict[str, list[tuple[int, ...]]] = {}
    for child in graph.nodes[0].children:
        found, seen, stack = [], set(), [child.node_id]
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            node = graph.nodes[node_id]
            keys = (attribute.checkpoint_key for attribute in node.attributes)
            found += [tuple(shapes[key]) for key in keys if key in shapes]
            stack += [grandchild.node_id for grandchild in node.children]
        saved[child.local_name] = found
    return saved


def load_generator(source: Path | str, direction: str | None = None) -> Generator:
    """One generator from a `.keras` file, an export dir, or a training checkpoint dir.

    source: `export/t1_to_t2.keras` (direction optional: checked if given); `export/`
    (direction needed); or `output/checkpoints` (direction needed; image size and N4
    come from `output/config.json`). Raises DataError naming the path when it holds no
    usable generator, or one of the other direction.
    """
    source = Path(source)
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if source.is_dir() and not (source / MODEL_INFO_NAME).is_file():
        if direction is None:
            raise ValueError("a checkpoint dir holds both generators: give a direction")
        run = restore_run(source)
        return Generator(getattr(run.model, direction), direction, run.config.n4)
    if source.is_dir():
        if direction is None:
            raise ValueError("an export dir holds both generators: give a direction")
        info = read_model_info(source / MODEL_INFO_NAME)
        entry = info.get("generators", {}).get(direction, {})
        return _load_keras(source / entry.get("file", f"{direction}.keras"), direction)
    if not source.exists():
        raise DataError(f"model {source} does not exist")
    return _load_keras(source, direction)


def read_model_info(path: Path) -> dict:
    """The `model.json` written by `export_generators`, as a dict."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(info, dict):
        raise DataError(f"{path} is not a model.json written by export_generators")
    return info


def _load_keras(path: Path, direction: str | None) -> Generator:
    if not path.is_file():
        raise DataError(f"model {path} does not exist")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same
        raise DataError(f"model {path} cannot be loaded: {first_line(error)}") from error
    if not isinstance(model, keras.Model):
        raise DataError(f"model {path} is not a Keras model")
    check_generator(model, f"model {path}")
    height, width = model.input_shape[1:3]
    info_path = path.parent / MODEL_INFO_NAME
    info = read_model_info(info_path) if info_path.is_file() else {}
    if info and (info.get("img_height"), info.get("img_width")) != (height, width):
        raise DataError(
            f"model {path} takes {height}x{width} images but {info_path} says "
            f"{info.get('img_height')}x{info.get('img_width')}: they do not belong together"
        )
    files = {entry.get("file"): name for name, entry in info.get("generators", {}).items()}
    known = files.get(path.name) or (model.name if model.name in DIRECTIONS else "")
    if direction and known and known != direction:
        raise DataError(f"model {path} translates {known}, not {direction}")
    if not info:
        log.warning(
            "warning: no %s beside %s; assuming N4 as in training by default", MODEL_INFO_NAME, path
        )
    return Generator(model, known or direction or "", bool(info.get("n4", default_of("n4"))))


# ------------------------------------------------------------------------ translation
def translate_slices(
    model: Generator | keras.Model,
    slices: Sequence[np.ndarray],
    *,
    n4: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], object] | None = None,
) -> list[np.ndarray]:
    """Translate 2-D slices of any size and intensity scale; each keeps its own size.

    Each slice is preprocessed as in training (N4 if `n4`, default: as the model was
    trained; its minimum -> 0 and the 99.5th percentile of its foreground -> 1;
    resampled to the model size), translated in batches of `batch_size`, and resampled
    back (ANTsPy, linear). Returns float32 arrays of the input shapes, in [0, 1].
    `on_batch(count)` is called after each batch, for progress bars.
    """
    generator = as_generator(model)
    n4 = generator.n4 if n4 is None else n4
    height, width = generator.image_shape
    translated: list[np.ndarray] = []
    for start in range(0, len(slices), batch_size):
        chunk = [np.asarray(array, np.float32) for array in slices[start : start + batch_size]]
        for array in chunk:
            if array.ndim != 2:
                raise ValueError(f"slices must be 2-D arrays, got shape {array.shape}")
        batch = np.stack([preprocess_slice(array, height, width, n4) for array in chunk])
        outputs = generator(batch[..., np.newaxis] * 2.0 - 1.0)[..., 0]
        translated.extend(
            resample_unit((output + 1.0) / 2.0, array.shape)
            for output, array in zip(outputs, chunk, strict=True)
        )
        if on_batch is not None:
            on_batch(len(chunk))
    return translated


def resample_unit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A [0, 1] image resampled to `shape` as preprocessing does (ANTsPy, voxels, linear)."""
    if image.shape == tuple(shape):
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    import ants  # imported where used, as in data_processing: it is slow to load

    resampled = ants.resample_image(
        ants.from_numpy(np.ascontiguousarray(image, np.float32)),
        tuple(shape),
        use_voxels=True,
        interp_type=0,
    )
    return np.clip(resampled.numpy(), 0.0, 1.0).astype(np.float32)


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


def cast_output(values: np.ndarray, dtype: str, intensity: str, what: str) -> np.ndarray:
    """`values` as `dtype`, never clipped.

    float32 keeps them. For uint8/uint16, "unit" values in [0, 1] span the type's full
    range (0..255, 0..65535); "input" values are rounded and must fit the type, or
    DataError is raised naming `what`.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return values.astype(np.float32)
    limits = np.iinfo(dtype)
    if intensity == "unit":
        return np.round(np.clip(values, 0.0, 1.0) * limits.max).astype(dtype)
    rounded = np.round(values)
    if values.size and (rounded.min() < limits.min or rounded.max() > limits.max):
        raise DataError(
            f"{what}: translated values span {values.min():g} to {values.max():g}, which "
            f"{dtype} cannot hold; write float32 or uint16, or use intensity 'unit'"
        )
    return rounded.astype(dtype)


def is_background(array: np.ndarray) -> bool:
    """True when under 1 % of the image's pixels are foreground (`foreground_mask`)."""
    return float(foreground_mask(array).mean()) < MIN_FOREGROUND_FRACTION


def translate_volume(
    model: Generator | keras.Model,
    image: nib.Nifti1Image,
    *,
    axis: str | int = "axial",
    n4: bool | None = None,
    intensity: str = "input",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> nib.Nifti1Image:
    """Translate a 3-D NIfTI image slice by slice; same shape, affine and header.

    axis: "axial", "coronal", "sagittal" (the voxel axis closest to that plane's normal
    in the affine; "axial" is the third voxel axis for the usual axial acquisition), or a
    voxel axis 0, 1, 2. Each slice is shown to the generator as the training PNGs were
    made (`dataset/make_demo.py`): taken from the volume flipped to RAS, rotated 90
    degrees so anterior (or superior) is up; the result goes back to the voxel order of
    the input. Slices with under 1 % foreground (measured against the whole volume) are
    not translated and stay background. intensity "input" maps [0, 1] to [minimum,
    99.5th percentile of the foreground] of the whole input volume; "unit" keeps [0, 1].
    Returns a float32 image of the input's class with its affine, qform/sform and zooms.
    """
    generator = as_generator(model)
    data = volume_data(image)
    slices = generator_view(data, image.affine, axis)
    # The foreground threshold comes from the whole volume, so a slice through the edge of
    # the head counts as the head, and one through air as air.
    chosen = np.flatnonzero(foreground_mask(slices).mean(axis=(1, 2)) >= MIN_FOREGROUND_FRACTION)

    bar = keras.utils.Progbar(len(chosen), unit_name="slice") if progress and len(chosen) else None
    started = time.perf_counter()
    translated = translate_slices(
        generator,
        [slices[index] for index in chosen],
        n4=n4,
        batch_size=batch_size,
        on_batch=bar.add if bar is not None else None,
    )
    seconds = time.perf_counter() - started
    log.info(
        "Translated %d of %d slices (the other %d are background) in %.1f s: %.2f slices/s",
        len(chosen),
        len(slices),
        len(slices) - len(chosen),
        seconds,
        len(chosen) / seconds if seconds > 0 else 0.0,
    )
    unit = np.zeros(slices.shape, np.float32)
    if len(chosen):
        unit[chosen] = np.stack(translated)
    values = to_intensity(
        from_generator_view(unit, image.affine, axis), intensity, intensity_range(data)
    )
    description = f"mri-gan {generator.direction or 'translation'} (synthetic, research only)"
    return nifti_like(image, values, description)


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


def check_volume_shape(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 3:
        size = "x".join(str(side) for side in shape)
        raise DataError(
            f"{what} is {len(shape)}-D ({size}); translation takes one 3-D volume "
            "(split a 4-D series into volumes first)"
        )


def nifti_like(image: nib.Nifti1Image, data: np.ndarray, description: str = "") -> nib.Nifti1Image:
    """A new image of `image`'s class, affine and header (qform, sform, zooms) holding `data`.

    The header's data type follows `data`, and scaling and display range are reset.
    """
    header = image.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    if description:
        header["descrip"] = description[:79].encode()
    return image.__class__(data, image.affine, header)


def read_nifti(path: Path) -> nib.Nifti1Image:
    """A 3-D NIfTI volume (.nii or .nii.gz), read now so that a bad file fails here."""
    try:
        image = nib.load(path)
        check_volume_shape(image.shape, f"NIfTI {path}")
        image.get_fdata(dtype=np.float32)  # nibabel keeps this for translate_volume
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"input {path} is not a readable NIfTI volume: {first_line(e)}") from e
    return image


def write_nifti(
    image: nib.Nifti1Image, path: Path, dtype: str = "float32", intensity: str = "input"
) -> None:
    """Write `image` as `dtype` (see `cast_output`) to `path` through a temporary file."""
    data = cast_output(image.get_fdata(dtype=np.float32), dtype, intensity, str(path))
    output = nifti_like(image, data)
    with atomic_path(path) as temporary:
        nib.save(output, temporary)


# ------------------------------------------------------------------------ image files
def read_image(path: Path) -> np.ndarray:
    """An image file as float32 (H, W) at full precision; DataError naming it if unusable."""
    try:
        return read_grayscale(path)
    except ValueError as error:
        raise DataError(f"input {path}: {error}") from error
    except OSError as error:
        raise DataError(f"input {path} is unreadable: {error.strerror or error}") from error


def image_dtype(path: Path) -> str:
    """The output dtype that holds `path`'s values: "uint8", "uint16" or "float32"."""
    with Image.open(path) as image:
        mode, kind = image.mode, image.format
    if mode.startswith("I;16") or (mode == "I" and kind == "PNG"):
        return "uint16"
    return "float32" if mode in ("I", "F") else "uint8"


def image_output_suffix(suffix: str, dtype: str) -> str:
    """The suffix to write: the input's if that format holds `dtype`, else .png or .tif."""
    if dtype in WRITABLE_DTYPES.get(suffix.lower(), ()):
        return suffix
    return ".tif" if dtype == "float32" else ".png"


def write_image(path: Path, array: np.ndarray) -> None:
    """Write a uint8, uint16 or float32 (H, W) array as PNG or TIFF, via a temporary file."""
    suffix = path.suffix.lower()
    if array.dtype.name not in WRITABLE_DTYPES.get(suffix, ()):
        raise DataError(
            f"cannot write {array.dtype.name} to {path}: "
            "PNG holds uint8/uint16, TIFF (.tif) also float32"
        )
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG" if suffix == ".png" else "TIFF")


@dataclass(frozen=True)
class ImageResult:
    """What `translate_image_files` did: the files written and the inputs it skipped."""

    written: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]


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
) -> ImageResult:
    """Translate image files, each written to `output_path(input, dtype)`.

    output_dtype: uint8, uint16 or float32; default each input's own (8-bit -> uint8,
    16-bit -> uint16, float or 32-bit -> float32). intensity "input" maps [0, 1] to
    [minimum, 99.5th percentile of the foreground] of each input image; "unit" keeps
    [0, 1] (integer files: the full 0..255 or 0..65535). An unreadable file is skipped
    with a warning naming it; a nearly empty image (under 1 % foreground) is written as
    background. Values that `output_dtype` cannot hold raise DataError: never clipped.
    """
    generator = as_generator(model)
    written: list[Path] = []
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
        translated = translate_slices(
            generator, [loaded[index][1] for index in foreground], n4=n4, batch_size=batch_size
        )
        units = dict(zip(foreground, translated, strict=True))
        for index, (path, array, dtype) in enumerate(loaded):
            unit = units.get(index, np.zeros(array.shape, np.float32))
            target = output_path(path, dtype)
            if target in written:  # a.png and a.jpg would both become a.png
                raise DataError(f"two inputs would be written to {target}; {path} is the second")
            values = to_intensity(unit, intensity, intensity_range(array))
            write_image(target, cast_output(values, dtype, intensity, str(target)))
            written.append(target)
        if bar is not None:
            bar.add(len(inputs[start : start + batch_size]))
    return ImageResult(tuple(written), tuple(skipped))


# ------------------------------------------------------------------------------ DICOM
@dataclass(frozen=True)
class DicomSeries:
    """One series' datasets sorted along the slice normal, and its voxel -> RAS affine."""

    datasets: tuple[pydicom.Dataset, ...]
    paths: tuple[Path, ...]
    affine: np.ndarray


def read_dicom_series(folder: Path) -> nib.Nifti1Image:
    """One DICOM series folder -> a float32 NIfTI image with the scanner geometry.

    Slices are sorted by ImagePositionPatient projected on the slice normal (the cross
    product of the two ImageOrientationPatient directions), not by file name or
    InstanceNumber. Values are stored value x RescaleSlope + RescaleIntercept. Voxel axes
    are (column, row, slice); the affine maps them to RAS mm (DICOM's LPS with x and y
    negated), from IPP, IOP, PixelSpacing and the spacing of the sorted positions;
    qform and sform codes are 1 (scanner). Raises DataError naming what is wrong.
    """
    series = _read_series(Path(folder))
    volume = np.stack(
        [
            _stored_values(ds, path).T
            for ds, path in zip(series.datasets, series.paths, strict=True)
        ],
        axis=-1,
    )
    image = nib.Nifti1Image(volume.astype(np.float32), series.affine)
    image.set_qform(series.affine, code=1)
    image.set_sform(series.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    description = str(series.datasets[0].get("SeriesDescription", ""))
    if description:
        image.header["descrip"] = description[:79].encode()
    return image


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
    )


def _read_series(folder: Path) -> DicomSeries:
    if not folder.is_dir():
        raise DataError(f"DICOM folder {folder} is not a directory")
    found: list[tuple[Path, pydicom.Dataset]] = []
    for path in _files_under(folder):
        try:
            dataset = pydicom.dcmread(path)
        except InvalidDicomError:
            continue  # not DICOM: a README, a thumbnail
        except (OSError, EOFError, ValueError) as error:
            raise DataError(f"DICOM file {path} is unreadable: {error}") from error
        if "PixelData" in dataset:  # not DICOMDIR or a report
            found.append((path, dataset))
    if not found:
        raise DataError(f"DICOM folder {folder} holds no DICOM image")

    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path, dataset in found:
        by_series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((path, dataset))
    if len(by_series) > 1:
        listing = "; ".join(
            f"{uid or '?'} ({entries[0][1].get('SeriesDescription', '')}: {len(entries)} images)"
            for uid, entries in by_series.items()
        )
        raise DataError(
            f"DICOM folder {folder} holds {len(by_series)} series ({listing}); "
            "point it at the folder of one series"
        )

    orientations, positions = [], []
    for path, dataset in found:
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(
                f"DICOM file {path} is multi-frame (enhanced DICOM); convert it with dcm2niix"
            )
        try:
            orientations.append(np.array(dataset.ImageOrientationPatient, float))
            positions.append(np.array(dataset.ImagePositionPatient, float))
            spacing = np.array(dataset.PixelSpacing, float)
        except (AttributeError, ValueError, TypeError) as error:
            raise DataError(
                f"DICOM file {path} lacks ImageOrientationPatient, ImagePositionPatient or "
                "PixelSpacing: its slices cannot be placed in space"
            ) from error
        if (dataset.Rows, dataset.Columns) != (found[0][1].Rows, found[0][1].Columns):
            raise DataError(f"DICOM folder {folder}: images of different sizes ({path})")
    orientation = orientations[0]
    if orientation.shape != (6,) or not all(
        np.allclose(other, orientation, atol=1e-4) for other in orientations
    ):
        raise DataError(
            f"DICOM folder {folder}: images of different orientations (a localizer series?)"
        )
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    distances = np.array([position @ normal for position in positions])
    order = np.argsort(distances, kind="stable")
    gaps = np.diff(distances[order])
    if (gaps < 1e-4).any():
        raise DataError(
            f"DICOM folder {folder}: several images share a slice position "
            "(echoes, phases or time points?); give one 3-D series"
        )

    first, last = positions[order[0]], positions[order[-1]]
    if len(order) > 1:
        step = (last - first) / (len(order) - 1)
        if np.abs(gaps - gaps.mean()).max() > 0.01 * gaps.mean():
            log.warning(
                "warning: DICOM series %s has uneven slice spacing (%.3g to %.3g mm); "
                "the NIfTI affine uses the mean",
                folder,
                gaps.min(),
                gaps.max(),
            )
    else:
        dataset = found[0][1]
        thickness = dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0
        step = normal * float(thickness)
    row_spacing, column_spacing = spacing  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing  # voxel axis 0: along a row (column index)
    lps[:3, 1] = column_direction * row_spacing  # voxel axis 1: down a column (row index)
    lps[:3, 2] = step
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return DicomSeries(
        tuple(found[index][1] for index in order), tuple(found[index][0] for index in order), affine
    )


def _stored_values(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Pixel values (rows, columns) x RescaleSlope + RescaleIntercept, as float32."""
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise DataError(f"DICOM file {path}: cannot decode its pixel data ({name})") from error
    if pixels.ndim != 2:
        raise DataError(f"DICOM file {path}: pixel data of shape {pixels.shape}, not one slice")
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return (pixels.astype(np.float32) * slope + intercept).astype(np.float32)


def write_dicom_series(
    image: nib.Nifti1Image, source_folder: Path, output_folder: Path, description: str
) -> list[Path]:
    """Write `image` as a new DICOM series with the headers and geometry of the source.

    `image` must have the voxel order and affine that `read_dicom_series(source_folder)`
    gives. Each slice copies its source header with a new series and instance UIDs,
    ImageType DERIVED\\SECONDARY and `description`; values are stored as uint16 with one
    RescaleSlope/Intercept for the series (resolution: value range / 65535). The folder
    is written under a temporary name and renamed. Returns the files, in slice order.
    """
    series = _read_series(Path(source_folder))
    rows, columns = series.datasets[0].Rows, series.datasets[0].Columns
    if image.shape != (columns, rows, len(series.datasets)) or not np.allclose(
        image.affine, series.affine, atol=1e-3
    ):
        raise DataError(f"the translated volume does not have the geometry of {source_folder}")
    data = image.get_fdata(dtype=np.float32)
    low, high = float(data.min()), float(data.max())
    slope = (high - low) / 65535 if high > low else 1.0
    slope_text, low_text = DSfloat(slope, auto_format=True), DSfloat(low, auto_format=True)
    # The stored integers use the rounded header values, so readers get what we meant.
    stored = np.clip(np.round((data - float(low_text)) / float(slope_text)), 0, 65535)
    series_uid = pydicom.uid.generate_uid()
    names = []
    with atomic_path(Path(output_folder), directory=True) as temporary:
        for index, source in enumerate(series.datasets):
            dataset = copy.deepcopy(source)
            dataset.set_pixel_data(stored[:, :, index].T.astype(np.uint16), "MONOCHROME2", 16)
            dataset.RescaleSlope, dataset.RescaleIntercept = slope_text, low_text
            for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
                if keyword in dataset:
                    delattr(dataset, keyword)
            dataset.SeriesInstanceUID = series_uid
            dataset.SeriesDescription = description[:64]
            dataset.ImageType = ["DERIVED", "SECONDARY"]
            dataset.InstanceNumber = index + 1
            name = f"IM{index + 1:05d}.dcm"
            dataset.save_as(temporary / name, enforce_file_format=True)
            names.append(name)
    return [Path(output_folder) / name for name in names]


# ------------------------------------------------------------------------------ files
def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively and sorted, as training finds them."""
    return find_images(Path(folder))
