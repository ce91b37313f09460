"""Every figure: the per-epoch translation grid, the loss curves, the training GIF and
the evaluation examples."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw to files; training machines rarely have a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from config import TrainConfig  # noqa: E402
from files import atomic_path  # noqa: E402


def save_figure(figure, path: Path, dpi: int = 80) -> None:
    """Lay `figure` out, write it to `path` as a PNG (atomically), and close it."""
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
    plt.close(figure)


def plot_translations(
    t1: np.ndarray,
    t1_to_t2: np.ndarray,
    t2: np.ndarray,
    t2_to_t1: np.ndarray,
    path: Path,
    title: str = "",
) -> None:
    """Save a grid, one row per sample: T1, T1->T2, T2, T2->T1.

    Each argument is (samples, H, W, 1) or (samples, H, W) in [-1, 1].
    """
    columns = (("T1", t1), ("T1 → T2", t1_to_t2), ("T2", t2), ("T2 → T1", t2_to_t1))
    rows = min(len(images) for _, images in columns)
    figure, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows + 0.4), squeeze=False)
    for column, (label, images) in enumerate(columns):
        for row in range(rows):
            axis = axes[row, column]
            axis.imshow(np.squeeze(images[row]), cmap="gray", vmin=-1.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(label)
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def read_history(csv_path: Path) -> dict[str, list[float]]:
    """The columns of a history CSV as lists of floats, keyed by header name."""
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return {}
    # Epochs without a value in a column (metrics not computed then) read as NaN.
    return {name: [float(row[name] or "nan") for row in rows] for name in rows[0]}


# The test metrics drawn beside the losses when the history has them.
METRIC_CURVES = ("t1_to_t2_ssim", "t2_to_t1_ssim", "t1_to_t2_masked_ssim", "t2_to_t1_masked_ssim")


def plot_loss_curves(csv_path: Path, path: Path) -> None:
    """Plot every loss column of the history CSV against the epoch, and the test SSIM
    (whole slice and head) when the history has it."""
    history = read_history(csv_path)
    if not history:
        return
    epochs = np.array(history["epoch"])
    metrics = [name for name in METRIC_CURVES if name in history]
    panels = 3 if metrics else 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5))
    generator_axis, critic_axis = axes[0], axes[1]
    for name, values in history.items():
        if name.endswith("critic_loss"):
            critic_axis.plot(epochs, values, marker=".", label=name)
        elif name.endswith(("_loss", "_adversarial")):
            generator_axis.plot(epochs, values, marker=".", label=name)
    titled = [
        (generator_axis, "Generators", "mean loss"),
        (critic_axis, "Discriminators", "mean loss"),
    ]
    if metrics:
        for name in metrics:
            values = np.array(history[name])
            scored = np.isfinite(values)  # epochs without a test score are skipped
            axes[2].plot(epochs[scored], values[scored], marker="o", label=name)
        titled.append((axes[2], "Paired test set", "SSIM"))
    for axis, title, label in titled:
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    save_figure(figure, path, dpi=90)


def make_gif(frame_paths: list[Path], path: Path, seconds_per_frame: float = 0.5) -> None:
    """Animate the epoch figures, in the given order, into one looping GIF."""
    if not frame_paths:
        return
    frames = []
    for frame_path in frame_paths:
        with Image.open(frame_path) as frame:
            frames.append(frame.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE))
    with atomic_path(path) as temporary:
        frames[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=int(seconds_per_frame * 1000),
            loop=0,
        )


def epoch_figure_path(epochs_dir: Path, epoch: int) -> Path:
    """Where the figure of `epoch` (1-based) goes: `epochs/epoch_007.png`."""
    return epochs_dir / f"epoch_{epoch:03d}.png"


def write_summary_figures(config: TrainConfig, last_epoch: int) -> None:
    """`loss_curves.png` from the run's `history.csv` and `training.gif` from its epoch
    figures up to `last_epoch`, in its output dir."""
    if config.history_path.is_file():
        plot_loss_curves(config.history_path, config.output_dir / "loss_curves.png")
    frames = [epoch_figure_path(config.epochs_dir, epoch) for epoch in range(1, last_epoch + 1)]
    make_gif([frame for frame in frames if frame.is_file()], config.output_dir / "training.gif")


def plot_examples(
    rows: list[tuple[str, tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]],
    path: Path,
) -> None:
    """A figure of examples, one row each: input, prediction, target (grey, [0, 1]) and
    |prediction - target| (0 to 0.5, brighter is worse).

    rows: (row label, the three panel titles, the three (H, W) images in [0, 1]).
    """
    figure, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for row, (label, titles, (inputs, prediction, target)) in enumerate(rows):
        panels = (
            (inputs, titles[0], "gray", 1.0),
            (prediction, titles[1], "gray", 1.0),
            (target, titles[2], "gray", 1.0),
            (np.abs(prediction - target), "|error|", "magma", 0.5),
        )
        for column, (image, title, colormap, top) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image, cmap=colormap, vmin=0.0, vmax=top)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=8)
    save_figure(figure, path)


def plot_quality_curves(
    curves: dict[str, list[dict]], identity: dict[str, dict[str, float]], path: Path
) -> None:
    """Test SSIM and head SSIM against minutes, a line per recipe, per direction.

    curves: {recipe: [{"minutes", "t1_to_t2_ssim", "t1_to_t2_head_ssim", ...}, ...]};
    identity: {direction: {"ssim": .., "head_ssim": ..}}, drawn dashed.
    """
    metrics = (("ssim", "SSIM (whole slice)"), ("head_ssim", "head SSIM"))
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
    for row, direction in enumerate(identity):
        for column, (metric, label) in enumerate(metrics):
            axis = axes[row, column]
            for recipe, points in curves.items():
                axis.plot(
                    [point["minutes"] for point in points],
                    [point[f"{direction}_{metric}"] for point in points],
                    marker=".",
                    label=recipe,
                )
            axis.axhline(identity[direction][metric], color="grey", linestyle="--")
            axis.set_title(f"{direction.replace('_to_', ' → ').upper()}: {label}")
            axis.set_xlabel("minutes, preprocessing included")
            axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    save_figure(figure, path, dpi=90)


# The zoomed panels show at least this share of the image's side around the lesions.
MIN_ZOOM_FRACTION = 0.25
ZOOM_MARGIN_PX = 8


def _zoom_box(mask: np.ndarray) -> tuple[slice, slice]:
    """A square-ish box around the True pixels of (H, W) `mask`, grown by a margin."""
    rows, columns = np.nonzero(mask)
    box = []
    for hits, side in ((rows, mask.shape[0]), (columns, mask.shape[1])):
        half = max((hits.max() - hits.min()) / 2 + ZOOM_MARGIN_PX, MIN_ZOOM_FRACTION * side / 2)
        centre = (hits.max() + hits.min()) / 2
        start = int(np.clip(round(centre - half), 0, max(0, side - 2 * half)))
        box.append(slice(start, min(side, start + int(round(2 * half)) + 1)))
    return box[0], box[1]


def plot_lesion_examples(
    rows: list[
        tuple[str, tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    ],
    path: Path,
) -> None:
    """A figure of lesion slices, one row each: input, prediction and target (grey,
    [0, 1]) with the lesion mask outlined in red, then the prediction and the target
    zoomed on the lesions.

    rows: (row label, the three panel titles, the three (H, W) images in [0, 1], the
    (H, W) bool lesion mask).
    """
    figure, axes = plt.subplots(
        max(len(rows), 1), 5, figsize=(12.5, 2.6 * max(len(rows), 1)), squeeze=False
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    for row, (label, titles, (inputs, prediction, target), mask) in enumerate(rows):
        box = _zoom_box(mask) if mask.any() else (slice(None), slice(None))
        panels = (
            (inputs, titles[0], (slice(None), slice(None))),
            (prediction, titles[1], (slice(None), slice(None))),
            (target, titles[2], (slice(None), slice(None))),
            (prediction, "prediction, zoomed", box),
            (target, "target, zoomed", box),
        )
        for column, (image, title, crop) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image[crop], cmap="gray", vmin=0.0, vmax=1.0)
            if mask[crop].any():
                axis.contour(mask[crop].astype(float), levels=[0.5], colors="red", linewidths=0.7)
            axis.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=8)
    if not rows:
        axes[0, 0].set_title("no lesion slice with a kept fraction", fontsize=9)
    save_figure(figure, path)


def plot_uncertainty_examples(
    rows: list[tuple[str, tuple[str, ...], tuple[np.ndarray, ...], np.ndarray | None]],
    path: Path,
) -> None:
    """A figure of uncertainty examples, one row each: input and translation (grey,
    [0, 1]), then |error|, the uncertainty map and the cycle residual (magma, each from 0
    to its own 99th percentile, given in its title: brighter is larger); a lesion mask
    is outlined in cyan on the three maps.

    rows: (row label, the five panel titles, the five (H, W) images in [0, 1], the (H, W)
    bool lesion mask or None).
    """
    figure, axes = plt.subplots(
        max(len(rows), 1), 5, figsize=(12.5, 2.6 * max(len(rows), 1)), squeeze=False
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    for row, (label, titles, images, lesion) in enumerate(rows):
        for column, (image, title) in enumerate(zip(images, titles, strict=True)):
            axis = axes[row, column]
            if column < 2:
                axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            else:
                # Each map on its own scale: a spread is far smaller than an error.
                top = max(float(np.percentile(image, 99)), 1e-6)
                axis.imshow(image, cmap="magma", vmin=0.0, vmax=top)
                title = f"{title}\n0 to {top:.2f}"
                if lesion is not None and lesion.any():
                    axis.contour(lesion.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            axis.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=8)
    if not rows:
        axes[0, 0].set_title("no slice with a score", fontsize=9)
    save_figure(figure, path)
