"""Generate the embedded demo dataset: simulated T1w/T2w brain MRI made from real anatomy.

Run from the repository root::

    python -m dataset.make_demo          # rewrites dataset/ exactly as committed
    python -m dataset.make_demo --help

The anatomy is the MNI ICBM152 2009 symmetric template that ships inside the nilearn
wheel (T1 template plus grey- and white-matter probability maps, 1 mm).  Each simulated
subject is that anatomy under a random smooth deformation, imaged with a spin-echo
signal model and BrainWeb's 1.5 T tissue parameters, then corrupted by a smooth
multiplicative bias field and Rician noise.  A few further subjects get simulated
white-matter lesions (BrainWeb's MS-lesion tissue) and form a paired lesion test set
with a mask per slice.  dataset/README.md lists every parameter.

Output layout (under ``output_dir``)::

    Tr1/TrainT1/sub-01_z038.png ...     T1w training slices (subjects 1..n)
    Tr2/TrainT2/sub-11_z030.png ...     T2w training slices (the next n subjects: unpaired)
    Test/T1/sub-21_z031.png ...         held-out subjects, T1w
    Test/T2/sub-21_z031.png ...         the same slices in T2w (paired, same file names)
    Test/volumes/sub-21_T1w.nii.gz      the first held-out subject as 3D volumes
    Test/volumes/sub-21_T2w.nii.gz
    Test/volumes_t2_oblique/sub-21_T2w.nii.gz   a second T2w scan of it: sagittal, 2 mm,
                                        the head moved (registration needed to pair it)
    Test/lesions/T1/sub-41_z052.png ... subjects with lesions, T1w (paired, as Test/)
    Test/lesions/T2/sub-41_z052.png     the same slices in T2w
    Test/lesions/masks/sub-41_z052.png  their lesion masks (8-bit, 255 = lesion)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import inspect
import io
import itertools
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

DATASET_DIR = Path(__file__).resolve().parent

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Tissue:
    """Nominal MR properties of one tissue class: relative proton density, T1 and T2 in ms."""

    name: str
    pd: float
    t1_ms: float
    t2_ms: float


# BrainWeb tissue parameters at 1.5 T, the table used by the BrainWeb MRI simulator
# (Kwan, Evans & Pike 1999, IEEE TMI 18(11):1085-1097; Cocosco et al. 1997,
# NeuroImage 5(4):S425).  "muscle_skin" is BrainWeb's "Muscle/Skin" class.
TISSUES: tuple[Tissue, ...] = (
    Tissue("csf", pd=1.00, t1_ms=2569.0, t2_ms=329.0),
    Tissue("gm", pd=0.86, t1_ms=833.0, t2_ms=83.0),
    Tissue("wm", pd=0.77, t1_ms=500.0, t2_ms=70.0),
    Tissue("fat", pd=1.00, t1_ms=350.0, t2_ms=70.0),
    Tissue("muscle_skin", pd=1.00, t1_ms=900.0, t2_ms=47.0),
)
TISSUE_NAMES: tuple[str, ...] = tuple(tissue.name for tissue in TISSUES)
BRAIN_TISSUES = ("csf", "gm", "wm")
# BrainWeb's "MS lesion" class at 1.5 T, from the same tissue table (class 10 of
# https://brainweb.bic.mni.mcgill.ca/brainweb/tissue_mr_parameters.txt; the lesions of
# its MS brain phantoms).  Only lesion subjects have it, as one more tissue after TISSUES.
LESION = Tissue("lesion", pd=0.76, t1_ms=752.0, t2_ms=237.0)


@dataclass(frozen=True)
class Sequence:
    """A spin-echo protocol: nominal TR and TE in ms, and the tissue that sets the noise level."""

    name: str
    tr_ms: float
    te_ms: float
    noise_reference: str


# Noise is given as a percentage of a reference tissue's signal, as BrainWeb does for its
# simulated database: white matter for T1-weighted, CSF for T2-weighted images.
SEQUENCES: dict[str, Sequence] = {
    "T1w": Sequence("T1w", tr_ms=500.0, te_ms=15.0, noise_reference="wm"),
    "T2w": Sequence("T2w", tr_ms=4000.0, te_ms=100.0, noise_reference="csf"),
}

# The template is skull-stripped, so a simple head is added around the brain: a CSF rim
# on the brain surface, then shells measured from the "head surface" (the brain mask
# closed with a HEAD_CLOSING_MM ball, so the scalp bridges the gaps between lobes as the
# skull base does).  Cortical bone gives no spin-echo signal, so the skull is simply the
# empty gap between the CSF rim and the scalp fat.
CSF_RIM_MM = 2.0
HEAD_CLOSING_MM = 10.0
SCALP_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("fat", 5.0, 8.0),  # mm outside the head surface; 0-5 mm is skull
    ("muscle_skin", 8.0, 10.0),
)

# Per-subject variation.
SUBJECT_PARAMETER_JITTER = 0.07  # one factor per parameter (PD, T1, T2) shared by all tissues
TISSUE_PARAMETER_JITTER = 0.03  # and one per tissue: together at most about +-10 %
SEQUENCE_JITTER = 0.10  # TR and TE, +-10 %
NOISE_PERCENT_RANGE = (1.0, 2.5)  # Gaussian sigma, % of the reference tissue's signal
BIAS_LEVEL_RANGE = (0.2, 0.4)  # BrainWeb "INU" level: 0.2 means a field within 0.9..1.1
MAX_ROTATION_DEG = (3.0, 3.0, 8.0)  # about x, y, z: mostly in-plane head rotation
MAX_SCALE = 0.07  # isotropic head size, +-7 %
MAX_AXIS_SCALE = 0.03  # plus +-3 % per axis
MAX_TRANSLATION_MM = 3.0

# Output geometry: a 256 mm field of view centred so that, at 256 pixels, the 197x233
# template plane is exactly zero-padded (29/30 and 11/12 voxels) into 256x256 at 1 mm.
FOV_MM = 256.0
FOV_CENTRE_MM = (0.5, -17.5)

# Slices: template z where the brain's axial area is >= 40 % of its largest section (lower
# cerebellum to the upper convexity); a simulated slice is dropped if its brain area falls
# below 25 % of that largest section.
SLICE_RANGE_AREA_FRACTION = 0.40
MIN_SLICE_AREA_FRACTION = 0.25
VOLUME_CROP_MARGIN = 6  # pixels kept around the head when cropping the NIfTI volumes
INTENSITY_PERCENTILE = 99.5  # of a subject's head voxels, mapped to 255

# A second T2w scan of the volume subject, as another session would acquire it: sagittal
# slices in PIR voxel order (the axes run toward posterior, inferior and right), voxels
# OBLIQUE_VOXEL_PIXELS axial pixels wide (2 mm at 256 px), its own field of view, and the
# head turned and shifted since the first scans, so that it lines up with the T1w only
# after a registration.  Each voxel averages 2x2x2 points (partial volume).
OBLIQUE_DIR = Path("Test") / "volumes_t2_oblique"
OBLIQUE_AXCODES = ("P", "I", "R")
OBLIQUE_VOXEL_PIXELS = 2
OBLIQUE_FOV_MM = (224.0, 136.0, 180.0)  # along the voxel axes: A-P, S-I, L-R
OBLIQUE_FOV_CENTRE_MM = (0.5, -17.5, 11.0)  # world x, y, z; also the head's turning point
OBLIQUE_ROTATION_DEG = (4.0, -3.0, 6.0)  # the head's turn about x, y, z since the T1w
OBLIQUE_SHIFT_MM = (5.0, -4.0, 6.0)

# Lesions: ellipsoids whose semi-axes are drawn from LESION_SEMI_AXIS_MM, each centred
# at least (its longest semi-axis + LESION_WM_MARGIN_MM) inside the template's white
# matter (WM >= 0.5), so it lies in white matter and is ringed by it.  The deepest
# template white matter is 11 mm from its edge, which bounds the size.
LESION_COUNT_RANGE = (4, 6)  # lesions per subject, inclusive
LESION_SEMI_AXIS_MM = (3.0, 7.0)
LESION_WM_MARGIN_MM = 1.0
# A lesion slice shows at least this much lesion (mask pixels, lesion fraction >= 0.5).
MIN_LESION_AREA_MM2 = 12.0
# The deformation moves a template slice by up to a few mm in z, so the slices searched
# for lesion reach this far beyond each lesion's template extent.
LESION_Z_SEARCH_MARGIN_MM = 8
# Lesion subjects are numbered from here (or after the last other subject, if higher).
FIRST_LESION_SUBJECT = 41

# Independent random streams per subject, so a subject's images depend only on
# (seed, subject number) and not on how many other subjects are generated.
_ANATOMY_STREAM, _SLICE_STREAM = 0, 1
_SEQUENCE_STREAM = {"T1w": 2, "T2w": 3}
_LESION_STREAM = 4
_OBLIQUE_STREAM = 5  # the second T2w scan's TR/TE jitter and noise
_Z_CHUNK = 16  # slices simulated at once, to bound memory for the full volume


def spin_echo_signal(
    pd: float | np.ndarray,
    t1_ms: float | np.ndarray,
    t2_ms: float | np.ndarray,
    tr_ms: float,
    te_ms: float,
) -> float | np.ndarray:
    """Spin-echo magnitude S = PD * (1 - exp(-TR/T1)) * exp(-TE/T2).

    Inputs broadcast (scalars or arrays, times in ms); the result is in PD units.
    """
    return pd * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms)


# ---------------------------------------------------------------------------- template
@dataclass(frozen=True)
class TissueTemplate:
    """The anatomy every subject is made from.

    fractions: (n_tissues, X, Y, Z) float32 in [0, 1], tissue order TISSUE_NAMES, summing
    to <= 1 (the rest is skull/air, which gives no signal).  affine: voxel -> world mm
    (RAS, 1 mm).  slice_range: inclusive z range that slices are drawn from.
    max_brain_area_mm2: the largest axial brain section.
    """

    fractions: np.ndarray
    affine: np.ndarray
    slice_range: tuple[int, int]
    max_brain_area_mm2: float


def find_template_dir() -> Path:
    """Folder holding nilearn's bundled MNI ICBM152 2009 files.

    Found from the installed package without importing it: nilearn's top-level import
    pulls in scikit-learn and more, which the generator does not need.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _shell(distance_mm: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Fraction of a voxel between two distances, with 1 mm linear partial-volume edges."""
    return np.clip(distance_mm - inner_mm + 0.5, 0, 1) - np.clip(distance_mm - outer_mm + 0.5, 0, 1)


def _distance_outside(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) from the surface of a boolean mask: 0 inside, >= spacing / 2 outside."""
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing_mm).astype(np.float32)
    return np.where(mask, np.float32(0), distance - np.float32(spacing_mm / 2))


