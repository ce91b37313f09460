"""Reading and writing scans: image slices (PNG, TIFF, JPEG, BMP), NIfTI volumes and
DICOM series, at full precision and with their geometry. No TensorFlow and no ANTsPy:
training's worker processes and the command lines' early checks load this quickly.

Readers for training raise ValueError with a short reason (the file is skipped and
counted); readers for translation raise DataError naming the file.
"""

from __future__ import annotations

import copy
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DSfloat

from errors import DataError, first_line
from files import atomic_path
from volumes import NIFTI_SUFFIXES, is_nifti

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
# Below this an image holds too little anatomy to resample to a training size.
MIN_INPUT_SIDE = 16
# Which image formats can hold which output dtypes; JPEG and BMP are never written.
WRITABLE_DTYPES = {
    ".png": ("uint8", "uint16"),
    ".tif": ("uint8", "uint16", "float32"),
    ".tiff": ("uint8", "uint16", "float32"),
}
OUTPUT_DTYPES = ("uint8", "uint16", "float32")


# ------------------------------------------------------------------------ image files


def data_dir_problem(data_dir: Path) -> str | None:
    """Why `data_dir` cannot be searched for images (missing, not a directory), or None."""
    if not data_dir.exists():
        return f"data dir {data_dir} does not exist"
    if not data_dir.is_dir():
        return f"data dir {data_dir} is not a directory"
    return None


def find_images(data_dir: Path, volumes: bool = False) -> list[Path]:
    """All image files under `data_dir` (and NIfTI volumes if `volumes`), recursively, sorted.

    Raises DataError if `data_dir` is missing, is not a directory, or holds no such file.
    """
    problem = data_dir_problem(data_dir)
    if problem:
        raise DataError(problem)
    paths = sorted(
        path
        for path in data_dir.rglob("*")
        if (path.suffix.lower() in IMAGE_SUFFIXES or (volumes and is_nifti(path)))
        and path.is_file()
    )
    if not paths:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES) + (list(NIFTI_SUFFIXES) if volumes else []))
        raise DataError(f"data dir {data_dir} holds no image file ({suffixes})")
    return paths


def read_grayscale(path: Path) -> np.ndarray:
    """Read an image file as one float32 channel of shape (H, W), at full precision.

    16-bit and 32-bit images keep their values (a 16-bit PNG gives 0..65535);
    colour, palette and bilevel images are converted to 8-bit grayscale first.
    Raises ValueError with a short reason if the file cannot be used.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "F") and not image.mode.startswith("I;16"):
                image = image.convert("L")
            array = np.asarray(image, dtype=np.float32)
    except UnidentifiedImageError as error:
        raise ValueError("not an image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError("unreadable or truncated image") from error
    if array.ndim != 2:
        raise ValueError(f"unexpected image shape {array.shape}")
    if min(array.shape) < MIN_INPUT_SIDE:
        raise ValueError(f"smaller than {MIN_INPUT_SIDE} px")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or Inf")
    return array


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 (H, W) at full precision; DataError naming it if unusable."""
    try:
        return read_grayscale(path)
    except ValueError as error:
        raise DataError(f"input {path}: {error}") from error
    except OSError as error:
        raise DataError(f"input {path} is unreadable: {error.strerror or error}") from error


def image_dtype(path: Path) -> str:
    """The output dtype that holds `path`'s values: "uint8", "uint16" or "float32"."""
    with Image.open(path) as image:
        mode, kind = image.mode, image.format
    if mode.startswith("I;16") or (mode == "I" and kind == "PNG"):
        return "uint16"
    return "float32" if mode in ("I", "F") else "uint8"


def image_output_suffix(suffix: str, dtype: str) -> str:
    """The suffix to write: the input's if that format holds `dtype`, else .png or .tif."""
    if dtype in WRITABLE_DTYPES.get(suffix.lower(), ()):
        return suffix
    return ".tif" if dtype == "float32" else ".png"


def write_image(path: Path, array: np.ndarray) -> None:
    """Write a uint8, uint16 or float32 (H, W) array as PNG or TIFF, via a temporary file."""
    suffix = path.suffix.lower()
    if array.dtype.name not in WRITABLE_DTYPES.get(suffix, ()):
        raise DataError(
            f"cannot write {array.dtype.name} to {path}: "
            "PNG holds uint8/uint16, TIFF (.tif) also float32"
        )
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG" if suffix == ".png" else "TIFF")


