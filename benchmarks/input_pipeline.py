"""Measure the input pipeline: first-epoch preprocessing speed and later-epoch data waits.

    python -m benchmarks.input_pipeline --size 256 --batch 1 --epochs 3 [--json]
    python -m benchmarks.input_pipeline --size 128 --workers 1 --method map
    python -m benchmarks.input_pipeline --size 128 --nifti

With an empty cache, it first preprocesses every file of both folders (the demo dataset
by default; with --nifti the demo's two test volumes, T1w and T2w) and times it: ANTsPy
N4, normalization and resampling, with `--method pool` (what training does: a process
pool of `--workers` processes, default automatic) or `--method map` (images only: the
former parallel `tf.data` map, `num_parallel_calls=--workers`, threads in one process).
Its images/s is the preprocessing throughput. It then trains for real; a callback
measures the time `fit` spends between the end of one step and the start of the next —
the time the train loop waits for data — as a fraction of each epoch after the first.
The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.summary import report

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


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def demo_volume_dirs(scratch: Path) -> tuple[Path, Path]:
    """Two data dirs holding the demo's held-out T1w and T2w volume (linked, not copied)."""
    volumes = Path(__file__).resolve().parents[1] / "dataset" / "Test" / "volumes"
    dirs = []
    for contrast in ("T1w", "T2w"):
        folder = scratch / contrast
        folder.mkdir()
        (folder / f"sub-21_{contrast}.nii.gz").symlink_to(volumes / f"sub-21_{contrast}.nii.gz")
        dirs.append(folder)
    return dirs[0], dirs[1]


def map_preprocess(config, workers: int) -> int:
    """Preprocess and cache the images of both data dirs as training once did: a parallel
    `tf.data` map of `tf.py_function` calls, `workers` at a time, in this process.
    Returns how many images it preprocessed."""
    import tensorflow as tf

    from data_processing import PreprocessCache
    from scan_io import find_images

    cache = PreprocessCache(config.resolved_cache_dir, config)
    paths = find_images(config.data_dir_t1) + find_images(config.data_dir_t2)

    def load(path: tf.Tensor) -> object:
        path = Path(path.numpy().decode())
        return cache.load_or_make(path, cache.key_of(path.read_bytes()))

    dataset = tf.data.Dataset.from_tensor_slices([str(path) for path in paths]).map(
        lambda path: tf.py_function(load, [path], tf.float32), num_parallel_calls=workers
    )
    for _ in dataset:
        pass
    return cache.misses


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir_t1", type=Path, default=Path("dataset/Tr1"))
    parser.add_argument("--data_dir_t2", type=Path, default=Path("dataset/Tr2"))
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2")
    parser.add_argument(
        "--workers", type=int, default=None, help="preprocessing processes or map calls"
    )
    parser.add_argument("--method", choices=("pool", "map"), default="pool")
    parser.add_argument(
        "--nifti", action="store_true", help="the demo's T1w and T2w test volumes as the data"
    )
    parser.add_argument(
        "--preprocess_only", action="store_true", help="time the preprocessing, do not train"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: waits are measured after the first")
    if args.method == "map" and (args.nifti or args.workers is None):
        parser.error("--method map takes images only, and --workers")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras

    from config import TrainConfig
    from data_processing import make_training_data
    from training import build_model

    with tempfile.TemporaryDirectory() as scratch:
        if args.nifti:
            args.data_dir_t1, args.data_dir_t2 = demo_volume_dirs(Path(scratch))
        config = TrainConfig(
            data_dir_t1=args.data_dir_t1,
            data_dir_t2=args.data_dir_t2,
            img_height=args.size,
            img_width=args.size,
            batch_size=args.batch,
            output_dir=Path(scratch),
            verbose=2,  # no progress bar: the summary is the output
        )
        keras.utils.set_random_seed(0)
        cpu_started = cpu_seconds()
        started = time.perf_counter()
        mapped = map_preprocess(config, args.workers) if args.method == "map" else 0
        data = make_training_data(config, shuffle_seed=0, workers=args.workers)
        preprocess_seconds = time.perf_counter() - started
        preprocess_cpu = cpu_seconds() - cpu_started
        entries = data.t1_scan.entries + data.t2_scan.entries
        images = len(entries)
        preprocessed = data.cache.misses + mapped
        volumes = data.t1_scan.volumes + data.t2_scan.volumes

        timer = make_wait_timer()
        if not args.preprocess_only:
            build_model(config).fit(
                data.batches,
                epochs=args.epochs,
                steps_per_epoch=data.steps_per_epoch,
                callbacks=[timer],
                verbose=0,
                shuffle=False,
            )

    result = {
        "size": args.size,
        "batch": args.batch,
        "images": images,
        "images_preprocessed": preprocessed,
        "volumes": volumes,
        "cores": len(os.sched_getaffinity(0)),
        # Other work on the machine slows the preprocessing (this run counts in it too).
        "load_average_1min": round(os.getloadavg()[0], 2),
        "method": args.method,
        "workers": args.workers if args.method == "map" else data.cache.processes,
        "preprocess_s": round(preprocess_seconds, 2),
        "preprocess_images_per_s": round(images / preprocess_seconds, 2),
        "preprocess_volumes_per_s": round(volumes / preprocess_seconds, 3),
        # CPU time over wall time: how many cores the preprocessing kept busy.
        "preprocess_cores_busy": round(preprocess_cpu / preprocess_seconds, 2),
    }
    of_volumes = f" of {volumes} volumes" if volumes else ""
    line = (
        f"input_pipeline {args.size}x{args.size} batch {args.batch} on {result['cores']} "
        f"cores, {args.method} of {result['workers']}: preprocessed {preprocessed} images"
        f"{of_volumes} in {result['preprocess_s']} s "
        f"({result['preprocess_images_per_s']} images/s, "
        f"{result['preprocess_cores_busy']} cores busy)"
    )
    if timer.epochs:
        first, later = timer.epochs[0], timer.epochs[1:]
        later_wait = sum(epoch["wait"] for epoch in later)
        later_seconds = sum(epoch["seconds"] for epoch in later)
        result["first_epoch_s"] = round(first["seconds"], 2)
        result["later_epoch_s"] = round(later_seconds / len(later), 2)
        result["later_wait_fraction"] = round(later_wait / later_seconds, 5)
        line += (
            f"; epochs after the first wait for data {100 * result['later_wait_fraction']:.2f} "
            f"% of {result['later_epoch_s']} s"
        )
    return report(line, result, args.json)


if __name__ == "__main__":
    main()