def load_template(template_dir: Path | None = None) -> TissueTemplate:
    """Read the MNI T1, GM and WM maps and derive CSF and a simple head around the brain.

    template_dir: folder with TEMPLATE_FILES; None means nilearn's bundled copy.
    Brain = (T1 > 0) or (GM + WM > 0.1), the template T1 being skull-stripped, with its
    edge softened by a small Gaussian; CSF = brain - GM - WM.  Outside the brain: a CSF
    rim, a skull gap, then SCALP_LAYERS.  Cached, so tests and the generator share one
    copy (its arrays are read-only).
    """
    folder = Path(template_dir) if template_dir is not None else find_template_dir()
    return _load_template(folder.resolve())


@lru_cache(maxsize=2)
def _load_template(folder: Path) -> TissueTemplate:
    images = {key: nib.load(folder / name) for key, name in TEMPLATE_FILES.items()}
    affine = images["t1"].affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError("expected the 1 mm axis-aligned MNI template")
    # The maps are stored as uint8 0..255 without scaling: 255 means probability 1.
    t1, gm, wm = (
        np.asarray(images[key].dataobj, dtype=np.float32) / 255.0 for key in ("t1", "gm", "wm")
    )
    gm_wm = gm + wm
    overfull = gm_wm > 1.0
    gm[overfull] /= gm_wm[overfull]
    wm[overfull] /= gm_wm[overfull]
    gm_wm = np.minimum(gm_wm, 1.0)

    # Holes in this mask would come out as CSF anyway (the CSF rim below), so no filling.
    brain_mask = (t1 > 0) | (gm_wm > 0.1)
    # The template's mask edge is a hard step; a 1-voxel ramp stands in for partial volume.
    brain = np.clip(ndimage.gaussian_filter(brain_mask.astype(np.float32), 0.6), 0, 1)
    brain = np.maximum(brain, gm_wm)
    csf = np.clip(brain - gm_wm, 0, 1)

    from_brain = _distance_outside(brain_mask, 1.0)
    # The head surface only shapes the scalp, so it is found on a 2 mm grid (8x fewer
    # voxels; the template's sizes are odd, so [::2] keeps both ends): a closing by two
    # distance transforms (dilate by R, erode by R), then upsampled back to 1 mm.
    coarse_dilated = _distance_outside(brain_mask[::2, ::2, ::2], 2.0) <= HEAD_CLOSING_MM
    coarse_head = ndimage.distance_transform_edt(coarse_dilated, sampling=2.0) > HEAD_CLOSING_MM
    coarse_from_head = _distance_outside(coarse_head, 2.0)
    zoom = np.divide(brain_mask.shape, coarse_head.shape)
    from_head = ndimage.zoom(coarse_from_head, zoom, order=1)
    outside = (1.0 - brain) * (from_brain > 0)
    csf = csf + outside * _shell(from_brain, 0.0, CSF_RIM_MM)
    fractions = {"csf": csf, "gm": gm, "wm": wm}
    for name, inner, outer in SCALP_LAYERS:
        fractions[name] = outside * _shell(from_head, inner, outer) * (from_head > 0)
    stacked = np.stack([fractions[name] for name in TISSUE_NAMES]).astype(np.float32)
    stacked.flags.writeable = False

    brain_area = (brain > 0.5).sum(axis=(0, 1))
    usable = np.flatnonzero(brain_area >= SLICE_RANGE_AREA_FRACTION * brain_area.max())
    return TissueTemplate(
        fractions=stacked,
        affine=affine,
        slice_range=(int(usable.min()), int(usable.max())),
        max_brain_area_mm2=float(brain_area.max()),
    )


