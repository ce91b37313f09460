"""Time to quality: train named recipes for a budget and score a paired set as they learn.

    python -m benchmarks.quality --recipe reference --recipe defaults --minutes 30 [--json]

Each recipe is a set of `main.py` flags (`RECIPES`; `--list` prints them). All recipes
train on the same data at the same size with the same seed, one `main.py` process at a
time, for `--minutes` of wall time and/or `--steps` steps. Every `--score_every` steps
(an epoch of the run) the paired set is scored: SSIM, PSNR and MAE over the slice and the
head, both directions. The preprocessing is done once, timed, and counted in every
recipe's minutes, as a fresh run would pay it.

The paired set (`--test_dir_t1/--test_dir_t2`) is by default a validation set that
`dataset/make_demo.py` generates on first use from subjects in neither the demo's
training nor its test set: recipes are chosen on it, never on `dataset/Test`.

Under `--output_dir`: each recipe's run (`<recipe>/`: checkpoints, `export/`,
`history.csv`), `quality.csv` (a row per recipe and score), and `quality.png` (whole-
slice and head SSIM against minutes, the recipes side by side, the identity baseline
dashed). The last line is the summary; with `--json`, one JSON line per recipe follows
it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.summary import machine_description  # noqa: E402
from directions import DIRECTIONS  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """`main.py` flags of one way to train; `decay_fraction` of the steps at the end
    decay the learning rate linearly to 0 (needs a step budget to place them)."""

    flags: tuple[str, ...]
    decay_fraction: float = 0.0
    about: str = ""


BATCH_1 = ("--batch_size", "1")
RECIPES: dict[str, Recipe] = {
    "reference": Recipe(
        (*BATCH_1, "--lambda_identity", "0", "--generator_filters", "32", "--critic_filters", "32"),
        about="what the README recommends (docs/quality.md)",
    ),
    "defaults": Recipe((), about="main.py's defaults: batch 16, U-Net 64, identity 0.5, pool 50"),
    "defaults_b1": Recipe(BATCH_1, about="the defaults at batch 1"),
    "batch4": Recipe(("--batch_size", "4"), about="the defaults at batch 4"),
    "no_identity": Recipe((*BATCH_1, "--lambda_identity", "0"), about="no identity loss"),
    "pool0": Recipe((*BATCH_1, "--pool_size", "0"), about="no history pool"),
    "narrow": Recipe((*BATCH_1, "--generator_filters", "32"), about="32-filter generators"),
    "resnet": Recipe((*BATCH_1, "--generator", "resnet"), about="ResNet generators"),
    "structure1": Recipe((*BATCH_1, "--lambda_structure", "1"), about="MIND structure loss 1"),
    "structure5": Recipe((*BATCH_1, "--lambda_structure", "5"), about="MIND structure loss 5"),
    "decay": Recipe(BATCH_1, decay_fraction=0.5, about="LR decay to 0 over the last half"),
}
# history.csv / evaluation names -> the benchmark's.
METRICS = {"ssim": "ssim", "psnr": "psnr", "mae": "mae", "masked_ssim": "head_ssim"}
# With only a time budget, epochs are not the limit.
UNBOUNDED_EPOCHS = 1_000_000
VALIDATION_FLAGS = (
    "--n_train_subjects", "0", "--n_test_subjects", "5", "--test_slices_per_subject", "9",
    "--first_test_subject", "31", "--no_volume", "--n_lesion_subjects", "0",
)  # fmt: skip


def recipe_name(text: str) -> str:
    """An argparse `type`: a known recipe, or NAME=FLAGS defining one (added to RECIPES)."""
    name, equals, flags = text.partition("=")
    if equals and name and name.isidentifier():
        RECIPES[name] = Recipe(tuple(shlex.split(flags)), about="given on the command line")
    elif name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {text!r}: see --list")
    return name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipe",
        action="append",
        type=recipe_name,
        help=f"one of {', '.join(RECIPES)}, or NAME='FLAGS' for main.py flags of your own "
        "(repeatable; default: reference and defaults)",
    )
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--data_dir_t1", type=Path, default=REPOSITORY / "dataset/Tr1")
    parser.add_argument("--data_dir_t2", type=Path, default=REPOSITORY / "dataset/Tr2")
    parser.add_argument("--test_dir_t1", type=Path, help="default: the validation set")
    parser.add_argument("--test_dir_t2", type=Path)
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--minutes", type=float, help="wall-time budget per recipe")
    parser.add_argument("--steps", type=int, help="step budget per recipe")
    parser.add_argument("--score_every", type=int, default=110, help="steps between scores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_n4", action="store_true", help="train and score without N4")
    parser.add_argument(
        "--main_flags",
        default="",
        help="more main.py flags for every recipe, after the recipe's own (they win)",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("output/quality"))
    parser.add_argument("--json", action="store_true", help="end with a JSON line per recipe")
    args = parser.parse_args(argv)
    if args.list:
        return args
    if args.minutes is None and args.steps is None:
        parser.error("give a budget: --minutes, --steps or both")
    if (args.test_dir_t1 is None) != (args.test_dir_t2 is None):
        parser.error("--test_dir_t1 and --test_dir_t2 go together")
    for name in args.recipe or ["reference", "defaults"]:
        if RECIPES[name].decay_fraction and args.steps is None:
            parser.error(f"recipe {name} decays the learning rate over the steps: give --steps")
    if min(args.score_every, args.steps or 1, args.size) < 1 or (args.minutes or 1) <= 0:
        parser.error("--score_every, --steps, --size and --minutes must be positive")
    return args


def validation_dirs(output_dir: Path) -> tuple[Path, Path]:
    """The validation pairs, generated by dataset/make_demo.py once (byte-reproducible)."""
    root = output_dir / "validation"
    t1, t2 = root / "Test" / "T1", root / "Test" / "T2"
    if not (t1.is_dir() and any(t1.glob("*.png"))):
        from dataset import make_demo

        make_demo.main(["--output_dir", str(root), *VALIDATION_FLAGS])
    return t1, t2


def training_config(args: argparse.Namespace, output_dir: Path):
    """The TrainConfig whose preprocessing every recipe shares (size, N4, cache)."""
    from config import TrainConfig

    return TrainConfig(
        data_dir_t1=args.data_dir_t1,
        data_dir_t2=args.data_dir_t2,
        img_height=args.size,
        img_width=args.size,
        n4=not args.no_n4,
        output_dir=output_dir,
        cache_dir=args.output_dir / "cache",
    )


def preprocess_once(args: argparse.Namespace, test_dirs: tuple[Path, Path]) -> float:
    """Preprocess the training and paired sets into the shared cache; the minutes that
    took with an empty cache, measured on the first call for these data and settings and
    kept in `preprocessing.json` for later calls (whose cache is already full)."""
    from data_processing import PreprocessCache, scan_data_dirs

    config = training_config(args, args.output_dir)
    folders = [args.data_dir_t1, args.data_dir_t2, *test_dirs]
    key = f"{args.size}|n4={not args.no_n4}|" + "|".join(str(folder) for folder in folders)
    record = args.output_dir / "preprocessing.json"
    known = json.loads(record.read_text()) if record.is_file() else {}
    started = time.monotonic()
    scan_data_dirs(folders, PreprocessCache(config.resolved_cache_dir, config))
    if key not in known:
        known[key] = (time.monotonic() - started) / 60.0
        record.write_text(json.dumps(known, indent=2) + "\n")
    return known[key]


def run_command(
    name: str, args: argparse.Namespace, test_dirs: tuple[Path, Path], minutes_left: float | None
) -> list[str]:
    """The `main.py` command line of recipe `name` under the benchmark's budget."""
    recipe = RECIPES[name]
    epochs = math.ceil(args.steps / args.score_every) if args.steps else UNBOUNDED_EPOCHS
    command = [sys.executable, str(REPOSITORY / "main.py"), *recipe.flags]
    command += ["--data_dir_t1", str(args.data_dir_t1), "--data_dir_t2", str(args.data_dir_t2)]
    command += ["--img_height", str(args.size), "--img_width", str(args.size)]
    command += ["--test_dir_t1", str(test_dirs[0]), "--test_dir_t2", str(test_dirs[1])]
    command += ["--output_dir", str(args.output_dir / name)]
    command += ["--cache_dir", str(args.output_dir / "cache"), "--seed", str(args.seed)]
    command += ["--epochs", str(epochs), "--steps_per_epoch", str(args.score_every)]
    # A checkpoint at the end only: saving four networks and their optimizers at every
    # score would take minutes from the budget.
    command += ["--eval_every", "1", "--checkpoint_every", str(epochs), "--keep_checkpoints", "1"]
    command.append("--quiet")
    if recipe.decay_fraction:
        command += ["--decay_epochs", str(round(epochs * recipe.decay_fraction))]
    if minutes_left is not None:
        command += ["--max_minutes", f"{max(minutes_left, 0.01):.3f}"]
    if args.no_n4:
        command.append("--no_n4")
    return command + shlex.split(args.main_flags)


