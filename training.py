"""Wire a training run: devices, data, model, optimizers, checkpoints and callbacks.

`train(config)` is the whole job: it resumes from the latest checkpoint in
`<output_dir>/checkpoints`, runs `fit` up to `config.epochs`, and writes per-epoch
figures, `history.csv`, `loss_curves.png` and `training.gif` under `config.output_dir`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import evaluation
import plotting
import translation
from config import CONFIG_FILE_NAME, TrainConfig, save_config
from data_processing import TrainingData, make_training_data, sample_images
from errors import DataError, first_line
from files import atomic_path, pause_point
from mri_gan import CycleGan, make_cyclegan

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run cannot go on (a checkpoint could not be written, losses diverged); the
    message says why and what was kept."""


@dataclass(frozen=True)
class TrainResult:
    """What a run did: the epoch it started from, the epoch it reached, what stopped it."""

    start_epoch: int
    end_epoch: int
    stopped_by: str | None = None


def configure_devices() -> None:
    """Let TensorFlow grow GPU memory as needed instead of taking it all at start."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # devices already initialised (a second run in one process): keep as is


def on_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def use_mixed_precision(config: TrainConfig) -> bool:
    """--mixed_precision as given, else on with a GPU (float16 is slow on CPUs)."""
    return on_gpu() if config.mixed_precision is None else config.mixed_precision


def use_xla(config: TrainConfig) -> bool:
    """--xla as given, else on with one GPU: off on CPU (measured slower, see README)
    and off with several replicas (not tested together)."""
    if config.xla is not None:
        return config.xla
    return on_gpu() and tf.distribute.get_strategy().num_replicas_in_sync == 1


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy `--strategy` names.

    auto: MirroredStrategy when more than one GPU is visible, else the default (one
    device); mirrored: every local GPU (the CPU when there is none); multiworker: the
    machines of the TF_CONFIG environment variable, each with its local GPUs.
    """
    if name == "multiworker":
        try:
            json.loads(os.environ.get("TF_CONFIG", "{}"))
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"TF_CONFIG cannot set up the workers: {first_line(error)}") from error
    if name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on the non-chief
    workers of a multi-worker run (TF_CONFIG's worker 0, or its `chief`, writes)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


class FusedAdam(keras.optimizers.Adam):
    """Keras Adam, each variable updated by TensorFlow's fused `ResourceApplyAdam` kernel.

    The same update as `keras.optimizers.Adam` (bias-corrected step size, epsilon outside
    the square root), in one pass over memory instead of about ten elementwise ops:
    about 3x faster on the 54 M parameters of a U-Net. TensorFlow backend only.
    """

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


def make_optimizers(
    model: CycleGan, config: TrainConfig, mixed_precision: bool = False
) -> dict[str, keras.optimizers.Optimizer]:
    """Adam(lr, beta_1) for the generators and one for the critics, keyed by group name;
    under mixed precision each wrapped in Keras' dynamic LossScaleOptimizer."""
    optimizers = {}
    for group in model.network_groups:
        optimizer = FusedAdam(config.lr, beta_1=config.beta_1, name=f"{group}_adam")
        if mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"{group}_scaled")
        optimizers[group] = optimizer
    return optimizers


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
                    f"(image size or options changed?): {first_line(error)}"
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


@dataclass
class Interruption:
    """Set when SIGINT or SIGTERM asks the run to stop: which signal, and where."""

    signal_name: str | None = None
    epoch: int = 0
    step: int = 0


class StopOnSignal(keras.callbacks.Callback):
    """Turn SIGINT (Ctrl-C) and SIGTERM into a clean stop after the current step.

    The per-epoch callbacks skip the epoch that was cut short; `train` then saves a
    checkpoint. A second Ctrl-C stops at once, without saving.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, interruption: Interruption) -> None:
        super().__init__()
        self.interruption = interruption
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.interruption.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            f"\n{self.interruption.signal_name} received: stopping after this step "
            "and saving a checkpoint (Ctrl-C again to quit without saving)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_begin(self, logs=None) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.interruption.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.interruption.signal_name:
            self.interruption.step = batch + 1
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class NonFiniteGuard(keras.callbacks.Callback):
    """Report each step whose loss was NaN or Inf (its update was skipped) and stop the
    run when more than `limit` such steps have happened."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen = 0
        self.epoch = 0
        self.diverged = False

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        skipped = int((logs or {}).get("skipped_steps", 0))
        if skipped > self.seen:
            self.seen = skipped
            log.warning(
                "warning: non-finite loss in epoch %d at step %d: update skipped (%d so far, "
                "limit %d)",
                self.epoch + 1,
                batch + 1,
                skipped,
                self.limit,
            )
        if self.seen > self.limit:
            self.diverged = True
            self.model.stop_training = True


