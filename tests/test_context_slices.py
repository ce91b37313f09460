"""2.5-D (`--context_slices K`): slabs of neighbouring slices in training and translation.

Volumes are the toy heads of test_nifti_input (40 x 48 x 12, head in slices 2..9).
"""

from __future__ import annotations

import json

import keras
import nibabel as nib
import numpy as np
import pytest

import dataset.make_demo as demo
import evaluate
import preprocessing
import translation
from config import TrainConfig
from errors import DataError
from inference import Generator
from mri_gan import unet_generator
from tests.conftest import run_in_process, tiny_run_args, train_in_process, write_png_folder
from tests.test_nifti_input import AFFINE, head_volume, write_volume
from volumes import from_generator_view


def test_a_slab_repeats_the_end_slice_past_either_end_of_the_volume():
    assert preprocessing.slab_indices(5, 2, 12) == [3, 4, 5, 6, 7]
    assert preprocessing.slab_indices(0, 2, 12) == [0, 0, 0, 1, 2]
    assert preprocessing.slab_indices(11, 1, 12) == [10, 11, 11]
    assert preprocessing.slab_indices(4, 0, 12) == [4]


def test_each_slab_holds_its_slice_in_the_middle_and_its_neighbours_around_it():
    image = nib.Nifti1Image(head_volume(), AFFINE)
    single = preprocessing.preprocess_volume(image, 32, 32, n4=False)
    slabs = preprocessing.preprocess_volume(image, 32, 32, n4=False, context_slices=2)

    assert slabs.indices == single.indices
    assert slabs.slices.shape == (len(single.indices), 32, 32, 5)
    by_index = dict(zip(single.indices, single.slices, strict=True))
    for index, slab in zip(slabs.indices, slabs.slices, strict=True):
        for channel, neighbour in enumerate(range(index - 2, index + 3)):
            if neighbour in by_index:  # an empty slice is not among the training slices
                np.testing.assert_array_equal(slab[..., channel], by_index[neighbour])
    # Slice 2, the first with head, sees the empty slices 0 and 1 below it.
    assert slabs.slices[0][..., :2].max() < 0.05 < slabs.slices[0][..., 2].max()


def test_data_dirs_of_2d_images_are_refused_with_one_line(tmp_path):
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    write_png_folder(t1, 3, 40, 200, seed=1)
    write_volume(t2 / "sub-02_T2w.nii.gz", head_volume(2))
    args = tiny_run_args(t1, t2, tmp_path / "out")

    result = train_in_process(*args, "--context_slices", "1")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --context_slices 1 needs NIfTI volumes, but data dir {t1} holds 3 2-D "
        "images (e.g. slice_00.png), which have no neighbouring slices"
    ]
    assert not (tmp_path / "out" / "cache").exists() or not any((tmp_path / "out").rglob("*.npy"))

    test_dirs = ("--test_dir_t1", str(t2), "--test_dir_t2", str(t2))
    result = train_in_process(*args, "--context_slices", "1", *test_dirs)
    assert result.returncode == 2
    assert "--test_dir_t1/--test_dir_t2 are 2-D slices" in result.stderr


def slab_generator(context: int) -> Generator:
    keras.utils.set_random_seed(3)
    model = unet_generator(32, 32, "t1_to_t2", filters=4, channels=2 * context + 1)
    return Generator(model, "t1_to_t2", n4=False, preprocessed_per="volume")


def test_a_volume_is_translated_from_the_slab_of_each_slice():
    generator = slab_generator(1)
    image = nib.Nifti1Image(head_volume(), AFFINE)

    translated = translation.translate_volume(generator, image, intensity="unit").get_fdata()

    # By hand: the training slabs, the generator, the middle slice, back to the volume.
    made = preprocessing.preprocess_volume(
        image,
        32,
        32,
        n4=False,
        min_foreground=translation.MIN_FOREGROUND_FRACTION,
        context_slices=1,
    )
    output = generator.model.predict(made.slices * 2 - 1, verbose=0)
    middle = np.clip((output[..., 1] + 1) / 2, 0, 1)
    view = np.zeros((12, 48, 40), np.float32)  # the generator's view: (slices, rows, columns)
    for index, unit in zip(made.indices, middle, strict=True):
        view[index] = preprocessing.resample_to(unit, 48, 40)
    np.testing.assert_allclose(translated, from_generator_view(view, AFFINE), atol=1e-5)
    assert generator.context_slices == 1


