"""Using a trained model: the translation API, the export, and translate.py end to end.

The model is a 32x32 CycleGAN with its initial (random) weights, saved as training saves
it; random weights are enough to check geometry, intensities, files and errors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

import checkpoints
import files
import inference
import preprocessing
import scan_io
import translate
import translation
import volumes
from config import CONFIG_FILE_NAME, TrainConfig, save_config
from errors import DataError
from mri_gan import CycleGan
from tests.conftest import REPO, SMALL_NETWORKS, run_in_process, save_as_trained, write_png_folder
from training import build_model

SIZE = 32


@dataclass(frozen=True)
class Run:
    """A saved training run: its in-memory model, config and folders."""

    model: CycleGan
    config: TrainConfig

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.checkpoint_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A 32x32 CycleGAN saved as training does: checkpoint at epoch 3 and config.json."""
    keras.utils.set_random_seed(0)
    config = TrainConfig(
        img_height=SIZE,
        img_width=SIZE,
        output_dir=tmp_path_factory.mktemp("run"),
        **SMALL_NETWORKS,
    )
    model = build_model(config)
    save_as_trained(model, config, epoch=3)
    return Run(model, config)


@pytest.fixture(scope="module")
def export_dir(run: Run) -> Path:
    directory = run.config.output_dir / "export"
    checkpoints.export_generators(run.model, run.config, directory, epoch=3)
    return directory


