"""Which stochastic passes give the uncertainty map that best finds the error: dropout,
flips, or both.

    python -m benchmarks.uncertainty --checkpoint_dir output/reference/checkpoints \\
        [--passes 8] [--methods dropout flips both] [--json]

On the quality benchmark's validation pairs (`benchmarks.quality.validation_dirs`:
subjects in neither training nor dataset/Test, where the chosen method is reported), each
method's uncertainty map is scored as `evaluate.py --uncertainty` scores it
(`uncertainty.evaluate_maps`): per slice, the rank correlation with |translation -
target| over the head and the ROC AUC for its worst 10 % pixels; the medians over slices
are printed per direction, with the seconds each method took, then on how many slices
the default method (`uncertainty.DEFAULT_METHOD`) scores above each other. The cycle
residual, the same for every method, is printed once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.quality import validation_dirs  # noqa: E402
from benchmarks.summary import machine_description, report  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    import uncertainty

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_dir", type=Path, required=True)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument(
        "--methods", nargs="+", choices=uncertainty.METHODS, default=list(uncertainty.METHODS)
    )
    parser.add_argument("--seed", type=int, default=uncertainty.DEFAULT_SEED)
    parser.add_argument(
        "--test_dir",
        type=Path,
        help="the pairs (T1/ and T2/ inside); default: the validation set, made here",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("output/quality"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    import numpy as np

    import evaluation
    from checkpoints import restore_run
    from data_processing import PreprocessCache
    from directions import DIRECTIONS
    from inference import generators_of

    root = args.test_dir or validation_dirs(args.output_dir)[0].parent
    restored = restore_run(args.checkpoint_dir)
    generators = generators_of(restored.model, restored.config.n4)
    cache = PreprocessCache(args.output_dir / "cache", restored.config)
    images = evaluation.load_pairs(evaluation.pair_files(root / "T1", root / "T2").pairs, cache)

    result: dict = {
        "checkpoint": restored.checkpoint,
        "pairs": len(images.names),
        "passes": args.passes,
        "seed": args.seed,
        "machine": machine_description(),
    }
    lines = []
    per_slice = {}
    for method in args.methods:
        started = time.perf_counter()
        scores = uncertainty.evaluate_maps(generators, images, args.passes, args.seed, method)
        seconds = time.perf_counter() - started
        per_slice[method] = scores.values
        statistics = scores.statistics()
        names = ("uncertainty", "cycle_residual") if method == args.methods[0] else ("uncertainty",)
        for name in names:
            label = method if name == "uncertainty" else "cycle residual"
            entry = {
                direction: {
                    metric: round(statistics[direction][name][metric]["median"], 4)
                    for metric in ("rank_correlation", "auc")
                }
                for direction in statistics
            }
            result[label] = {**entry, "seconds": round(seconds, 1)}
            lines.append(
                f"{label}: "
                + "; ".join(
                    f"{direction} rank correlation {values['rank_correlation']:.3f}, "
                    f"AUC {values['auc']:.3f}"
                    for direction, values in entry.items()
                )
                + f" ({seconds:.0f} s for both directions)"
            )
    # Slice by slice: on how many slices does the default method score above each other?
    chosen = uncertainty.DEFAULT_METHOD
    for method in (name for name in per_slice if chosen in per_slice and name != chosen):
        wins = {
            direction: {
                metric: int(
                    np.sum(
                        per_slice[chosen][(direction, "uncertainty")][metric]
                        > per_slice[method][(direction, "uncertainty")][metric]
                    )
                )
                for metric in ("rank_correlation", "auc")
            }
            for direction in DIRECTIONS
        }
        result[f"{chosen} above {method}"] = wins
        lines.append(
            f"{chosen} above {method}, slices of {len(images.names)}: "
            + "; ".join(
                f"{direction} rank correlation {counts['rank_correlation']}, AUC {counts['auc']}"
                for direction, counts in wins.items()
            )
        )
    return report(
        f"uncertainty maps on {len(images.names)} pairs of {root}, {args.passes} passes, "
        "medians over slices:\n  " + "\n  ".join(lines),
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
