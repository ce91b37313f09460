"""Where a run's state lives on disk: checkpoints, the best generators, and exports.

The layout, under a run's `<output_dir>`:
- `checkpoints/ckpt-N`: the four networks, the two optimizers' Adam state and the epoch
  counter (`make_checkpoint`), numbered in the order written (`RunCheckpoints`);
- `checkpoints/best/`: the generators with the best mean test SSIM and `best.json`
  (`BestGenerators`); checkpoint rotation never touches it;
- `export/t1_to_t2.keras`, `t2_to_t1.keras` and `model.json` (`export_generators`).
Training writes them; translation and evaluation read them (`restore_run`,
`read_model_info`), all through this module.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

from config import CONFIG_FILE_NAME, TrainConfig, image_size_problem, load_config
from directions import DIRECTIONS, contrast_names
from errors import DataError, RunFailed, first_line
from files import atomic_path, pause_point
from mri_gan import GENERATORS, CycleGan, make_cyclegan
from preprocessing import PREPROCESS_VERSION, UPPER_PERCENTILE, preprocessed_per

log = logging.getLogger(__name__)

MODEL_INFO_NAME = "model.json"
EXPORT_FORMAT_VERSION = 1
BEST_FILE_NAME = "best.json"


def make_checkpoint(model: CycleGan, epoch: tf.Variable) -> tf.train.Checkpoint:
    """A checkpoint of the four networks, the two optimizers and the epoch counter.

    Under mixed precision the Adam inside each loss-scale optimizer is saved, under the
    same name, so a run can resume with or without mixed precision (on a CPU after a GPU);
    the loss scale itself starts afresh, as Keras calibrates it within a few steps.
    """
    networks = {network.name: network for network in (*model.generators, *model.critics)}
    optimizers = {
        f"{name}_optimizer": getattr(optimizer, "inner_optimizer", optimizer)
        for name, optimizer in model.network_optimizers.items()
    }
    return tf.train.Checkpoint(epoch=epoch, **networks, **optimizers)


class RunCheckpoints:
    """The checkpoints of a run under `directory`: restore the newest usable one, save more.

    A checkpoint that cannot be read (truncated, corrupt) is reported and the previous
    one is tried; none is deleted for it. New checkpoints are numbered after every
    existing one, so a save never overwrites a checkpoint, readable or not. TensorFlow
    updates the `checkpoint` index file only after a checkpoint is fully written, so a
    run killed while saving resumes from the previous complete one.
    """

    def __init__(self, model: CycleGan, directory: Path, keep: int) -> None:
        self.directory = directory
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = make_checkpoint(model, self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=keep)

    def restore(self) -> tuple[int, str | None]:
        """Restore the newest readable checkpoint: (epochs it had done, its path), or (0, None).

        Raises DataError if a checkpoint does not fit the model (a changed image size)
        or if checkpoints exist and none can be read.
        """
        candidates = list(reversed(self.manager.checkpoints))
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (ValueError, AssertionError) as error:
                raise DataError(
                    f"checkpoint {path} does not fit this configuration "
                    f"(image size, networks or --context_slices changed?): {first_line(error)}"
                ) from error
            except (tf.errors.OpError, IndexError) as error:
                log.warning(
                    "warning: checkpoint %s cannot be read (%s); trying the one before it",
                    path,
                    first_line(error),
                )
                continue
            return int(self.epoch.numpy()), path
        if candidates:
            raise DataError(
                f"no readable checkpoint in {self.directory}; they are kept as they are"
            )
        return 0, None

    def save(self, epochs_done: int) -> str:
        """Save the networks, optimizers and `epochs_done` as a new checkpoint.

        Raises RunFailed if it cannot be written (a full disk); earlier ones stay intact.
        """
        self.epoch.assign(epochs_done)
        numbers = [int(path.stem.rsplit("-", 1)[1]) for path in self.directory.glob("ckpt-*.index")]
        number = max(numbers, default=0) + 1
        # A run killed while TensorFlow wrote checkpoint `number` left its temporary folder
        # (no checkpoint of that number exists, or it would be numbered higher): remove it,
        # or the stale partial file in it outlives this save.
        remove_partial_checkpoint(self.directory, number)
        # The callback runs once the files are written, before the manager records them.
        written = tf.train.CheckpointOptions(
            experimental_write_callbacks=[lambda: pause_point("checkpoint")]
        )
        try:
            return self.manager.save(checkpoint_number=number, options=written)
        except tf.errors.OpError as error:
            remove_partial_checkpoint(self.directory, number)
            reason = error.message.rsplit(";", 1)[-1].strip() or first_line(error)
            latest = self.manager.latest_checkpoint or "none yet"
            raise RunFailed(
                f"could not write checkpoint {self.directory / f'ckpt-{number}'}: {reason}; "
                f"the previous checkpoint ({latest}) is intact"
            ) from error


def remove_partial_checkpoint(directory: Path, number: int) -> None:
    """Remove TensorFlow's temporary files of checkpoint `number`, never a checkpoint."""
    for partial in directory.glob(f"ckpt-{number}_temp*"):
        shutil.rmtree(partial, ignore_errors=True)


def generators_checkpoint(model: CycleGan, epoch: tf.Variable) -> tf.train.Checkpoint:
    """A checkpoint of the two generators and the epoch counter, under the names of
    `make_checkpoint`, so that either kind is read the same way (`restore_run`)."""
    return tf.train.Checkpoint(
        epoch=epoch, **{network.name: network for network in model.generators}
    )


