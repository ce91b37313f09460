"""The written results of an evaluation: `metrics.csv` (a row per slice, direction and
method), `metrics.json` (summary statistics and verdicts), with lesion masks
`lesion_metrics.csv` (the same rows, for the lesion metrics), with uncertainty maps
`uncertainty_metrics.csv` (a row per slice, direction and map), and the printed tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import metrics
from directions import DIRECTIONS
from evaluation import EvaluationResult
from files import atomic_path
from uncertainty import CHANCE, CHANCE_P_VALUE, UncertaintyResult


def write_rows(rows: list[dict[str, object]], columns: list[str], path: Path) -> None:
    """A CSV of `rows` under `columns`, floats to 6 significant digits, written atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def write_metrics_csv(result: EvaluationResult, path: Path) -> None:
    """metrics.csv: one row per slice, direction and method; metrics to 6 significant digits."""
    columns = ["name", "direction", "method", *metrics.METRIC_NAMES, "mask_fraction"]
    write_rows(result.rows(), columns, path)


def write_lesion_csv(result: EvaluationResult, path: Path) -> None:
    """lesion_metrics.csv: one row per slice, direction and method, with the lesion size in
    pixels and every lesion metric (6 significant digits; nan where there is none)."""
    columns = ["name", "direction", "method", "lesion_pixels", *metrics.LESION_METRIC_NAMES]
    write_rows(result.lesion_rows(), columns, path)


def json_safe(value):
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


LESION_DEFINITIONS = {
    "contrast": "mean intensity inside the lesion / mean intensity in its ring",
    "ring": f"head pixels more than {metrics.RING_GAP_PX:g} and at most "
    f"{metrics.RING_OUTER_PX:g} px (Euclidean, at the evaluated size) from the lesion",
    "kept_fraction": "(contrast_prediction - 1) / (contrast_target - 1): 1 kept as in the "
    "target, 0 erased, > 1 exaggerated, < 0 inverted; null where the target's contrast is "
    f"within {metrics.MIN_TARGET_CONTRAST:g} of 1",
    "lesion_mae": "mean |prediction - target| over the lesion pixels",
    "lesion_ssim": "SSIM map averaged over the windows centred in the lesion",
    "statistics": "median and quartiles over slices; n: the slices with a value",
}


def metrics_document(result: EvaluationResult, **context) -> dict:
    """The content of metrics.json: `context` (run, paths, ...) and the summary statistics;
    with lesion masks, "lesions": their definitions and statistics."""
    document = {
        **context,
        "n_pairs": len(result.names),
        "psnr_cap_db": metrics.MAX_PSNR_DB,
        "std": "population standard deviation over slices (ddof 0)",
        "metrics": result.statistics(),
        "model_beats_histogram_matching": result.model_beats_histogram_matching(),
    }
    if result.lesion_values is not None:
        document["lesions"] = {
            "n_slices_with_lesion": int((result.lesion_pixels > 0).sum()),
            "definitions": LESION_DEFINITIONS,
            "metrics": result.lesion_statistics(),
        }
    return json_safe(document)


