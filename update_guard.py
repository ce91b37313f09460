"""The plumbing of a train step's update: skip it when a loss is NaN or Inf, scale the
loss under mixed precision, and keep every replica of a tf.distribute strategy on the
same branch. `mri_gan.CycleGan.train_step` calls `scaled_loss` and `apply_if_finite`."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf


def scaled_loss(optimizer: keras.optimizers.Optimizer, loss: tf.Tensor) -> tf.Tensor:
    """The loss to differentiate: scaled by the optimizer's loss scale under mixed
    precision (a LossScaleOptimizer), else `loss` itself."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(loss)
    return loss


def apply_if_finite(
    losses: dict[str, tf.Tensor],
    gradients: dict[str, list],
    optimizers: dict[str, keras.optimizers.Optimizer],
    variables: dict[str, list],
) -> tf.Tensor:
    """Apply each group's `gradients` to its `variables` with its optimizer, unless a loss
    is NaN or Inf on any replica: a non-finite loss would poison every weight it touched.

    Under mixed precision, float16 gradients that overflow on any replica also skip the
    update, everywhere, and halve the loss scales: Keras' own check sees one replica's
    gradients only, before they are summed. That is not a diverging loss and is not
    reported as one. Returns the scalar bool "every loss was finite".
    """
    groups = tuple(gradients)

    def apply_updates(group_gradients: list) -> None:
        for group, values in zip(groups, group_gradients, strict=True):
            optimizers[group].apply_gradients(zip(values, variables[group], strict=True))

    ordered = [gradients[group] for group in groups]
    finite = replicas_agree_finite(list(losses.values()))
    scalers = [
        optimizer
        for optimizer in optimizers.values()
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    ]
    if not scalers:
        apply_if(finite, apply_updates, ordered)
        return finite
    fits = replicas_agree_finite([g for group in ordered for g in group if g is not None])

    def lower_scales() -> None:
        for scaler in scalers:
            scaler.dynamic_scale.assign(scaler.dynamic_scale * 0.5)
            scaler.step_counter.assign(0)

    run_if(tf.logical_and(finite, tf.logical_not(fits)), lower_scales)
    apply_if(tf.logical_and(finite, fits), apply_updates, ordered)
    return finite


def replicas_agree_finite(values: list[tf.Tensor]) -> tf.Tensor:
    """True when every value is finite on every replica, so all take the same branch."""
    bad = tf.cast(
        tf.logical_not(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values])),
        tf.float32,
    )
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return tf.equal(bad, 0.0)


def run_if(condition: tf.Tensor, action: Callable[[], None]) -> None:
    """Run `action()`, which updates variables the way Keras does in the cross-replica
    context (e.g. a loss scale), where `condition`, the same on every replica, holds."""
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, action, lambda: None)
        return

    def cross_replica(strategy, condition):
        tf.cond(strategy.experimental_local_results(condition)[0], action, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition,))


def apply_if(condition: tf.Tensor, apply: Callable[[list], None], gradients: list) -> None:
    """Run `apply(gradients)` (which calls optimizers) only where `condition` holds.

    Optimizers synchronise replicas through `merge_call`, which TensorFlow does not
    allow inside a `tf.cond` in a replica context; as Keras' LossScaleOptimizer does,
    the condition is then taken in the cross-replica context and `apply` runs on every
    replica from there. `condition` must be the same on every replica.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: apply(gradients), lambda: None)
        return

    def cross_replica(strategy, condition, gradients):
        agreed = strategy.experimental_local_results(condition)[0]

        def on_every_replica():
            strategy.extended.call_for_each_replica(apply, args=(gradients,))

        tf.cond(agreed, on_every_replica, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, gradients))
