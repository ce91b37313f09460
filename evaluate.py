"""Measure a trained model on a paired test set, against the identity and histogram matching.

    python evaluate.py --checkpoint_dir output/checkpoints \\
        --test_dir_t1 dataset/Test/T1 --test_dir_t2 dataset/Test/T2

Writes `metrics.csv`, `metrics.json` and `examples.png` to `--output_dir` and prints a
table; with lesion masks (`--lesion_masks`, or a `masks/` folder beside the T1 folder, as
in dataset/Test/lesions/) also `lesion_metrics.csv` and `lesions.png`; with
`--uncertainty N` also `uncertainty_metrics.csv` and `uncertainty.png`. This module only
checks the command line and calls `evaluation` and `uncertainty`; bad input is a
one-line `error: ...` on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from config import REGISTRATIONS, UNCERTAINTY_SEED, positive_int

# Keep TensorFlow's C++ start-up chatter off the console unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)

EPILOG = """\
pairs: a T1 and a T2 file with the same file name are the same slice; both folders are
  searched recursively. A file without a partner is named in a warning and not scored.
preprocessing: as in training (N4 as the run was trained, [0, 1], resampled to the
  model size), through the run's preprocessing cache.
metrics, per slice, on [0, 1] images: SSIM (tf.image.ssim: 11x11 Gaussian window,
  sigma 1.5), PSNR (dB, max 1; identical images are capped at 100 dB) and MAE, over the
  whole slice and over the head (the foreground of the input and target, holes filled;
  masked SSIM averages the SSIM map over windows centred in the head).
methods: model (the generator of each direction); identity (the input itself);
  histogram_matching (the input's head matched to the pooled head histogram of the
  training images of the target contrast - never the target). A model that does not
  beat histogram matching has learned no more than a grey-level lookup table.
outputs: metrics.csv (a row per slice, direction and method), metrics.json (mean and
  std of each metric, and whether the model beats histogram matching), examples.png
  (best, median and worst slice by model SSIM, per direction, with |error| maps).
lesions: with a mask per pair (same file name; any non-zero pixel is lesion), from
  --lesion_masks or a masks/ folder beside the T1 folder (dataset/Test/lesions/masks for
  --test_dir_t1 dataset/Test/lesions/T1). Each mask is resampled as its images (linear,
  kept >= 0.5). Per slice, direction and method: contrast = mean inside the lesion /
  mean in its ring (head pixels more than 1 and at most 4 px from the lesion), in the
  prediction and the target; kept fraction = (contrast_prediction - 1) /
  (contrast_target - 1): 1 kept, 0 erased, > 1 exaggerated, < 0 inverted; MAE and SSIM
  inside the lesion. Written to lesion_metrics.csv (a row per slice, direction and
  method), metrics.json "lesions" (median and quartiles) and lesions.png (the model's
  least, median and most kept slice per direction, mask outlined).
volumes (--test_volumes_t1 DIR --test_volumes_t2 DIR): NIfTI volumes paired by subject
  (BIDS sub-XX[_ses-YY]_T1w / _T2w, or IXI IXI002-Guys-0828-T1 / -T2); unpaired files
  are named in a warning and not scored. A T2 on another grid is registered to its T1
  (--registration rigid|affine: ants.registration, mutual information) and resampled
  into T1 space. Each volume is translated as the model was trained and scored in the
  head: SSIM, PSNR, MAE, and the through-plane MAE (|change between neighbouring slices
  of the prediction - that of the target|; lower is more consistent). Written to
  volume_metrics.csv, metrics.json "volumes" and volumes.png (an orthogonal cut).
