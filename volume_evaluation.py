"""Score whole-volume translation on paired T1/T2 NIfTI volumes, registered when needed.

    result = evaluate_volumes(generators, Path("dataset/Test/volumes"),
                              Path("dataset/Test/volumes_t2_oblique"), output_dir,
                              registration="rigid", histogram_references=references)
    document["volumes"] = result.document()   # metrics.json
    print(result.table())

The flow is one way, pair by pair:

1. **Pairs** (`pair_volume_paths`): a T1 volume and a T2 volume of one subject, by file
   name. BIDS: `sub-<label>[_ses-<label>][_<other entities>]_T1w.nii[.gz]` in the T1 folder
   with `..._T2w.nii[.gz]` in the T2 folder, matched on subject and session (other
   entities such as `acq-` or `run-` may differ). IXI: `IXI002-Guys-0828-T1.nii.gz` with
   `IXI002-Guys-0828-T2.nii.gz`, matched on everything before `-T1` / `-T2`. Both folders
   are searched recursively and may be one folder; files of the other contrast are
   ignored there. A file whose name follows neither rule, a subject with volumes in only
   one folder, or with two volumes of one contrast, is named in a warning and not scored.
2. **One space: the T1's** (`register_t2_to_t1`). A T2 in the T1's geometry (same shape
   and affine) is used as it is. Otherwise `ants.registration` finds the transform
   between them (`registration`: "rigid", the default, or "affine"; Mattes mutual
   information, so the two contrasts can be registered) and the T2 is resampled onto the
   T1's voxel grid with linear interpolation; T1 voxels outside the T2's field of view
   are left out of every metric. "none" refuses a pair whose geometries differ.
3. **Preprocessing as in training** (`unit_volume`), at the T1 grid's resolution: each of
   the two volumes (the T1, and the T2 in T1 space) gets one 3-D N4 (as the run was
   trained; `n4`) and one normalization (minimum -> 0, 99.5th percentile of its
   foreground -> 1), the steps of `preprocessing.preprocess_volume`. These [0, 1]
   volumes are the targets, and the inputs of the baselines.
4. **Translation** with `translation.translate_volume(..., intensity="unit")`, slice by
   slice along the generator's slice axis, in T1 space: T1->T2 translates the T1 volume
   and is compared with the registered T2; T2->T1 translates the registered T2 (in T1
   space) and is compared with the T1. Preprocessed as the generator was trained: a
   generator trained on volumes gets the [0, 1] volume of step 3 (its N4 already done:
   `translate_volume` normalizes it again, which leaves it as it is up to the foreground
   threshold); one trained on slices gets the volume as read and preprocesses each slice
   on its own (2-D N4 and normalization, slow for a whole volume).
5. **Methods** (`evaluation.METHODS`): `model`; `identity`, the input's [0, 1] volume;
   `histogram_matching`, each slice of it matched to the pooled head histogram of the
   target contrast's training images (`evaluation.match_to_reference`, slice by slice as
   in the slice evaluation; only with `histogram_references`).
6. **Metrics** (`volume_metrics`) on [0, 1], inside the head: the foreground of the two
   [0, 1] volumes together (whole-volume threshold, noise specks opened away, holes
   filled slice by slice), within the T2's field of view. SSIM: the 2-D SSIM maps of
   `metrics.ssim_map` (11x11 Gaussian window) of the translated slices, averaged over
   the windows centred in the head, all slices pooled. PSNR (dB, max 1) and MAE over all
   head voxels. Through-plane MAE (`through_plane_mae`): how much the slice-to-slice
   change of the prediction differs from the target's, along the translated slice axis;
   0 for a prediction whose slices are consistent with each other as the target's are.

Outputs (`write_outputs`): `volume_metrics.csv` (a row per subject, direction and
method), `volumes.png` (a sagittal cut through input, prediction and target, per pair and
direction; a coronal cut for a model that translates sagittal slices) and
`VolumeEvaluation.document()`, a JSON-able dict for metrics.json. Progress, the
registration found and the time each step took are logged at INFO.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

import metrics
from config import REGISTRATIONS
from directions import DIRECTIONS
from errors import DataError
from evaluation import HEAD_PART_FRACTION, METHODS, match_to_reference
from inference import DEFAULT_BATCH_SIZE, Generator
from preprocessing import foreground_mask, unit_volume
from reports import json_safe, write_rows
from scan_io import find_images, nifti_like, read_volume
from translation import preprocessing_of, translate_volume
from volumes import generator_view, is_nifti, view_shape

log = logging.getLogger(__name__)

ANTS_TRANSFORMS = {"rigid": "Rigid", "affine": "Affine"}
# Two levels, on grids of about 8 and 4 mm (the T1 shrunk by whole voxels), smoothed by
# 2 and 1 mm; Mattes mutual information on a 20 % sample, 100 and 50 iterations at most.
# On the demo pair (1 mm T1, 2 mm sagittal T2) it takes about 7 s on 2 cores and finds
# the known head motion to 0.2 mm; ANTs' own schedule, down to full resolution, took
# 55 s for the same result.
REGISTRATION_LEVELS_MM = (8.0, 4.0)
REGISTRATION_SMOOTHING_MM = (2.0, 1.0)
REGISTRATION_ITERATIONS = (100, 50)
# Volumes are in one geometry when their shapes are equal and their affines agree to this.
SAME_GEOMETRY_MM = 1e-3
# T1 voxels whose T2 sample is interpolated from inside the T2's grid.
INSIDE_FIELD_OF_VIEW = 0.5

VOLUME_METRIC_NAMES = ("masked_ssim", "masked_psnr", "masked_mae", "through_plane_mae")
HIGHER_IS_BETTER = {name: name in ("masked_ssim", "masked_psnr") for name in VOLUME_METRIC_NAMES}
DEFINITIONS = {
    "head": "foreground of the T1 and the (registered) T2 in [0, 1], whole-volume threshold, "
    "opened 3x3x3, holes filled slice by slice, inside the T2's field of view",
    "masked_ssim": "2-D SSIM maps (11x11 Gaussian window) of the translated slices, mean over "
    "the windows centred in the head, all slices pooled",
    "masked_psnr": "dB, max 1, MSE over the head voxels",
    "masked_mae": "mean |prediction - target| over the head voxels",
    "through_plane_mae": "mean over pairs of neighbouring head voxels along the translated "
    "slice axis of |(p[k+1] - p[k]) - (t[k+1] - t[k])|; 0: slices as consistent as the target's",
}
CSV_NAME = "volume_metrics.csv"
FIGURE_NAME = "volumes.png"

BIDS_NAME = re.compile(
    r"^(?P<key>sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*"
    r"_(?P<contrast>T1w|T2w)\.nii(?:\.gz)?$"
)
IXI_NAME = re.compile(r"^(?P<key>IXI\d+-[A-Za-z]+-\d+)-(?P<contrast>T1|T2)\.nii(?:\.gz)?$")
CONTRASTS = {"T1w": "t1", "T2w": "t2", "T1": "t1", "T2": "t2"}
UNRECOGNISED = "name follows neither sub-XX[_ses-YY]_T1w/_T2w.nii[.gz] nor IXI...-T1/-T2.nii[.gz]"


# ---------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class VolumePairing:
    """Volume pairs by subject and the files left out.

    pairs: (subject key, T1 path, T2 path), sorted by key; unpaired: (path, why), each
    named in a warning by `find_volume_pairs`.
    """

    pairs: tuple[tuple[str, Path, Path], ...]
    unpaired: tuple[tuple[Path, str], ...]


def volume_key(path: Path) -> tuple[str, str] | None:
    """(subject key, "t1" or "t2") of a file named by the BIDS or the IXI rule, else None.

    `sub-01_ses-2_acq-fast_T2w.nii.gz` -> ("sub-01_ses-2", "t2");
    `IXI002-Guys-0828-T1.nii.gz` -> ("IXI002-Guys-0828", "t1").
    """
    for rule in (BIDS_NAME, IXI_NAME):
        match = rule.match(Path(path).name)
        if match:
            return match["key"], CONTRASTS[match["contrast"]]
    return None


def pair_volume_paths(t1_paths: Iterable[Path], t2_paths: Iterable[Path]) -> VolumePairing:
    """Pair the T1 volumes of `t1_paths` with the T2 volumes of `t2_paths` by subject.

    Pure: the names decide (`volume_key`). In `t1_paths` only T1 names count and in
    `t2_paths` only T2 names, so one folder can hold both; a name of neither rule, a
    subject in only one list, or a subject with two volumes of one contrast is returned
    in `unpaired` with the reason.
    """
    t1_paths, t2_paths = list(t1_paths), list(t2_paths)
    found: dict[str, dict[str, list[Path]]] = {"t1": {}, "t2": {}}
    # A folder given for both contrasts lists its unrecognised files twice; name them once.
    unrecognised = dict.fromkeys(path for path in t1_paths + t2_paths if volume_key(path) is None)
    unpaired = [(path, UNRECOGNISED) for path in unrecognised]
    for contrast, paths in (("t1", t1_paths), ("t2", t2_paths)):
        for path in paths:
            key = volume_key(path)
            if key is not None and key[1] == contrast:
                found[contrast].setdefault(key[0], []).append(path)
    pairs = []
    for key in sorted(found["t1"].keys() | found["t2"].keys()):
        t1, t2 = found["t1"].get(key, []), found["t2"].get(key, [])
        if len(t1) > 1 or len(t2) > 1:
            reason = f"{key} has more than one volume of a contrast"
            unpaired += [(path, reason) for path in t1 + t2]
        elif not t2:
            unpaired.append((t1[0], f"no T2 volume of {key}"))
        elif not t1:
            unpaired.append((t2[0], f"no T1 volume of {key}"))
        else:
            pairs.append((key, t1[0], t2[0]))
    return VolumePairing(tuple(pairs), tuple(unpaired))


def find_volume_pairs(t1_dir: Path, t2_dir: Path) -> VolumePairing:
    """`pair_volume_paths` of the NIfTI files under two folders (searched recursively).

    Each file left out is named in a warning. Raises DataError if a folder is missing or
    holds no NIfTI file, or if no pair is found.
    """
    listed = []
    for folder in (Path(t1_dir), Path(t2_dir)):
        paths = [path for path in find_images(folder, volumes=True) if is_nifti(path)]
        if not paths:
            raise DataError(f"test volume dir {folder} holds no NIfTI volume (.nii, .nii.gz)")
        listed.append(paths)
    pairing = pair_volume_paths(*listed)
    for path, reason in pairing.unpaired:
        log.warning("warning: %s: %s; not evaluated", path, reason)
    if not pairing.pairs:
        raise DataError(
            f"no volume pair: no subject has a T1 volume under {t1_dir} and a T2 volume "
            f"under {t2_dir} (names sub-XX[_ses-YY]_T1w/_T2w.nii[.gz] or IXI...-T1/-T2.nii.gz)"
        )
    return pairing


# ------------------------------------------------------------------------ registration


@dataclass(frozen=True)
class Registered:
    """A T2 volume in its T1's space.

    t2: float32, the T1's shape: the T2's voxels resampled (linear) onto the T1 grid.
    field_of_view: bool, the T1's shape: where the T2 was sampled from inside its grid.
    transform: 4x4, a T1 world point (RAS mm) -> the same anatomy's T2 world point; the
    identity when no registration ran. registration: what ran, "none", "rigid" or "affine".
    """

    t2: np.ndarray
    field_of_view: np.ndarray
    transform: np.ndarray
    registration: str
    seconds: float = 0.0

    def motion(self, at: np.ndarray) -> tuple[float, float]:
        """(rotation in degrees, shift in mm of the world point `at`) of `transform`; the
        rotation is that of the nearest rotation matrix, for an affine transform."""
        left, _, right = np.linalg.svd(self.transform[:3, :3])
        rotation = left @ right
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)))
        shift = self.transform[:3, :3] @ at + self.transform[:3, 3] - at
        return float(angle), float(np.linalg.norm(shift))


def same_geometry(first: nib.Nifti1Image, second: nib.Nifti1Image) -> bool:
    """True when two volumes have one voxel grid: equal shapes and affines (to 0.001 mm)."""
    return first.shape == second.shape and np.allclose(
        first.affine, second.affine, atol=SAME_GEOMETRY_MM
    )


def ants_image(data: np.ndarray, affine: np.ndarray):
    """An ANTs image of `data` placed as `affine` (RAS) says, in ITK's LPS convention."""
    import ants  # imported where used: it takes seconds to load

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    return ants.from_numpy(
        np.ascontiguousarray(data, np.float32),
        origin=tuple(lps @ affine[:3, 3]),
        spacing=tuple(spacing),
        direction=lps @ (affine[:3, :3] / spacing),
    )


