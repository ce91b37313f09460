"""Wire a training run: devices, data, model, optimizers, checkpoints and callbacks.

`train(config)` is the whole job: it resumes from the latest checkpoint in
`<output_dir>/checkpoints`, runs `fit` up to `config.epochs`, and writes per-epoch
figures, `history.csv`, `loss_curves.png` and `training.gif` under `config.output_dir`.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import plotting
from config import CONFIG_FILE_NAME, TrainConfig, save_config
from data_processing import DataError, TrainingData, make_training_data, sample_images
from mri_gan import CycleGan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a run did: the epoch it started from and the epoch it reached."""

    start_epoch: int
    end_epoch: int


def configure_devices() -> None:
    """Let TensorFlow grow GPU memory as needed instead of taking it all at start."""
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


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


def make_optimizers(model: CycleGan, config: TrainConfig) -> dict[str, keras.optimizers.Optimizer]:
    """One Adam(lr, beta_1) per network, keyed by the network's name."""
    networks = (*model.generators, *model.critics)
    return {
        network.name: FusedAdam(config.lr, beta_1=config.beta_1, name=f"{network.name}_adam")
        for network in networks
    }


def make_checkpoint(model: CycleGan, epoch: tf.Variable) -> tf.train.Checkpoint:
    """A checkpoint of the four networks, their four optimizers and the epoch counter."""
    networks = {network.name: network for network in (*model.generators, *model.critics)}
    optimizers = {f"{name}_optimizer": opt for name, opt in model.network_optimizers.items()}
    return tf.train.Checkpoint(epoch=epoch, **networks, **optimizers)


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> int:
    """Restore the newest checkpoint, if any; return the number of epochs it had done."""
    latest = manager.latest_checkpoint
    if latest is None:
        return 0
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise DataError(
            f"checkpoint {latest} does not fit this configuration "
            f"(image size or options changed?): {first_line}"
        ) from error
    return int(checkpoint.epoch.numpy())


class HistoryCsv(keras.callbacks.Callback):
    """One row per epoch in `history.csv`: the epoch, each mean loss and the seconds taken.

    The file is rewritten whole through a temporary file at each epoch, so it never
    ends with a half-written row; on resume, rows past the restored epoch are dropped.
    """

    def __init__(self, path: Path, loss_names: tuple[str, ...], restored_epoch: int) -> None:
        super().__init__()
        self.path = path
        self.columns = ("epoch", *loss_names, "seconds")
        self.rows = [row for row in self._read() if int(row["epoch"]) <= restored_epoch]
        self._started = 0.0

    def _read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as stream:
            return [row for row in csv.DictReader(stream) if row.get("epoch", "").isdigit()]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        row = {"epoch": str(epoch + 1), "seconds": f"{time.perf_counter() - self._started:.2f}"}
        row.update({name: f"{float(logs[name]):.6g}" for name in self.columns if name in logs})
        self.rows.append(row)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save a checkpoint every `every` epochs and after the last epoch."""

    def __init__(
        self, manager: tf.train.CheckpointManager, epoch: tf.Variable, every: int, last_epoch: int
    ) -> None:
        super().__init__()
        self.manager = manager
        self.epoch = epoch
        self.every = every
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        done = epoch + 1
        if done % self.every == 0 or done == self.last_epoch:
            self.epoch.assign(done)
            self.manager.save(checkpoint_number=done)


class EpochFigure(keras.callbacks.Callback):
    """Draw the fixed sample images and their translations after each epoch."""

    def __init__(self, t1: np.ndarray, t2: np.ndarray, epochs_dir: Path, total_epochs: int) -> None:
        super().__init__()
        self.t1 = t1
        self.t2 = t2
        self.epochs_dir = epochs_dir
        self.total_epochs = total_epochs

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        t1_to_t2 = self.model.t1_to_t2(self.t1, training=False).numpy()
        t2_to_t1 = self.model.t2_to_t1(self.t2, training=False).numpy()
        plotting.plot_translations(
            self.t1,
            t1_to_t2,
            self.t2,
            t2_to_t1,
            epoch_figure_path(self.epochs_dir, epoch + 1),
            title=f"Epoch {epoch + 1} of {self.total_epochs}",
        )


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


def build_model(config: TrainConfig) -> CycleGan:
    """The CycleGAN with its four optimizers, compiled for `fit`."""
    model = CycleGan(
        config.img_height,
        config.img_width,
        gan_loss=config.gan_loss,
        lambda_cycle=config.lambda_cycle,
        lambda_identity=config.lambda_identity,
    )
    model.compile(make_optimizers(model, config), jit_compile=False)
    return model


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume training) a CycleGAN as `config` says; see the module docstring.

    Raises DataError for input that training cannot use.
    """
    configure_devices()
    keras.utils.set_random_seed(config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)

    model = build_model(config)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = make_checkpoint(model, epoch)
    manager = tf.train.CheckpointManager(
        checkpoint, str(config.checkpoint_dir), max_to_keep=config.keep_checkpoints
    )
    start_epoch = restore_latest(checkpoint, manager)
    if start_epoch >= config.epochs:
        log.info(
            "Training already finished: %d of %d epochs done (checkpoint %s). "
            "Raise --epochs to train longer.",
            start_epoch,
            config.epochs,
            manager.latest_checkpoint,
        )
        write_summary_figures(config, start_epoch)
        return TrainResult(start_epoch, start_epoch)
    if start_epoch:
        log.info(
            "Resuming from %s: %d of %d epochs done, continuing at epoch %d.",
            manager.latest_checkpoint,
            start_epoch,
            config.epochs,
            start_epoch + 1,
        )

    save_config(config, config.output_dir / CONFIG_FILE_NAME)
    # A different shuffle order per resumed run, still reproducible from the seed.
    data: TrainingData = make_training_data(config, shuffle_seed=config.seed + start_epoch)
    samples_t1 = sample_images(data.t1_scan.entries, data.cache, config.num_samples)
    samples_t2 = sample_images(data.t2_scan.entries, data.cache, config.num_samples)

    callbacks = [
        HistoryCsv(config.output_dir / "history.csv", model.loss_names, start_epoch),
        EpochFigure(samples_t1, samples_t2, config.output_dir / "epochs", config.epochs),
        EpochCheckpoint(manager, epoch, config.checkpoint_every, config.epochs),
    ]
    model.fit(
        data.batches,
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
    write_summary_figures(config, config.epochs)
    log.info(
        "Finished %d of %d epochs; outputs in %s", config.epochs, config.epochs, config.output_dir
    )
    return TrainResult(start_epoch, config.epochs)