def cast_output(values: np.ndarray, dtype: str, intensity: str, what: str) -> np.ndarray:
    """`values` as `dtype`, never clipped.

    float32 keeps them. For uint8/uint16, "unit" values in [0, 1] span the type's full
    range (0..255, 0..65535); "input" values are rounded and must fit the type, or
    DataError is raised naming `what`.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return values.astype(np.float32)
    limits = np.iinfo(dtype)
    if intensity == "unit":
        return np.round(np.clip(values, 0.0, 1.0) * limits.max).astype(dtype)
    rounded = np.round(values)
    if values.size and (rounded.min() < limits.min or rounded.max() > limits.max):
        raise DataError(
            f"{what}: translated values span {values.min():g} to {values.max():g}, which "
            f"{dtype} cannot hold; write float32 or uint16, or use intensity 'unit'"
        )
    return rounded.astype(dtype)


# ------------------------------------------------------------------------ NIfTI
def read_volume(path: Path) -> nib.Nifti1Image:
    """A 3-D NIfTI volume (.nii or .nii.gz) with finite voxels, fully read.

    Raises ValueError with a short reason (the same for every such file, so that the scan
    summary can count them) if the file cannot be used.
    """
    try:
        image = nib.load(path)
        shape = image.shape
    except (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,  # e.g. an unknown datatype code
        OSError,
        EOFError,
        ValueError,
        zlib.error,
    ) as e:
        raise ValueError("unreadable or truncated NIfTI") from e
    if len(shape) != 3:
        raise ValueError(f"{len(shape)}-D, not a 3-D volume")
    try:
        data = image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError("unreadable or truncated NIfTI") from error
    if not np.isfinite(data).all():
        raise ValueError("contains NaN or Inf")
    return image


def check_volume_shape(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 3:
        size = "x".join(str(side) for side in shape)
        raise DataError(
            f"{what} is {len(shape)}-D ({size}); translation takes one 3-D volume "
            "(split a 4-D series into volumes first)"
        )


def nifti_like(image: nib.Nifti1Image, data: np.ndarray, description: str = "") -> nib.Nifti1Image:
    """A new image of `image`'s class, affine and header (qform, sform, zooms) holding `data`.

    The header's data type follows `data`, and scaling and display range are reset.
    """
    header = image.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    if description:
        header["descrip"] = description[:79].encode()
    return image.__class__(data, image.affine, header)


def read_nifti(path: Path) -> nib.Nifti1Image:
    """A 3-D NIfTI volume (.nii or .nii.gz), read now so that a bad file fails here."""
    try:
        image = nib.load(path)
        check_volume_shape(image.shape, f"NIfTI {path}")
        image.get_fdata(dtype=np.float32)  # nibabel keeps this for translate_volume
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"input {path} is not a readable NIfTI volume: {first_line(e)}") from e
    return image


def write_nifti(
    image: nib.Nifti1Image, path: Path, dtype: str = "float32", intensity: str = "input"
) -> None:
    """Write `image` as `dtype` (see `cast_output`) to `path` through a temporary file."""
    data = cast_output(image.get_fdata(dtype=np.float32), dtype, intensity, str(path))
    output = nifti_like(image, data)
    with atomic_path(path) as temporary:
        nib.save(output, temporary)


# ------------------------------------------------------------------------------ DICOM
@dataclass(frozen=True)
class DicomSeries:
    """One series' datasets sorted along the slice normal, and its voxel -> RAS affine."""

    datasets: tuple[pydicom.Dataset, ...]
    paths: tuple[Path, ...]
    affine: np.ndarray


def read_dicom_series(folder: Path) -> nib.Nifti1Image:
    """One DICOM series folder -> a float32 NIfTI image with the scanner geometry.

    Slices are sorted by ImagePositionPatient projected on the slice normal (the cross
    product of the two ImageOrientationPatient directions), not by file name or
    InstanceNumber. Values are stored value x RescaleSlope + RescaleIntercept. Voxel axes
    are (column, row, slice); the affine maps them to RAS mm (DICOM's LPS with x and y
    negated), from IPP, IOP, PixelSpacing and the spacing of the sorted positions;
    qform and sform codes are 1 (scanner). Raises DataError naming what is wrong.
    """
    series = _read_series(Path(folder))
    volume = np.stack(
        [
            _stored_values(ds, path).T
            for ds, path in zip(series.datasets, series.paths, strict=True)
        ],
        axis=-1,
    )
    image = nib.Nifti1Image(volume.astype(np.float32), series.affine)
    image.set_qform(series.affine, code=1)
    image.set_sform(series.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    description = str(series.datasets[0].get("SeriesDescription", ""))
    if description:
        image.header["descrip"] = description[:79].encode()
    return image


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")
    )