uncertainty (--uncertainty N): do the maps point at the errors? Per slice and direction,
  two maps (as translate.py --uncertainty N --cycle_residual makes them): the standard
  deviation of N stochastic passes (dropout kept on, every other pass on the input
  mirrored left-right) and the cycle residual |back-translation - input|. Each against
  |translation - target| over the head: Spearman rank correlation (0 = chance) and ROC
  AUC for the 10 % head pixels of largest error (0.5 = chance); with lesion masks also
  the AUC for the lesion pixels. Written to uncertainty_metrics.csv (a row per slice,
  direction and map), metrics.json "uncertainty" (median, quartiles, and a sign test
  over slices: does the map beat chance?) and uncertainty.png (input, translation,
  |error|, both maps, lesions outlined; the slices where the uncertainty finds the
  error worst, median, best). The table says plainly when a map does not beat chance.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a trained T1 <-> T2 CycleGAN on paired held-out slices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint_dir",
        type=Path,
        required=True,
        help="the run's checkpoint folder, <output_dir>/checkpoints; config.json is read "
        "from the folder above it",
    )
    parser.add_argument(
        "--test_dir_t1",
        type=Path,
        default=Path("dataset/Test/T1"),
        help="T1-weighted test slices (default: %(default)s)",
    )
    parser.add_argument(
        "--test_dir_t2",
        type=Path,
        default=Path("dataset/Test/T2"),
        help="T2-weighted test slices, same file names (default: %(default)s)",
    )
    parser.add_argument(
        "--lesion_masks",
        type=Path,
        help="lesion masks, one per test pair with its file name (default: a masks/ "
        "folder beside --test_dir_t1, if there is one)",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        help="where the results go (default: <output_dir of the run>/evaluation)",
    )
    parser.add_argument(
        "--train_dir_t1",
        type=Path,
        help="T1 training slices, the histogram reference of T2->T1 (default: config.json's)",
    )
    parser.add_argument(
        "--train_dir_t2",
        type=Path,
        help="T2 training slices, the histogram reference of T1->T2 (default: config.json's)",
    )
    parser.add_argument(
        "--cache_dir",
        type=Path,
        help="preprocessing cache (default: the run's, so training images are not redone)",
    )
    parser.add_argument(
        "--test_volumes_t1",
        type=Path,
        help="also score whole volumes: T1w NIfTI volumes, paired by subject with those "
        "of --test_volumes_t2 (see below)",
    )
    parser.add_argument(
        "--test_volumes_t2", type=Path, help="T2w NIfTI volumes of the same subjects"
    )
    parser.add_argument(
        "--registration",
        default="rigid",
        choices=REGISTRATIONS,
        help="how each T2 volume is brought into its T1's space when their grids differ "
        "(default: %(default)s; none refuses such pairs)",
    )
    parser.add_argument(
        "--uncertainty",
        type=int,
        metavar="N",
        help="also score the uncertainty map of N >= 2 stochastic passes and the cycle "
        "residual against the real error (see below)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=UNCERTAINTY_SEED,
        help="seed of the stochastic passes (default: %(default)s)",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=16,
        help="slices per generator call (default: 16)",
    )
    return parser


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_paths(args: argparse.Namespace) -> None:
    """Refuse missing folders (and too few passes) before TensorFlow is loaded, so the
    answer is immediate."""
    if args.uncertainty is not None and args.uncertainty < 2:
        fail(
            f"--uncertainty {args.uncertainty}: give at least 2 passes (the spread of one "
            "pass is 0)"
        )
    if (args.test_volumes_t1 is None) != (args.test_volumes_t2 is None):
        fail("--test_volumes_t1 and --test_volumes_t2 go together")
    context = context_slices_of(args.checkpoint_dir.parent)
    if context and (args.test_volumes_t1 is None or args.lesion_masks or args.uncertainty):
        fail(
            f"the model sees {context} neighbouring slice(s) on each side (--context_slices), "
            "so it cannot translate 2-D test slices: score it on volumes alone, "
            "--test_volumes_t1 DIR --test_volumes_t2 DIR (no --lesion_masks, --uncertainty)"
        )
    for flag in (
        "checkpoint_dir",
        "test_dir_t1",
        "test_dir_t2",
        "lesion_masks",
        "test_volumes_t1",
        "test_volumes_t2",
    ):
        path = getattr(args, flag)
        if path is None or (context and flag.startswith("test_dir")):
            continue
        if not path.exists():
            fail(f"--{flag} {path} does not exist")
        if not path.is_dir():
            fail(f"--{flag} {path} is not a directory")
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        fail(f"--output_dir {args.output_dir} is not a directory")


