"""The written results of an evaluation: `metrics.csv` (a row per slice, direction and
method), `metrics.json` (summary statistics and verdicts) and the printed table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import metrics
from directions import DIRECTIONS
from evaluation import EvaluationResult
from files import atomic_path


def write_metrics_csv(result: EvaluationResult, path: Path) -> None:
    """metrics.csv: one row per slice, direction and method; metrics to 6 significant digits."""
    columns = ["name", "direction", "method", *metrics.METRIC_NAMES, "mask_fraction"]

    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in result.rows():
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def _json_safe(value):
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_document(result: EvaluationResult, **context) -> dict:
    """The content of metrics.json: `context` (run, paths, ...) and the summary statistics."""
    return _json_safe(
        {
            **context,
            "n_pairs": len(result.names),
            "psnr_cap_db": metrics.MAX_PSNR_DB,
            "std": "population standard deviation over slices (ddof 0)",
            "metrics": result.statistics(),
            "model_beats_histogram_matching": result.model_beats_histogram_matching(),
        }
    )


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