class EpochEndCallback(keras.callbacks.Callback):
    """A callback whose `epoch_done` runs after each complete epoch, not one cut short."""

    def __init__(self, interruption: Interruption) -> None:
        super().__init__()
        self.interruption = interruption

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.interruption.signal_name and not self.model.stop_training:
            self.epoch_done(epoch + 1, logs or {})

    def epoch_done(self, epoch: int, logs: dict) -> None:
        """Called with the 1-based number of the epoch just completed."""
        raise NotImplementedError


class HistoryCsv(EpochEndCallback):
    """One row per epoch in `history.csv`: the epoch, each mean loss (and any other
    `columns` in the epoch's logs, e.g. test metrics) and the seconds taken.

    The file is rewritten whole through a temporary file at each epoch, so it never
    ends with a half-written row; on resume, rows past the restored epoch are dropped.
    It is written before the epoch's checkpoint: a kill between the two leaves a row
    that the next run drops and writes again, where the other order would lose the row
    of an epoch that the checkpoint counts as done.
    """

    def __init__(
        self,
        interruption: Interruption,
        path: Path,
        columns: tuple[str, ...],
        restored_epoch: int,
    ) -> None:
        super().__init__(interruption)
        self.path = path
        self.columns = ("epoch", *columns, "seconds")
        self.rows = [row for row in self._read() if int(row["epoch"]) <= restored_epoch]
        self._started = 0.0

    def _read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as stream:
            return [row for row in csv.DictReader(stream) if row.get("epoch", "").isdigit()]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        pause_point("step")  # for the kill tests: stop mid-epoch

    def epoch_done(self, epoch: int, logs: dict) -> None:
        row = {"epoch": str(epoch), "seconds": f"{time.perf_counter() - self._started:.2f}"}
        row.update({name: f"{float(logs[name]):.6g}" for name in self.columns if name in logs})
        self.rows.append(row)
        with atomic_path(self.path) as temporary, open(temporary, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)


class EpochCheckpoint(EpochEndCallback):
    """Save a checkpoint every `every` epochs and after the last epoch."""

    def __init__(
        self, interruption: Interruption, checkpoints: RunCheckpoints, every: int, last_epoch: int
    ) -> None:
        super().__init__(interruption)
        self.checkpoints = checkpoints
        self.every = every
        self.last_epoch = last_epoch

    def epoch_done(self, epoch: int, logs: dict) -> None:
        if epoch % self.every == 0 or epoch == self.last_epoch:
            self.checkpoints.save(epoch)