# ---------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class FourierField:
    """A smooth random field f(x) = sum_k amplitude_k * sin(wavevector_k . x + phase_k).

    wavevectors: (n, 3) in rad/mm; x in world mm.  Cheap to evaluate at exactly the points
    needed, so only the kept slices are ever deformed.
    """

    wavevectors: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        """points_mm: (..., 3) -> field values (...)."""
        phases = _transform_points(self.wavevectors, points_mm) + self.phases
        return (np.sin(phases) * self.amplitudes).sum(axis=-1)


def _transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """matrix (m, 3) applied to points (..., 3) -> (..., m), as `points @ matrix.T`.

    Written out element by element: each product and sum is one exactly rounded IEEE
    operation, so the result does not depend on the CPU's BLAS kernel or thread count
    (which can change the last bits, and so the committed bytes, from machine to machine).
    """
    return (
        points[..., 0:1] * matrix[:, 0]
        + points[..., 1:2] * matrix[:, 1]
        + points[..., 2:3] * matrix[:, 2]
    )


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    directions = rng.normal(size=(n, 3))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _random_waves(
    rng: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random plane waves: wavevectors (n, 3) rad/mm, phases (n,), wavelengths (n,) mm."""
    wavelengths = rng.uniform(*wavelength_mm, size=n_terms)
    wavevectors = _random_directions(rng, n_terms) * (2 * np.pi / wavelengths)[:, None]
    phases = rng.uniform(0, 2 * np.pi, size=n_terms)
    return wavevectors, phases, wavelengths


@dataclass(frozen=True)
class Subject:
    """One simulated subject: geometry, bias field and tissue parameters.

    A scanner-space point p (mm) samples the template at
    ``centre + linear @ (p - centre) + translation + displacement(p)``.
    bias(p) = 1 + bias_level / 2 * bias_shape(p), with bias_shape in [-1, 1].
    pd, t1_ms, t2_ms: (n_tissues,) jittered tissue parameters, order TISSUE_NAMES.
    """

    number: int
    linear: np.ndarray
    translation: np.ndarray
    displacement: tuple[FourierField, FourierField, FourierField]
    bias_shape: FourierField
    bias_level: float
    pd: np.ndarray
    t1_ms: np.ndarray
    t2_ms: np.ndarray

    @property
    def name(self) -> str:
        return f"sub-{self.number:02d}"

    def bias(self, points_mm: np.ndarray) -> np.ndarray:
        """Multiplicative receive-field bias at scanner points (..., 3)."""
        return 1.0 + 0.5 * self.bias_level * self.bias_shape(points_mm)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def draw_subject(seed: int, number: int) -> Subject:
    """Draw subject ``number``'s random anatomy, bias field and tissue parameters.

    Depends only on (seed, number).  The same Subject is used for both contrasts of a
    paired test subject: tissue relaxation is a property of the person, and the bias is
    mostly the receive coil's sensitivity, which does not change between sequences.
    """
    rng = np.random.default_rng([seed, number, _ANATOMY_STREAM])
    angles = np.deg2rad(rng.uniform(-1, 1, size=3) * np.array(MAX_ROTATION_DEG))
    scales = (1 + rng.uniform(-MAX_SCALE, MAX_SCALE)) * (
        1 + rng.uniform(-MAX_AXIS_SCALE, MAX_AXIS_SCALE, size=3)
    )
    linear = _rotation(angles) @ np.diag(scales)
    translation = rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, size=3)
    # Each term's peak strain (amplitude * 2 pi / wavelength) is 3-8 %, so with 4 terms
    # per component the displacement gradient stays well below 1 and the warp cannot
    # fold; peak shifts are a few mm.
    displacement = []
    for _ in range(3):
        wavevectors, phases, wavelengths = _random_waves(rng, 4, (60.0, 160.0))
        strain = rng.uniform(0.03, 0.08, size=4)
        displacement.append(FourierField(wavevectors, phases, strain * wavelengths / (2 * np.pi)))
    # Slowly varying (wavelengths 20-50 cm) and normalised so |bias_shape| <= 1.
    wavevectors, phases, _ = _random_waves(rng, 3, (200.0, 500.0))
    weights = rng.uniform(0.5, 1.0, size=3)
    bias_shape = FourierField(wavevectors, phases, weights / weights.sum())
    bias_level = float(rng.uniform(*BIAS_LEVEL_RANGE))
    n = len(TISSUES)
    subject_factor = 1 + rng.uniform(
        -SUBJECT_PARAMETER_JITTER, SUBJECT_PARAMETER_JITTER, size=(3, 1)
    )
    tissue_factor = 1 + rng.uniform(-TISSUE_PARAMETER_JITTER, TISSUE_PARAMETER_JITTER, size=(3, n))
    nominal = np.array([[t.pd, t.t1_ms, t.t2_ms] for t in TISSUES]).T  # (3, n_tissues)
    pd, t1_ms, t2_ms = nominal * subject_factor * tissue_factor
    return Subject(
        number, linear, translation, tuple(displacement), bias_shape, bias_level, pd, t1_ms, t2_ms
    )


def choose_slices(
    seed: int, number: int, slice_range: tuple[int, int], n_slices: int
) -> tuple[int, ...]:
    """Stratified random axial slices: one z per equal bin of the inclusive slice_range."""
    rng = np.random.default_rng([seed, number, _SLICE_STREAM])
    low, high = slice_range
    n_slices = min(n_slices, high - low + 1)
    edges = np.linspace(low, high + 1, n_slices + 1)
    z = np.floor(edges[:-1] + rng.uniform(0, 1, size=n_slices) * np.diff(edges)).astype(int)
    return tuple(int(v) for v in np.clip(z, low, high))


# ---------------------------------------------------------------------------- lesions
@dataclass(frozen=True)
class Lesion:
    """One simulated lesion: an ellipsoid in template voxels (1 mm).

    centre: (3,) template voxel; semi_axes_mm: (3,); rotation: (3, 3), the ellipsoid's
    axes as columns.
    """

    centre: np.ndarray
    semi_axes_mm: np.ndarray
    rotation: np.ndarray


def with_lesion_tissue(subject: Subject) -> Subject:
    """The subject with LESION appended as one more tissue (after TISSUE_NAMES).

    Its PD, T1 and T2 are LESION's times the subject's own white-matter jitter, so the
    lesion-to-white-matter contrast is BrainWeb's in every subject: jittered apart, the
    two T1 could meet and the lesion vanish on T1w.
    """
    wm = TISSUE_NAMES.index("wm")
    nominal_wm = TISSUES[wm]
    return replace(
        subject,
        pd=np.append(subject.pd, LESION.pd * subject.pd[wm] / nominal_wm.pd),
        t1_ms=np.append(subject.t1_ms, LESION.t1_ms * subject.t1_ms[wm] / nominal_wm.t1_ms),
        t2_ms=np.append(subject.t2_ms, LESION.t2_ms * subject.t2_ms[wm] / nominal_wm.t2_ms),
    )


def _white_matter_depth(template: TissueTemplate) -> np.ndarray:
    """Distance (mm) of each template voxel inside the white matter (WM >= 0.5) from its edge."""
    wm = template.fractions[TISSUE_NAMES.index("wm")]
    return ndimage.distance_transform_edt(wm >= 0.5)


def draw_lesions(template: TissueTemplate, seed: int, number: int) -> tuple[Lesion, ...]:
    """Subject ``number``'s lesions, from its own random stream (seed, number, lesion).

    LESION_COUNT_RANGE ellipsoids, semi-axes from LESION_SEMI_AXIS_MM, randomly turned,
    each centred on a random template voxel of the slice range that lies at least its
    longest semi-axis + LESION_WM_MARGIN_MM deep in the white matter.
    """
    rng = np.random.default_rng([seed, number, _LESION_STREAM])
    depth = _white_matter_depth(template)
    low, high = template.slice_range
    depth[:, :, :low] = 0
    depth[:, :, high + 1 :] = 0
    lesions = []
    for _ in range(int(rng.integers(LESION_COUNT_RANGE[0], LESION_COUNT_RANGE[1] + 1))):
        semi_axes = rng.uniform(*LESION_SEMI_AXIS_MM, size=3)
        rotation = _rotation(rng.uniform(-np.pi, np.pi, size=3))
        candidates = np.flatnonzero(depth >= semi_axes.max() + LESION_WM_MARGIN_MM)
        centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], depth.shape))
        lesions.append(Lesion(centre.astype(float), semi_axes, rotation))
    return tuple(lesions)


def lesion_map(template: TissueTemplate, lesions: SequenceABC[Lesion]) -> np.ndarray:
    """The lesion fraction of each template voxel: float32, the shape of one tissue map.

    Inside an ellipsoid it replaces the white matter (lesion = shape * WM, so it never
    exceeds the WM there); the ellipsoid's surface has a 1 mm linear partial-volume ramp.
    """
    wm = template.fractions[TISSUE_NAMES.index("wm")]
    shape = np.zeros(wm.shape, dtype=np.float32)
    for lesion in lesions:
        reach = int(np.ceil(lesion.semi_axes_mm.max())) + 2
        box = tuple(
            slice(max(0, int(c) - reach), min(n, int(c) + reach + 1))
            for c, n in zip(lesion.centre, wm.shape, strict=True)
        )
        grid = np.stack(np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij"), -1)
        # In the ellipsoid's own axes: local = rotation.T @ (x - centre).
        local = _transform_points(lesion.rotation.T, grid - lesion.centre)
        radius = np.sqrt((np.square(local / lesion.semi_axes_mm)).sum(axis=-1))
        # Distance to the surface along the ray from the centre, (r - 1) * |x| / r.
        length = np.sqrt(np.square(local).sum(axis=-1))
        along = np.where(radius > 1e-6, length / np.maximum(radius, 1e-6), 1.0)
        inside = np.clip(0.5 - (radius - 1.0) * along, 0.0, 1.0).astype(np.float32)
        shape[box] = np.maximum(shape[box], inside)
    return shape * wm


def _lesion_search_slices(
    template: TissueTemplate, lesions: SequenceABC[Lesion]
) -> tuple[int, ...]:
    """Template z that may show a lesion after the deformation, within the slice range."""
    low, high = template.slice_range
    reach = LESION_Z_SEARCH_MARGIN_MM
    z: set[int] = set()
    for lesion in lesions:
        centre, extent = lesion.centre[2], lesion.semi_axes_mm.max()
        z.update(range(int(centre - extent) - reach, int(centre + extent) + reach + 1))
    return tuple(sorted(v for v in z if low <= v <= high))


# ---------------------------------------------------------------------------- simulation
def output_grid(
    size: int, z_indices: SequenceABC[int], template: TissueTemplate
) -> tuple[np.ndarray, np.ndarray]:
    """Scanner-space grid of the output: (size, size, nz, 3) world mm, and its 4x4 affine.

    In-plane axes are template x (left -> right) and y (posterior -> anterior) over a
    FOV_MM field of view; z keeps the template's 1 mm slices, so z index k is template z k.
    """
    spacing = FOV_MM / size
    offsets = (np.arange(size) - (size - 1) / 2) * spacing
    x = FOV_CENTRE_MM[0] + offsets
    y = FOV_CENTRE_MM[1] + offsets
    z = template.affine[2, 3] + template.affine[2, 2] * np.asarray(z_indices, dtype=float)
    points = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1)
    affine = np.diag([spacing, spacing, template.affine[2, 2], 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    return points, affine


def sample_subject(
    template: TissueTemplate,
    subject: Subject,
    points: np.ndarray,
    maps: SequenceABC[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The subject's anatomy at scanner points (n, 3) mm: each template-space map of `maps`
    deformed into the subject and sampled there (trilinear), (len(maps), n) float32, and
    the subject's bias field there, (n,)."""
    shape = template.fractions.shape[1:]
    centre = template.affine[:3, :3] @ ((np.array(shape) - 1) / 2) + template.affine[:3, 3]
    to_voxel = np.linalg.inv(template.affine)
    warped = centre + _transform_points(subject.linear, points - centre) + subject.translation
    warped += np.stack([field(points) for field in subject.displacement], axis=-1)
    voxels = (_transform_points(to_voxel[:3, :3], warped) + to_voxel[:3, 3]).T
    sampled = np.empty((len(maps), len(points)), dtype=np.float32)
    for index, tissue_map in enumerate(maps):
        sampled[index] = ndimage.map_coordinates(
            tissue_map,
            voxels,
            order=1,
            mode="constant",
            cval=0.0,
            output=np.float32,
        )
    return sampled, subject.bias(points)


def simulate_tissue_fractions(
    template: TissueTemplate,
    subject: Subject,
    z_indices: SequenceABC[int],
    size: int,
    lesions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deform the template into ``subject`` on the output grid, only at slices z_indices.

    Returns fractions (n_tissues, size, size, nz) float32 and the subject's bias field
    (size, size, nz) float32, both in volume orientation [x, y, z].  With a template-space
    `lesions` map (`lesion_map`), the fractions gain a last row, the lesion, taken out of
    the white matter.
    """
    nz = len(z_indices)
    maps = list(template.fractions) + ([] if lesions is None else [lesions])
    fractions = np.empty((len(maps), size, size, nz), dtype=np.float32)
    bias = np.empty((size, size, nz), dtype=np.float32)
    for start in range(0, nz, _Z_CHUNK):
        chunk = list(z_indices[start : start + _Z_CHUNK])
        points, _ = output_grid(size, chunk, template)
        sampled, chunk_bias = sample_subject(template, subject, points.reshape(-1, 3), maps)
        out_shape = (size, size, len(chunk))
        fractions[:, :, :, start : start + len(chunk)] = sampled.reshape(len(maps), *out_shape)
        bias[:, :, start : start + len(chunk)] = chunk_bias.reshape(out_shape)
    if lesions is not None:
        # Interpolation keeps lesion <= WM; the clip only absorbs rounding.
        wm = fractions[TISSUE_NAMES.index("wm")]
        np.maximum(wm - fractions[-1], 0.0, out=wm)
    return fractions, bias


def simulate_signal(
    fractions: np.ndarray, subject: Subject, tr_ms: float, te_ms: float
) -> np.ndarray:
    """Noise- and bias-free image: the tissue-fraction-weighted spin-echo signal.

    fractions: (n_tissues, ...) -> signal (...) float32 in PD units.
    """
    per_tissue = spin_echo_signal(subject.pd, subject.t1_ms, subject.t2_ms, tr_ms, te_ms)
    signal = np.zeros(fractions.shape[1:], dtype=np.float32)
    for fraction, tissue_signal in zip(fractions, per_tissue.astype(np.float32), strict=True):
        signal += fraction * tissue_signal
    return signal


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std sigma per channel."""
    real = signal + rng.normal(0.0, sigma, size=signal.shape)
    imaginary = rng.normal(0.0, sigma, size=signal.shape)
    return np.hypot(real, imaginary).astype(np.float32)


@dataclass(frozen=True)
class Acquisition:
    """What one simulated scan used: subject, contrast, TR/TE (ms), noise (%), bias level."""

    subject: str
    contrast: str
    tr_ms: float
    te_ms: float
    noise_percent: float
    bias_level: float


def acquire(
    subject: Subject,
    contrast: str,
    fractions: np.ndarray,
    bias: np.ndarray,
    seed: int,
    noise_free: bool = False,
    stream: int | None = None,
) -> tuple[np.ndarray, Acquisition]:
    """Scan the subject with jittered TR/TE: bias-weighted signal plus Rician noise
    (none if `noise_free`: the same scan's noiseless magnitude, what a perfect
    translation of the other contrast would give).  `stream`: the random stream of TR,
    TE and noise; default the contrast's own (another for a second scan).

    Returns the magnitude image (same shape as ``bias``, float32) and its parameters.
    """
    sequence = SEQUENCES[contrast]
    stream = _SEQUENCE_STREAM[contrast] if stream is None else stream
    rng = np.random.default_rng([seed, subject.number, stream])
    tr_ms = sequence.tr_ms * (1 + float(rng.uniform(-SEQUENCE_JITTER, SEQUENCE_JITTER)))
    te_ms = sequence.te_ms * (1 + float(rng.uniform(-SEQUENCE_JITTER, SEQUENCE_JITTER)))
    noise_percent = float(rng.uniform(*NOISE_PERCENT_RANGE))
    reference = TISSUE_NAMES.index(sequence.noise_reference)
    reference_signal = float(
        spin_echo_signal(
            subject.pd[reference], subject.t1_ms[reference], subject.t2_ms[reference], tr_ms, te_ms
        )
    )
    signal = simulate_signal(fractions, subject, tr_ms, te_ms) * bias
    sigma = 0.0 if noise_free else noise_percent / 100 * reference_signal
    magnitude = add_rician_noise(signal, sigma, rng)
    record = Acquisition(subject.name, contrast, tr_ms, te_ms, noise_percent, subject.bias_level)
    return magnitude, record


def to_uint8(image: np.ndarray, head_mask: np.ndarray) -> np.ndarray:
    """Scale a subject's images so the INTENSITY_PERCENTILE of its head voxels maps to 255.

    One scale for all of a subject's slices keeps intensities consistent across them.
    """
    top = float(np.percentile(image[head_mask], INTENSITY_PERCENTILE))
    return np.clip(np.rint(image * (255.0 / top)), 0, 255).astype(np.uint8)


def volume_slice_to_image(volume_slice: np.ndarray) -> np.ndarray:
    """[x, y] slice -> picture rows (anterior at top) and columns (subject's left at left)."""
    return np.ascontiguousarray(np.rot90(volume_slice))


def oblique_grid(size: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """The second T2w scan's voxel grid: its shape and its 4x4 affine (voxel -> world mm).

    OBLIQUE_AXCODES voxel order, voxels OBLIQUE_VOXEL_PIXELS axial pixels wide, the
    OBLIQUE_FOV_MM field of view centred on OBLIQUE_FOV_CENTRE_MM.
    """
    spacing = OBLIQUE_VOXEL_PIXELS * FOV_MM / size
    shape = tuple(max(1, round(fov / spacing)) for fov in OBLIQUE_FOV_MM)
    axes = nib.orientations.axcodes2ornt(OBLIQUE_AXCODES)
    affine = np.eye(4)
    for voxel_axis, (world_axis, sign) in enumerate(axes.astype(int)):
        affine[:3, voxel_axis] = 0.0
        affine[world_axis, voxel_axis] = sign * spacing
    first_voxel = -(np.array(shape) - 1) / 2  # voxel index of the first voxel from the centre
    affine[:3, 3] = np.array(OBLIQUE_FOV_CENTRE_MM) + _transform_points(affine[:3, :3], first_voxel)
    return shape, affine


def head_motion(points_mm: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Where points (..., 3) of the head at the first scans are at the second T2w scan.

    A rotation by OBLIQUE_ROTATION_DEG about OBLIQUE_FOV_CENTRE_MM, then a shift by
    OBLIQUE_SHIFT_MM; `inverse` maps back.  Registering the second T2w to the T1w should
    recover it.
    """
    centre = np.array(OBLIQUE_FOV_CENTRE_MM)
    rotation = _rotation(np.deg2rad(OBLIQUE_ROTATION_DEG))
    shift = np.array(OBLIQUE_SHIFT_MM)
    if inverse:
        return _transform_points(rotation.T, points_mm - centre - shift) + centre
    return _transform_points(rotation, points_mm - centre) + centre + shift


def scan_oblique_t2(
    template: TissueTemplate, subject: Subject, size: int, seed: int, noise_free: bool = False
) -> tuple[np.ndarray, np.ndarray, Acquisition]:
    """The subject's second T2w scan (`oblique_grid`, head moved by `head_motion`).

    Each voxel is the mean of 2x2x2 points a quarter voxel from its centre; the bias
    field moves with the head; TR, TE and noise come from their own stream.  Returns the
    uint8 volume (in the grid's voxel order), its affine and the scan record.
    """
    shape, affine = oblique_grid(size)
    quarter = abs(affine[:3, :3]).max() / 4
    offsets = np.array(list(itertools.product((-quarter, quarter), repeat=3)))  # (8, 3)
    fractions = np.empty((len(TISSUES), *shape), dtype=np.float32)
    bias = np.empty(shape, dtype=np.float32)
    for start in range(0, shape[2], _Z_CHUNK):
        chunk = np.arange(start, min(start + _Z_CHUNK, shape[2]))
        voxels = np.stack(np.meshgrid(*map(np.arange, shape[:2]), chunk, indexing="ij"), -1)
        centres = _transform_points(affine[:3, :3], voxels.astype(float)) + affine[:3, 3]
        points = head_motion(centres[..., None, :] + offsets, inverse=True).reshape(-1, 3)
        sampled, _ = sample_subject(template, subject, points, template.fractions)
        chunk_shape = (*shape[:2], len(chunk))
        fractions[..., chunk] = sampled.reshape(len(TISSUES), *chunk_shape, 8).mean(axis=-1)
        at_centres = head_motion(centres, inverse=True).reshape(-1, 3)
        bias[..., chunk] = subject.bias(at_centres).reshape(chunk_shape)
    magnitude, record = acquire(
        subject, "T2w", fractions, bias, seed, noise_free, stream=_OBLIQUE_STREAM
    )
    return to_uint8(magnitude, fractions.sum(axis=0) >= 0.5), affine, record


# ---------------------------------------------------------------------------- writing
def write_png(path: Path, image: np.ndarray) -> None:
    """8-bit grayscale PNG (Pillow writes no timestamp, so the bytes are reproducible)."""
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, optimize=True)


def write_nifti_gz(path: Path, volume: np.ndarray, affine: np.ndarray, description: str) -> None:
    """Write a .nii.gz whose bytes depend only on the data (gzip mtime 0, no file name)."""
    image = nib.Nifti1Image(volume, affine)
    image.header["descrip"] = description.encode()[:79]
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as stream:
        stream.write(image.to_bytes())
    path.write_bytes(buffer.getvalue())


@dataclass(frozen=True)
class SliceRecord:
    """One written PNG: path, subject name, contrast ("T1w"/"T2w", or "mask" for a lesion
    mask), split ("train", "test" or "lesion"), template z."""

    path: Path
    subject: str
    contrast: str
    split: str
    z: int


@dataclass(frozen=True)
class DemoManifest:
    """Everything make_demo wrote: slices, volumes and each scan's parameters."""

    slices: tuple[SliceRecord, ...]
    volumes: tuple[Path, ...]
    acquisitions: tuple[Acquisition, ...]


def _folders(output_dir: Path) -> dict[tuple[str, str], Path]:
    return {
        ("train", "T1w"): output_dir / "Tr1" / "TrainT1",
        ("train", "T2w"): output_dir / "Tr2" / "TrainT2",
        ("test", "T1w"): output_dir / "Test" / "T1",
        ("test", "T2w"): output_dir / "Test" / "T2",
        ("lesion", "T1w"): output_dir / "Test" / "lesions" / "T1",
        ("lesion", "T2w"): output_dir / "Test" / "lesions" / "T2",
        ("lesion", "mask"): output_dir / "Test" / "lesions" / "masks",
    }


def _clear_previous_output(output_dir: Path) -> None:
    # Only files this generator names, so a rerun with fewer subjects leaves no strays
    # and nothing else in the folder is touched.
    for folder in _folders(output_dir).values():
        for old in folder.glob("sub-*_z*.png"):
            old.unlink()
    for folder in (output_dir / "Test" / "volumes", *_folders(output_dir).values()):
        for old in folder.glob("sub-*_T[12]w.nii.gz"):
            old.unlink()
    for old in (output_dir / OBLIQUE_DIR).glob("sub-*_T2w.nii.gz"):
        old.unlink()


def _scan_subject(
    template: TissueTemplate,
    subject: Subject,
    z_simulated: SequenceABC[int],
    size: int,
    contrasts: SequenceABC[str],
    seed: int,
    noise_free: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[Acquisition]]:
    """Scan one subject at slices z_simulated.

    Returns uint8 volumes (size, size, nz) per contrast, the head mask (size, size, nz),
    which slices are not nearly empty (nz,), and the scan records.
    """
    fractions, bias = simulate_tissue_fractions(template, subject, z_simulated, size)
    head_mask = fractions.sum(axis=0) >= 0.5
    non_empty = _non_empty_slices(template, fractions, size)
    volumes, records = _acquire_contrasts(
        subject, contrasts, fractions, bias, head_mask, seed, noise_free
    )
    return volumes, head_mask, non_empty, records


def _non_empty_slices(template: TissueTemplate, fractions: np.ndarray, size: int) -> np.ndarray:
    """(nz,) bool: slices whose brain (lesions included) is not nearly empty."""
    rows = [TISSUE_NAMES.index(name) for name in BRAIN_TISSUES]
    rows += list(range(len(TISSUES), len(fractions)))  # a lesion row is brain too
    brain = fractions[rows].sum(axis=0)
    brain_area = (brain >= 0.5).sum(axis=(0, 1)) * (FOV_MM / size) ** 2
    return brain_area >= MIN_SLICE_AREA_FRACTION * template.max_brain_area_mm2


def _acquire_contrasts(
    subject: Subject,
    contrasts: SequenceABC[str],
    fractions: np.ndarray,
    bias: np.ndarray,
    head_mask: np.ndarray,
    seed: int,
    noise_free: bool,
) -> tuple[dict[str, np.ndarray], list[Acquisition]]:
    """Each contrast's scan as uint8 volumes (size, size, nz), and the scan records."""
    volumes, records = {}, []
    for contrast in contrasts:
        magnitude, record = acquire(subject, contrast, fractions, bias, seed, noise_free)
        volumes[contrast] = to_uint8(magnitude, head_mask)
        records.append(record)
    return volumes, records


def _scan_lesion_subject(
    template: TissueTemplate,
    subject: Subject,
    n_slices: int,
    size: int,
    contrasts: SequenceABC[str],
    seed: int,
    noise_free: bool = False,
) -> tuple[tuple[int, ...], dict[str, np.ndarray], np.ndarray, list[Acquisition]]:
    """Give the subject its lesions (`draw_lesions`) and scan n_slices slices that show them.

    The slices are chosen from those with at least MIN_LESION_AREA_MM2 of lesion (after
    the deformation), evenly spread over them.  Returns their template z, uint8 volumes
    (size, size, nz) per contrast, the lesion masks (size, size, nz) bool (lesion
    fraction >= 0.5) and the scan records.
    """
    lesions = draw_lesions(template, seed, subject.number)
    subject = with_lesion_tissue(subject)
    z_searched = _lesion_search_slices(template, lesions)
    fractions, bias = simulate_tissue_fractions(
        template, subject, z_searched, size, lesion_map(template, lesions)
    )
    masks = fractions[-1] >= 0.5
    lesion_area = masks.sum(axis=(0, 1)) * (FOV_MM / size) ** 2
    usable = np.flatnonzero(
        (lesion_area >= MIN_LESION_AREA_MM2) & _non_empty_slices(template, fractions, size)
    )
    if usable.size == 0:  # possible only at a few pixels per lesion
        return (), {}, masks[..., :0], []
    count = min(n_slices, usable.size)
    chosen = usable[np.unique(np.rint(np.linspace(0, usable.size - 1, count)).astype(int))]
    fractions, bias, masks = fractions[..., chosen], bias[..., chosen], masks[..., chosen]
    head_mask = fractions.sum(axis=0) >= 0.5
    volumes, records = _acquire_contrasts(
        subject, contrasts, fractions, bias, head_mask, seed, noise_free
    )
    return tuple(z_searched[k] for k in chosen), volumes, masks, records


def _head_box(head_mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """In-plane bounding box of a (x, y, z) head mask, grown by margin pixels."""
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(head_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(
            slice(max(0, hits.min() - margin), min(head_mask.shape[axis], hits.max() + margin + 1))
        )
    return box[0], box[1]


def make_demo(
    output_dir: Path | str = DATASET_DIR,
    seed: int = 0,
    n_train_subjects: int = 10,
    slices_per_subject: int = 11,
    n_test_subjects: int = 3,
    test_slices_per_subject: int = 15,
    size: int = 256,
    write_volume: bool = True,
    template_dir: Path | None = None,
    first_test_subject: int | None = None,
    noise_free: bool = False,
    n_lesion_subjects: int = 3,
    lesion_slices_per_subject: int = 8,
    first_lesion_subject: int | None = None,
    train_volumes: bool = False,
) -> DemoManifest:
    """Generate the demo dataset into output_dir and return what was written.

    Subjects 1..n_train_subjects give T1w training slices, the next n_train_subjects give
    T2w training slices (disjoint: unpaired), and the next n_test_subjects give paired
    T1w/T2w test slices; the first test subject is also written as NIfTI volumes (if
    write_volume), with a second T2w scan of it in another geometry (`scan_oblique_t2`,
    under OBLIQUE_DIR).  `first_test_subject` numbers the test subjects from there instead
    (e.g. 31 with no training subjects: a validation set of subjects in neither the
    training nor the test set).  Then n_lesion_subjects subjects with white-matter
    lesions give paired slices that show lesion, and a lesion mask each, under
    Test/lesions/; they are numbered from `first_lesion_subject`, by default
    FIRST_LESION_SUBJECT or the number after the last other subject if that is higher.
    `noise_free` leaves out the noise, nothing else: the same slices, TR/TE and bias.
    `train_volumes` writes each training subject as one NIfTI volume of the whole slab
    (`sub-XX_T1w.nii.gz` in the training folder, cropped to the head as the test volume
    is) instead of its PNG slices: training data with neighbouring slices, for
    `main.py --context_slices`.
    Slices are size x size 8-bit PNGs over a 256 mm field of view.  The defaults
    reproduce the committed dataset byte for byte.
    """
    if size < 16 or min(n_train_subjects, n_test_subjects, n_lesion_subjects) < 0:
        raise ValueError("need size >= 16 and non-negative subject counts")
    if any(first is not None and first < 1 for first in (first_test_subject, first_lesion_subject)):
        raise ValueError("need first_test_subject and first_lesion_subject >= 1")
    if min(slices_per_subject, test_slices_per_subject, lesion_slices_per_subject) < 1:
        raise ValueError("need at least one slice per subject")

    t1_subjects = range(1, n_train_subjects + 1)
    t2_subjects = range(n_train_subjects + 1, 2 * n_train_subjects + 1)
    first_test = 2 * n_train_subjects + 1 if first_test_subject is None else first_test_subject
    test_subjects = range(first_test, first_test + n_test_subjects)
    others = {*t1_subjects, *t2_subjects, *test_subjects}
    if first_lesion_subject is None:
        first_lesion_subject = max(FIRST_LESION_SUBJECT, max(others, default=0) + 1)
    lesion_subjects = range(first_lesion_subject, first_lesion_subject + n_lesion_subjects)
    if others & set(lesion_subjects):
        # The same anatomy with and without lesions would leak the answer.
        raise ValueError("lesion subjects must be numbered apart from the other subjects")
    plan = [(number, "train", ("T1w",), slices_per_subject) for number in t1_subjects]
    plan += [(number, "train", ("T2w",), slices_per_subject) for number in t2_subjects]
    plan += [(number, "test", ("T1w", "T2w"), test_slices_per_subject) for number in test_subjects]
    plan += [
        (number, "lesion", ("T1w", "T2w"), lesion_slices_per_subject) for number in lesion_subjects
    ]

    output_dir = Path(output_dir)
    template = load_template(template_dir)
    folders = _folders(output_dir)
    for (split, _), folder in folders.items():
        if split != "lesion" or n_lesion_subjects:
            folder.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(output_dir)

    slices: list[SliceRecord] = []
    volumes: list[Path] = []
    acquisitions: list[Acquisition] = []
    for number, split, contrasts, n_slices in plan:
        subject = draw_subject(seed, number)
        if split == "lesion":
            z_kept, images, masks, records = _scan_lesion_subject(
                template, subject, n_slices, size, contrasts, seed, noise_free
            )
            acquisitions += records
            images = {**images, "mask": masks.astype(np.uint8) * np.uint8(255)}
            for k, z in enumerate(z_kept):
                for contrast, volume in images.items():
                    path = folders[(split, contrast)] / f"{subject.name}_z{z:03d}.png"
                    write_png(path, volume_slice_to_image(volume[:, :, k]))
                    slices.append(SliceRecord(path, subject.name, contrast, split, z))
            continue
        z_kept = choose_slices(seed, number, template.slice_range, n_slices)
        as_volume = write_volume and split == "test" and number == test_subjects[0]
        if train_volumes and split == "train":
            # The same subject and scan as its slices, over the whole slab, as one volume.
            z_kept = ()
            as_volume = True
        # The volume subject is simulated over the whole slab the slices come from.
        low, high = template.slice_range
        z_simulated = tuple(range(low, high + 1)) if as_volume else z_kept
        images, head_mask, non_empty, records = _scan_subject(
            template, subject, z_simulated, size, contrasts, seed, noise_free
        )
        acquisitions += records
        for z in z_kept:
            k = z_simulated.index(z)
            if not non_empty[k]:
                continue
            for contrast in contrasts:
                path = folders[(split, contrast)] / f"{subject.name}_z{z:03d}.png"
                write_png(path, volume_slice_to_image(images[contrast][:, :, k]))
                slices.append(SliceRecord(path, subject.name, contrast, split, z))
        if as_volume:
            # Cropped in-plane to the head to keep the files small; the affine says where.
            box_x, box_y = _head_box(head_mask, VOLUME_CROP_MARGIN)
            _, affine = output_grid(size, z_simulated, template)
            affine[:3, 3] += affine[:3, :3] @ [box_x.start, box_y.start, 0]
            volume_dir = output_dir / "Test" / "volumes"
            volume_dir.mkdir(parents=True, exist_ok=True)
            for contrast in contrasts:
                folder = folders[(split, contrast)] if split == "train" else volume_dir
                path = folder / f"{subject.name}_{contrast}.nii.gz"
                description = f"mri-gan simulated {contrast} from MNI ICBM152 2009, not a patient"
                write_nifti_gz(path, images[contrast][box_x, box_y], affine, description)
                volumes.append(path)
            if split == "train":
                continue
            volume, affine, record = scan_oblique_t2(template, subject, size, seed, noise_free)
            acquisitions.append(replace(record, contrast="T2w (second scan)"))
            path = output_dir / OBLIQUE_DIR / f"{subject.name}_T2w.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            description = "mri-gan simulated T2w, sagittal 2nd scan, head moved, not a patient"
            write_nifti_gz(path, volume, affine, description)
            volumes.append(path)
    return DemoManifest(tuple(slices), tuple(volumes), tuple(acquisitions))


# ---------------------------------------------------------------------------- command line
def parse_args(argv: SequenceABC[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults come from make_demo and regenerate the committed data."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(make_demo).parameters.items()
    }
    parser = argparse.ArgumentParser(
        prog="python -m dataset.make_demo",
        description=(
            "Simulate the demo T1w/T2w brain MRI dataset from nilearn's bundled MNI ICBM152 "
            "2009 template (spin-echo signal, BrainWeb 1.5 T tissue parameters), and a paired "
            "test set of subjects with white-matter lesions and their masks. With the "
            "defaults it rewrites dataset/ byte for byte as committed. Files it made before "
            "(sub-*_z*.png, sub-*_T?w.nii.gz) in the output folders are replaced."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    options = {
        "output_dir": (Path, "where Tr1/, Tr2/ and Test/ (with Test/lesions/) are written"),
        "seed": (int, "random seed; subject n uses the stream (seed, n)"),
        "n_train_subjects": (int, "training subjects per contrast (T1w and T2w are disjoint)"),
        "slices_per_subject": (int, "axial slices per training subject"),
        "n_test_subjects": (int, "held-out subjects with paired T1w/T2w slices"),
        "test_slices_per_subject": (int, "axial slices per test subject"),
        "size": (int, "image width and height in pixels over a 256 mm field of view"),
        "template_dir": (Path, "folder with the MNI ICBM152 files; None: nilearn's bundled copy"),
        "first_test_subject": (
            int,
            "number of the first test subject; None: the one after the training subjects",
        ),
        "n_lesion_subjects": (int, "subjects with white-matter lesions (Test/lesions/)"),
        "lesion_slices_per_subject": (int, "axial slices showing lesion per lesion subject"),
        "first_lesion_subject": (
            int,
            f"number of the first lesion subject; None: {FIRST_LESION_SUBJECT}, or the one "
            "after the last other subject if higher",
        ),
    }
    for name, (kind, text) in options.items():
        parser.add_argument(f"--{name}", type=kind, default=defaults[name], help=text)
    parser.add_argument(
        "--noise_free",
        action="store_true",
        help="no noise: the noiseless scans of the same subjects and slices",
    )
    parser.add_argument(
        "--no_volume",
        action="store_true",
        help="skip the NIfTI volumes of the first test subject",
    )
    parser.add_argument(
        "--train_volumes",
        action="store_true",
        help="write each training subject as one NIfTI volume instead of PNG slices",
    )
    return parser.parse_args(argv)


def main(argv: SequenceABC[str] | None = None) -> int:
    """Generate the dataset and print a short summary."""
    args = parse_args(argv)
    started = time.perf_counter()
    manifest = make_demo(
        output_dir=args.output_dir,
        seed=args.seed,
        n_train_subjects=args.n_train_subjects,
        slices_per_subject=args.slices_per_subject,
        n_test_subjects=args.n_test_subjects,
        test_slices_per_subject=args.test_slices_per_subject,
        size=args.size,
        write_volume=not args.no_volume,
        template_dir=args.template_dir,
        first_test_subject=args.first_test_subject,
        noise_free=args.noise_free,
        n_lesion_subjects=args.n_lesion_subjects,
        lesion_slices_per_subject=args.lesion_slices_per_subject,
        first_lesion_subject=args.first_lesion_subject,
        train_volumes=args.train_volumes,
    )
    for scan in manifest.acquisitions:
        print(
            f"{scan.subject} {scan.contrast}: TR {scan.tr_ms:.0f} ms, TE {scan.te_ms:.1f} ms, "
            f"noise {scan.noise_percent:.2f} %, bias level {scan.bias_level:.2f}"
        )
    counts: dict[tuple[str, str], int] = {}
    for record in manifest.slices:
        counts[(record.split, record.contrast)] = counts.get((record.split, record.contrast), 0) + 1
    summary = ", ".join(
        f"{split} {contrast}: {n}" for (split, contrast), n in sorted(counts.items())
    )
    print(f"wrote {summary} slices and {len(manifest.volumes)} volumes to {args.output_dir}")
    print(f"took {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
