"""Image-quality metrics of a translation against its paired target: SSIM, PSNR and MAE.

Pure functions on images in [0, 1] (max_val = 1) of shape (..., H, W): one image (H, W)
or a stack (N, H, W); each returns one value per image, shape (...). Every metric comes
in a whole-slice form and a masked form (`mask`: bool, same shape), which uses only
the pixels inside the mask, so the air around the head does not flatter the score.

- MAE: mean |prediction - target|, in [0, 1]; lower is better.
- PSNR: 10 log10(1 / MSE) dB; higher is better. Identical images have MSE 0 and an
  infinite PSNR; it is capped at `MAX_PSNR_DB` = 100 dB (an MSE of 1e-10), so that means
  over slices stay finite.
- SSIM: `tf.image.ssim` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, k1 = 0.01,
  k2 = 0.03), in [-1, 1]; higher is better. Masked SSIM averages the local SSIM map over
  the windows whose centre pixel is inside the mask.

A masked metric of an empty mask is NaN.

Lesion metrics (`lesion_metrics`), for test slices with a lesion mask:
- contrast: the mean intensity inside the lesion over the mean in its ring of
  surrounding tissue (`lesion_ring`), in the prediction and in the target; 1 means the
  lesion is invisible.
- kept fraction: (contrast_prediction - 1) / (contrast_target - 1). 1: the lesion
  stands out as in the real scan; 0: erased; above 1: exaggerated; below 0: inverted.
- MAE and SSIM inside the lesion (SSIM averaged over the windows centred in it).

Does a map (an uncertainty map, a cycle residual) point at the errors? (`error_detection`)
- rank correlation: Spearman's, between the map and |prediction - target| over the head
  pixels (ties get their average rank); 0 is chance, 1 a map that orders the pixels
  exactly as the error does.
- ROC AUC for finding the worst-error pixels (the top `WORST_ERROR_FRACTION` of the head
  by error) from the map: the chance that a worst-error pixel has a higher map value than
  another head pixel (Mann-Whitney); 0.5 is chance.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

MAX_PSNR_DB = 100.0
SSIM_FILTER_SIZE = 11
# The SSIM map has one value per 11x11 window that fits in the image ('VALID'):
# map[i, j] belongs to the window centred on image pixel (i + 5, j + 5).
SSIM_MARGIN = SSIM_FILTER_SIZE // 2
# tf.image.ssim's Gaussian window and constants (Wang et al. 2004).
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

METRIC_NAMES = ("ssim", "psnr", "mae", "masked_ssim", "masked_psnr", "masked_mae")
HIGHER_IS_BETTER = {name: not name.endswith("mae") for name in METRIC_NAMES}

LESION_METRIC_NAMES = (
    "contrast_prediction",
    "contrast_target",
    "kept_fraction",
    "lesion_mae",
    "lesion_ssim",
)
# The ring a lesion is compared with: head pixels more than RING_GAP_PX and at most
# RING_OUTER_PX (Euclidean) from the nearest lesion pixel. The gap skips the lesion's
# partial-volume edge; the 3 px beyond it stay near enough to be the tissue the lesion
# sits in.
RING_GAP_PX = 1.0
RING_OUTER_PX = 4.0
# A target whose lesion contrast is within this of 1 shows no lesion to keep: the kept
# fraction would divide by almost nothing, so it is NaN.
MIN_TARGET_CONTRAST = 0.05

DETECTION_METRIC_NAMES = ("rank_correlation", "auc")
# The error pixels a map should find: this share of the head with the largest error.
WORST_ERROR_FRACTION = 0.1


def _as_pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, np.float32)
    target = np.asarray(target, np.float32)
    if prediction.shape != target.shape or prediction.ndim < 2:
        raise ValueError(
            f"prediction {prediction.shape} and target {target.shape} must be (..., H, W) alike"
        )
    return prediction, target


def _masked_mean(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mean of (..., H, W) `values` over H and W, or over the True pixels of `mask` only."""
    if mask is None:
        return values.mean(axis=(-2, -1))
    mask = np.broadcast_to(np.asarray(mask, bool), values.shape)
    count = mask.sum(axis=(-2, -1))
    total = np.where(mask, values, 0.0).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def mae(prediction, target, mask=None) -> np.ndarray:
    """Mean absolute error per image, over all pixels or those in `mask`.

    prediction, target: (..., H, W) in [0, 1]; mask: bool (..., H, W) or None.
    Returns (...) float64 in [0, 1]; NaN where the mask is empty.
    """
    prediction, target = _as_pair(prediction, target)
    error = np.abs(prediction.astype(np.float64) - target)
    return _masked_mean(error, mask)