def evaluate(args: argparse.Namespace) -> None:
    """The whole job; raises DataError for input it cannot use."""
    import evaluation
    import reports
    from checkpoints import restore_run
    from data_processing import PreprocessCache
    from errors import DataError
    from inference import run_generators

    run_dir = args.checkpoint_dir.parent
    context = context_slices_of(run_dir)  # check_paths refused what it cannot score
    # The test files first: a mismatch is reported before the checkpoint is restored.
    pairing = None if context else evaluation.pair_files(args.test_dir_t1, args.test_dir_t2)
    mask_dir = None
    if pairing is not None:
        mask_dir = args.lesion_masks or evaluation.sibling_mask_dir(args.test_dir_t1)
    lesion_masks = evaluation.match_lesion_masks(mask_dir, pairing) if mask_dir else None
    restored = restore_run(args.checkpoint_dir)
    config = restored.config
    generators = run_generators(restored)
    train_dirs = {
        "t1": args.train_dir_t1 or config.data_dir_t1,
        "t2": args.train_dir_t2 or config.data_dir_t2,
    }
    for contrast, folder in train_dirs.items():
        if not folder.is_dir():
            raise DataError(
                f"training dir {folder} (the histogram reference of the {contrast.upper()} "
                f"contrast) does not exist: pass --train_dir_{contrast}"
            )
    cache = PreprocessCache(args.cache_dir or config.cache_dir or run_dir / "cache", config)
    log.info(
        "Evaluating %s (epoch %d, %dx%d%s)%s.",
        restored.checkpoint,
        restored.epoch,
        config.img_height,
        config.img_width,
        f", {context} context slices per side" if context else "",
        f" on {len(pairing.pairs)} pairs" if pairing is not None else "",
    )
    references = evaluation.build_histogram_references(train_dirs["t1"], train_dirs["t2"], cache)
    output_dir = args.output_dir or run_dir / "evaluation"
    document = {
        "checkpoint": restored.checkpoint,
        "epoch": restored.epoch,
        "image_size": [config.img_height, config.img_width],
        "n4": config.n4,
        "context_slices": context,
        "histogram_reference_dirs": {name: str(folder) for name, folder in train_dirs.items()},
    }
    # The volumes first: their pairing is checked before any file is written.
    volumes = None
    if args.test_volumes_t1 is not None:
        import volume_evaluation

        volumes = volume_evaluation.evaluate_volumes(
            generators,
            args.test_volumes_t1,
            args.test_volumes_t2,
            output_dir,
            registration=args.registration,
            histogram_references=references,
            batch_size=args.batch_size,
        )
    written = []
    if pairing is not None:
        document, written = evaluate_slices(
            args, generators, pairing, lesion_masks, mask_dir, references, cache, document
        )
    if volumes is not None:
        document["volumes"] = volumes.document()
        written += [volume_evaluation.CSV_NAME, volume_evaluation.FIGURE_NAME]
        print(volumes.table())
    reports.write_json(reports.json_safe(document), output_dir / "metrics.json")
    written.append("metrics.json")
    print(f"Wrote {', '.join(written[:-1])} and {written[-1]} to {output_dir}")


def evaluate_slices(
    args, generators, pairing, lesion_masks, mask_dir, references, cache, document
) -> tuple[dict, list[str]]:
    """Score the paired test slices (and their lesion masks and uncertainty maps when
    asked); print the tables, write their files to the output dir. Returns metrics.json's
    content so far and the names of the files written."""
    import evaluation
    import plotting
    import reports
    import uncertainty

    output_dir = args.output_dir or args.checkpoint_dir.parent / "evaluation"
    images = evaluation.load_pairs(pairing.pairs, cache)
    if lesion_masks is not None:
        log.info("Lesion masks: %s", mask_dir)
        images = evaluation.load_lesion_masks(images, lesion_masks, pairing.pairs)
    result = evaluation.evaluate_pairs(generators, images, references, batch_size=args.batch_size)
    scores = None
    if args.uncertainty:
        log.info(
            "Scoring the uncertainty maps (%d passes) and the cycle residual", args.uncertainty
        )
        scores = uncertainty.evaluate_maps(
            generators, images, args.uncertainty, args.seed, batch_size=args.batch_size
        )
    document = reports.metrics_document(
        result,
        **document,
        test_dirs={"t1": str(args.test_dir_t1), "t2": str(args.test_dir_t2)},
        unpaired=[str(path) for path in (*pairing.unpaired_t1, *pairing.unpaired_t2)],
        skipped=[f"{path}: {reason}" for path, reason in images.skipped],
        lesion_masks=str(mask_dir) if lesion_masks is not None else None,
    )
    if scores is not None:
        document["uncertainty"] = reports.uncertainty_document(scores)
    written = ["metrics.csv", "examples.png"]
    reports.write_metrics_csv(result, output_dir / "metrics.csv")
    plotting.plot_examples(
        evaluation.example_rows(generators, images, result), output_dir / "examples.png"
    )
    print(reports.format_table(result))
    if lesion_masks is not None:
        reports.write_lesion_csv(result, output_dir / "lesion_metrics.csv")
        plotting.plot_lesion_examples(
            evaluation.lesion_example_rows(generators, images, result), output_dir / "lesions.png"
        )
        written += ["lesion_metrics.csv", "lesions.png"]
        print(reports.format_lesion_table(result))
    if scores is not None:
        reports.write_uncertainty_csv(scores, output_dir / "uncertainty_metrics.csv")
        plotting.plot_uncertainty_examples(
            uncertainty.example_rows(generators, images, scores, args.batch_size),
            output_dir / "uncertainty.png",
        )
        written += ["uncertainty_metrics.csv", "uncertainty.png"]
        print(reports.format_uncertainty_table(scores))
    return document, written


def context_slices_of(run_dir: Path) -> int:
    """The `--context_slices` of the run in `run_dir` (its config.json; 0 if unreadable:
    restoring the checkpoint then reports the problem)."""
    from config import CONFIG_FILE_NAME, load_config

    try:
        return load_config(run_dir / CONFIG_FILE_NAME).context_slices
    except (OSError, ValueError, TypeError):
        return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_paths(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from errors import DataError

    try:
        evaluate(args)
    except DataError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