def head_volume(shape=(40, 36, 7), peak=900.0, seed=0) -> np.ndarray:
    """A toy head: an ellipsoid with a darker core and noise; the first and last slices empty."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, side) for side in shape), indexing="ij")
    radius = np.sqrt(x**2 + (y / 0.9) ** 2 + z**2)
    volume = np.where(radius < 0.8, peak, 0.0) * np.where(radius < 0.4, 0.5, 1.0)
    volume = volume * (1 + 0.3 * x)  # a bias field, so N4 and orientation matter
    volume += rng.normal(0, peak / 50, shape) * (radius < 0.8)
    volume[:, :, 0] = volume[:, :, -1] = 0
    return np.clip(volume, 0, None).astype(np.float32)


def oblique_affine() -> np.ndarray:
    """An LAS-stored affine with a little rotation: not the identity, not RAS."""
    affine = np.diag([-0.9, 1.1, 3.0, 1.0])
    angle = np.deg2rad(5)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = [20.0, -30.0, 10.0]
    return affine


def nifti(volume: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.round(volume).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    image.header.set_slope_inter(2.0, 0.0)
    return image


# ------------------------------------------------------------------------------ model
def test_checkpoint_restores_the_trained_generators(run):
    images = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 1)).astype(np.float32)

    restored = translation.load_generator(run.checkpoint_dir, "t2_to_t1")

    assert restored.direction == "t2_to_t1" and restored.n4 is True
    assert restored.image_shape == (SIZE, SIZE)
    np.testing.assert_allclose(restored(images), run.model.t2_to_t1(images).numpy(), atol=1e-6)


def test_export_loads_in_safe_mode_and_gives_the_same_outputs(run, export_dir):
    images = np.random.default_rng(2).uniform(-1, 1, (3, SIZE, SIZE, 1)).astype(np.float32)
    info = json.loads((export_dir / "model.json").read_text())

    for direction in ("t1_to_t2", "t2_to_t1"):
        loaded = keras.models.load_model(export_dir / f"{direction}.keras", safe_mode=True)
        expected = getattr(run.model, direction)(images).numpy()
        np.testing.assert_allclose(loaded(images).numpy(), expected, atol=1e-6)
    assert (info["img_height"], info["img_width"], info["n4"]) == (SIZE, SIZE, True)
    assert info["value_range"] == [-1.0, 1.0] and info["epoch"] == 3
    assert info["generators"]["t2_to_t1"]["file"] == "t2_to_t1.keras"
    assert not [path.name for path in export_dir.iterdir() if path.name.startswith(".")]
    generator = translation.load_generator(export_dir, "t2_to_t1")
    assert generator.direction == "t2_to_t1" and generator.image_shape == (SIZE, SIZE)


def test_the_n4_setting_of_training_travels_with_the_export(run, tmp_path):
    without_n4 = dataclasses.replace(run.config, n4=False)
    checkpoints.export_generators(run.model, without_n4, tmp_path / "export")

    assert translation.load_generator(tmp_path / "export", "t1_to_t2").n4 is False


def test_a_generator_of_the_other_direction_is_refused(export_dir):
    with pytest.raises(DataError, match="translates t1_to_t2, not t2_to_t1"):
        translation.load_generator(export_dir / "t1_to_t2.keras", "t2_to_t1")


def test_a_file_that_is_not_a_keras_model_is_refused(tmp_path):
    (tmp_path / "t1_to_t2.keras").write_text("not a zip")

    with pytest.raises(DataError, match="t1_to_t2.keras cannot be loaded"):
        translation.load_generator(tmp_path / "t1_to_t2.keras", "t1_to_t2")


def test_an_exported_model_that_disagrees_with_model_json_is_refused(run, tmp_path):
    other = tmp_path / "export"
    checkpoints.export_generators(run.model, run.config, other)
    info = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**info, "img_height": 64}))

    with pytest.raises(DataError, match="takes 32x32 images but .* says 64x32"):
        translation.load_generator(other / "t1_to_t2.keras")


# ------------------------------------------------------------------------- translation
def test_translated_slices_keep_their_own_size(run):
    rng = np.random.default_rng(3)
    slices = [head_volume((40, 52, 3))[:, :, 1], rng.uniform(0, 255, (SIZE, SIZE))]

    translated = translation.translate_slices(run.model.t1_to_t2, slices, n4=False)

    assert [array.shape for array in translated] == [(40, 52), (SIZE, SIZE)]
    for array in translated:
        assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
        assert array.std() > 0


def test_a_volume_keeps_shape_affine_header_and_background(run, tmp_path):
    source = tmp_path / "t1.nii.gz"
    volume = head_volume()
    nib.save(nifti(volume, oblique_affine()), source)
    image = scan_io.read_nifti(source)
    generator = translation.load_generator(run.checkpoint_dir, "t1_to_t2")

    translated = translation.translate_volume(generator, image, n4=False, batch_size=3)
    scan_io.write_nifti(translated, tmp_path / "t2.nii.gz")
    written = nib.load(tmp_path / "t2.nii.gz")
    unit = translation.translate_volume(generator, image, n4=False, intensity="unit")

    data = np.asarray(written.dataobj)
    assert written.shape == image.shape and data.dtype == np.float32
    for coded in ("get_qform", "get_sform"):
        got, code = getattr(written.header, coded)(coded=True)
        want, want_code = getattr(image.header, coded)(coded=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert code == want_code
    assert written.header.get_zooms() == image.header.get_zooms()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["t1.nii.gz", "t2.nii.gz"]
    # Empty slices stay background; the head is translated, in the input's value range.
    low, high = translation.intensity_range(image.get_fdata())
    assert low == 0 and high > 1000  # int16 values x scl_slope 2
    assert np.all(data[:, :, 0] == 0) and np.all(data[:, :, -1] == 0)
    assert all(data[:, :, k].std() > 0 for k in range(1, 6))
    assert data.max() > 255 and data.min() >= low and data.max() <= high
    np.testing.assert_allclose(data, low + unit.get_fdata() * (high - low), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("storage", ["flipped", "transposed"])
def test_slices_face_the_generator_the_same_way_however_the_volume_is_stored(run, storage):
    volume = head_volume(seed=4)
    affine = oblique_affine()
    if storage == "flipped":  # the same anatomy stored with the first voxel axis reversed
        stored = volume[::-1]
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1, volume.shape[0] - 1
        stored_affine = affine @ flip
        back = lambda data: data[::-1]  # noqa: E731
    else:  # the same anatomy with the two in-plane voxel axes swapped
        stored = volume.transpose(1, 0, 2)
        stored_affine = affine[:, [1, 0, 2, 3]]
        back = lambda data: data.transpose(1, 0, 2)  # noqa: E731
    generator = run.model.t1_to_t2

    original = translation.translate_volume(generator, nifti(volume, affine), n4=False)
    other = translation.translate_volume(generator, nifti(stored, stored_affine), n4=False)

    np.testing.assert_allclose(back(other.get_fdata()), original.get_fdata(), atol=1e-3)


def test_slices_face_the_generator_as_the_training_pngs_were_made():
    # The demo volume covers template slices z = 30..136; every Test PNG is one of them,
    # zero-padded to 256x256 (dataset/README.md).
    volume = nib.load(REPO / "dataset" / "Test" / "volumes" / "sub-21_T1w.nii.gz")
    png = np.asarray(Image.open(REPO / "dataset" / "Test" / "T1" / "sub-21_z042.png"))

    view = volumes.generator_view(np.asarray(volume.dataobj), volume.affine)[42 - 30]

    rows, columns = view.shape
    matches = [
        (top, left)
        for top in range(png.shape[0] - rows + 1)
        for left in range(png.shape[1] - columns + 1)
        if np.array_equal(png[top : top + rows, left : left + columns], view)
    ]
    assert len(matches) == 1


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal", 0, 1, 2])
def test_the_generator_view_goes_back_to_the_voxel_order(axis):
    volume = np.random.default_rng(7).normal(size=(6, 7, 8))
    affine = oblique_affine()[:, [2, 0, 1, 3]]  # voxel axes in S, L, A order

    view = volumes.generator_view(volume, affine, axis)

    np.testing.assert_array_equal(volumes.from_generator_view(view, affine, axis), volume)
    expected_slices = {"axial": 6, "coronal": 8, "sagittal": 7, 0: 6, 1: 7, 2: 8}[axis]
    assert view.shape[0] == expected_slices
    assert volumes.view_shape(volume.shape, affine, axis) == view.shape


def test_a_4d_volume_is_refused(run):
    image = nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4))
    with pytest.raises(DataError, match="4-D"):
        translation.translate_volume(run.model.t1_to_t2, image)


# ------------------------------------------------------------------------ image files
def write_16_bit_png(path: Path) -> np.ndarray:
    values = head_volume((40, 40, 3), peak=3000.0)[:, :, 1].astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def test_16_bit_png_keeps_values_above_255(run, tmp_path):
    source = tmp_path / "in" / "slice.png"
    source.parent.mkdir()
    write_16_bit_png(source)

    result = translation.translate_image_files(
        run.model.t1_to_t2, [source], lambda path, dtype: tmp_path / "out" / path.name
    )

    with Image.open(tmp_path / "out" / "slice.png") as image:
        assert image.mode == "I;16"
        values = np.asarray(image)
    assert result.written == (tmp_path / "out" / "slice.png",)
    assert values.max() > 255 and values.shape == (40, 40)


def test_values_that_do_not_fit_8_bits_are_refused_not_clipped(run, tmp_path):
    source = tmp_path / "slice.png"
    write_16_bit_png(source)
    target = tmp_path / "out" / "slice.png"

    with pytest.raises(DataError, match="uint8 cannot hold"):
        translation.translate_image_files(
            run.model.t1_to_t2, [source], lambda path, dtype: target, output_dtype="uint8"
        )
    assert not target.parent.exists()


def test_float32_output_is_a_tiff_in_unit_range(run, tmp_path):
    source = tmp_path / "slice.png"
    write_16_bit_png(source)

    def output_path(path: Path, dtype: str) -> Path:
        return (tmp_path / "out" / path.name).with_suffix(
            scan_io.image_output_suffix(path.suffix, dtype)
        )

    translation.translate_image_files(
        run.model.t1_to_t2, [source], output_path, output_dtype="float32", intensity="unit"
    )

    with Image.open(tmp_path / "out" / "slice.tif") as image:
        assert image.mode == "F"
        values = np.asarray(image)
    assert 0 <= values.min() and values.max() <= 1 and values.std() > 0


# ------------------------------------------------------------------------------ DICOM
ORIENTATIONS = {
    "axial": ([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2),  # row direction, column direction; normal z
    "sagittal": ([0.0, 1.0, 0.0, 0.0, 0.0, -1.0], 0),  # normal x
}


def write_dicom_series(folder: Path, orientation: list[float], rows=24, columns=32, count=5):
    """A small MR series in shuffled file order; slice k has pixel values 100 * k + column.

    Returns the stored values in slice order, (count, rows, columns), after the rescale.
    """
    folder.mkdir(parents=True)
    normal = np.cross(orientation[:3], orientation[3:])
    series, study = generate_uid(), generate_uid()
    rng = np.random.default_rng(5)
    names = rng.permutation(count)  # file names and instance numbers not in slice order
    expected = []
    for k in range(count):
        pixels = (100 * k + np.tile(np.arange(columns), (rows, 1))).astype(np.uint16)
        expected.append(pixels * 2.0 - 50.0)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = MRImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.Modality = "MR"
        dataset.PatientName = "Phantom^Test"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SeriesDescription = "T1w test"
        dataset.SeriesNumber = 3
        dataset.InstanceNumber = int(names[k]) + 1
        dataset.ImageOrientationPatient = orientation
        dataset.ImagePositionPatient = list(np.array([-20.0, 10.0, 30.0]) + 2.5 * k * normal)
        dataset.PixelSpacing = [0.8, 0.7]
        dataset.SliceThickness = 2.5
        dataset.RescaleSlope, dataset.RescaleIntercept = 2, -50
        dataset.set_pixel_data(pixels, "MONOCHROME2", 16)
        dataset.save_as(folder / f"IM{names[k]:03d}", enforce_file_format=True)
    (folder / "README.txt").write_text("not DICOM")
    return np.stack(expected)


@pytest.mark.parametrize("plane", ORIENTATIONS)
def test_a_dicom_series_is_read_in_slice_order_with_its_geometry(tmp_path, plane):
    orientation, _ = ORIENTATIONS[plane]
    expected = write_dicom_series(tmp_path / "series", orientation)

    image = scan_io.read_dicom_series(tmp_path / "series")

    data = image.get_fdata()
    assert data.shape == (32, 24, 5)  # columns, rows, slices
    for k in range(5):
        np.testing.assert_array_equal(data[:, :, k], expected[k].T)
    # Voxel (column c, row r, slice k) sits at IPP_k + c * 0.7 * row_dir + r * 0.8 * col_dir
    # (LPS), which is (-x, -y, z) in RAS.
    row_direction, column_direction = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_direction, column_direction)
    for c, r, k in [(0, 0, 0), (31, 0, 2), (5, 23, 4)]:
        lps = (
            np.array([-20.0, 10.0, 30.0])
            + 2.5 * k * normal
            + c * 0.7 * row_direction
            + r * 0.8 * column_direction
        )
        ras = image.affine @ [c, r, k, 1]
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    assert image.header.get_qform(coded=True)[1] == 1
    assert image.header.get_sform(coded=True)[1] == 1


def test_a_dicom_series_written_back_keeps_geometry_and_values(tmp_path):
    write_dicom_series(tmp_path / "series", ORIENTATIONS["axial"][0])
    image = scan_io.read_dicom_series(tmp_path / "series")
    values = image.get_fdata() * 1.37 + 5.0  # any float volume of the same geometry
    result = nib.Nifti1Image(values.astype(np.float32), image.affine)

    files = scan_io.write_dicom_series(
        result, tmp_path / "series", tmp_path / "out", "synthetic T2w"
    )

    reread = scan_io.read_dicom_series(tmp_path / "out")
    slope = (values.max() - values.min()) / 65535
    np.testing.assert_allclose(reread.get_fdata(), values, atol=slope)
    np.testing.assert_allclose(reread.affine, image.affine, atol=1e-6)
    first = pydicom.dcmread(files[0])
    source = pydicom.dcmread(next((tmp_path / "series").glob("IM*")))
    assert first.SeriesInstanceUID != source.SeriesInstanceUID
    assert first.SeriesDescription == "synthetic T2w" and list(first.ImageType)[0] == "DERIVED"


def test_an_interrupted_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out" / "volume.nii.gz"

    with pytest.raises(RuntimeError), files.atomic_path(target) as temporary:
        temporary.write_bytes(b"half a vol")
        raise RuntimeError("disk full")

    assert list(target.parent.iterdir()) == []


# ------------------------------------------------------------------ the command line
def translate_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "translate.py"), *map(str, args)]


def test_help_explains_the_flags_without_loading_tensorflow():
    result = subprocess.run(
        translate_command("--help"), capture_output=True, text=True, cwd=REPO, timeout=60
    )
    imports = subprocess.run(
        [sys.executable, "-c", "import sys, translate; print('tensorflow' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )

    assert result.returncode == 0
    for flag in (
        "--direction",
        "--checkpoint_dir",
        "--model",
        "--axis",
        "--no-preprocess",
        "--preprocess_per",
    ):
        assert flag in result.stdout
    for words in ("--intensity", "99.5th percentile", "--output_dtype", "--export", "qform"):
        assert words in result.stdout
    assert imports.stdout.strip() == "False"


@dataclass(frozen=True)
class CliCase:
    args: tuple[str, ...]
    output: Path  # must not exist afterwards, for error cases
    message: str = ""  # the error line must contain this


@pytest.fixture(scope="module")
def cli(
    run, export_dir, tmp_path_factory
) -> dict[str, tuple[CliCase, subprocess.CompletedProcess]]:
    """Every translate.py run of these tests, started together to share the start-up time."""
    root = tmp_path_factory.mktemp("cli")
    volume_path = root / "t1.nii.gz"
    nib.save(nifti(head_volume(), oblique_affine()), volume_path)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), root / "4d.nii.gz")
    (root / "garbage.png").write_text("not a png")
    (root / "empty").mkdir()
    (root / "no_dicom").mkdir()
    (root / "no_dicom" / "notes.txt").write_text("no DICOM here")
    (root / "no_checkpoint").mkdir()
    write_dicom_series(root / "series", ORIENTATIONS["axial"][0])
    # A run whose config.json names a size that its checkpoint was not trained at.
    wrong = root / "wrong_size"
    shutil.copytree(run.checkpoint_dir, wrong / "checkpoints")
    save_config(
        TrainConfig(img_height=64, img_width=64, output_dir=wrong, **SMALL_NETWORKS),
        wrong / CONFIG_FILE_NAME,
    )
    shutil.copytree(run.checkpoint_dir, root / "run" / "checkpoints")
    shutil.copy(run.config.output_dir / CONFIG_FILE_NAME, root / "run" / CONFIG_FILE_NAME)

    out = root / "out"
    checkpoint = ("--direction", "t1_to_t2", "--checkpoint_dir", str(run.checkpoint_dir))
    cases = {
        "missing_input": CliCase(
            (*checkpoint, "--input", str(root / "nowhere.nii.gz"), "--output", str(out / "a.nii")),
            out / "a.nii",
            f"input {root / 'nowhere.nii.gz'} does not exist",
        ),
        "not_an_image": CliCase(
            (*checkpoint, "--input", str(root / "garbage.png"), "--output", str(out / "b.png")),
            out / "b.png",
            f"input {root / 'garbage.png'}: not an image",
        ),
        "4d_nifti": CliCase(
            (*checkpoint, "--input", str(root / "4d.nii.gz"), "--output", str(out / "c.nii.gz")),
            out / "c.nii.gz",
            f"NIfTI {root / '4d.nii.gz'} is 4-D (8x8x4x2)",
        ),
        "empty_folder": CliCase(
            (*checkpoint, "--input", str(root / "empty"), "--output", str(out / "d.nii.gz")),
            out / "d.nii.gz",
            f"input folder {root / 'empty'} is empty",
        ),
        "no_dicom_in_folder": CliCase(
            (*checkpoint, "--input", str(root / "no_dicom"), "--output", str(out / "e.nii.gz")),
            out / "e.nii.gz",
            f"DICOM folder {root / 'no_dicom'} holds no DICOM image",
        ),
        "no_checkpoint": CliCase(
            (
                *("--direction", "t1_to_t2", "--checkpoint_dir", str(root / "no_checkpoint")),
                *("--input", str(volume_path), "--output", str(out / "f.nii.gz")),
            ),
            out / "f.nii.gz",
            f"checkpoint dir {root / 'no_checkpoint'} holds no checkpoint",
        ),
        "wrong_size": CliCase(
            (
                *("--direction", "t1_to_t2", "--checkpoint_dir", str(wrong / "checkpoints")),
                *("--input", str(volume_path), "--output", str(out / "g.nii.gz")),
            ),
            out / "g.nii.gz",
            f"does not fit the 64x64 model that {wrong / CONFIG_FILE_NAME} describes",
        ),
        "dicom_from_checkpoint": CliCase(
            (*checkpoint, "--input", str(root / "series"), "--output", str(out / "t2.nii.gz"))
            + ("--dicom_out", str(out / "t2_dicom"), "--quiet"),
            out / "t2.nii.gz",
        ),
        "export": CliCase(
            ("--export", "--checkpoint_dir", str(root / "run" / "checkpoints")),
            root / "run" / "export",
        ),
    }

    def launch(case: CliCase) -> subprocess.CompletedProcess:
        return subprocess.run(
            translate_command(*case.args), capture_output=True, text=True, cwd=REPO, timeout=300
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(launch, cases.values()), strict=True))
    return {name: (cases[name], results[name]) for name in cases}


ERROR_CASES = [
    "missing_input",
    "not_an_image",
    "4d_nifti",
    "empty_folder",
    "no_dicom_in_folder",
    "no_checkpoint",
    "wrong_size",
]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_is_a_one_line_error_and_leaves_nothing(cli, name):
    case, result = cli[name]

    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert case.message in errors[0]
    assert "Traceback" not in result.stderr
    assert not case.output.exists()
    assert not case.output.parent.exists() or not list(case.output.parent.glob(".*tmp*"))


def test_cli_translates_a_dicom_series_from_a_checkpoint(cli):
    case, result = cli["dicom_from_checkpoint"]
    source = scan_io.read_dicom_series(Path(case.args[case.args.index("--input") + 1]))

    assert result.returncode == 0, result.stderr
    assert "Translated 5 of 5 slices" in result.stderr
    written = nib.load(case.output)
    assert written.shape == source.shape and written.get_fdata().std() > 0
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.header.get_sform(coded=True)[1] == 1
    as_dicom = scan_io.read_dicom_series(case.output.with_name("t2_dicom"))
    np.testing.assert_allclose(as_dicom.affine, source.affine, atol=1e-5)
    spread = float(written.get_fdata().max() - written.get_fdata().min())
    np.testing.assert_allclose(as_dicom.get_fdata(), written.get_fdata(), atol=spread / 65535)


def test_cli_exports_the_generators_of_a_checkpoint(cli, run):
    case, result = cli["export"]

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in case.output.iterdir()) == [
        "model.json",
        "t1_to_t2.keras",
        "t2_to_t1.keras",
    ]
    assert json.loads((case.output / "model.json").read_text())["epoch"] == 3
    images = np.random.default_rng(6).uniform(-1, 1, (1, SIZE, SIZE, 1)).astype(np.float32)
    loaded = keras.models.load_model(case.output / "t1_to_t2.keras", safe_mode=True)
    np.testing.assert_allclose(
        loaded(images).numpy(), run.model.t1_to_t2(images).numpy(), atol=1e-6
    )


# ----------------------------------------------------- preprocessing as in training
# A volume small enough for a quick 3-D N4: 4 head slices (each over 5 % head, so
# training's `min_foreground` keeps the same ones as translation) between 2 empty ones;
# the top one half as bright, which normalization per slice would undo and per volume not.
SMALL_VOLUME = (32, 32, 6)
HEAD = [1, 2, 3, 4]


def small_volume() -> np.ndarray:
    volume = head_volume(SMALL_VOLUME)
    volume[:, :, HEAD[-1]] *= 0.5
    return volume


@dataclass(frozen=True)
class VolumeRun:
    """The `run` model exported as if trained on a T1 volume dir and a T2 PNG dir."""

    config: TrainConfig
    export_dir: Path
    volume_path: Path


@pytest.fixture(scope="module")
def volume_run(run, tmp_path_factory) -> VolumeRun:
    root = tmp_path_factory.mktemp("volume_run")
    volume_path = root / "Tr1" / "sub-01_T1w.nii.gz"
    volume_path.parent.mkdir()
    nib.save(nifti(small_volume(), oblique_affine()), volume_path)
    write_png_folder(root / "Tr2", 2, 40, 120, seed=2)
    config = dataclasses.replace(run.config, data_dir_t1=root / "Tr1", data_dir_t2=root / "Tr2")
    checkpoints.export_generators(run.model, config, root / "export")
    return VolumeRun(config, root / "export", volume_path)


@pytest.fixture
def generator_inputs(monkeypatch) -> list[np.ndarray]:
    """The preprocessed (N, H, W) batches that every generator is given, as they come."""
    fed: list[np.ndarray] = []
    translate_slabs = inference.Generator.translate_slabs

    def recording(self, images, batch_size=inference.DEFAULT_BATCH_SIZE, forward=None):
        fed.append(np.array(images))
        return translate_slabs(self, images, batch_size, forward)

    monkeypatch.setattr(inference.Generator, "translate_slabs", recording)
    return fed


def per_slice(path: Path, n4: bool) -> np.ndarray:
    """The head slices of a volume file preprocessed each on its own, as 2-D training images."""
    image = nib.load(path)
    view = volumes.generator_view(image.get_fdata(dtype=np.float32), image.affine)
    return np.stack([preprocessing.preprocess_slice(view[k], SIZE, SIZE, n4) for k in HEAD])


def test_the_export_records_how_each_generator_was_trained(volume_run):
    info = json.loads((volume_run.export_dir / "model.json").read_text())

    assert info["generators"]["t1_to_t2"]["preprocessed_per"] == "volume"
    assert info["generators"]["t2_to_t1"]["preprocessed_per"] == "slice"
    assert (info["n4"], info["upper_percentile"], info["slice_axis"]) == (True, 99.5, "axial")
    generator = translation.load_generator(volume_run.export_dir / "t1_to_t2.keras")
    assert (generator.preprocessed_per, generator.slice_axis, generator.n4) == (
        "volume",
        "axial",
        True,
    )


def test_a_model_trained_on_volumes_sees_a_volume_as_training_preprocessed_it(
    volume_run, generator_inputs
):
    generator = translation.load_generator(volume_run.export_dir, "t1_to_t2")
    image = scan_io.read_nifti(volume_run.volume_path)

    translated = translation.translate_volume(generator, image, intensity="unit", batch_size=3)

    # Exactly what training makes of the file: one 3-D N4 and normalization, then cut.
    trained = preprocessing.preprocess_file(volume_run.volume_path, volume_run.config)
    assert trained.indices == tuple(HEAD) and trained.n4_calls == 1
    assert [len(batch) for batch in generator_inputs] == [3, 1]
    fed = np.concatenate(generator_inputs)
    np.testing.assert_allclose(fed, trained.slices, atol=1e-5)
    # Not what per-slice preprocessing gives: there the darker top slice is as bright as
    # the others.
    head = fed > 0.2
    assert 0.4 < np.median(fed[-1][head[-1]]) < 0.6 < 0.9 < np.median(fed[0][head[0]])
    stretched = per_slice(volume_run.volume_path, n4=True)[-1]
    assert np.median(stretched[stretched > 0.2]) > 0.9
    # The translations go back to those slices; the empty ones stay background.
    view = volumes.generator_view(translated.get_fdata(dtype=np.float32), image.affine)
    np.testing.assert_allclose(view[HEAD], generator.translate_unit(trained.slices), atol=1e-5)
    assert translated.shape == image.shape and not view[[0, 5]].any()


def test_an_export_that_does_not_record_it_translates_per_slice(
    volume_run, generator_inputs, tmp_path, caplog
):
    old = tmp_path / "export"
    shutil.copytree(volume_run.export_dir, old)
    info = json.loads((old / "model.json").read_text())
    for key in ("upper_percentile", "slice_axis"):
        del info[key]
    for entry in info["generators"].values():
        del entry["preprocessed_per"]
    (old / "model.json").write_text(json.dumps(info))
    generator = translation.load_generator(old / "t1_to_t2.keras")

    with caplog.at_level(logging.INFO, logger="translation"):
        translation.translate_volume(
            generator, scan_io.read_nifti(volume_run.volume_path), n4=False
        )

    assert generator.preprocessed_per is None and generator.slice_axis == "axial"
    np.testing.assert_allclose(
        np.concatenate(generator_inputs), per_slice(volume_run.volume_path, n4=False), atol=1e-6
    )
    assert "does not record whether it was trained on volumes" in caplog.text


@pytest.mark.parametrize("trained, asked", [("volume", "slice"), ("slice", "volume")])
def test_the_preprocessing_can_be_chosen(volume_run, generator_inputs, trained, asked):
    direction = "t1_to_t2" if trained == "volume" else "t2_to_t1"
    generator = translation.load_generator(volume_run.export_dir, direction)
    assert generator.preprocessed_per == trained

    translation.translate_volume(
        generator, scan_io.read_nifti(volume_run.volume_path), preprocess_per=asked, n4=False
    )

    fed = np.concatenate(generator_inputs)
    if asked == "slice":
        expected = per_slice(volume_run.volume_path, n4=False)
    else:
        without_n4 = dataclasses.replace(volume_run.config, n4=False)
        expected = preprocessing.preprocess_file(volume_run.volume_path, without_n4).slices
    np.testing.assert_allclose(fed, expected, atol=1e-6)


def test_a_model_trained_on_volumes_cuts_them_along_its_training_axis(volume_run, tmp_path):
    coronal = dataclasses.replace(volume_run.config, slice_axis="coronal")
    checkpoints.export_generators(build_model(coronal), coronal, tmp_path / "export")
    generator = translation.load_generator(tmp_path / "export", "t1_to_t2")
    image = scan_io.read_nifti(volume_run.volume_path)

    # Its coronal slices, 32 x 6 voxels, are too small to preprocess: so they were chosen.
    with pytest.raises(DataError, match="coronal slices smaller than 16 px"):
        translation.translate_volume(generator, image, n4=False)
    assert translation.translate_volume(generator, image, axis="axial", n4=False).shape == (
        SMALL_VOLUME
    )


def test_an_export_whose_data_dir_is_gone_records_nothing_and_warns(run, tmp_path, caplog):
    gone = dataclasses.replace(run.config, data_dir_t1=tmp_path / "moved")

    checkpoints.export_generators(run.model, gone, tmp_path / "export")

    info = json.loads((tmp_path / "export" / "model.json").read_text())
    assert info["generators"]["t1_to_t2"]["preprocessed_per"] is None
    assert f"data dir {tmp_path / 'moved'} cannot be searched" in caplog.text
    assert translation.load_generator(tmp_path / "export", "t1_to_t2").preprocessed_per is None


def test_an_unknown_preprocessing_is_refused(run, volume_run, tmp_path):
    shutil.copytree(volume_run.export_dir, tmp_path / "export")
    info = json.loads((tmp_path / "export" / "model.json").read_text())
    info["generators"]["t1_to_t2"]["preprocessed_per"] = "patch"
    (tmp_path / "export" / "model.json").write_text(json.dumps(info))
    image = scan_io.read_nifti(volume_run.volume_path)

    with pytest.raises(DataError, match="preprocessed per 'patch'"):
        translation.load_generator(tmp_path / "export", "t1_to_t2")
    with pytest.raises(ValueError, match="preprocess_per must be one of"):
        translation.translate_volume(run.model.t1_to_t2, image, preprocess_per="sideways")


@pytest.mark.parametrize("asked, logged", [("auto", "per volume"), ("slice", "per slice")])
def test_cli_preprocesses_as_the_model_was_trained_unless_told(volume_run, tmp_path, asked, logged):
    output = tmp_path / "t2.nii.gz"

    result = run_in_process(
        translate.main,
        *("--direction", "t1_to_t2", "--model", str(volume_run.export_dir / "t1_to_t2.keras")),
        *("--input", str(volume_run.volume_path), "--output", str(output)),
        *("--preprocess_per", asked, "--no-preprocess", "--quiet"),
    )

    assert result.returncode == 0, result.stderr
    assert f"Translated 4 of 6 slices (the other 2 are background), preprocessed {logged}" in (
        result.stderr
    )
    assert nib.load(output).shape == SMALL_VOLUME


@pytest.mark.parametrize(
    "value, source, message",
    [
        ("sideways", "volume", "argument --preprocess_per: invalid choice: 'sideways'"),
        ("volume", "image", "--preprocess_per volume needs a NIfTI volume or DICOM series"),
    ],
)
def test_cli_refuses_a_preprocessing_it_cannot_do(volume_run, tmp_path, value, source, message):
    image = next((volume_run.config.data_dir_t2).glob("*.png"))
    source_path = volume_run.volume_path if source == "volume" else image
    output = tmp_path / ("t2.nii.gz" if source == "volume" else "t2.png")

    result = run_in_process(
        translate.main,
        *("--direction", "t1_to_t2", "--model", str(volume_run.export_dir / "t1_to_t2.keras")),
        *("--input", str(source_path), "--output", str(output), "--preprocess_per", value),
    )

    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not output.exists()
