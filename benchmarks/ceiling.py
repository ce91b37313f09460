"""The most a translation can score on the demo's paired slices: the noise-free target
against the noisy one.

    python -m benchmarks.ceiling --size 128 [--subjects validation] [--export_dir DIR] [--json]

The demo data are simulated, so each paired slice's noise-free scan can be made again
(`dataset/make_demo.py --noise_free`: same subjects, slices, TR/TE and bias field). A
perfect translation would give that scan; scoring it against the noisy target, after the
same preprocessing and with the same head mask as `evaluate.py`, gives the ceiling of
SSIM, head SSIM and PSNR in each direction. With `--export_dir`, the exported model's
scores and its fraction of the head-SSIM ceiling are printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.quality import VALIDATION_FLAGS, validation_dirs  # noqa: E402
from benchmarks.summary import report  # noqa: E402
from directions import DIRECTIONS  # noqa: E402

# make_demo flags that make the noise-free scans of each paired set's subjects.
SUBJECTS = {
    "test": (
        "--n_train_subjects", "0", "--n_test_subjects", "3", "--test_slices_per_subject", "15",
        "--first_test_subject", "21", "--no_volume", "--n_lesion_subjects", "0",
    ),
    "validation": VALIDATION_FLAGS,
}  # fmt: skip
SCORES = {"ssim": "ssim", "masked_ssim": "head_ssim", "psnr": "psnr"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--subjects", choices=tuple(SUBJECTS), default="test")
    parser.add_argument(
        "--test_dir",
        type=Path,
        help="the noisy pairs (T1/ and T2/ inside); default: dataset/Test, or the quality "
        "benchmark's validation set made here",
    )
    parser.add_argument("--export_dir", type=Path, help="also score this exported model")
    parser.add_argument("--no_n4", action="store_true")
    parser.add_argument("--output_dir", type=Path, default=Path("output/ceiling"))
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    import evaluation
    import metrics
    from config import TrainConfig
    from data_processing import PreprocessCache
    from dataset import make_demo

    noisy_root = args.test_dir
    if noisy_root is None:
        if args.subjects == "test":
            noisy_root = REPOSITORY / "dataset" / "Test"
        else:
            noisy_root = validation_dirs(args.output_dir)[0].parent
    clean_dir = args.output_dir / f"noise_free_{args.subjects}"
    make_demo.main(["--output_dir", str(clean_dir), *SUBJECTS[args.subjects], "--noise_free"])

    config = TrainConfig(
        img_height=args.size,
        img_width=args.size,
        n4=not args.no_n4,
        output_dir=args.output_dir,
    )
    cache = PreprocessCache(config.resolved_cache_dir, config)
    pairing = evaluation.pair_files(noisy_root / "T1", noisy_root / "T2")
    noisy = evaluation.load_pairs(pairing.pairs, cache)
    clean = evaluation.load_pairs(
        [(clean_dir / "Test" / "T1" / t1.name, clean_dir / "Test" / "T2" / t2.name)
         for t1, t2 in pairing.pairs],
        cache,
    )  # fmt: skip
    if clean.names != noisy.names:
        raise SystemExit(f"error: {clean_dir} does not hold the slices of {noisy_root}")

    result: dict = {"size": args.size, "subjects": args.subjects, "pairs": len(noisy.names)}
    model = None
    if args.export_dir is not None:
        from inference import load_generator

        generators = {d: load_generator(args.export_dir, d) for d in DIRECTIONS}
        model = evaluation.evaluate_pairs(generators, noisy, baselines=False).summary()
    lines = []
    for direction, (_, target) in DIRECTIONS.items():
        values = metrics.slice_metrics(clean.of(target), noisy.of(target), noisy.masks)
        ceiling = {name: round(float(values[key].mean()), 4) for key, name in SCORES.items()}
        result[direction] = {"ceiling": ceiling}
        line = f"{direction}: ceiling head SSIM {ceiling['head_ssim']:.3f}"
        if model is not None:
            scores = {name: round(model[f"{direction}_{key}"], 4) for key, name in SCORES.items()}
            fraction = round(scores["head_ssim"] / ceiling["head_ssim"], 3)
            result[direction].update(model=scores, head_ssim_fraction=fraction)
            line += f", model {scores['head_ssim']:.3f} ({fraction:.0%} of it)"
        lines.append(line + f", SSIM {ceiling['ssim']:.3f}, PSNR {ceiling['psnr']:.2f} dB")
    return report(
        f"ceiling on {len(noisy.names)} {args.subjects} pairs at {args.size} px: "
        + "; ".join(lines),
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