def psnr(prediction, target, mask=None) -> np.ndarray:
    """Peak signal-to-noise ratio per image with max_val 1, in dB, capped at 100 dB.

    The same value as `tf.image.psnr(..., max_val=1.0)` wherever that is finite; over
    `mask`, the MSE is that of the masked pixels. prediction, target: (..., H, W) in
    [0, 1]; mask: bool (..., H, W) or None. Returns (...) float64 in (-inf, 100];
    NaN where the mask is empty.
    """
    prediction, target = _as_pair(prediction, target)
    squared_error = np.square(prediction.astype(np.float64) - target)
    mse = _masked_mean(squared_error, mask)
    floor = 10.0 ** (-MAX_PSNR_DB / 10.0)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(mse), np.nan, -10.0 * np.log10(np.maximum(mse, floor)))


def ssim_map(prediction, target) -> np.ndarray:
    """The local SSIM of each 11x11 window that fits in the image: `tf.image.ssim`'s.

    The same SSIM as `tf.image.ssim(..., max_val=1.0)` (11x11 Gaussian window, sigma
    1.5, k1 0.01, k2 0.03, 'VALID' windows), to float32 precision, with the window
    applied as two 1-D passes: about 20x faster than TensorFlow's 2-D convolutions on a
    whole volume. prediction, target: (..., H, W) in [0, 1], H and W at least 11.
    Returns float32 (..., H - 10, W - 10) in [-1, 1]; entry [i, j] is the window
    centred on image pixel (i + 5, j + 5). Its mean over the last two axes is
    `tf.image.ssim`.
    """
    prediction, target = _as_pair(prediction, target)
    height, width = prediction.shape[-2:]
    if min(height, width) < SSIM_FILTER_SIZE:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_FILTER_SIZE} px, got {height}x{width}"
        )
    prediction, target = prediction.astype(np.float64), target.astype(np.float64)
    offsets = np.arange(SSIM_FILTER_SIZE) - SSIM_MARGIN
    window = np.exp(-np.square(offsets) / (2 * SSIM_SIGMA**2))
    window /= window.sum()
    inner = slice(SSIM_MARGIN, -SSIM_MARGIN)

    def local_mean(values: np.ndarray) -> np.ndarray:
        rows = ndimage.correlate1d(values, window, axis=-1, mode="constant")[..., inner]
        return ndimage.correlate1d(rows, window, axis=-2, mode="constant")[..., inner, :]

    mean_p, mean_t = local_mean(prediction), local_mean(target)
    variance_p = local_mean(prediction * prediction) - mean_p * mean_p
    variance_t = local_mean(target * target) - mean_t * mean_t
    covariance = local_mean(prediction * target) - mean_p * mean_t
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    local = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p * mean_p + mean_t * mean_t + c1) * (variance_p + variance_t + c2)
    )
    return local.astype(np.float32)


def window_centre_mask(mask: np.ndarray) -> np.ndarray:
    """Crop a (..., H, W) pixel mask to the (..., H - 10, W - 10) grid of the SSIM map."""
    return np.asarray(mask, bool)[..., SSIM_MARGIN:-SSIM_MARGIN, SSIM_MARGIN:-SSIM_MARGIN]


def ssim(prediction, target, mask=None) -> np.ndarray:
    """SSIM per image: the mean of `ssim_map`, or its mean over windows centred in `mask`.

    prediction, target: (..., H, W) in [0, 1]; mask: bool (..., H, W) or None.
    Returns (...) float64 in [-1, 1]; NaN where no window centre is in the mask.
    """
    local = ssim_map(prediction, target).astype(np.float64)
    return _masked_mean(local, None if mask is None else window_centre_mask(mask))