def _read_series(folder: Path) -> DicomSeries:
    if not folder.is_dir():
        raise DataError(f"DICOM folder {folder} is not a directory")
    found: list[tuple[Path, pydicom.Dataset]] = []
    for path in _files_under(folder):
        try:
            dataset = pydicom.dcmread(path)
        except InvalidDicomError:
            continue  # not DICOM: a README, a thumbnail
        except (OSError, EOFError, ValueError) as error:
            raise DataError(f"DICOM file {path} is unreadable: {error}") from error
        if "PixelData" in dataset:  # not DICOMDIR or a report
            found.append((path, dataset))
    if not found:
        raise DataError(f"DICOM folder {folder} holds no DICOM image")

    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path, dataset in found:
        by_series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((path, dataset))
    if len(by_series) > 1:
        listing = "; ".join(
            f"{uid or '?'} ({entries[0][1].get('SeriesDescription', '')}: {len(entries)} images)"
            for uid, entries in by_series.items()
        )
        raise DataError(
            f"DICOM folder {folder} holds {len(by_series)} series ({listing}); "
            "point it at the folder of one series"
        )

    orientations, positions = [], []
    for path, dataset in found:
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(
                f"DICOM file {path} is multi-frame (enhanced DICOM); convert it with dcm2niix"
            )
        try:
            orientations.append(np.array(dataset.ImageOrientationPatient, float))
            positions.append(np.array(dataset.ImagePositionPatient, float))
            spacing = np.array(dataset.PixelSpacing, float)
        except (AttributeError, ValueError, TypeError) as error:
            raise DataError(
                f"DICOM file {path} lacks ImageOrientationPatient, ImagePositionPatient or "
                "PixelSpacing: its slices cannot be placed in space"
            ) from error
        if (dataset.Rows, dataset.Columns) != (found[0][1].Rows, found[0][1].Columns):
            raise DataError(f"DICOM folder {folder}: images of different sizes ({path})")
    orientation = orientations[0]
    if orientation.shape != (6,) or not all(
        np.allclose(other, orientation, atol=1e-4) for other in orientations
    ):
        raise DataError(
            f"DICOM folder {folder}: images of different orientations (a localizer series?)"
        )
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    distances = np.array([position @ normal for position in positions])
    order = np.argsort(distances, kind="stable")
    gaps = np.diff(distances[order])
    if (gaps < 1e-4).any():
        raise DataError(
            f"DICOM folder {folder}: several images share a slice position "
            "(echoes, phases or time points?); give one 3-D series"
        )

    first, last = positions[order[0]], positions[order[-1]]
    if len(order) > 1:
        step = (last - first) / (len(order) - 1)
        if np.abs(gaps - gaps.mean()).max() > 0.01 * gaps.mean():
            log.warning(
                "warning: DICOM series %s has uneven slice spacing (%.3g to %.3g mm); "
                "the NIfTI affine uses the mean",
                folder,
                gaps.min(),
                gaps.max(),
            )
    else:
        dataset = found[0][1]
        thickness = dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0
        step = normal * float(thickness)
    row_spacing, column_spacing = spacing  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing  # voxel axis 0: along a row (column index)
    lps[:3, 1] = column_direction * row_spacing  # voxel axis 1: down a column (row index)
    lps[:3, 2] = step
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return DicomSeries(
        tuple(found[index][1] for index in order), tuple(found[index][0] for index in order), affine
    )


def _stored_values(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Pixel values (rows, columns) x RescaleSlope + RescaleIntercept, as float32."""
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises several types for undecodable pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise DataError(f"DICOM file {path}: cannot decode its pixel data ({name})") from error
    if pixels.ndim != 2:
        raise DataError(f"DICOM file {path}: pixel data of shape {pixels.shape}, not one slice")
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return (pixels.astype(np.float32) * slope + intercept).astype(np.float32)


def write_dicom_series(
    image: nib.Nifti1Image, source_folder: Path, output_folder: Path, description: str
) -> list[Path]:
    """Write `image` as a new DICOM series with the headers and geometry of the source.

    `image` must have the voxel order and affine that `read_dicom_series(source_folder)`
    gives. Each slice copies its source header with a new series and instance UIDs,
    ImageType DERIVED\\SECONDARY and `description`; values are stored as uint16 with one
    RescaleSlope/Intercept for the series (resolution: value range / 65535). The folder
    is written under a temporary name and renamed. Returns the files, in slice order.
    """
    series = _read_series(Path(source_folder))
    rows, columns = series.datasets[0].Rows, series.datasets[0].Columns
    if image.shape != (columns, rows, len(series.datasets)) or not np.allclose(
        image.affine, series.affine, atol=1e-3
    ):
        raise DataError(f"the translated volume does not have the geometry of {source_folder}")
    data = image.get_fdata(dtype=np.float32)
    low, high = float(data.min()), float(data.max())
    slope = (high - low) / 65535 if high > low else 1.0
    slope_text, low_text = DSfloat(slope, auto_format=True), DSfloat(low, auto_format=True)
    # The stored integers use the rounded header values, so readers get what we meant.
    stored = np.clip(np.round((data - float(low_text)) / float(slope_text)), 0, 65535)
    series_uid = pydicom.uid.generate_uid()
    names = []
    with atomic_path(Path(output_folder), directory=True) as temporary:
        for index, source in enumerate(series.datasets):
            dataset = copy.deepcopy(source)
            dataset.set_pixel_data(stored[:, :, index].T.astype(np.uint16), "MONOCHROME2", 16)
            dataset.RescaleSlope, dataset.RescaleIntercept = slope_text, low_text
            for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
                if keyword in dataset:
                    delattr(dataset, keyword)
            dataset.SeriesInstanceUID = series_uid
            dataset.SeriesDescription = description[:64]
            dataset.ImageType = ["DERIVED", "SECONDARY"]
            dataset.InstanceNumber = index + 1
            name = f"IM{index + 1:05d}.dcm"
            dataset.save_as(temporary / name, enforce_file_format=True)
            names.append(name)
    return [Path(output_folder) / name for name in names]