class PairedEvaluation(EpochEndCallback):
    """Score the paired test set every `every` epochs and after the last; keep the best.

    The means (`t1_to_t2_ssim`, …, `mean_ssim`) go into the epoch's logs, where the
    history CSV and TensorBoard pick them up. The generators with the best mean SSIM
    so far are saved in `best_dir` with `best.json`; checkpoint rotation never touches it.
    """

    def __init__(
        self,
        interruption: Interruption,
        images: evaluation.PairedImages,
        every: int,
        last_epoch: int,
        model: CycleGan,
        best_dir: Path,
    ) -> None:
        super().__init__(interruption)
        self.images = images
        self.every = every
        self.last_epoch = last_epoch
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # Generators only, under make_checkpoint's names, so evaluate.py and translate.py
        # read it as they read a training checkpoint.
        generators = {network.name: network for network in model.generators}
        checkpoint = tf.train.Checkpoint(epoch=self.epoch, **generators)
        self.manager = tf.train.CheckpointManager(checkpoint, str(best_dir), max_to_keep=1)
        self.best_file = best_dir / "best.json"
        self.best = -math.inf
        if self.best_file.is_file():
            recorded = json.loads(self.best_file.read_text())
            # A run killed between saving the best generators and writing best.json
            # leaves it naming older ones: then the score is unknown, and the next
            # evaluation sets a new best.
            latest = self.manager.latest_checkpoint
            # Compared by name: the dir may have moved or been given another way since.
            if latest and Path(recorded.get("checkpoint", "")).name == Path(latest).name:
                self.best = recorded["mean_ssim"]

    def epoch_done(self, epoch: int, logs: dict) -> None:
        if epoch % self.every and epoch != self.last_epoch:
            return
        summary = evaluation.evaluate_pairs(self.model, self.images, baselines=False).summary()
        logs.update(summary)
        improved = summary["mean_ssim"] > self.best
        log.info(
            "Epoch %d, %d test pairs: SSIM T1->T2 %.4f, T2->T1 %.4f, mean %.4f%s",
            epoch,
            len(self.images.names),
            summary["t1_to_t2_ssim"],
            summary["t2_to_t1_ssim"],
            summary["mean_ssim"],
            " (best so far)" if improved else f" (best {self.best:.4f})",
        )
        if improved:
            self.best = summary["mean_ssim"]
            self.epoch.assign(epoch)
            path = self.manager.save(checkpoint_number=epoch)
            with atomic_path(self.best_file) as temporary:
                temporary.write_text(
                    json.dumps({"epoch": epoch, "checkpoint": path, **summary}, indent=2) + "\n"
                )


def decayed_learning_rate(base: float, epoch: int, epochs: int, decay_epochs: int) -> float:
    """The learning rate of 0-based `epoch`: `base` for the first `epochs - decay_epochs`
    epochs, then falling linearly by base / (decay_epochs + 1) an epoch, the reference's
    `linear` policy: base * N / (N + 1) in the first decayed epoch, base / (N + 1) in the
    last, and zero where the line reaches the end of training."""
    constant = epochs - decay_epochs
    return base * (1.0 - max(0, epoch + 1 - constant) / (decay_epochs + 1))


class LinearDecay(keras.callbacks.Callback):
    """Set every optimizer's learning rate for the epoch about to start (see
    `decayed_learning_rate`); the rate follows the epoch, so a resumed run continues it."""

    def __init__(self, optimizers: list[keras.optimizers.Optimizer], config: TrainConfig) -> None:
        super().__init__()
        self.optimizers = optimizers
        self.config = config

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        rate = decayed_learning_rate(
            self.config.lr, epoch, self.config.epochs, self.config.decay_epochs
        )
        for optimizer in self.optimizers:
            optimizer.learning_rate = rate


class LearningRateLog(keras.callbacks.Callback):
    """Put the learning rate into each epoch's logs, for the history and TensorBoard."""

    def __init__(self, optimizer: keras.optimizers.Optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))


class EpochFigure(EpochEndCallback):
    """Draw the fixed sample images and their translations after each epoch."""

    def __init__(
        self,
        interruption: Interruption,
        t1: np.ndarray,
        t2: np.ndarray,
        epochs_dir: Path,
        total_epochs: int,
        tensorboard_dir: Path | None = None,
    ) -> None:
        super().__init__(interruption)
        self.writer = (
            tf.summary.create_file_writer(str(tensorboard_dir / "images"))
            if tensorboard_dir is not None
            else None
        )
        self.t1 = t1
        self.t2 = t2
        self.epochs_dir = epochs_dir
        self.total_epochs = total_epochs

    def epoch_done(self, epoch: int, logs: dict) -> None:
        t1_to_t2 = self.model.t1_to_t2(self.t1, training=False).numpy()
        t2_to_t1 = self.model.t2_to_t1(self.t2, training=False).numpy()
        plotting.plot_translations(
            self.t1,
            t1_to_t2,
            self.t2,
            t2_to_t1,
            epoch_figure_path(self.epochs_dir, epoch),
            title=f"Epoch {epoch} of {self.total_epochs}",
        )
        if self.writer is not None:
            figure = tf.io.decode_png(
                tf.io.read_file(str(epoch_figure_path(self.epochs_dir, epoch)))
            )
            with self.writer.as_default():
                tf.summary.image("translations", figure[tf.newaxis], step=epoch)


def epoch_figure_path(epochs_dir: Path, epoch: int) -> Path:
    return epochs_dir / f"epoch_{epoch:03d}.png"


