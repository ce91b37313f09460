"""Wire a training run: devices, strategy, model, optimizers, and `train()`.

`train(config)` is the whole job: it resumes from the latest checkpoint in
`<output_dir>/checkpoints`, runs `fit` up to `config.epochs` with the callbacks of
`callbacks.py` (figures, `history.csv`, test scores, checkpoints), then exports the
generators and writes `loss_curves.png` and `training.gif` under `config.output_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from dataclasses import dataclass

import keras
import tensorflow as tf

import plotting
from callbacks import (
    Interruption,
    NonFiniteGuard,
    RunClock,
    TimeBudget,
    signals_stop_training,
    training_callbacks,
)
from checkpoints import RunCheckpoints, export_generators, export_unless_done
from config import CONFIG_FILE_NAME, TrainConfig, save_config, tf_config_problem
from data_processing import TrainingData, make_training_data
from errors import DataError, RunFailed, first_line
from mri_gan import CycleGan, make_cyclegan

log = logging.getLogger(__name__)


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
        problem = tf_config_problem()
        if problem:
            raise DataError(problem)
        try:
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

    Raises DataError for input that training cannot use, RunFailed for a run that
    cannot go on.
    """
    clock = RunClock.start()
    configure_devices()
    strategy = make_strategy(config.strategy)
    check_replicas(config, strategy)
    keras.utils.set_random_seed(config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        model = build_model(config)
        checkpoints = RunCheckpoints(model, config.checkpoint_dir, config.keep_checkpoints)
        start_epoch, restored = checkpoints.restore()
    chief = is_chief(strategy)
    # Workers run what the chief runs (their collective ops must match) but write to a
    # scratch dir of their own, removed at the end: only the chief's files are kept.
    files = config if chief else worker_scratch(config, strategy)
    if not chief:
        # Outside the strategy's scope: a variable made in it (the checkpoint's epoch) is
        # a collective operation that the chief would not join.
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
                plotting.write_summary_figures(config, start_epoch)
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
        data = make_training_data(config, shuffle_seed=config.seed + start_epoch)
        interruption, guard = Interruption(), NonFiniteGuard(config.max_nonfinite)
        budget = (
            TimeBudget(clock, config.max_minutes, config.epochs)
            if config.max_minutes is not None
            else None
        )
        with signals_stop_training(interruption):
            model.fit(
                sharded_per_worker(data.batches, config),
                epochs=config.epochs,
                initial_epoch=start_epoch,
                steps_per_epoch=data.steps_per_epoch,
                callbacks=training_callbacks(
                    files, model, data, checkpoints, interruption, guard, start_epoch, clock, budget
                ),
                verbose=config.verbose,
                shuffle=False,  # the tf.data pipeline shuffles
            )
        end_epoch = budget.stopped_after if budget and budget.stopped_after else config.epochs
        return finish(
            model, files, data, checkpoints, interruption, guard, start_epoch, end_epoch, chief
        )
    finally:
        if not chief:
            shutil.rmtree(files.output_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                files.output_dir.parent.rmdir()  # `workers/`, once the last worker is done


def check_replicas(config: TrainConfig, strategy: tf.distribute.Strategy) -> None:
    """Refuse a batch that the replicas cannot share evenly; say how it is shared."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise DataError(
            f"--batch_size {config.batch_size} cannot be split evenly over the {replicas} "
            "replicas of the strategy: use a multiple of the replica count"
        )
    if replicas > 1:
        log.info(
            "%s over %d replicas: %d images of each contrast per replica and step.",
            type(strategy).__name__,
            replicas,
            config.batch_size // replicas,
        )


def worker_scratch(config: TrainConfig, strategy: tf.distribute.Strategy) -> TrainConfig:
    """The config of a non-chief worker: its files go to a scratch dir of its own."""
    scratch = config.output_dir / "workers" / f"worker-{strategy.cluster_resolver.task_id}"
    return dataclasses.replace(config, output_dir=scratch, cache_dir=config.resolved_cache_dir)


def sharded_per_worker(batches: tf.data.Dataset, config: TrainConfig) -> tf.data.Dataset:
    """`batches`, each worker of a multi-worker run taking its share of every global
    batch (the pipeline reads no files TensorFlow could split between workers)."""
    if config.strategy != "multiworker":
        return batches
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def finish(
    model: CycleGan,
    files: TrainConfig,
    data: TrainingData,
    checkpoints: RunCheckpoints,
    interruption: Interruption,
    guard: NonFiniteGuard,
    start_epoch: int,
    end_epoch: int,
    chief: bool,
) -> TrainResult:
    """After `fit`: report a divergence, save a stopped run, or export a finished one:
    `end_epoch` epochs done, fewer than `files.epochs` when the time budget ended it."""
    log.info(
        "Preprocessing cache %s: %d images preprocessed, %d read from the cache.",
        data.cache.cache_dir,
        data.cache.misses,
        data.cache.hits,
    )
    if guard.diverged:
        raise RunFailed(
            f"training diverged: {guard.seen} steps had a NaN or Inf loss (limit "
            f"--max_nonfinite {files.max_nonfinite}); the last good checkpoint "
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
        plotting.write_summary_figures(files, interruption.epoch)
        return TrainResult(start_epoch, interruption.epoch, interruption.signal_name)
    if end_epoch < files.epochs:
        if end_epoch % files.checkpoint_every:
            checkpoints.save(end_epoch)
        log.info(
            "Time budget of --max_minutes %g reached: stopping after epoch %d of %d.",
            files.max_minutes,
            end_epoch,
            files.epochs,
        )
    if not chief:
        log.info("Worker finished %d epochs; the chief wrote the outputs.", end_epoch)
        return TrainResult(start_epoch, end_epoch)
    export_generators(model, files, files.export_dir, epoch=end_epoch)
    plotting.write_summary_figures(files, end_epoch)
    log.info("Finished %d of %d epochs; outputs in %s", end_epoch, files.epochs, files.output_dir)
    return TrainResult(start_epoch, end_epoch)