def shrink_factors(fixed: nib.Nifti1Image) -> tuple[int, ...]:
    """ANTs' shrink factor of each registration level: whole voxels of the fixed image
    (its finest side) nearest to `REGISTRATION_LEVELS_MM`, at least 1."""
    voxel = float(min(fixed.header.get_zooms()[:3]))
    return tuple(max(1, round(level / voxel)) for level in REGISTRATION_LEVELS_MM)


def _ras_transform(path: str) -> np.ndarray:
    """The 4x4 RAS matrix of an ANTs (ITK) affine transform file, fixed -> moving points."""
    import ants

    transform = ants.read_transform(path)
    parameters = np.asarray(transform.parameters, float)
    centre = np.asarray(transform.fixed_parameters, float)
    matrix = parameters[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = parameters[9:12] + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def register_t2_to_t1(
    t1: nib.Nifti1Image,
    t2: nib.Nifti1Image,
    registration: str = "rigid",
    names: tuple[str, str] = ("T1", "T2"),
) -> Registered:
    """The T2 volume in the T1's space (see `Registered`).

    Same geometry: taken as it is, whatever `registration` says. Otherwise
    `ants.registration` (fixed: the T1, moving: the T2; "rigid" or "affine"; levels
    `REGISTRATION_LEVELS_MM`) and `ants.apply_transforms` with linear interpolation.
    Raises DataError, naming the files (`names`), for "none" with different geometries or
    a registration that fails.
    """
    if registration not in REGISTRATIONS:
        raise ValueError(f"registration must be one of {REGISTRATIONS}, got {registration!r}")
    t2_data = np.asarray(t2.get_fdata(dtype=np.float32))
    if same_geometry(t1, t2):
        return Registered(t2_data, np.ones(t1.shape, bool), np.eye(4), "none")
    if registration == "none":
        raise DataError(
            f"{names[1]} ({_geometry(t2)}) is not on the voxel grid of {names[0]} "
            f"({_geometry(t1)}): use registration rigid or affine"
        )
    import ants

    started = time.perf_counter()
    fixed = ants_image(t1.get_fdata(dtype=np.float32), t1.affine)
    moving = ants_image(t2_data, t2.affine)
    with tempfile.TemporaryDirectory(prefix="mri-gan-registration-") as folder:
        try:
            found = ants.registration(
                fixed=fixed,
                moving=moving,
                type_of_transform=ANTS_TRANSFORMS[registration],
                outprefix=str(Path(folder) / "t2_to_t1_"),
                aff_iterations=REGISTRATION_ITERATIONS,
                aff_shrink_factors=shrink_factors(t1),
                aff_smoothing_sigmas=REGISTRATION_SMOOTHING_MM,
                smoothing_in_mm=True,
            )
        except (RuntimeError, ValueError) as error:
            raise DataError(f"registering {names[1]} to {names[0]} failed: {error}") from error
        transforms = found["fwdtransforms"]
        transform = _ras_transform(transforms[0])
        resampled = ants.apply_transforms(
            fixed=fixed, moving=moving, transformlist=transforms, interpolator="linear"
        )
        inside = ants.apply_transforms(
            fixed=fixed,
            moving=moving.new_image_like(np.ones(moving.shape, np.float32)),
            transformlist=transforms,
            interpolator="linear",
        )
    return Registered(
        resampled.numpy().astype(np.float32),
        inside.numpy() > INSIDE_FIELD_OF_VIEW,
        transform,
        registration,
        time.perf_counter() - started,
    )


def _geometry(image: nib.Nifti1Image) -> str:
    zooms = "x".join(f"{zoom:g}" for zoom in image.header.get_zooms()[:3])
    shape = "x".join(str(side) for side in image.shape)
    return f"{shape} voxels of {zooms} mm, {''.join(nib.aff2axcodes(image.affine))}"


# ---------------------------------------------------------------------- preprocessing


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head of a (slices, rows, columns) volume in [0, 1]: bool, the same shape.

    `preprocessing.foreground_mask` of the whole volume (one threshold: a slice through
    air stays air), opened with a 3x3x3 cube against noise specks, the pieces of at least
    `evaluation.HEAD_PART_FRACTION` of the largest kept, holes filled slice by slice.
    """
    mask = ndimage.binary_opening(foreground_mask(volume), structure=np.ones((3, 3, 3), bool))
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    mask = np.isin(labels, np.flatnonzero(sizes >= HEAD_PART_FRACTION * sizes.max()) + 1)
    return np.stack([ndimage.binary_fill_holes(part) for part in mask])


# --------------------------------------------------------------------------- metrics


def through_plane_mae(prediction, target, mask) -> float:
    """How much the prediction's slice-to-slice change differs from the target's.

    prediction, target: (slices, H, W) in [0, 1], slices along the translated axis; mask:
    bool, the same shape. The mean of |(p[k+1] - p[k]) - (t[k+1] - t[k])| over the voxel
    pairs of neighbouring slices that are both in the mask: 0 when the prediction is the
    target plus any slice-independent change; a prediction that is the target plus c on
    every other slice scores c. NaN for an empty mask.
    """
    prediction = np.asarray(prediction, np.float64)
    target = np.asarray(target, np.float64)
    mask = np.asarray(mask, bool)
    if not prediction.shape == target.shape == mask.shape or prediction.ndim != 3:
        raise ValueError(
            f"prediction {prediction.shape}, target {target.shape} and mask {mask.shape} "
            "must be (slices, H, W) alike"
        )
    pairs = mask[1:] & mask[:-1]
    if not pairs.any():
        return float("nan")
    difference = np.diff(prediction, axis=0) - np.diff(target, axis=0)
    return float(np.abs(difference[pairs]).mean())


def volume_metrics(prediction, target, mask) -> dict[str, float]:
    """`VOLUME_METRIC_NAMES` of one volume (see `DEFINITIONS`).

    prediction, target: (slices, H, W) in [0, 1], slices along the translated axis, H and
    W at least 11; mask: bool, the same shape (the head).
    """
    prediction = np.asarray(prediction, np.float32)
    target = np.asarray(target, np.float32)
    mask = np.asarray(mask, bool)
    width = prediction.shape[-1]
    local = metrics.ssim_map(prediction, target)
    centres = metrics.window_centre_mask(mask)
    flat = [array.reshape(-1, width) for array in (prediction, target, mask)]
    return {
        "masked_ssim": float(local[centres].mean()) if centres.any() else float("nan"),
        "masked_psnr": float(metrics.psnr(*flat)),
        "masked_mae": float(metrics.mae(*flat)),
        "through_plane_mae": through_plane_mae(prediction, target, mask),
    }


# ------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PairScores:
    """One subject's scores.

    values: {(direction, method): {metric: value}}; cuts: {direction: (input, model
    prediction, target)}, 2-D [0, 1] cuts orthogonal to the translated slices, for the
    figure; head_voxels: the voxels scored; seconds: {step: wall time}.
    """

    subject: str
    t1: Path
    t2: Path
    registered: Registered
    head_voxels: int
    values: dict[tuple[str, str], dict[str, float]]
    cuts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    seconds: dict[str, float]
    motion: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class VolumeEvaluation:
    """Every pair's scores, and the volumes left out (path, why)."""

    pairs: tuple[PairScores, ...]
    unpaired: tuple[tuple[Path, str], ...]
    registration: str

    @property
    def methods(self) -> tuple[str, ...]:
        present = {method for pair in self.pairs for _, method in pair.values}
        return tuple(method for method in METHODS if method in present)

    def rows(self) -> list[dict[str, object]]:
        """One row per subject, direction and method: for volume_metrics.csv."""
        rows = []
        for pair in self.pairs:
            for (direction, method), values in pair.values.items():
                rows.append(
                    {
                        "subject": pair.subject,
                        "direction": direction,
                        "method": method,
                        **values,
                        "head_voxels": pair.head_voxels,
                        "registration": pair.registered.registration,
                        "t1": str(pair.t1),
                        "t2": str(pair.t2),
                    }
                )
        return rows

    def statistics(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{direction: {method: {metric: {"mean", "std", "n"}}}} over subjects (std ddof 0)."""
        table: dict = {}
        for direction in DIRECTIONS:
            for method in self.methods:
                values = [pair.values[(direction, method)] for pair in self.pairs]
                table.setdefault(direction, {})[method] = {
                    name: dict(
                        zip(
                            ("mean", "std"),
                            metrics.mean_and_std([value[name] for value in values]),
                            strict=True,
                        ),
                        n=len(values),
                    )
                    for name in VOLUME_METRIC_NAMES
                }
        return table

    def model_beats_histogram_matching(self) -> dict[str, dict[str, bool]]:
        """{direction: {metric: does the model's mean beat histogram matching's?, "all": ..}};
        empty without both methods. As `evaluation.EvaluationResult`'s, over subjects."""
        if not {"model", "histogram_matching"} <= set(self.methods):
            return {}
        statistics = self.statistics()
        verdict: dict[str, dict[str, bool]] = {}
        for direction, methods in statistics.items():
            model, baseline = methods["model"], methods["histogram_matching"]
            verdict[direction] = {
                name: bool(
                    model[name]["mean"] > baseline[name]["mean"]
                    if HIGHER_IS_BETTER[name]
                    else model[name]["mean"] < baseline[name]["mean"]
                )
                for name in VOLUME_METRIC_NAMES
            }
            verdict[direction]["all"] = all(verdict[direction].values())
        return verdict

    def document(self) -> dict:
        """The "volumes" section of metrics.json: definitions, statistics, each pair (its
        registration and scores) and the files left out. JSON-able; NaN becomes None."""
        pairs = []
        for pair in self.pairs:
            angle, shift = pair.motion
            pairs.append(
                {
                    "subject": pair.subject,
                    "t1": str(pair.t1),
                    "t2": str(pair.t2),
                    "registration": pair.registered.registration,
                    "t2_to_t1_rotation_deg": angle,
                    "t2_to_t1_shift_mm": shift,
                    "transform_t1_to_t2_world_ras": pair.registered.transform.tolist(),
                    "head_voxels": pair.head_voxels,
                    "seconds": pair.seconds,
                    "metrics": {
                        direction: {
                            method: pair.values[(direction, method)] for method in self.methods
                        }
                        for direction in DIRECTIONS
                    },
                }
            )
        return json_safe(
            {
                "registration": self.registration,
                "n_pairs": len(self.pairs),
                "definitions": DEFINITIONS,
                "metrics": self.statistics(),
                "model_beats_histogram_matching": self.model_beats_histogram_matching(),
                "pairs": pairs,
                "unpaired": [f"{path}: {reason}" for path, reason in self.unpaired],
            }
        )

    def table(self) -> str:
        """The mean of each volume metric over subjects, one line per direction and method."""
        statistics = self.statistics()
        headers = ["head SSIM", "head PSNR", "head MAE", "through-plane MAE"]
        lines = [
            f"Volumes ({len(self.pairs)} pair{'s' * (len(self.pairs) != 1)}, inside the head)",
            f"{'direction':<9} {'method':<18} " + " ".join(f"{h:>17}" for h in headers),
        ]
        for direction in DIRECTIONS:
            for method in self.methods:
                cells = []
                for name in VOLUME_METRIC_NAMES:
                    value = statistics[direction][method][name]["mean"]
                    cells.append(f"{value:.2f}" if name == "masked_psnr" else f"{value:.4f}")
                lines.append(
                    f"{direction:<9} {method:<18} " + " ".join(f"{cell:>17}" for cell in cells)
                )
        for direction, verdicts in self.model_beats_histogram_matching().items():
            answers = ", ".join(
                f"{name} {'yes' if won else 'no'}"
                for name, won in verdicts.items()
                if name != "all"
            )
            overall = "yes" if verdicts["all"] else "no"
            lines.append(
                f"{direction} volumes: model beats histogram matching: {overall} ({answers})"
            )
        return "\n".join(lines)


def _read(path: Path) -> nib.Nifti1Image:
    try:
        return read_volume(path)
    except ValueError as error:
        raise DataError(f"test volume {path}: {error}") from error


def evaluate_pair(
    generators: Mapping[str, Generator],
    subject: str,
    t1_path: Path,
    t2_path: Path,
    *,
    registration: str = "rigid",
    histogram_references: Mapping[str, np.ndarray] | None = None,
    n4: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PairScores:
    """Score both directions of `generators` and the baselines on one volume pair (see the
    module docstring). n4: N4 for the targets and the baselines' inputs; default as the
    generators were trained. Raises DataError naming the file for a volume it cannot use."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    t1, t2 = _read(t1_path), _read(t2_path)
    registered = register_t2_to_t1(t1, t2, registration, (str(t1_path), str(t2_path)))
    seconds["registration"] = registered.seconds
    centre = t1.affine[:3, :3] @ ((np.array(t1.shape) - 1) / 2) + t1.affine[:3, 3]
    motion = registered.motion(centre)
    if registered.registration == "none":
        log.info("%s: T1 and T2 on one voxel grid: no registration", subject)
    else:
        log.info(
            "%s: T2 (%s) registered to the T1 (%s), %s, in %.1f s: turned %.1f deg, "
            "shifted %.1f mm at the T1's centre",
            subject,
            _geometry(t2),
            _geometry(t1),
            registered.registration,
            registered.seconds,
            *motion,
        )

    n4 = next(iter(generators.values())).n4 if n4 is None else n4
    step = time.perf_counter()
    raw = {"t1": np.asarray(t1.get_fdata(dtype=np.float32)), "t2": registered.t2}
    spacing = t1.header.get_zooms()[:3]
    unit = {contrast: unit_volume(data, spacing, n4) for contrast, data in raw.items()}
    seconds["preprocessing"] = time.perf_counter() - step

    values: dict[tuple[str, str], dict[str, float]] = {}
    cuts = {}
    masks: dict[str | int, np.ndarray] = {}  # the head, in the view along each slice axis
    for direction, (source, target) in DIRECTIONS.items():
        generator = generators[direction]
        axis = generator.volume_axis
        if min(view_shape(t1.shape, t1.affine, axis)[1:]) < metrics.SSIM_FILTER_SIZE:
            raise DataError(
                f"test volume {t1_path}: its {axis} slices are smaller than "
                f"{metrics.SSIM_FILTER_SIZE} px, too small to score"
            )
        step = time.perf_counter()
        predictions = {
            "model": _translate(generator, t1, unit[source], raw[source], axis, n4, batch_size),
            "identity": unit[source],
        }
        seconds[f"{direction}_translation"] = time.perf_counter() - step

        def view(volume: np.ndarray, axis: str | int = axis) -> np.ndarray:
            return generator_view(volume, t1.affine, axis)

        if axis not in masks:
            head = head_mask(view(unit["t1"])) | head_mask(view(unit["t2"]))
            masks[axis] = head & view(registered.field_of_view)
        mask = masks[axis]
        if not mask.any():
            raise DataError(f"{t1_path} and {t2_path} share no head voxel")
        views = {method: view(prediction) for method, prediction in predictions.items()}
        if histogram_references is not None:
            reference = histogram_references[target]
            views["histogram_matching"] = np.stack(
                [match_to_reference(part, reference) for part in views["identity"]]
            )
        for method, prediction in views.items():
            values[(direction, method)] = volume_metrics(prediction, view(unit[target]), mask)
        plane = _cut_plane(axis, t1.affine)
        index = _cut_index(view(unit[source], plane))
        cuts[direction] = tuple(
            view(volume, plane)[index]
            for volume in (unit[source], predictions["model"], unit[target])
        )
    seconds["total"] = time.perf_counter() - started
    log.info(
        "%s: scored in %.1f s (registration %.1f s, preprocessing %.1f s, translation %.1f s "
        "and %.1f s)",
        subject,
        seconds["total"],
        seconds["registration"],
        seconds["preprocessing"],
        seconds["t1_to_t2_translation"],
        seconds["t2_to_t1_translation"],
    )
    head_voxels = int(next(iter(masks.values())).sum())
    return PairScores(
        subject, t1_path, t2_path, registered, head_voxels, values, cuts, seconds, motion
    )


def _translate(
    generator: Generator,
    t1: nib.Nifti1Image,
    unit: np.ndarray,
    raw: np.ndarray,
    axis: str | int,
    n4: bool,
    batch_size: int,
) -> np.ndarray:
    """The model's translation of a volume in T1 space, [0, 1], in the T1's voxel order:
    from its [0, 1] volume (N4 done) for a generator trained on volumes, else from its
    voxels as read, each slice preprocessed on its own."""
    per = preprocessing_of(generator)
    translated = translate_volume(
        generator,
        nifti_like(t1, unit if per == "volume" else raw),
        axis=axis,
        preprocess_per=per,
        n4=False if per == "volume" else n4,
        intensity="unit",
        batch_size=batch_size,
        workers=None,
    )
    return np.asarray(translated.get_fdata(dtype=np.float32))


def _cut_plane(slice_axis: str | int, affine: np.ndarray) -> str:
    """The plane of the figure's cut: sagittal, or coronal when the slices are sagittal."""
    orientation = nib.orientations.io_orientation(affine)
    sagittal_slices = slice_axis == "sagittal" or (
        str(slice_axis) in ("0", "1", "2") and int(orientation[int(slice_axis), 0]) == 0
    )
    return "coronal" if sagittal_slices else "sagittal"


def _cut_index(view: np.ndarray) -> int:
    """The slice of a (slices, H, W) view through the middle of its head."""
    head = np.flatnonzero(foreground_mask(view).any(axis=(1, 2)))
    return int((head.min() + head.max()) // 2) if head.size else len(view) // 2


def evaluate_volumes(
    generators: Mapping[str, Generator],
    t1_dir: Path,
    t2_dir: Path,
    output_dir: Path | None = None,
    *,
    registration: str = "rigid",
    histogram_references: Mapping[str, np.ndarray] | None = None,
    n4: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> VolumeEvaluation:
    """Pair the volumes of two folders by subject and score every pair (module docstring).

    generators: {direction: `inference.Generator`} of both directions; each is used as it
    was trained (its `preprocessed_per`, `slice_axis` and `n4`: build them as
    `inference.load_generator` does, or they are taken as trained on slices, along the
    axial axis). registration: "rigid", "affine" or "none" (`REGISTRATIONS`).
    histogram_references: {"t1", "t2"} from `evaluation.build_histogram_references`, for
    the histogram-matching baseline; None leaves it out. n4: for the targets; default as
    the generators were trained. With `output_dir`, writes volume_metrics.csv and
    volumes.png there (`write_outputs`). Raises DataError for folders without a pair or a
    volume it cannot use.
    """
    if registration not in REGISTRATIONS:
        raise ValueError(f"registration must be one of {REGISTRATIONS}, got {registration!r}")
    pairing = find_volume_pairs(t1_dir, t2_dir)
    log.info(
        "Scoring %d volume pair%s (registration %s)",
        len(pairing.pairs),
        "s" * (len(pairing.pairs) != 1),
        registration,
    )
    scores = tuple(
        evaluate_pair(
            generators,
            subject,
            t1_path,
            t2_path,
            registration=registration,
            histogram_references=histogram_references,
            n4=n4,
            batch_size=batch_size,
        )
        for subject, t1_path, t2_path in pairing.pairs
    )
    result = VolumeEvaluation(scores, pairing.unpaired, registration)
    if output_dir is not None:
        write_outputs(result, Path(output_dir))
    return result


# ---------------------------------------------------------------------------- outputs


def write_outputs(result: VolumeEvaluation, output_dir: Path) -> None:
    """volume_metrics.csv and volumes.png in `output_dir`."""
    write_csv(result, Path(output_dir) / CSV_NAME)
    plot_cuts(result, Path(output_dir) / FIGURE_NAME)


def write_csv(result: VolumeEvaluation, path: Path) -> None:
    """volume_metrics.csv: a row per subject, direction and method (6 significant digits)."""
    columns = [
        "subject",
        "direction",
        "method",
        *VOLUME_METRIC_NAMES,
        "head_voxels",
        "registration",
        "t1",
        "t2",
    ]
    write_rows(result.rows(), columns, path)


def plot_cuts(result: VolumeEvaluation, path: Path) -> None:
    """volumes.png: per pair and direction, a cut orthogonal to the translated slices
    through input, model prediction and target, and |error| (`plotting.plot_examples`)."""
    import plotting  # matplotlib: only when a figure is drawn

    rows = []
    for pair in result.pairs:
        for direction, (source, target) in DIRECTIONS.items():
            scores = pair.values[(direction, "model")]
            rows.append(
                (
                    f"{pair.subject} {direction}\nSSIM {scores['masked_ssim']:.3f}, "
                    f"through-plane {scores['through_plane_mae']:.3f}",
                    (
                        f"{source.upper()} input",
                        f"{direction} prediction",
                        f"{target.upper()} target",
                    ),
                    pair.cuts[direction],
                )
            )
    plotting.plot_examples(rows, path)
