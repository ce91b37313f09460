"""NIfTI volume geometry shared by training and translation: which slices a model sees.

Training cuts volumes into slices and translation puts translated slices back, both
through `generator_view` and its inverse, so a model trained on volumes sees each slice
exactly as translation will show it. Pure nibabel and numpy: no ANTsPy, no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# The RAS world axis normal to each named slice plane.
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def generator_view(volume: np.ndarray, affine: np.ndarray, axis: str | int = "axial") -> np.ndarray:
    """A volume's slices as the generator sees them: (slices, rows, columns).

    The volume is flipped and permuted to the closest RAS orientation, cut along the RAS
    axis that `axis` names (see `translation.translate_volume`), and each slice is
    rotated 90 degrees as `dataset/make_demo.py` made the training PNGs from its RAS
    volumes: anterior up for axial slices, superior up for coronal and sagittal ones.
    """
    orientation = voxel_orientation(affine)
    canonical = nib.orientations.apply_orientation(volume, orientation)
    stack = np.moveaxis(canonical, slice_axis_of(axis, orientation), 0)
    return np.ascontiguousarray(np.rot90(stack, axes=(1, 2)))


def view_shape(
    shape: tuple[int, ...], affine: np.ndarray, axis: str | int = "axial"
) -> tuple[int, int, int]:
    """The shape of `generator_view` of a volume of `shape`, without its voxels:
    (slices, rows, columns). A header's shape and affine are enough."""
    return generator_view(np.broadcast_to(np.False_, shape), affine, axis).shape


def from_generator_view(
    slices: np.ndarray, affine: np.ndarray, axis: str | int = "axial"
) -> np.ndarray:
    """The inverse of `generator_view`: (slices, rows, columns) back to the voxel order."""
    orientation = voxel_orientation(affine)
    stack = np.rot90(slices, -1, axes=(1, 2))
    canonical = np.moveaxis(stack, 0, slice_axis_of(axis, orientation))
    return np.ascontiguousarray(
        nib.orientations.apply_orientation(canonical, inverse_orientation(orientation))
    )


def voxel_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation taking the voxel axes to the closest RAS axes (identity if singular)."""
    orientation = nib.orientations.io_orientation(affine)
    if np.isnan(orientation).any():
        return nib.orientations.axcodes2ornt("RAS")
    return orientation


def inverse_orientation(orientation: np.ndarray) -> np.ndarray:
    """The nibabel orientation that undoes `apply_orientation(..., orientation)`."""
    return nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), orientation)


def slice_axis_of(axis: str | int, orientation: np.ndarray) -> int:
    """The RAS axis to slice along, for a plane name or a voxel axis of the input."""
    if isinstance(axis, str) and axis in PLANE_AXES:
        return PLANE_AXES[axis]
    if str(axis) in ("0", "1", "2"):
        return int(orientation[int(axis), 0])
    raise ValueError(f"axis must be one of {(*PLANE_AXES, 0, 1, 2)}, got {axis!r}")