def write_json(document: dict, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


def format_table(result: EvaluationResult) -> str:
    """The mean ± std of every metric, one line per direction and method, and the verdicts."""
    statistics = result.statistics()
    headers = ["SSIM", "PSNR dB", "MAE", "head SSIM", "head PSNR", "head MAE"]
    lines = [f"{'direction':<9} {'method':<18} " + " ".join(f"{h:>15}" for h in headers)]
    for direction in DIRECTIONS:
        for method in result.methods:
            cells = []
            for name in metrics.METRIC_NAMES:
                value = statistics[direction][method][name]
                digits = 2 if "psnr" in name else 3
                cells.append(f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}")
            lines.append(
                f"{direction:<9} {method:<18} " + " ".join(f"{cell:>15}" for cell in cells)
            )
    for direction, verdicts in result.model_beats_histogram_matching().items():
        answers = ", ".join(
            f"{name} {'yes' if won else 'no'}" for name, won in verdicts.items() if name != "all"
        )
        overall = "yes" if verdicts["all"] else "no"
        lines.append(f"{direction}: model beats histogram matching: {overall} ({answers})")
    return "\n".join(lines)


def format_lesion_table(result: EvaluationResult) -> str:
    """The median [q1, q3] of the kept lesion contrast, lesion MAE and lesion SSIM, one line
    per direction and method; empty without lesion masks."""
    statistics = result.lesion_statistics()
    if not statistics:
        return ""
    names = {
        "kept_fraction": "kept contrast",
        "lesion_mae": "lesion MAE",
        "lesion_ssim": "lesion SSIM",
    }
    lines = [f"{'direction':<9} {'method':<18} " + " ".join(f"{h:>26}" for h in names.values())]
    for direction, methods in statistics.items():
        for method in result.methods:
            cells = []
            for name in names:
                value = methods[method][name]
                cells.append(f"{value['median']:.3f} [{value['q1']:.3f}, {value['q3']:.3f}]")
            lines.append(
                f"{direction:<9} {method:<18} " + " ".join(f"{cell:>26}" for cell in cells)
            )
    return "\n".join(lines)


def write_uncertainty_csv(result: UncertaintyResult, path: Path) -> None:
    """uncertainty_metrics.csv: one row per slice, direction and map (uncertainty, cycle
    residual), with how well the map finds the error (6 significant digits; nan where
    there is none)."""
    columns = ["name", "direction", "map", *result.metric_names]
    write_rows(result.rows(), columns, path)


UNCERTAINTY_DEFINITIONS = {
    "uncertainty": "per-pixel standard deviation of the stochastic passes (dropout kept "
    "on and/or left-right flips: see method), on [0, 1] images",
    "cycle_residual": "|the translation translated back by the other generator - the input|",
    "error": "|deterministic translation - target| on [0, 1] images",
    "rank_correlation": "Spearman rank correlation (ties averaged) of the map with the "
    "error over the head pixels; 0 is chance",
    "auc": f"ROC AUC of the map for the {metrics.WORST_ERROR_FRACTION:.0%} head pixels "
    "with the largest error (Mann-Whitney); 0.5 is chance",
    "lesion_auc": "ROC AUC of the map for the lesion pixels among the head pixels; 0.5 is chance",
    "beats_chance": "one-sided sign test over slices: more slices above chance than "
    f"below, p < {CHANCE_P_VALUE:g}",
    "statistics": "median and quartiles over slices; n: the slices with a value",
}


def uncertainty_document(result: UncertaintyResult) -> dict:
    """The "uncertainty" entry of metrics.json: settings, definitions, median and
    quartiles of each map's scores, and whether each beats chance."""
    return json_safe(
        {
            "passes": result.passes,
            "seed": result.seed,
            "method": result.method,
            "definitions": {
                name: text
                for name, text in UNCERTAINTY_DEFINITIONS.items()
                if name not in CHANCE or name in result.metric_names
            },
            "metrics": result.statistics(),
            "chance": result.chance(),
        }
    )


def format_uncertainty_table(result: UncertaintyResult) -> str:
    """The median [q1, q3] of each map's scores, one line per direction and map, then a
    line per map saying plainly whether it beats chance, score by score."""
    statistics, chance = result.statistics(), result.chance()
    headers = {
        "rank_correlation": "rank corr. with |error|",
        "auc": "AUC, worst 10 % error",
        "lesion_auc": "AUC, lesion pixels",
    }
    names = [name for name in headers if name in result.metric_names]
    lines = [f"{'direction':<9} {'map':<15} " + " ".join(f"{headers[n]:>26}" for n in names)]
    for direction, maps in statistics.items():
        for name, values in maps.items():
            cells = [
                f"{values[metric]['median']:.3f} [{values[metric]['q1']:.3f}, "
                f"{values[metric]['q3']:.3f}]"
                for metric in names
            ]
            lines.append(f"{direction:<9} {name:<15} " + " ".join(f"{c:>26}" for c in cells))
    for direction, maps in chance.items():
        for name, verdicts in maps.items():
            parts = []
            for metric in names:
                test = verdicts[metric]
                answer = "beats chance" if test["beats_chance"] else "DOES NOT BEAT CHANCE"
                parts.append(
                    f"{headers[metric]} {answer} (above {CHANCE[metric]:g} on {test['above']} "
                    f"of {test['above'] + test['below']} slices, p {test['p']:.2g})"
                )
            lines.append(f"{direction} {name}:\n  " + "\n  ".join(parts))
    return "\n".join(lines)
