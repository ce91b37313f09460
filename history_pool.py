"""The history pool of generated images that the critics learn from (Shrivastava et al.
2017, as in the CycleGAN paper): older fakes mixed with new ones, so a critic does not
forget the generator's earlier modes."""

from __future__ import annotations

import tensorflow as tf


def query_pool(
    stored: tf.Tensor,
    count: tf.Tensor,
    images: tf.Tensor,
    coins: tf.Tensor,
    slots: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One query of the reference's image pool, with its random draws given.

    `stored` (size, H, W, C) holds `count` images so far; `images` (batch, H, W, C) are
    new fakes; `coins` (batch,) in [0, 1) and `slots` (batch,) in [0, size) are the
    draws. Image by image: while the pool is filling, store it and return it; once
    full, if its coin is below 0.5 return the stored image at its slot and store the new
    one there, else return the new one. Returns (images for the critic, stored, count).
    """
    size = tf.shape(stored)[0]

    def one(index, stored, count, returned):
        image = images[index]
        filling = count < size
        swap = tf.logical_and(tf.logical_not(filling), coins[index] < 0.5)
        slot = tf.where(filling, count, slots[index])
        old = stored[slot]
        stored = tf.tensor_scatter_nd_update(
            stored, [[slot]], [tf.where(tf.logical_or(filling, swap), image, old)]
        )
        returned = returned.write(index, tf.where(swap, old, image))
        return index + 1, stored, count + tf.cast(filling, count.dtype), returned

    batch = tf.shape(images)[0]
    returned = tf.TensorArray(images.dtype, size=batch, element_shape=images.shape[1:])
    _, stored, count, returned = tf.while_loop(
        lambda index, *_: index < batch, one, (tf.constant(0), stored, count, returned)
    )
    return tf.reshape(returned.stack(), tf.shape(images)), stored, count


class HistoryPool:
    """The last `size` generated images of one contrast, shown to its critic (Shrivastava
    et al. 2017, as in the CycleGAN paper) so it does not forget older generator modes.

    Under tf.distribute each replica keeps a pool of its own. The pool is not part of
    a checkpoint (nor is it in the reference): a resumed run refills it.
    """

    def __init__(self, size: int, image_shape: tuple[int, int, int], name: str) -> None:
        # A plain object, not a Keras layer, so that the pool stays out of the weights.
        per_replica = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.NONE,
        }
        self.size = size
        self.stored = tf.Variable(tf.zeros((size, *image_shape)), name=name, **per_replica)
        self.count = tf.Variable(0, name=f"{name}_count", **per_replica)

    def query(self, images: tf.Tensor) -> tf.Tensor:
        """Fakes for the critic: `images` (batch, H, W, C) mixed with older fakes."""
        batch = tf.shape(images)[0]
        coins = tf.random.uniform((batch,))
        slots = tf.random.uniform((batch,), 0, self.size, tf.int32)
        returned, stored, count = query_pool(
            self.stored.read_value(),
            self.count.read_value(),
            tf.cast(images, self.stored.dtype),
            coins,
            slots,
        )
        self.stored.assign(stored)
        self.count.assign(count)
        return tf.cast(returned, images.dtype)