def slice_metrics(prediction, target, mask) -> dict[str, np.ndarray]:
    """All of `METRIC_NAMES` for each image, the SSIM map computed once.

    prediction, target: (N, H, W) in [0, 1]; mask: bool (N, H, W), the head.
    Returns {metric name: (N,) float64}.
    """
    prediction, target = _as_pair(prediction, target)
    local = ssim_map(prediction, target).astype(np.float64)
    return {
        "ssim": _masked_mean(local, None),
        "psnr": psnr(prediction, target),
        "mae": mae(prediction, target),
        "masked_ssim": _masked_mean(local, window_centre_mask(mask)),
        "masked_psnr": psnr(prediction, target, mask),
        "masked_mae": mae(prediction, target, mask),
    }


def lesion_ring(
    lesion, head=None, gap: float = RING_GAP_PX, outer: float = RING_OUTER_PX
) -> np.ndarray:
    """The ring of tissue around the lesions of each image: bool, the shape of `lesion`.

    lesion: bool (..., H, W); head: bool (..., H, W) or None (no restriction). A pixel is
    in the ring if its Euclidean distance to the nearest lesion pixel is in (gap, outer]
    and it is in the head. An image without lesion has an empty ring.
    """
    lesion = np.asarray(lesion, bool)
    images = lesion.reshape(-1, *lesion.shape[-2:])
    ring = np.zeros(images.shape, bool)
    for index, image in enumerate(images):
        if image.any():
            distance = ndimage.distance_transform_edt(~image)
            ring[index] = (distance > gap) & (distance <= outer)
    ring = ring.reshape(lesion.shape)
    return ring if head is None else ring & np.asarray(head, bool)


def lesion_contrast(image, lesion, ring) -> np.ndarray:
    """Mean of `image` inside `lesion` over its mean inside `ring`, per image.

    image: (..., H, W); lesion, ring: bool, same shape. Returns (...) float64; NaN where
    the lesion or the ring is empty or the ring's mean is 0.
    """
    image = np.asarray(image, np.float64)
    inside = _masked_mean(image, lesion)
    around = _masked_mean(image, ring)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(around > 0, inside / np.where(around > 0, around, 1.0), np.nan)


def kept_fraction(contrast_prediction, contrast_target) -> np.ndarray:
    """(contrast_prediction - 1) / (contrast_target - 1): how much of the target's lesion
    contrast the prediction keeps (1 all, 0 none, < 0 inverted).

    NaN where the target's contrast is within `MIN_TARGET_CONTRAST` of 1 or is NaN.
    """
    predicted = np.asarray(contrast_prediction, np.float64) - 1.0
    target = np.asarray(contrast_target, np.float64) - 1.0
    visible = np.abs(target) >= MIN_TARGET_CONTRAST
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(visible, predicted / np.where(visible, target, 1.0), np.nan)


def lesion_metrics(prediction, target, lesion, head=None) -> dict[str, np.ndarray]:
    """All of `LESION_METRIC_NAMES` for each image.

    prediction, target: (N, H, W) in [0, 1]; lesion: bool (N, H, W); head: bool
    (N, H, W) or None, to keep the ring (`lesion_ring`) inside the head. Returns
    {metric name: (N,) float64}; NaN for an image without lesion.
    """
    prediction, target = _as_pair(prediction, target)
    lesion = np.asarray(lesion, bool)
    ring = lesion_ring(lesion, head)
    contrast_prediction = lesion_contrast(prediction, lesion, ring)
    contrast_target = lesion_contrast(target, lesion, ring)
    local = ssim_map(prediction, target).astype(np.float64)
    return {
        "contrast_prediction": contrast_prediction,
        "contrast_target": contrast_target,
        "kept_fraction": kept_fraction(contrast_prediction, contrast_target),
        "lesion_mae": mae(prediction, target, lesion),
        "lesion_ssim": _masked_mean(local, window_centre_mask(lesion)),
    }


def average_ranks(values) -> np.ndarray:
    """The rank of each value, 1 for the smallest; tied values share their average rank.

    values: any shape, finite. Returns float64 ranks of the same shape.
    """
    values = np.asarray(values, np.float64)
    return stats.rankdata(values.ravel(), method="average").reshape(values.shape)


