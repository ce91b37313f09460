"""Where is a translation unsure? Maps beside a translation, and whether they point at
the errors.

Two maps, made on preprocessed images at the model size ([0, 1] units):
- uncertainty: the per-pixel standard deviation (ddof 0) of N stochastic passes of the
  generator (`StochasticPasses`), beside their mean. A pass is made different by
  "dropout" (the U-Net's dropout layers kept on, a mask drawn per pass), "flips" (every
  other pass sees the input mirrored left-right and is mirrored back: brains are nearly
  symmetric, a model that understood the anatomy should not care) or "both".
  `DEFAULT_METHOD` was chosen by how well each predicts the error on a validation set
  (docs/trust.md).
- cycle residual: |back-translation of the translation - input|, by the other
  direction's generator: where the cycle does not close, the translation lost or made up
  something.

`TranslationMaps` gives a batch's translation and the requested maps: the one path of
`translation` (files) and `evaluate_maps` (scores). `evaluate_maps` measures on paired
slices how well each map finds the real error |translation - target| inside the head
(`metrics.error_detection`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import metrics
from config import UNCERTAINTY_SEED
from directions import DIRECTIONS, reverse_of
from errors import DataError
from inference import DEFAULT_BATCH_SIZE, Generator, as_slabs, middle_slice
from volumes import NIFTI_SUFFIXES

log = logging.getLogger(__name__)

METHODS = ("dropout", "flips", "both")
DEFAULT_METHOD = "both"
DEFAULT_SEED = UNCERTAINTY_SEED
# The maps beside a translation, in the order they are written.
MAP_NAMES = ("mean", "uncertainty", "cycle_residual")
# Maps of differences (a spread, a residual): put on the output scale by the width of
# its range only, never shifted by its minimum.
DIFFERENCE_MAPS = ("uncertainty", "cycle_residual")
# The maps scored against the error.
SCORED_MAPS = DIFFERENCE_MAPS
# A map beats chance when its per-slice values lie above chance on more slices than a
# coin would give, at this one-sided sign-test p-value.
CHANCE_P_VALUE = 0.05
CHANCE = {"rank_correlation": 0.0, "auc": 0.5, "lesion_auc": 0.5}


def check_passes(passes: int) -> None:
    """Raise ValueError unless `passes` is 0 (no uncertainty map) or at least 2."""
    if passes < 0 or passes == 1:
        raise ValueError(
            f"uncertainty needs at least 2 passes (the spread of one is 0), got {passes}"
        )


# ------------------------------------------------------------------ stochastic passes


class KeptDropout(layers.Layer):
    """Dropout that stays on at inference, its mask drawn from `seed` (a shared int64
    variable of 2 values, set before each pass) folded with `stream` (one per layer).

    One mask for the whole batch: a pass is one thinned network, the same for every
    slice, so a slice's passes do not depend on the batch it is in.
    """

    def __init__(self, rate: float, seed: tf.Variable, stream: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.stream = stream

    def call(self, inputs):
        shape = tf.concat([[1], tf.shape(inputs)[1:]], axis=0)
        seed = tf.random.experimental.stateless_fold_in(self.seed, self.stream)
        kept = tf.random.stateless_uniform(shape, seed) >= self.rate
        # Scaled as Keras' dropout in training, so the expected activation is unchanged.
        return tf.where(kept, inputs / (1.0 - self.rate), tf.zeros_like(inputs))


def dropout_forward(model: keras.Model) -> Callable | None:
    """A forward pass of `model` with its Dropout layers kept on: a tf.function of
    (batch, H, W, C) images in [-1, 1] and the pass's seed, (2,) int64, giving the
    translated batch; None if the model has no Dropout layer.

    The model is cloned sharing every layer and weight but its Dropout layers, which
    become `KeptDropout`; the rest runs as at inference (training=False).
    """
    if not any(isinstance(layer, layers.Dropout) for layer in model.layers):
        return None
    seed = tf.Variable([0, 0], dtype=tf.int64, trainable=False)
    streams = iter(range(len(model.layers)))

    def clone_layer(layer: layers.Layer) -> layers.Layer:
        if isinstance(layer, layers.Dropout):
            return KeptDropout(layer.rate, seed, next(streams), name=f"{layer.name}_kept")
        return layer

    clone = keras.models.clone_model(model, clone_function=clone_layer)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *model.input_shape[1:]), tf.float32),
            tf.TensorSpec((2,), tf.int64),
        ],
        autograph=False,
    )
    def forward(images, pass_seed):
        seed.assign(pass_seed)
        return clone(images, training=False)

    return forward


# The dropout forward of each model, made once: its seed is an argument, so every
# `StochasticPasses` of a model can share it (and its traced graph).
_DROPOUT_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_dropout_forward(model: keras.Model):
    """`dropout_forward(model)`, made on the first call for `model` and reused after."""
    if model not in _DROPOUT_FORWARDS:
        _DROPOUT_FORWARDS[model] = dropout_forward(model)
    return _DROPOUT_FORWARDS[model]


class StochasticPasses:
    """`passes` translations of the same images by one generator, each a little different.

    method: "dropout" (pass k keeps the dropout layers on with the mask of (seed, k)),
    "flips" (odd passes see the input mirrored left-right, their output mirrored back)
    or "both". Deterministic given the seed: a pass's mask does not depend on the batch.
    A generator without dropout (a U-Net of 32 px, whose few levels leave no room for
    it: `mri_gan.unet_generator`; the ResNet) cannot do "dropout" (DataError); "both"
    then varies by flips alone, with a warning.
    """

    def __init__(
        self,
        generator: Generator,
        passes: int,
        seed: int = DEFAULT_SEED,
        method: str = DEFAULT_METHOD,
    ) -> None:
        if passes < 2:
            raise ValueError(f"stochastic passes need at least 2 passes, got {passes}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.generator = generator
        self.passes = passes
        self.seed = seed
        self.flips = method in ("flips", "both")
        self.dropout = None
        if method in ("dropout", "both"):
            self.dropout = shared_dropout_forward(generator.model)
            if self.dropout is None and method == "dropout":
                raise DataError(
                    f"generator {generator.model.name} has no dropout layer: its passes "
                    "would all be the same (use flips)"
                )
            if self.dropout is None:
                log.warning(
                    "warning: generator %s has no dropout layer; its passes differ by "
                    "left-right flips only",
                    generator.model.name,
                )

    def _forward(self, index: int):
        if self.dropout is None:
            return None  # the generator's own deterministic pass
        pass_seed = tf.constant([self.seed, index], tf.int64)
        return lambda batch: self.dropout(
            tf.convert_to_tensor(batch, tf.float32), pass_seed
        ).numpy()

    def __call__(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(N, H, W) preprocessed images in [0, 1] (a 2.5-D generator: (N, H, W, C) slabs)
        -> float32 (passes, N, H, W) in [0, 1]."""
        images = np.asarray(images, np.float32)
        outputs = []
        for index in range(self.passes):
            mirrored = self.flips and index % 2 == 1
            view = images[:, :, ::-1] if mirrored else images
            output = self.generator.translate_unit(view, batch_size, self._forward(index))
            outputs.append(output[:, :, ::-1] if mirrored else output)
        return np.stack(outputs)