def write_summary_figures(config: TrainConfig, last_epoch: int) -> None:
    """`loss_curves.png` from the history CSV and `training.gif` from the epoch figures."""
    history = config.output_dir / "history.csv"
    if history.is_file():
        plotting.plot_loss_curves(history, config.output_dir / "loss_curves.png")
    epochs_dir = config.output_dir / "epochs"
    frames = [epoch_figure_path(epochs_dir, epoch) for epoch in range(1, last_epoch + 1)]
    plotting.make_gif(
        [frame for frame in frames if frame.is_file()], config.output_dir / "training.gif"
    )


def export_unless_done(model: CycleGan, config: TrainConfig, epoch: int) -> None:
    """Export the generators of a finished run unless `export/` already holds epoch `epoch`'s.

    A run killed after its last checkpoint but while exporting is finished for the next
    run, which would otherwise leave the export missing or half new, half old.
    `model.json` is written last, so its epoch says the whole export is of that epoch.
    """
    export_dir = config.output_dir / "export"
    try:
        exported = translation.read_model_info(export_dir / translation.MODEL_INFO_NAME)
    except DataError:
        exported = {}
    if exported.get("epoch") != epoch:
        log.info("The export in %s is incomplete: exporting epoch %d again.", export_dir, epoch)
        translation.export_generators(model, config, export_dir, epoch=epoch)


