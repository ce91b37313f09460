"""A trained generator, ready to use: loaded from an export or a checkpoint, and run in
batches. The one inference path of translation, evaluation and training's scoring.

    generator = load_generator("output/export/t1_to_t2.keras")
    translated = generator.translate_unit(images)  # (N, H, W) in [0, 1] -> the same
    # A 2.5-D generator (context_slices K > 0) takes slabs, (N, H, W, 2K + 1), and gives
    # the translation of each middle slice, (N, H, W).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# checkpoints imports mri_gan, which registers its layers: `.keras` files load in safe mode.
from checkpoints import (
    MODEL_INFO_NAME,
    RestoredRun,
    read_model_info,
    restore_run,
    training_preprocessed_per,
)
from config import context_of, default_of, image_size_problem
from directions import DIRECTIONS
from errors import DataError, first_line
from preprocessing import PREPROCESSED_PER, UPPER_PERCENTILE

log = logging.getLogger(__name__)

# Slices per forward pass: small enough for a 256 px U-Net on a laptop.
DEFAULT_BATCH_SIZE = 8


@dataclass(eq=False)
class Generator:
    """A trained generator and how its inputs were prepared in training.

    model: (batch, img_height, img_width, C) float32 in [-1, 1] -> the same shape, tanh;
    C = 1 for a slice, 2K + 1 for a slab of a slice and its K neighbours on each side
    (`context_slices`: trained with `--context_slices K`, on volumes only).
    direction: "t1_to_t2", "t2_to_t1", or "" when unknown. n4: trained on N4-corrected
    slices (the preprocessing default for this generator). preprocessed_per: its training
    inputs were 2-D images preprocessed each on its own ("slice") or NIfTI volumes
    preprocessed whole, then cut along `slice_axis` ("volume"); None when not recorded
    (a bare Keras model, an export of an earlier version): translation then goes per slice.
    """

    model: keras.Model
    direction: str
    n4: bool
    preprocessed_per: str | None = None
    slice_axis: str = "axial"
    _forward: Callable | None = field(default=None, init=False, repr=False)

    @property
    def volume_axis(self) -> str:
        """The plane a volume is cut along by default: that of the training volumes for a
        model trained on volumes, else axial."""
        return self.slice_axis if self.preprocessed_per == "volume" else "axial"

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.model.input_shape[1]), int(self.model.input_shape[2]))

    @property
    def channels(self) -> int:
        """Slices per input: 1, or 2K + 1 for a 2.5-D generator."""
        return int(self.model.input_shape[3])

    @property
    def context_slices(self) -> int:
        """K: the neighbours on each side of a slice that the generator sees (0: none)."""
        return context_of(self.channels)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(batch, H, W, C) in [-1, 1] -> the translated batch, same shape, in [-1, 1]."""
        if self._forward is None:
            height, width = self.image_shape
            spec = tf.TensorSpec((None, height, width, self.channels), tf.float32)
            # A free batch dimension: one trace serves every batch, the last one included.
            self._forward = tf.function(
                lambda images: self.model(images, training=False),
                input_signature=[spec],
                autograph=False,
            )
        return self._forward(tf.convert_to_tensor(batch, tf.float32)).numpy()

    def translate_unit(
        self,
        images: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        forward: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """(N, H, W) preprocessed images in [0, 1] (a 2.5-D generator: (N, H, W, C) slabs)
        -> float32 (N, H, W) translations in [0, 1] (of each slab's middle slice), in
        batches of `batch_size`. `forward` maps a (batch, H, W, C) batch in [-1, 1] to its
        translation in place of the generator's own pass (the stochastic passes of
        `uncertainty`)."""
        return middle_slice(self.translate_slabs(images, batch_size, forward))

    def translate_slabs(
        self,
        images: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        forward: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """`translate_unit`, every output channel kept: float32 (N, H, W, C) in [0, 1], the
        translation of the whole slab (what the other direction's generator takes back)."""
        forward = forward or self
        height, width = self.image_shape
        images = as_slabs(images)
        if images.shape[3] != self.channels:
            raise ValueError(
                f"the generator takes {self.channels} slices per input, got {images.shape[3]}"
            )
        outputs = [np.empty((0, height, width, self.channels), np.float32)]
        outputs += [
            forward(images[start : start + batch_size] * 2 - 1)
            for start in range(0, len(images), batch_size)
        ]
        unit = (np.concatenate(outputs) + 1.0) / 2.0
        return np.clip(unit, 0.0, 1.0).astype(np.float32)


def as_slabs(images: np.ndarray) -> np.ndarray:
    """float32 (N, H, W, C) of images given as (N, H, W) slices or (N, H, W, C) slabs."""
    images = np.asarray(images, np.float32)
    return images[..., np.newaxis] if images.ndim == 3 else images


def middle_slice(images: np.ndarray) -> np.ndarray:
    """The middle slice of each slab: (..., H, W, 2K + 1) -> (..., H, W)."""
    return images[..., images.shape[-1] // 2]


def check_generator(model: keras.Model, what: str) -> None:
    """Raise DataError unless `model` maps (batch, H, W, C) to the same, H and W usable,
    C = 1 (a slice) or odd (a slab of 2K + 1 slices)."""
    shapes = (model.input_shape, model.output_shape)
    image_shaped = all(
        isinstance(shape, tuple) and len(shape) == 4 and isinstance(shape[3], int)
        for shape in shapes
    )
    if (
        not image_shaped
        or shapes[0][1:] != shapes[1][1:]
        or None in shapes[0][1:3]
        or shapes[0][3] % 2 == 0
    ):
        raise DataError(
            f"{what} takes {shapes[0]} and gives {shapes[1]}; a generator maps (batch, H, "
            "W, 1) images, or slabs of an odd number of slices, to the same shape"
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


def generators_of(model: keras.Model, n4: bool | None = None) -> dict[str, Generator]:
    """{direction: Generator} of anything holding both generators as attributes
    (`mri_gan.CycleGan`, `checkpoints.RestoredRun.model`), each wrapped once."""
    n4 = default_of("n4") if n4 is None else n4
    return {
        direction: Generator(getattr(model, direction), direction, n4) for direction in DIRECTIONS
    }


def run_generators(run: RestoredRun) -> dict[str, Generator]:
    """{direction: Generator} of a restored training run, each with how its training
    inputs were prepared: N4 and the slice axis from the run's config, per slice or per
    volume from the data dir it names (`checkpoints.training_preprocessed_per`)."""
    config = run.config
    return {
        direction: Generator(
            getattr(run.model, direction),
            direction,
            config.n4,
            training_preprocessed_per(config, direction),
            config.slice_axis,
        )
        for direction in DIRECTIONS
    }


def load_generator(source: Path | str, direction: str | None = None) -> Generator:
    """One generator from a `.keras` file, an export dir, or a training checkpoint dir.

    source: `export/t1_to_t2.keras` (direction optional: checked if given); `export/`
    (direction needed); or `output/checkpoints` (direction needed; image size, N4 and the
    slice axis come from `output/config.json`, whether it was trained on volumes from the
    data dir that config names). From an export, the preprocessing comes from `model.json`;
    one without `preprocessed_per` (earlier versions) gives None: per slice, as before.
    Raises DataError naming the path when it holds no usable generator, or one of the
    other direction.
    """
    source = Path(source)
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    if source.is_dir() and not (source / MODEL_INFO_NAME).is_file():
        if direction is None:
            raise ValueError("a checkpoint dir holds both generators: give a direction")
        return run_generators(restore_run(source))[direction]
    if source.is_dir():
        if direction is None:
            raise ValueError("an export dir holds both generators: give a direction")
        info = read_model_info(source / MODEL_INFO_NAME)
        entry = info.get("generators", {}).get(direction, {})
        return _load_keras(source / entry.get("file", f"{direction}.keras"), direction)
    if not source.exists():
        raise DataError(f"model {source} does not exist")
    return _load_keras(source, direction)


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
    direction = known or direction or ""
    preprocessed_per = info.get("generators", {}).get(direction, {}).get("preprocessed_per")
    if preprocessed_per not in (None, *PREPROCESSED_PER):
        raise DataError(
            f"{info_path} says {direction} was trained on inputs preprocessed per "
            f"{preprocessed_per!r}; expected one of {PREPROCESSED_PER}"
        )
    percentile = info.get("upper_percentile", UPPER_PERCENTILE)
    if percentile != UPPER_PERCENTILE:
        log.warning(
            "warning: %s says training normalized to the %sth percentile; this version "
            "normalizes to the %sth",
            info_path,
            percentile,
            UPPER_PERCENTILE,
        )
    return Generator(
        model,
        direction,
        bool(info.get("n4", default_of("n4"))),
        preprocessed_per,
        info.get("slice_axis", default_of("slice_axis")),
    )