class TranslationMaps:
    """A generator's translation of preprocessed images, and the maps asked for beside it.

    passes: 0, or the stochastic passes (at least 2) of "mean" and "uncertainty"
    (`StochasticPasses`, with `seed` and `method`); back: the other direction's
    generator, for "cycle_residual", or None. Make one per job and call it per batch.
    """

    def __init__(
        self,
        generator: Generator,
        passes: int = 0,
        *,
        seed: int = DEFAULT_SEED,
        back: Generator | None = None,
        method: str = DEFAULT_METHOD,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        check_passes(passes)
        self.generator = generator
        self.sampler = StochasticPasses(generator, passes, seed, method) if passes else None
        self.back = back
        self.batch_size = batch_size

    @property
    def names(self) -> tuple[str, ...]:
        """ "translation", then the maps made: "mean", "uncertainty", "cycle_residual"."""
        wanted = {
            "mean": self.sampler is not None,
            "uncertainty": self.sampler is not None,
            "cycle_residual": self.back is not None,
        }
        return ("translation", *(name for name in MAP_NAMES if wanted[name]))

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, H, W) preprocessed images in [0, 1] (a 2.5-D generator: (N, H, W, C) slabs)
        -> {name in `names`: float32 (N, H, W)}.

        "translation": the generator's deterministic pass, in [0, 1]; "mean", "uncertainty":
        mean and standard deviation of the stochastic passes; "cycle_residual":
        |back(translation) - images| (a 2.5-D generator's whole output slab goes back, as
        in training's cycle). All in [0, 1] units; of the middle slice of a slab.
        """
        slabs = self.generator.translate_slabs(images, self.batch_size)
        translation = middle_slice(slabs)
        maps = {"translation": translation}
        if self.sampler is not None:
            samples = self.sampler(images, self.batch_size)
            maps["mean"] = samples.mean(axis=0)
            maps["uncertainty"] = samples.std(axis=0)
        if self.back is not None:
            back = self.back.translate_unit(slabs, self.batch_size)
            maps["cycle_residual"] = np.abs(back - middle_slice(as_slabs(images)))
        return maps


# ---------------------------------------------------------------------------- naming


def map_path(path: Path, name: str) -> Path:
    """Where map `name` of the output file `path` goes: `_<name>` before the extension
    (t2.nii.gz -> t2_uncertainty.nii.gz, a.png -> a_uncertainty.png)."""
    path = Path(path)
    lower = path.name.lower()
    extension = next((suffix for suffix in NIFTI_SUFFIXES if lower.endswith(suffix)), None)
    extension = extension or path.suffix
    stem = path.name[: len(path.name) - len(extension)]
    return path.with_name(f"{stem}_{name}{path.name[len(stem) :]}")


def map_folder(folder: Path, name: str) -> Path:
    """The sibling folder of map `name` for an output folder: out/ -> out_uncertainty/."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}_{name}")