def read_curve(history: Path, score_every: int, offset_minutes: float) -> list[dict]:
    """history.csv -> a row per scored epoch: steps, minutes (with the preprocessing's
    `offset_minutes`), and each direction's metrics under the benchmark's names."""
    rows = []
    with open(history, newline="") as stream:
        for row in csv.DictReader(stream):
            if not row.get("mean_ssim"):  # an epoch that was not scored
                continue
            point = {
                "steps": int(row["epoch"]) * score_every,
                "minutes": round(offset_minutes + float(row["minutes"]), 3),
            }
            for direction in DIRECTIONS:
                for source, name in METRICS.items():
                    point[f"{direction}_{name}"] = float(row[f"{direction}_{source}"])
            rows.append(point)
    return rows


def final_scores(export_dir: Path, args: argparse.Namespace, test_dirs: tuple[Path, Path]):
    """Both exported generators and the identity baseline on the paired set:
    {direction: {ssim, psnr, mae, head_ssim, identity_ssim, identity_psnr, ...}}."""
    import evaluation
    from data_processing import PreprocessCache
    from inference import load_generator

    config = training_config(args, args.output_dir)
    images = evaluation.load_pairs(
        evaluation.pair_files(*test_dirs).pairs,
        PreprocessCache(config.resolved_cache_dir, config),
    )
    generators = {direction: load_generator(export_dir, direction) for direction in DIRECTIONS}
    result = evaluation.evaluate_pairs(generators, images)
    scores = {}
    for direction in DIRECTIONS:
        model, identity = result.summary("model"), result.summary("identity")
        scores[direction] = {
            name: round(model[f"{direction}_{source}"], 4) for source, name in METRICS.items()
        }
        scores[direction].update(
            {
                f"identity_{name}": round(identity[f"{direction}_{source}"], 4)
                for source, name in METRICS.items()
            }
        )
    return scores