def build_model(config: TrainConfig) -> CycleGan:
    """The CycleGAN with its optimizers, compiled for `fit` (with XLA if `use_xla`).

    Sets Keras' global dtype policy: mixed_float16 under `use_mixed_precision`, else
    float32. Call it inside a strategy's scope to place the variables on its devices.
    """
    mixed = use_mixed_precision(config)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        model = make_cyclegan(config)
    finally:
        # The layers keep their policy; whatever is built later (translation) is float32.
        keras.mixed_precision.set_global_policy("float32")
    model.compile(make_optimizers(model, config, mixed), jit_compile=use_xla(config))
    return model


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume training) a CycleGAN as `config` says; see the module docstring.

    Raises DataError for input that training cannot use.
    """
    configure_devices()
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise DataError(
            f"--batch_size {config.batch_size} cannot be split evenly over the {replicas} "
            "replicas of the strategy: use a multiple of the replica count"
        )
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    if replicas > 1:
        log.info(
            "%s over %d replicas: %d images of each contrast per replica and step.",
            type(strategy).__name__,
            replicas,
            config.batch_size // replicas,
        )

    with strategy.scope():
        model = build_model(config)
        checkpoints = RunCheckpoints(model, config.checkpoint_dir, config.keep_checkpoints)
        start_epoch, restored = checkpoints.restore()
    files = config
    if not chief:
        # Workers run what the chief runs (saves, callbacks: their collective ops must
        # match) but write to a scratch dir of their own, removed at the end; only the
        # chief's files are kept, as TensorFlow prescribes. Made outside the scope: a
        # variable made in it is a collective operation that the chief would not join.
        scratch = config.output_dir / "workers" / f"worker-{strategy.cluster_resolver.task_id}"
        files = dataclasses.replace(config, output_dir=scratch, cache_dir=config.resolved_cache_dir)
        checkpoints = RunCheckpoints(model, files.checkpoint_dir, 1)
    try:
        if start_epoch >= config.epochs:
            log.info(
                "Training already finished: %d of %d epochs done (checkpoint %s). "
                "Raise --epochs to train longer.",
                start_epoch,
                config.epochs,
                restored,
            )
            if chief:
                export_unless_done(model, config, start_epoch)
                write_summary_figures(config, start_epoch)
            return TrainResult(start_epoch, start_epoch)
        if restored:
            log.info(
                "Resuming from %s: %d of %d epochs done, continuing at epoch %d.",
                restored,
                start_epoch,
                config.epochs,
                start_epoch + 1,
            )

        save_config(config, files.output_dir / CONFIG_FILE_NAME)
        # A different shuffle order per resumed run, still reproducible from the seed.
        data: TrainingData = make_training_data(config, shuffle_seed=config.seed + start_epoch)
        batches = data.batches
        if config.strategy == "multiworker":
            # Each worker takes its share of every global batch (the pipeline reads no files
            # TensorFlow could split between workers).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            batches = batches.with_options(options)

        interruption = Interruption()
        guard = NonFiniteGuard(config.max_nonfinite)
        optimizers = list(model.network_optimizers.values())
        callbacks = [StopOnSignal(interruption), guard, LinearDecay(optimizers, config)]
        callbacks += file_callbacks(files, model, data, interruption, start_epoch)
        callbacks.append(
            EpochCheckpoint(interruption, checkpoints, config.checkpoint_every, config.epochs)
        )
        model.fit(
            batches,
            epochs=config.epochs,
            initial_epoch=start_epoch,
            steps_per_epoch=data.steps_per_epoch,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        log.info(
            "Preprocessing cache %s: %d images preprocessed, %d read from the cache.",
            data.cache.cache_dir,
            data.cache.misses,
            data.cache.hits,
        )
        if guard.diverged:
            raise RunFailed(
                f"training diverged: {guard.seen} steps had a NaN or Inf loss (limit "
                f"--max_nonfinite {config.max_nonfinite}); the last good checkpoint "
                f"{checkpoints.manager.latest_checkpoint or '(none yet)'} is kept. "
                "Try a lower --lr."
            )
        if interruption.signal_name:
            # The weights include the steps of the cut-short epoch; the counter does not.
            saved = checkpoints.save(interruption.epoch)
            log.info(
                "Stopped by %s in epoch %d at step %d of %d: checkpoint %s saved with %d epochs "
                "done. Rerun the same command to resume.",
                interruption.signal_name,
                interruption.epoch + 1,
                interruption.step,
                data.steps_per_epoch,
                saved,
                interruption.epoch,
            )
            write_summary_figures(files, interruption.epoch)
            return TrainResult(start_epoch, interruption.epoch, interruption.signal_name)
        if not chief:
            log.info("Worker finished %d epochs; the chief wrote the outputs.", config.epochs)
            return TrainResult(start_epoch, config.epochs)
        translation.export_generators(
            model, config, config.output_dir / "export", epoch=config.epochs
        )
        write_summary_figures(config, config.epochs)
        log.info(
            "Finished %d of %d epochs; outputs in %s",
            config.epochs,
            config.epochs,
            config.output_dir,
        )
        return TrainResult(start_epoch, config.epochs)

    finally:
        if not chief:
            shutil.rmtree(files.output_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                files.output_dir.parent.rmdir()  # `workers/`, once the last worker is done


def file_callbacks(
    config: TrainConfig,
    model: CycleGan,
    data: TrainingData,
    interruption: Interruption,
    start_epoch: int,
) -> list[keras.callbacks.Callback]:
    """The callbacks that write the run's files under `config.output_dir`, in the order
    they must run: those that add to an epoch's logs (learning rate, test scores) before
    those that write them."""
    samples_t1 = sample_images(data.t1_scan.entries, data.cache, config.num_samples)
    samples_t2 = sample_images(data.t2_scan.entries, data.cache, config.num_samples)
    tensorboard_dir = config.output_dir / "tensorboard"
    scoring, columns = [], (*model.loss_names, "learning_rate")
    test_dirs = config.resolved_test_dirs
    if config.eval_every and test_dirs:
        pairing = evaluation.pair_files(*test_dirs)
        test_images = evaluation.load_pairs(pairing.pairs, data.cache)
        best_dir = config.best_checkpoint_dir
        scoring = [
            PairedEvaluation(
                interruption, test_images, config.eval_every, config.epochs, model, best_dir
            )
        ]
        columns = (*columns, *evaluation.SUMMARY_KEYS)
    elif config.eval_every:
        log.info(
            "No paired test set: give --test_dir_t1/--test_dir_t2 to score the model "
            "during training."
        )
    return [
        LearningRateLog(model.network_optimizers["generators"]),
        *scoring,
        HistoryCsv(interruption, config.output_dir / "history.csv", columns, start_epoch),
        keras.callbacks.TensorBoard(
            str(tensorboard_dir), write_graph=False, profile_batch=0, update_freq="epoch"
        ),
        EpochFigure(
            interruption,
            samples_t1,
            samples_t2,
            config.output_dir / "epochs",
            config.epochs,
            tensorboard_dir,
        ),
    ]