# ------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class UncertaintyResult:
    """How well each map finds the error, per slice: `values[(direction, map)][metric]`,
    float64 (N,) in the order of `names`; metrics `metrics.DETECTION_METRIC_NAMES`, and
    "lesion_auc" with lesion masks (see `metrics.error_detection`)."""

    names: tuple[str, ...]
    values: dict[tuple[str, str], dict[str, np.ndarray]]
    passes: int
    seed: int
    method: str

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(next(iter(self.values.values())))

    def statistics(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{direction: {map: {metric: {"median", "q1", "q3", "n"}}}} over slices."""
        table: dict = {}
        for (direction, name), values in self.values.items():
            table.setdefault(direction, {})[name] = {
                metric: metrics.median_and_quartiles(values[metric]) for metric in values
            }
        return table

    def chance(self) -> dict[str, dict[str, dict[str, dict[str, object]]]]:
        """{direction: {map: {metric: {"above", "below", "p", "beats_chance"}}}}: a
        `metrics.sign_test` of the slices against chance (`CHANCE`)."""
        table: dict = {}
        for (direction, name), values in self.values.items():
            verdicts = {}
            for metric in values:
                test = metrics.sign_test(values[metric], CHANCE[metric])
                test["beats_chance"] = bool(
                    test["p"] < CHANCE_P_VALUE and test["above"] > test["below"]
                )
                verdicts[metric] = test
            table.setdefault(direction, {})[name] = verdicts
        return table

    def rows(self) -> list[dict[str, object]]:
        """One row per slice, direction and map, with every metric."""
        rows = []
        for (direction, name), values in self.values.items():
            for index, slice_name in enumerate(self.names):
                row: dict[str, object] = {"name": slice_name, "direction": direction, "map": name}
                row.update({metric: float(values[metric][index]) for metric in values})
                rows.append(row)
        return rows

    def ranked(self, direction: str, name: str = "uncertainty", metric: str = "auc") -> list[int]:
        """Slice indices from the lowest to the highest `metric`, those without left out."""
        values = self.values[(direction, name)][metric]
        return [int(index) for index in np.argsort(values) if np.isfinite(values[index])]


def direction_maps(
    generators: Mapping[str, Generator],
    direction: str,
    passes: int,
    seed: int = DEFAULT_SEED,
    method: str = DEFAULT_METHOD,
    batch_size: int = 16,
) -> TranslationMaps:
    """The `TranslationMaps` of one direction of {direction: Generator}: the passes, and
    the cycle residual through the other direction's generator."""
    return TranslationMaps(
        generators[direction],
        passes,
        seed=seed,
        back=generators[reverse_of(direction)],
        method=method,
        batch_size=batch_size,
    )


def evaluate_maps(
    generators: Mapping[str, Generator],
    images,
    passes: int,
    seed: int = DEFAULT_SEED,
    method: str = DEFAULT_METHOD,
    batch_size: int = 16,
) -> UncertaintyResult:
    """Score each map of each direction against the real error on paired slices.

    generators: {direction: `inference.Generator`}; images: `evaluation.PairedImages`
    (preprocessed pairs, head masks, lesion masks or None). Per slice, over its head:
    `metrics.error_detection` of the uncertainty map and the cycle residual against
    |translation - target|, the translation being the generator's deterministic pass.
    """
    values = {}
    for direction, (source, target) in DIRECTIONS.items():
        maker = direction_maps(generators, direction, passes, seed, method, batch_size)
        inputs, targets = images.of(source), images.of(target)
        chunks: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in SCORED_MAPS}
        for start in range(0, len(inputs), batch_size):
            part = slice(start, start + batch_size)
            maps = maker(inputs[part])
            error = np.abs(maps["translation"] - targets[part])
            lesions = None if images.lesions is None else images.lesions[part]
            for name in SCORED_MAPS:
                chunks[name].append(
                    metrics.error_detection(maps[name], error, images.masks[part], lesions)
                )
        for name, parts in chunks.items():
            values[(direction, name)] = {
                metric: np.concatenate([chunk[metric] for chunk in parts]) for metric in parts[0]
            }
    return UncertaintyResult(images.names, values, passes, seed, method)