def rank_correlation(first, second) -> float:
    """Spearman's rank correlation of two equally long 1-D samples, ties averaged: the
    Pearson correlation of their `average_ranks`, in [-1, 1]. NaN when either sample is
    constant (its ranks carry no order) or has fewer than two values."""
    first, second = np.ravel(first), np.ravel(second)
    if first.shape != second.shape:
        raise ValueError(f"samples of {first.size} and {second.size} values")
    if first.size < 2:
        return float("nan")
    ranks = [average_ranks(sample) - (sample.size + 1) / 2 for sample in (first, second)]
    spread = np.sqrt(np.sum(ranks[0] ** 2) * np.sum(ranks[1] ** 2))
    return float(np.sum(ranks[0] * ranks[1]) / spread) if spread > 0 else float("nan")


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for finding the True `labels`, 1-D alike.

    The Mann-Whitney statistic: (sum of the positives' `average_ranks` among all scores
    - n_pos (n_pos + 1) / 2) / (n_pos n_neg), the chance that a positive scores above a
    negative, ties counting half. 0.5 is chance, 1 perfect. NaN without a positive or
    without a negative.
    """
    scores, labels = np.ravel(scores), np.ravel(np.asarray(labels, bool))
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores and {labels.size} labels")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def worst_error_pixels(error, fraction: float = WORST_ERROR_FRACTION) -> np.ndarray:
    """The pixels of a 1-D error sample at or above its (1 - fraction) quantile: bool,
    the shape of `error`; about `fraction` of them (more where values tie at the cut)."""
    error = np.asarray(error, np.float64)
    return error >= np.quantile(error, 1.0 - fraction)


def error_detection(maps, error, mask, lesion=None) -> dict[str, np.ndarray]:
    """How well each map points at the error, per image, over the pixels of `mask`.

    maps, error (|prediction - target|): (N, H, W); mask: bool (N, H, W), the head;
    lesion: bool (N, H, W) or None. Returns {"rank_correlation": (N,), "auc": (N,)}
    float64 (`rank_correlation`, and `roc_auc` for the `worst_error_pixels`), and with
    `lesion` also "lesion_auc", the `roc_auc` of the map for the lesion's head pixels.
    NaN for an image whose mask has under two pixels, whose map or error is constant
    there (correlation), or without lesion (lesion AUC).
    """
    maps, error = _as_pair(maps, error)
    mask = np.broadcast_to(np.asarray(mask, bool), maps.shape)
    names = DETECTION_METRIC_NAMES + (("lesion_auc",) if lesion is not None else ())
    values = {name: np.full(len(maps), np.nan) for name in names}
    for index in range(len(maps)):
        inside = mask[index]
        scores, errors = maps[index][inside], error[index][inside]
        if errors.size < 2:
            continue
        values["rank_correlation"][index] = rank_correlation(scores, errors)
        values["auc"][index] = roc_auc(scores, worst_error_pixels(errors))
        if lesion is not None:
            values["lesion_auc"][index] = roc_auc(scores, np.asarray(lesion[index], bool)[inside])
    return values


def sign_test(values, chance: float) -> dict[str, float]:
    """Do per-slice `values` lie above `chance` (AUC 0.5, correlation 0) more often than a
    coin would put them? {"above", "below": slices on each side (ties and NaN left out),
    "p": the one-sided binomial sign-test p-value (NaN if no slice is off chance)}."""
    values = np.asarray(values, np.float64)
    above, below = int(np.sum(values > chance)), int(np.sum(values < chance))
    if above + below == 0:
        return {"above": above, "below": below, "p": float("nan")}
    p = stats.binomtest(above, above + below, 0.5, alternative="greater").pvalue
    return {"above": above, "below": below, "p": float(p)}


def median_and_quartiles(values) -> dict[str, float]:
    """{"median", "q1", "q3"} over slices, ignoring NaN, and "n", the finite values counted.

    The three are NaN if there is no finite value.
    """
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "n": 0}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "n": int(values.size)}


def mean_and_std(values) -> tuple[float, float]:
    """Mean and standard deviation (population, ddof 0) over slices, ignoring NaN.

    Both are NaN if there is no finite value.
    """
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())