def run_recipe(
    name: str, args: argparse.Namespace, test_dirs: tuple[Path, Path], preprocessing: float
) -> dict:
    """Train recipe `name` within the budget, then score its export; its result line.

    The result is kept in `<recipe>/result.json` with the run's command: a later call
    with the same command reads it instead of training again (so recipes can be added
    to a comparison one at a time); any other run in the recipe's folder is removed first.
    """
    minutes_left = None if args.minutes is None else args.minutes - preprocessing
    command = run_command(name, args, test_dirs, minutes_left)
    run_dir = args.output_dir / name
    kept = run_dir / "result.json"
    if kept.is_file():
        earlier = json.loads(kept.read_text())
        if earlier.get("command") == command[1:]:
            print(f"{name}: the result of the same run, from {kept}", flush=True)
            return earlier["result"]
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    with open(run_dir / "benchmark.log", "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = preprocessing + (time.monotonic() - started) / 60.0
    if finished.returncode:
        raise SystemExit(f"error: recipe {name} failed (exit {finished.returncode}): {log.name}")
    curve = read_curve(run_dir / "history.csv", args.score_every, preprocessing)
    export_dir = run_dir / "export"
    result = {
        "recipe": name,
        "flags": " ".join(RECIPES[name].flags),
        "minutes": round(wall, 2),
        "steps": curve[-1]["steps"] if curve else 0,
        "seconds_per_step": round(
            (curve[-1]["minutes"] - preprocessing) * 60 / curve[-1]["steps"], 3
        )
        if curve
        else None,
        "export_dir": str(export_dir),
        **final_scores(export_dir, args, test_dirs),
        "curve": curve,
    }
    kept.write_text(json.dumps({"command": command[1:], "result": result}, indent=1) + "\n")
    return result


def write_outputs(results: list[dict], output_dir: Path) -> None:
    """quality.csv (a row per recipe and score) and quality.png."""
    import plotting

    columns = ["recipe", "steps", "minutes"] + [
        f"{direction}_{name}" for direction in DIRECTIONS for name in METRICS.values()
    ]
    with open(output_dir / "quality.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for result in results:
            for point in result["curve"]:
                writer.writerow({"recipe": result["recipe"], **point})
    plotting.plot_quality_curves(
        {result["recipe"]: result["curve"] for result in results},
        {
            direction: {
                name: results[0][direction][f"identity_{name}"] for name in ("ssim", "head_ssim")
            }
            for direction in DIRECTIONS
        },
        output_dir / "quality.png",
    )


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name:12} {' '.join(recipe.flags) or '(none)':60} {recipe.about}")
        return []
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.output_dir = args.output_dir.resolve()
    if args.test_dir_t1 is None:
        test_dirs = validation_dirs(args.output_dir)
    else:
        test_dirs = (args.test_dir_t1, args.test_dir_t2)
    preprocessing = preprocess_once(args, test_dirs)
    machine = machine_description()
    results = [
        run_recipe(name, args, test_dirs, preprocessing)
        for name in args.recipe or ["reference", "defaults"]
    ]
    write_outputs(results, args.output_dir)
    for result in results:
        print(
            f"{result['recipe']}: {result['steps']} steps in {result['minutes']} min; "
            + "; ".join(
                f"{direction} SSIM {result[direction]['ssim']:.3f} "
                f"(identity {result[direction]['identity_ssim']:.3f}), PSNR "
                f"{result[direction]['psnr']:.2f} dB (identity "
                f"{result[direction]['identity_psnr']:.2f}), head SSIM "
                f"{result[direction]['head_ssim']:.3f}"
                for direction in DIRECTIONS
            )
        )
    print(
        f"quality: {len(results)} recipes at {args.size} px, budget "
        f"{args.minutes or '-'} min / {args.steps or '-'} steps, scored on {test_dirs[0].parent}"
        f" ({preprocessing:.1f} min preprocessing each), on {machine}; {args.output_dir}"
    )
    if args.json:
        for result in results:
            line = {key: value for key, value in result.items() if key != "curve"}
            print(json.dumps({**line, "machine": machine, "size": args.size}))
    return results


if __name__ == "__main__":
    main()