def example_rows(
    generators: Mapping[str, Generator], images, result: UncertaintyResult, batch_size: int = 16
) -> list[tuple[str, tuple[str, ...], tuple[np.ndarray, ...], np.ndarray | None]]:
    """The rows of `plotting.plot_uncertainty_examples`: per direction, the slices where the
    uncertainty map finds the worst error least well, at the median and best (its AUC),
    with input, translation, |error|, uncertainty and cycle residual, and the lesion
    mask or None. The maps are made again as they were scored (a pass's mask does not
    depend on the batch)."""
    rows = []
    for direction, (source, target) in DIRECTIONS.items():
        order = result.ranked(direction)
        if not order:
            continue
        picks: dict[int, str] = {}
        for label, index in (
            ("lowest", order[0]),
            ("median", order[len(order) // 2]),
            ("highest", order[-1]),
        ):
            picks.setdefault(index, label)
        maker = direction_maps(
            generators, direction, result.passes, result.seed, result.method, batch_size
        )
        for index, label in picks.items():
            inputs = images.of(source)[index]
            maps = {name: values[0] for name, values in maker(inputs[np.newaxis]).items()}
            scores = {name: result.values[(direction, name)]["auc"][index] for name in SCORED_MAPS}
            rows.append(
                (
                    f"{images.names[index]}: {label} AUC\nuncertainty {scores['uncertainty']:.2f}"
                    f", cycle {scores['cycle_residual']:.2f}",
                    (
                        f"{source.upper()} input",
                        f"{direction} translation",
                        f"|error| vs {target.upper()}",
                        f"uncertainty ({result.passes} passes)",
                        "cycle residual",
                    ),
                    (
                        inputs,
                        maps["translation"],
                        np.abs(maps["translation"] - images.of(target)[index]),
                        maps["uncertainty"],
                        maps["cycle_residual"],
                    ),
                    None if images.lesions is None else images.lesions[index],
                )
            )
    return rows
