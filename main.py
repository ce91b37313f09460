"""Train a CycleGAN that translates brain MRI between T1- and T2-weighted contrast.

    python main.py --data_dir_t1 dataset/Tr1 --data_dir_t2 dataset/Tr2 --epochs 50

Rerunning the same command resumes from the latest checkpoint; `--epochs` is the total.
This module only turns the command line into a `TrainConfig` and calls the trainer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from config import (
    TrainConfig,
    default_of,
    image_size_problem,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    tf_config_problem,
    unit_fraction,
)
from errors import DataError, RunFailed
from preprocessing import context_problem
from scan_io import data_dir_problem

# Keep TensorFlow's C++ start-up chatter off the console unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a CycleGAN (two generators, U-Net or ResNet, and two PatchGAN "
        "discriminators) "
        "that translates brain MRI T1-weighted <-> T2-weighted from unpaired images. "
        "Rerun the same command to resume from the latest checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(flag: str, help: str, **kwargs) -> None:
        parser.add_argument(f"--{flag}", default=default_of(flag), help=help, **kwargs)

    data = (
        "searched recursively for .png .jpg .jpeg .tif .tiff .bmp slices (16-bit kept) and "
        ".nii .nii.gz volumes (cut into --slice_axis slices, as translate.py cuts them)"
    )
    add("data_dir_t1", f"folder of T1-weighted slices and/or volumes, {data}", type=Path)
    add("data_dir_t2", f"folder of T2-weighted slices and/or volumes, {data}", type=Path)
    add(
        "img_height",
        "training image height in px: a multiple of 16, at least 32",
        type=positive_int,
    )
    add("img_width", "training image width in px: a multiple of 16, at least 32", type=positive_int)
    add("batch_size", "images of each contrast per training step", type=positive_int)
    add("buffer_size", "shuffle buffer size, in images", type=positive_int)
    add(
        "epochs",
        "total epochs; an epoch is one pass over the larger contrast folder",
        type=positive_int,
    )
    add(
        "steps_per_epoch",
        "training steps per epoch (default: one pass over the larger contrast folder)",
        type=positive_int,
    )
    add(
        "max_minutes",
        "wall-clock budget of this run in minutes, preprocessing included: training ends "
        "after the last epoch that fits in it, and the generators are exported",
        type=positive_float,
    )
    add("output_dir", "where checkpoints, figures and history.csv go", type=Path)
    add(
        "cache_dir",
        "preprocessed-image cache (default: <output_dir>/cache); share it between runs",
        type=Path,
    )
    add("seed", "random seed for weights, shuffling and dropout", type=int)
    add("lr", "Adam learning rate of all four networks", type=positive_float)
    add("beta_1", "Adam beta_1", type=non_negative_float)
    add("lambda_cycle", "weight of the cycle-consistency L1 loss", type=non_negative_float)
    add(
        "lambda_identity",
        "weight of the identity L1 loss, as a fraction of lambda_cycle",
        type=non_negative_float,
    )
    add(
        "lambda_structure",
        "weight of the structure loss: MIND descriptors of each input and its translation "
        "compared, so anatomy stays in place (0: off)",
        type=non_negative_float,
    )
    add(
        "gan_loss",
        "adversarial loss: lsgan (least squares, as in the CycleGAN paper) or bce",
        choices=("lsgan", "bce"),
    )
    add(
        "generator_filters",
        "U-Net width: filters of its first level, up to 8x deeper (the reference's ngf)",
        type=positive_int,
    )
    add(
        "critic_filters",
        "PatchGAN width: filters of its first layer, 8x at its last (the reference's ndf)",
        type=positive_int,
    )
    add(
        "checkpoint_every",
        "save a checkpoint every N epochs (and after the last)",
        type=positive_int,
    )
    add("keep_checkpoints", "how many recent checkpoints to keep", type=positive_int)
    add("num_samples", "sample images per contrast in the per-epoch figures", type=positive_int)
    add(
        "test_dir_t1",
        "paired T1 test slices (same file names as in --test_dir_t2) scored during training; "
        "default: the demo's dataset/Test/T1 when training on the demo data",
        type=Path,
    )
    add("test_dir_t2", "paired T2 test slices, see --test_dir_t1", type=Path)
    add(
        "eval_every",
        "score the test pairs every N epochs and after the last (0: never)",
        type=non_negative_int,
    )
    add(
        "max_nonfinite",
        "stop after more than N steps with a NaN or Inf loss (each such step is skipped)",
        type=non_negative_int,
    )
    add(
        "generator",
        "generator architecture: unet (pix2pix U-Net, as the seed) or resnet (the paper's "
        "ResNet: 9 residual blocks at 256 px and above, 6 below)",
        choices=("unet", "resnet"),
    )
    add(
        "upsample",
        "generator up-sampling: transpose (transposed conv, as the paper) or resize "
        "(nearest resize + conv, free of checkerboard artifacts)",
        choices=("transpose", "resize"),
    )
    add(
        "pool_size",
        "the critics also see fakes drawn from the last N generated images (0: only new)",
        type=non_negative_int,
    )
    add(
        "decay_epochs",
        "decay the learning rate linearly to 0 over the last N of --epochs (0: constant)",
        type=non_negative_int,
    )
    add(
        "slice_axis",
        "NIfTI training volumes: the plane slices are cut along",
        choices=("axial", "coronal", "sagittal"),
    )
    add(
        "min_foreground",
        "NIfTI training volumes: skip slices whose head covers less than this fraction",
        type=unit_fraction,
    )
    add(
        "context_slices",
        "2.5-D, NIfTI training volumes only: the generators see each slice with its K "
        "neighbours on each side (2K + 1 channels); 0: single slices",
        type=non_negative_int,
    )
    add(
        "strategy",
        "tf.distribute strategy: auto (mirrored when more than one GPU is visible), default "
        "(one device), mirrored (all local GPUs), multiworker (machines listed in TF_CONFIG)",
        choices=("auto", "default", "mirrored", "multiworker"),
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="random jitter: resize up by 286/256, random crop back, random left-right flip",
    )
    parser.add_argument(
        "--mixed_precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="float16 compute with loss scaling (default: on with a GPU, off on CPU)",
    )
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the train step with XLA (default: on with a GPU, off on CPU)",
    )
    parser.add_argument(
        "--no_n4",
        dest="n4",
        action="store_false",
        help="skip N4 bias-field correction (for images that are already corrected)",
    )
    parser.add_argument(
        "--quiet",
        dest="verbose",
        action="store_const",
        const=2,
        default=1,
        help="one line per epoch instead of a progress bar",
    )
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; invalid values exit with code 2 before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = image_size_problem(args.img_height, args.img_width)
    if problem:
        parser.error(problem)
    if (args.test_dir_t1 is None) != (args.test_dir_t2 is None):
        parser.error("--test_dir_t1 and --test_dir_t2 go together")
    if args.context_slices and args.test_dir_t1 is not None:
        parser.error(
            "--test_dir_t1/--test_dir_t2 are 2-D slices, which a model with --context_slices "
            "cannot translate; score it with evaluate.py --test_volumes_t1/--test_volumes_t2"
        )
    if args.decay_epochs > args.epochs:
        parser.error(f"--decay_epochs {args.decay_epochs} is more than --epochs {args.epochs}")
    return TrainConfig(**vars(args))


# Exit codes: 2 for input the run cannot use, 1 for a run that failed (a full disk,
# diverging losses), 128 + the signal number when SIGINT (130) or SIGTERM (143) stopped it.
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (made if missing), or None if they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # TensorFlow's own INFO lines (checkpoint sharding, collectives) are not for users.
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if config.output_dir.exists() and not config.output_dir.is_dir():
        fail(f"output dir {config.output_dir} is not a directory")
    for folder, flag in (
        (config.output_dir, "output dir"),
        (config.resolved_cache_dir, "cache dir"),
    ):
        problem = writable_problem(folder)
        if problem:
            fail(f"{flag} {folder} cannot be written: {problem}")
    # Answered before TensorFlow loads, so that these common mistakes fail at once.
    workers = tf_config_problem() if config.strategy == "multiworker" else None
    if workers:
        fail(workers)
    for folder in (config.data_dir_t1, config.data_dir_t2):
        problem = data_dir_problem(folder) or context_problem(folder, config.context_slices)
        if problem:
            fail(problem)

    # Imported here so that --help and argument errors answer without loading TensorFlow.
    from training import train

    try:
        result = train(config)
    except DataError as error:
        fail(str(error))
    except RunFailed as error:
        fail(str(error), EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        fail("interrupted; nothing saved since the last checkpoint", EXIT_ON_SIGNAL["SIGINT"])
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        fail(f"{error.strerror or error}{where}", EXIT_RUN_FAILED)
    if result.stopped_by:
        sys.exit(EXIT_ON_SIGNAL[result.stopped_by])


if __name__ == "__main__":
    main()