class BestGenerators:
    """The generators with the best test score so far, in `directory` with `best.json`.

    `score` is the recorded `SCORE` (the mean test SSIM of both directions), or -inf when
    there is none or `best.json` does not describe the saved generators (a run killed
    between saving them and writing it).
    """

    SCORE = "mean_ssim"

    def __init__(self, model: CycleGan, directory: Path) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.manager = tf.train.CheckpointManager(
            generators_checkpoint(model, self.epoch), str(directory), max_to_keep=1
        )
        self.best_file = directory / BEST_FILE_NAME
        self.score = -math.inf
        if self.best_file.is_file():
            recorded = json.loads(self.best_file.read_text())
            latest = self.manager.latest_checkpoint
            # Compared by name: the dir may have moved or been given another way since.
            if latest and Path(recorded.get("checkpoint", "")).name == Path(latest).name:
                self.score = recorded[self.SCORE]

    def save(self, epoch: int, scores: dict[str, float]) -> None:
        """Save the generators of `epoch` as the best, with `scores` in best.json."""
        self.score = scores[self.SCORE]
        self.epoch.assign(epoch)
        path = self.manager.save(checkpoint_number=epoch)
        with atomic_path(self.best_file) as temporary:
            temporary.write_text(
                json.dumps({"epoch": epoch, "checkpoint": path, **scores}, indent=2) + "\n"
            )


def export_generators(
    model: CycleGan, config: TrainConfig, export_dir: Path, *, epoch: int | None = None
) -> dict[str, Path]:
    """Save both generators as `<export_dir>/t1_to_t2.keras` and `t2_to_t1.keras`.

    `model.json` beside them records what translation needs: image size, the value range,
    which file is which direction (and `epoch` when given), and how the training slices
    were preprocessed: N4, the normalization percentile, the slice axis of volumes, and
    per generator `preprocessed_per` (`training_preprocessed_per`; null when its data dir
    cannot be found now, as by an export on another machine). The `.keras` files
    load with `keras.models.load_model(path, safe_mode=True)` once `mri_gan` is imported
    (`inference.load_generator` does both).
    Each file is written to a temporary name and renamed. Returns {direction: path}.
    """
    export_dir = Path(export_dir)
    per = {direction: training_preprocessed_per(config, direction) for direction in DIRECTIONS}
    for direction, data_dir in training_data_dirs(config).items():
        if per[direction] is None:
            log.warning(
                "warning: data dir %s cannot be searched: %s does not record whether %s was "
                "trained on volumes; translation will preprocess per slice unless told otherwise",
                data_dir,
                MODEL_INFO_NAME,
                direction,
            )
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
                config.channels,
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
                "input": contrast_names(direction)[0],
                "output": contrast_names(direction)[1],
                "preprocessed_per": per[direction],
            }
            for direction in DIRECTIONS
        },
        "img_height": config.img_height,
        "img_width": config.img_width,
        "n4": config.n4,
        "upper_percentile": UPPER_PERCENTILE,
        "slice_axis": config.slice_axis,
        "context_slices": config.context_slices,
        "preprocess_version": PREPROCESS_VERSION,
        "value_range": [-1.0, 1.0],
        "scaling": (
            "input = 2 * preprocessed - 1, where preprocessing maps the minimum of each "
            "slice (preprocessed_per slice) or of its whole volume (preprocessed_per volume, "
            "slices cut along slice_axis) to 0 and the upper_percentile of its foreground "
            "to 1 (after N4 when n4 is true) and resamples each slice to img_height x "
            "img_width; with context_slices K > 0 the input is the slab of the slice and "
            "its K neighbours on each side (2K + 1 channels, the end slice repeated past "
            "the volume's ends) and the translation is the output's middle channel; "
            "output = 2 * translated - 1 (tanh)"
        ),
        "epoch": epoch,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    with atomic_path(export_dir / MODEL_INFO_NAME) as temporary:
        temporary.write_text(json.dumps(info, indent=2) + "\n")
    return paths


def training_data_dirs(config: TrainConfig) -> dict[str, Path]:
    """{direction: the data dir of its input contrast}: the slices it learnt to translate."""
    dirs = {"t1": config.data_dir_t1, "t2": config.data_dir_t2}
    return {direction: dirs[source] for direction, (source, _) in DIRECTIONS.items()}


def training_preprocessed_per(config: TrainConfig, direction: str) -> str | None:
    """How the training inputs of the `direction` generator were preprocessed: "slice" or
    "volume" (`preprocessing.preprocessed_per` of its input contrast's data dir), or
    None when that dir cannot be searched now.

    Derived from the data dir, since the run's config does not record it: at the end of
    training that dir is the one just read; later (`translate.py --export`) it is read
    again from the path in config.json, which may have moved or changed.
    """
    return preprocessed_per(training_data_dirs(config)[direction], config.slice_axis)


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
    checkpoint = generators_checkpoint(model, epoch)
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


def read_model_info(path: Path) -> dict:
    """The `model.json` written by `export_generators`, as a dict."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(info, dict):
        raise DataError(f"{path} is not a model.json written by export_generators")
    return info


def export_unless_done(model: CycleGan, config: TrainConfig, epoch: int) -> None:
    """Export the generators of a finished run unless `export/` already holds epoch `epoch`'s.

    A run killed after its last checkpoint but while exporting is finished for the next
    run, which would otherwise leave the export missing or half new, half old.
    `model.json` is written last, so its epoch says the whole export is of that epoch.
    """
    export_dir = config.export_dir
    try:
        exported = read_model_info(export_dir / MODEL_INFO_NAME)
    except DataError:
        exported = {}
    if exported.get("epoch") != epoch:
        log.info("The export in %s is incomplete: exporting epoch %d again.", export_dir, epoch)
        export_generators(model, config, export_dir, epoch=epoch)