def test_a_slab_model_refuses_2d_images_and_per_slice_preprocessing(tmp_path):
    generator = slab_generator(1)
    [png] = write_png_folder(tmp_path, 1, 40, 200, seed=0)
    with pytest.raises(DataError, match="sees 1 neighbouring slice"):
        translation.translate_image_files(generator, [png], lambda path, dtype: tmp_path / "o.png")
    image = nib.Nifti1Image(head_volume(), AFFINE)
    with pytest.raises(DataError, match="translates whole volumes"):
        translation.translate_volume(generator, image, preprocess_per="slice")
    assert not (tmp_path / "o.png").exists()


def test_the_cycle_residual_of_a_slab_model_takes_its_whole_output_slab_back():
    generator = slab_generator(1)
    back = slab_generator(1)
    image = nib.Nifti1Image(head_volume(), AFFINE)

    maps = translation.translate_volume_maps(
        generator, image, back_model=back, uncertainty=2, intensity="unit"
    )

    assert set(maps) == {"translation", "mean", "uncertainty", "cycle_residual"}
    made = preprocessing.preprocess_volume(
        image,
        32,
        32,
        n4=False,
        min_foreground=translation.MIN_FOREGROUND_FRACTION,
        context_slices=1,
    )
    slabs = generator.translate_slabs(made.slices)
    residual = np.abs(back.translate_unit(slabs) - made.slices[..., 1])
    view = np.zeros((12, 48, 40), np.float32)
    for index, unit in zip(made.indices, residual, strict=True):
        view[index] = preprocessing.resample_to(unit, 48, 40)
    np.testing.assert_allclose(
        maps["cycle_residual"].get_fdata(), from_generator_view(view, AFFINE), atol=1e-5
    )


def test_training_on_volumes_with_context_slices_end_to_end(tmp_path):
    # (Training on volumes without context shares this path: only the shapes differ.)
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    write_volume(t1 / "sub-01_T1w.nii.gz", head_volume(1))
    write_volume(t2 / "sub-02_T2w.nii.gz", head_volume(2, brightness=300))
    output = tmp_path / "out"

    result = train_in_process(
        *tiny_run_args(t1, t2, output), "--epochs", "1", "--context_slices", "1"
    )

    assert result.returncode == 0, result.stderr
    assert "T1: 8 images used (8 slices of 1 volume), 0 skipped" in result.stderr
    assert len(list((output / "cache").glob("*.json"))) == 2  # a manifest per volume
    info = json.loads((output / "export" / "model.json").read_text())
    assert info["context_slices"] == 1
    assert {entry["preprocessed_per"] for entry in info["generators"].values()} == {"volume"}
    config = json.loads((output / "config.json").read_text())
    assert config["context_slices"] == 1
    generator = translation.load_generator(output / "export" / "t2_to_t1.keras")
    assert generator.model.input_shape == (None, 32, 32, 3) == generator.model.output_shape
    assert generator.context_slices == 1
    assert (output / "epochs" / "epoch_001.png").is_file()

    # Scored on volumes only: 2-D test slices are refused before any work.
    result = run_in_process(evaluate.main, "--checkpoint_dir", str(output / "checkpoints"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the model sees 1 neighbouring slice(s) on each side")
    )


def test_make_demo_writes_training_subjects_as_volumes(tmp_path):
    manifest = demo.make_demo(
        tmp_path,
        n_train_subjects=1,
        n_test_subjects=0,
        n_lesion_subjects=0,
        size=32,
        train_volumes=True,
    )

    t1 = tmp_path / "Tr1" / "TrainT1" / "sub-01_T1w.nii.gz"
    t2 = tmp_path / "Tr2" / "TrainT2" / "sub-02_T2w.nii.gz"
    assert set(manifest.volumes) == {t1, t2}
    assert not manifest.slices and not list(tmp_path.rglob("*.png"))
    low, high = demo.load_template().slice_range
    assert nib.load(t1).shape[2] == high - low + 1
    assert preprocessing.preprocessed_per(tmp_path / "Tr1") == "volume"
    assert TrainConfig(context_slices=2).sample_shape == (256, 256, 5)
