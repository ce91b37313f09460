"""Measure the input pipeline: first-epoch preprocessing speed and later-epoch data waits.

    python -m benchmarks.input_pipeline --size 256 --batch 1 --epochs 3 [--json]

With an empty cache, it first runs the preprocessing pipeline alone over every image
of both folders (the demo dataset by default): the parallel `tf.data` map of ANTsPy N4,
normalization and resampling, so its images/s is the preprocessing throughput. It then
trains for real; a callback measures the time `fit` spends between the end of one step
and the start of the next — the time the train loop waits for data — as a fraction of
each epoch after the first. The last line printed is the summary (one JSON object with
--json). For the scaling from one core to two, run it under `taskset -c 0`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_wait_timer():
    """A Keras callback that sums, per epoch, the gaps between consecutive train steps."""
    import keras

    class WaitTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_started = time.perf_counter()
            self._step_ended = None
            self._wait = 0.0
            self._steps = 0

        def on_train_batch_begin(self, batch, logs=None):
            if self._step_ended is not None:
                self._wait += time.perf_counter() - self._step_ended

        def on_train_batch_end(self, batch, logs=None):
            self._step_ended = time.perf_counter()
            self._steps += 1

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._epoch_started
            self.epochs.append({"seconds": seconds, "wait": self._wait, "steps": self._steps})

    return WaitTimer()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir_t1", type=Path, default=Path("dataset/Tr1"))
    parser.add_argument("--data_dir_t2", type=Path, default=Path("dataset/Tr2"))
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: waits are measured after the first")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras

    from config import TrainConfig
    from data_processing import make_training_data, preprocessed_dataset
    from training import build_model

    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(
            data_dir_t1=args.data_dir_t1,
            data_dir_t2=args.data_dir_t2,
            img_height=args.size,
            img_width=args.size,
            batch_size=args.batch,
            output_dir=Path(scratch),
        )
        keras.utils.set_random_seed(0)
        data = make_training_data(config, shuffle_seed=0)
        entries = data.t1_scan.entries + data.t2_scan.entries
        images = len(entries)
        started = time.perf_counter()
        for _ in preprocessed_dataset(entries, data.cache):
            pass
        preprocess_seconds = time.perf_counter() - started
        preprocessed = data.cache.misses

        model = build_model(config)
        timer = make_wait_timer()
        model.fit(
            data.batches,
            epochs=args.epochs,
            steps_per_epoch=data.steps_per_epoch,
            callbacks=[timer],
            verbose=0,
            shuffle=False,
        )

    first, later = timer.epochs[0], timer.epochs[1:]
    later_wait = sum(epoch["wait"] for epoch in later)
    later_seconds = sum(epoch["seconds"] for epoch in later)
    result = {
        "size": args.size,
        "batch": args.batch,
        "images": images,
        "images_preprocessed": preprocessed,
        "cores": len(os.sched_getaffinity(0)),
        "preprocess_s": round(preprocess_seconds, 2),
        "preprocess_images_per_s": round(images / preprocess_seconds, 2),
        "first_epoch_s": round(first["seconds"], 2),
        "later_epoch_s": round(later_seconds / len(later), 2),
        "later_wait_fraction": round(later_wait / later_seconds, 5),
    }
    print(
        f"input_pipeline {args.size}x{args.size} batch {args.batch} on {result['cores']} "
        f"cores: preprocessed {preprocessed} images in {result['preprocess_s']} s "
        f"({result['preprocess_images_per_s']} images/s); epochs after the first wait "
        f"for data {100 * result['later_wait_fraction']:.2f} % of "
        f"{result['later_epoch_s']} s"
    )
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
