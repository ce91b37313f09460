"""What a translator that knows only healthy tissue does to a lesion: the kept fraction
of the best intensity lookup, learned on healthy paired slices.

    python -m benchmarks.lesion_lookup --size 128 [--json]

A generator trained on lesion-free scans learns how each healthy tissue looks in the
other contrast. The ideal of such a translator, as far as intensities go, is the lookup
from an input intensity to the mean target intensity of the healthy head pixels with
that input intensity. It is learned here on the paired validation set (healthy subjects
in neither the demo's training nor its test set; paired, which no CycleGAN gets) and
applied to the lesion set (`dataset/Test/lesions`), scored with `evaluate.py`'s lesion
metrics. Its kept fraction shows how far "translate as healthy tissue" carries a lesion:
a lesion that looks like a healthy tissue in the input is rendered as that tissue.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.quality import validation_dirs  # noqa: E402
from benchmarks.summary import report  # noqa: E402
from directions import DIRECTIONS  # noqa: E402

BINS = 64


def fit_lookup(source: np.ndarray, target: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The mean target intensity of the masked pixels in each of `BINS` equal bins of the
    source intensity over [0, 1]; bins without pixels interpolated from their neighbours.
    source, target: (N, H, W) in [0, 1]; masks: bool (N, H, W). Returns (BINS,)."""
    bins = np.minimum((source[masks] * BINS).astype(int), BINS - 1)
    counts = np.bincount(bins, minlength=BINS)
    sums = np.bincount(bins, weights=target[masks], minlength=BINS)
    filled = counts > 0
    centres = (np.arange(BINS) + 0.5) / BINS
    return np.interp(centres, centres[filled], sums[filled] / counts[filled])


def apply_lookup(lookup: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Each pixel's value looked up in the bin of its intensity: float32, the shape of
    `images`."""
    bins = np.clip((images * BINS).astype(int), 0, BINS - 1)
    return lookup[bins].astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument(
        "--lesion_dir",
        type=Path,
        default=REPOSITORY / "dataset" / "Test" / "lesions",
        help="T1/, T2/ and masks/ of the lesion pairs (default: %(default)s)",
    )
    parser.add_argument("--no_n4", action="store_true")
    parser.add_argument("--output_dir", type=Path, default=Path("output/lesion_lookup"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    import evaluation
    import metrics
    from config import TrainConfig
    from data_processing import PreprocessCache

    config = TrainConfig(
        img_height=args.size, img_width=args.size, n4=not args.no_n4, output_dir=args.output_dir
    )
    cache = PreprocessCache(config.resolved_cache_dir, config)
    healthy = evaluation.load_pairs(
        evaluation.pair_files(*validation_dirs(args.output_dir)).pairs, cache
    )
    pairing = evaluation.pair_files(args.lesion_dir / "T1", args.lesion_dir / "T2")
    lesions = evaluation.load_pairs(pairing.pairs, cache)
    masks = evaluation.match_lesion_masks(args.lesion_dir / "masks", pairing)
    lesions = evaluation.load_lesion_masks(lesions, masks, pairing.pairs)

    result: dict = {"size": args.size, "healthy_pairs": len(healthy.names)}
    lines = []
    for direction, (source, target) in DIRECTIONS.items():
        lookup = fit_lookup(healthy.of(source), healthy.of(target), healthy.masks)
        predicted = apply_lookup(lookup, lesions.of(source))
        values = metrics.lesion_metrics(
            predicted, lesions.of(target), lesions.lesions, lesions.masks
        )
        kept = metrics.median_and_quartiles(values["kept_fraction"])
        contrast = metrics.median_and_quartiles(values["contrast_prediction"])
        wanted = metrics.median_and_quartiles(values["contrast_target"])
        result[direction] = {
            "kept_fraction": kept,
            "contrast_prediction": contrast,
            "contrast_target": wanted,
        }
        lines.append(
            f"{direction}: kept fraction {kept['median']:.2f} [{kept['q1']:.2f}, "
            f"{kept['q3']:.2f}] (lesion contrast {contrast['median']:.2f}, target "
            f"{wanted['median']:.2f})"
        )
    return report(
        f"healthy-tissue intensity lookup on {len(lesions.names)} lesion pairs at "
        f"{args.size} px: " + "; ".join(lines),
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
