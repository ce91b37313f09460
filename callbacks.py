"""The Keras callbacks of a training run, and the list `training.train` hands to `fit`.

Per step: stop cleanly on SIGINT/SIGTERM (`StopOnSignal`), count NaN/Inf losses
(`NonFiniteGuard`). Per epoch: set the learning rate (`LinearDecay`) and log it; after
each complete epoch (`EpochEndCallback`): the test scores and the best generators
(`PairedEvaluation`), `history.csv`, the epoch figure and the checkpoint, in that
order, with TensorBoard writing its logs among them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import evaluation
import plotting
from checkpoints import BestGenerators, RunCheckpoints
from config import TrainConfig
from data_processing import TrainingData, sample_images
from files import atomic_path, pause_point
from inference import Generator, generators_of, middle_slice
from mri_gan import CycleGan

log = logging.getLogger(__name__)


@dataclass
class Interruption:
    """Set when SIGINT or SIGTERM asks the run to stop: which signal, and where."""

    signal_name: str | None = None
    epoch: int = 0
    step: int = 0


SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class RunClock:
    """Wall time since the run started (preprocessing included), for `history.csv` and
    the `--max_minutes` budget."""

    started: float

    @classmethod
    def start(cls) -> RunClock:
        return cls(time.monotonic())

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60.0


@contextlib.contextmanager
def signals_stop_training(interruption: Interruption) -> Iterator[None]:
    """While the block runs, SIGINT (Ctrl-C) and SIGTERM only record themselves in
    `interruption`, and `StopOnSignal` ends `fit` after the current step; a second Ctrl-C
    stops at once, without saving. The previous handlers are back when the block ends,
    however it ends. Signals reach the main thread only: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        interruption.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            f"\n{interruption.signal_name} received: stopping after this step "
            "and saving a checkpoint (Ctrl-C again to quit without saving)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopOnSignal(keras.callbacks.Callback):
    """End `fit` after the step during which a signal arrived (`signals_stop_training`).

    The per-epoch callbacks skip the epoch that was cut short; `train` then saves a
    checkpoint.
    """

    def __init__(self, interruption: Interruption) -> None:
        super().__init__()
        self.interruption = interruption

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.interruption.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.interruption.signal_name:
            self.interruption.step = batch + 1
            self.model.stop_training = True


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
    `columns` in the epoch's logs, e.g. test metrics), the seconds the epoch took and the
    minutes since the run started (preprocessing included).

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
        clock: RunClock,
    ) -> None:
        super().__init__(interruption)
        self.path = path
        self.clock = clock
        self.columns = ("epoch", *columns, "seconds", "minutes")
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
        row = {
            "epoch": str(epoch),
            "seconds": f"{time.perf_counter() - self._started:.2f}",
            "minutes": f"{self.clock.minutes():.3f}",
        }
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
    so far are kept in `best_dir` (`checkpoints.BestGenerators`).
    """

    def __init__(
        self,
        interruption: Interruption,
        images: evaluation.PairedImages,
        every: int,
        last_epoch: int,
        model: CycleGan,
        generators: dict[str, Generator],
        best_dir: Path,
    ) -> None:
        super().__init__(interruption)
        self.images = images
        self.every = every
        self.last_epoch = last_epoch
        self.generators = generators
        self.best = BestGenerators(model, best_dir)

    def epoch_done(self, epoch: int, logs: dict) -> None:
        if epoch % self.every and epoch != self.last_epoch:
            return
        summary = evaluation.evaluate_pairs(self.generators, self.images, baselines=False).summary()
        logs.update(summary)
        improved = summary[BestGenerators.SCORE] > self.best.score
        log.info(
            "Epoch %d, %d test pairs: SSIM T1->T2 %.4f, T2->T1 %.4f, mean %.4f%s",
            epoch,
            len(self.images.names),
            summary["t1_to_t2_ssim"],
            summary["t2_to_t1_ssim"],
            summary["mean_ssim"],
            " (best so far)" if improved else f" (best {self.best.score:.4f})",
        )
        if improved:
            self.best.save(epoch, summary)


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


class TimeBudget(keras.callbacks.Callback):
    """End `fit` after an epoch when another epoch as long would end past `minutes` of
    the run's clock; `stopped_after` is then that epoch's 1-based number. Listed last, so
    the other callbacks have already counted the epoch as complete."""

    def __init__(self, clock: RunClock, minutes: float, last_epoch: int) -> None:
        super().__init__()
        self.clock = clock
        self.minutes = minutes
        self.last_epoch = last_epoch
        self.stopped_after: int | None = None
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_started = self.clock.minutes()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.model.stop_training or epoch + 1 >= self.last_epoch:
            return
        now = self.clock.minutes()
        if now + (now - self._epoch_started) > self.minutes:
            self.stopped_after = epoch + 1
            self.model.stop_training = True


class EpochFigure(EpochEndCallback):
    """Draw the fixed sample images ((N, H, W, C) in [-1, 1]) and their translations by
    `generators` after each epoch."""

    def __init__(
        self,
        interruption: Interruption,
        generators: dict[str, Generator],
        t1: np.ndarray,
        t2: np.ndarray,
        epochs_dir: Path,
        total_epochs: int | None,
        tensorboard_dir: Path | None = None,
    ) -> None:
        super().__init__(interruption)
        self.generators = generators
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
        # Of a slab (2.5-D), the middle slice: the one translation keeps.
        plotting.plot_translations(
            middle_slice(self.t1),
            middle_slice(self.generators["t1_to_t2"](self.t1)),
            middle_slice(self.t2),
            middle_slice(self.generators["t2_to_t1"](self.t2)),
            plotting.epoch_figure_path(self.epochs_dir, epoch),
            title=f"Epoch {epoch}" + (f" of {self.total_epochs}" if self.total_epochs else ""),
        )
        if self.writer is not None:
            figure = tf.io.decode_png(
                tf.io.read_file(str(plotting.epoch_figure_path(self.epochs_dir, epoch)))
            )
            with self.writer.as_default():
                tf.summary.image("translations", figure[tf.newaxis], step=epoch)


def training_callbacks(
    config: TrainConfig,
    model: CycleGan,
    data: TrainingData,
    checkpoints: RunCheckpoints,
    interruption: Interruption,
    guard: NonFiniteGuard,
    start_epoch: int,
    clock: RunClock,
    budget: TimeBudget | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a run writing under `config.output_dir`, in the order they must
    run: the step's controls; those that add to an epoch's logs (learning rate, test
    scores) before those that write them; the checkpoint after `history.csv`; the time
    `budget`, if any, last."""
    samples_t1 = sample_images(data.t1_scan.entries, data.cache, config.num_samples)
    samples_t2 = sample_images(data.t2_scan.entries, data.cache, config.num_samples)
    tensorboard_dir = config.output_dir / "tensorboard"
    # Wrapped once for the figures and the scores: each generator is traced once.
    generators = generators_of(model, config.n4)
    scoring, columns = [], (*model.loss_names, "learning_rate")
    test_dirs = config.resolved_test_dirs
    if config.eval_every and test_dirs:
        pairing = evaluation.pair_files(*test_dirs)
        test_images = evaluation.load_pairs(pairing.pairs, data.cache)
        scoring = [
            PairedEvaluation(
                interruption,
                test_images,
                config.eval_every,
                config.epochs,
                model,
                generators,
                config.best_checkpoint_dir,
            )
        ]
        columns = (*columns, *evaluation.SUMMARY_KEYS)
    elif config.context_slices:
        log.info(
            "Not scored during training (2-D test slices have no neighbours): score it with "
            "evaluate.py --test_volumes_t1/--test_volumes_t2."
        )
    elif config.eval_every:
        log.info(
            "No paired test set: give --test_dir_t1/--test_dir_t2 to score the model "
            "during training."
        )
    return [
        StopOnSignal(interruption),
        guard,
        LinearDecay(list(model.network_optimizers.values()), config),
        LearningRateLog(model.network_optimizers["generators"]),
        *scoring,
        HistoryCsv(interruption, config.history_path, columns, start_epoch, clock),
        keras.callbacks.TensorBoard(
            str(tensorboard_dir), write_graph=False, profile_batch=0, update_freq="epoch"
        ),
        EpochFigure(
            interruption,
            generators,
            samples_t1,
            samples_t2,
            config.epochs_dir,
            # Under a time budget the run may end before `config.epochs`.
            config.epochs if config.max_minutes is None else None,
            tensorboard_dir,
        ),
        EpochCheckpoint(interruption, checkpoints, config.checkpoint_every, config.epochs),
        *([budget] if budget is not None else []),
    ]
