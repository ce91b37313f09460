"""Tests for the demo dataset generator (dataset/make_demo.py) and the committed demo data.

Generator tests build a small dataset in a temporary folder; the last tests read the
files committed under dataset/.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dataset import make_demo as demo

SMALL_RUN = {
    "n_train_subjects": 2,
    "slices_per_subject": 3,
    "n_test_subjects": 2,
    "test_slices_per_subject": 4,
    "size": 96,
    "n_lesion_subjects": 0,  # the lesion set has tests of its own
}
COMMITTED = demo.DATASET_DIR
CONTRAST_DIRS = {"T1w": "T1", "T2w": "T2"}


@pytest.fixture(scope="module")
def template() -> demo.TissueTemplate:
    return demo.load_template()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, template) -> tuple[Path, demo.DemoManifest]:
    output_dir = tmp_path_factory.mktemp("demo_seed0")
    return output_dir, demo.make_demo(output_dir, seed=0, **SMALL_RUN)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def _head_mask(image: np.ndarray) -> np.ndarray:
    """Head silhouette of an 8-bit slice: smoothed above the background noise, holes filled."""
    smooth = ndimage.gaussian_filter(image.astype(float), 1.0)
    return ndimage.binary_fill_holes(smooth > 30)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------------------- physics
def test_spin_echo_signal_matches_the_formula():
    signal = demo.spin_echo_signal(0.8, 1000.0, 100.0, tr_ms=1000.0, te_ms=100.0)
    assert signal == pytest.approx(0.8 * (1 - np.exp(-1)) * np.exp(-1))
    # Full recovery and no decay leave the proton density.
    assert demo.spin_echo_signal(0.7, 500.0, 80.0, tr_ms=1e6, te_ms=0.0) == pytest.approx(0.7)
    # Broadcasts over tissues.
    many = demo.spin_echo_signal(np.array([1.0, 0.5]), np.array([500.0, 500.0]), 70.0, 500.0, 15.0)
    assert many.shape == (2,) and many[1] == pytest.approx(many[0] / 2)


def _ordering(signal_by_tissue: dict[str, float], contrast: str) -> bool:
    csf, gm, wm = (signal_by_tissue[name] for name in ("csf", "gm", "wm"))
    return wm > gm > csf if contrast == "T1w" else csf > gm > wm


def test_textbook_contrast_holds_for_every_jittered_subject_and_protocol():
    # The worst corners of the TR/TE jitter, for many random subjects' tissue parameters.
    for number, contrast in itertools.product(range(1, 41), demo.SEQUENCES):
        subject = demo.draw_subject(seed=0, number=number)
        sequence = demo.SEQUENCES[contrast]
        for tr_factor, te_factor in itertools.product((0.9, 1.1), repeat=2):
            signals = demo.spin_echo_signal(
                subject.pd,
                subject.t1_ms,
                subject.t2_ms,
                sequence.tr_ms * tr_factor,
                sequence.te_ms * te_factor,
            )
            by_name = dict(zip(demo.TISSUE_NAMES, signals, strict=True))
            assert _ordering(by_name, contrast), (number, contrast, by_name)


def test_lesions_are_dark_on_t1w_and_bright_on_t2w_for_every_jittered_subject_and_protocol():
    for number, contrast in itertools.product(range(1, 41), demo.SEQUENCES):
        subject = demo.with_lesion_tissue(demo.draw_subject(seed=0, number=number))
        sequence = demo.SEQUENCES[contrast]
        for tr_factor, te_factor in itertools.product((0.9, 1.1), repeat=2):
            wm, lesion = demo.spin_echo_signal(
                subject.pd[[demo.TISSUE_NAMES.index("wm"), -1]],
                subject.t1_ms[[demo.TISSUE_NAMES.index("wm"), -1]],
                subject.t2_ms[[demo.TISSUE_NAMES.index("wm"), -1]],
                sequence.tr_ms * tr_factor,
                sequence.te_ms * te_factor,
            )
            # At least 5 % darker on T1w, at least twice as bright on T2w.
            assert (lesion < 0.95 * wm) if contrast == "T1w" else (lesion > 2 * wm), number


def test_simulated_images_have_textbook_contrast_per_tissue(template):
    # Mean 8-bit intensity over voxels that are >= 90 % one tissue, through the same
    # path the generator writes (deformation, bias, Rician noise, per-subject scaling).
    subject = demo.draw_subject(seed=0, number=5)
    z = demo.choose_slices(0, 5, template.slice_range, 6)
    fractions, bias = demo.simulate_tissue_fractions(template, subject, z, 128)
    head = fractions.sum(axis=0) >= 0.5
    means = {}
    for contrast in demo.SEQUENCES:
        magnitude, _ = demo.acquire(subject, contrast, fractions, bias, seed=0)
        image = demo.to_uint8(magnitude, head)
        means[contrast] = {
            name: float(image[fractions[demo.TISSUE_NAMES.index(name)] >= 0.9].mean())
            for name in ("csf", "gm", "wm")
        }
        assert _ordering(means[contrast], contrast), means
    # The contrast is clear, not a rounding accident: at least 10 grey levels apart.
    t1w, t2w = means["T1w"], means["T2w"]
    assert min(t1w["wm"] - t1w["gm"], t1w["gm"] - t1w["csf"]) > 10, t1w
    assert min(t2w["csf"] - t2w["gm"], t2w["gm"] - t2w["wm"]) > 10, t2w


def test_subjects_differ_in_anatomy_and_bias(template):
    z = (80,)
    first, second = (demo.draw_subject(seed=0, number=n) for n in (1, 2))
    fractions_1, bias_1 = demo.simulate_tissue_fractions(template, first, z, 96)
    fractions_2, _ = demo.simulate_tissue_fractions(template, second, z, 96)
    wm = demo.TISSUE_NAMES.index("wm")
    assert _dice(fractions_1[wm] > 0.5, fractions_2[wm] > 0.5) < 0.9
    # A smooth multiplicative field within BrainWeb's INU range, not a constant.
    head = fractions_1.sum(axis=0) >= 0.5
    low, high = 1 - first.bias_level / 2, 1 + first.bias_level / 2
    assert low - 1e-6 <= bias_1.min() and bias_1.max() <= high + 1e-6
    assert np.ptp(bias_1[head]) > 0.05


def test_template_is_found_without_importing_nilearn():
    # nilearn's top-level import pulls in scikit-learn and more; the generator needs only
    # its data files.
    code = (
        "import sys; from dataset import make_demo as demo; "
        "assert (demo.find_template_dir() / demo.TEMPLATE_FILES['gm']).is_file(); "
        "assert 'nilearn' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=COMMITTED.parent, check=True)


def test_choose_slices_spreads_unique_slices_over_the_range():
    z = demo.choose_slices(seed=0, number=1, slice_range=(30, 136), n_slices=11)
    assert len(set(z)) == 11 and list(z) == sorted(z)
    assert 30 <= min(z) < 40 and 126 < max(z) <= 136


# ---------------------------------------------------------------------------- generator
def test_same_seed_gives_identical_bytes_and_another_seed_does_not(small_run, tmp_path):
    output_dir, _ = small_run
    first = _files(output_dir)
    again = tmp_path / "again"
    demo.make_demo(again, seed=0, **SMALL_RUN)
    assert _files(again) == first
    # gzip stores a timestamp unless told not to; two runs in one second would hide it.
    for path in (output_dir / "Test").glob("volumes*/*.nii.gz"):
        assert path.read_bytes()[4:8] == bytes(4), path.name
    other = tmp_path / "other_seed"
    demo.make_demo(other, seed=1, **SMALL_RUN)
    other_files = _files(other)
    assert len(other_files) == len(first)
    assert not set(other_files.values()) & set(first.values())


def test_rerun_replaces_its_own_previous_output_only(tmp_path, template):
    target = tmp_path / "rerun"
    demo.make_demo(target, seed=0, **SMALL_RUN)
    (target / "README.md").write_text("kept")
    smaller = dict(SMALL_RUN, n_train_subjects=1)
    rerun = demo.make_demo(target, seed=0, write_volume=False, **smaller)
    written = {str(record.path.relative_to(target)) for record in rerun.slices}
    # The first run's extra slices and its volumes are gone; the unrelated file stays.
    assert set(_files(target)) == written | {"README.md"}


def test_train_subjects_are_disjoint_between_contrasts_and_from_test(small_run):
    output_dir, manifest = small_run
    subjects = {
        key: {r.subject for r in manifest.slices if (r.split, r.contrast) == key}
        for key in itertools.product(("train", "test"), demo.SEQUENCES)
    }
    train_t1, train_t2 = subjects[("train", "T1w")], subjects[("train", "T2w")]
    test = subjects[("test", "T1w")]
    assert len(train_t1) == len(train_t2) == SMALL_RUN["n_train_subjects"]
    assert not train_t1 & train_t2
    assert not (train_t1 | train_t2) & test
    assert test == subjects[("test", "T2w")]
    # The file names say the same.
    names_t1 = {p.name.split("_")[0] for p in (output_dir / "Tr1" / "TrainT1").glob("*.png")}
    names_t2 = {p.name.split("_")[0] for p in (output_dir / "Tr2" / "TrainT2").glob("*.png")}
    assert names_t1 == train_t1 and names_t2 == train_t2


def test_written_slices_are_8bit_and_named_by_subject_and_slice(small_run):
    _, manifest = small_run
    n_expected = 2 * SMALL_RUN["n_train_subjects"] * SMALL_RUN["slices_per_subject"]
    n_expected += 2 * SMALL_RUN["n_test_subjects"] * SMALL_RUN["test_slices_per_subject"]
    assert len(manifest.slices) == n_expected
    for record in manifest.slices:
        assert record.path.name == f"{record.subject}_z{record.z:03d}.png"
        with Image.open(record.path) as image:
            assert image.mode == "L"
            assert image.size == (SMALL_RUN["size"], SMALL_RUN["size"])


def test_paired_test_slices_line_up(small_run):
    output_dir, _ = small_run
    t1_paths = sorted((output_dir / "Test" / "T1").glob("*.png"))
    t2_paths = sorted((output_dir / "Test" / "T2").glob("*.png"))
    assert [p.name for p in t1_paths] == [p.name for p in t2_paths]
    assert len(t1_paths) == SMALL_RUN["n_test_subjects"] * SMALL_RUN["test_slices_per_subject"]
    t1_masks = [_head_mask(_read_png(p)) for p in t1_paths]
    t2_masks = [_head_mask(_read_png(p)) for p in t2_paths]
    for path, t1_mask, t2_mask in zip(t1_paths, t1_masks, t2_masks, strict=True):
        # Same anatomy and geometry in both contrasts: the head outlines coincide, and
        # no shift of the T2 outline by up to 3 pixels matches the T1 outline better.
        shifts = list(itertools.product(range(-3, 4), repeat=2))
        overlap = [_dice(t1_mask, np.roll(t2_mask, shift, axis=(0, 1))) for shift in shifts]
        assert overlap[shifts.index((0, 0))] > 0.95, path.name
        assert shifts[int(np.argmax(overlap))] == (0, 0), path.name


def test_volumes_load_and_match_the_test_slices(small_run, template):
    output_dir, manifest = small_run
    volume_subject = min(r.subject for r in manifest.slices if r.split == "test")
    paths = {
        c: output_dir / "Test" / "volumes" / f"{volume_subject}_{c}.nii.gz" for c in CONTRAST_DIRS
    }
    oblique = output_dir / demo.OBLIQUE_DIR / f"{volume_subject}_T2w.nii.gz"
    assert sorted(manifest.volumes) == sorted([*paths.values(), oblique])
    images = {c: nib.load(path) for c, path in paths.items()}
    t1w, t2w = images["T1w"], images["T2w"]
    assert t1w.shape == t2w.shape and np.array_equal(t1w.affine, t2w.affine)
    spacing = demo.FOV_MM / SMALL_RUN["size"]
    assert np.allclose(t1w.header.get_zooms(), (spacing, spacing, 1.0))
    low, high = template.slice_range
    assert t1w.shape[2] == high - low + 1
    # The volume starts at template slice `low`: same world z as the template's.
    assert t1w.affine[2, 3] == pytest.approx(template.affine[2, 3] + low)
    # Each PNG of that subject is the matching volume slice, inside the in-plane crop.
    _, grid_affine = demo.output_grid(SMALL_RUN["size"], [low], template)
    x0, y0 = np.rint((t1w.affine[:2, 3] - grid_affine[:2, 3]) / spacing).astype(int)
    nx, ny = t1w.shape[:2]
    for contrast, image in images.items():
        assert image.get_data_dtype() == np.uint8
        volume = np.asarray(image.dataobj)
        records = [
            r for r in manifest.slices if r.subject == volume_subject and r.contrast == contrast
        ]
        assert records
        for record in records:
            grid_slice = np.rot90(_read_png(record.path), k=-1)  # picture -> [x, y]
            expected = grid_slice[x0 : x0 + nx, y0 : y0 + ny]
            assert np.array_equal(volume[:, :, record.z - low], expected)


def _resampled_at(image: nib.Nifti1Image, world: np.ndarray) -> np.ndarray:
    """The image's voxels at world points (..., 3) mm, trilinear, 0 outside."""
    to_voxel = np.linalg.inv(image.affine)
    voxels = world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    data = np.asarray(image.dataobj, float)
    return ndimage.map_coordinates(data, np.moveaxis(voxels, -1, 0), order=1, cval=0.0)


def test_second_t2_scan_has_its_own_geometry_and_lines_up_after_the_head_motion(small_run):
    output_dir, manifest = small_run
    subject = min(r.subject for r in manifest.slices if r.split == "test")
    t2 = nib.load(output_dir / "Test" / "volumes" / f"{subject}_T2w.nii.gz")
    oblique = nib.load(output_dir / demo.OBLIQUE_DIR / f"{subject}_T2w.nii.gz")
    assert oblique.get_data_dtype() == np.uint8
    # Another orientation (sagittal voxel order), voxel size and field of view.
    assert nib.aff2axcodes(oblique.affine) == demo.OBLIQUE_AXCODES != nib.aff2axcodes(t2.affine)
    pixel = demo.FOV_MM / SMALL_RUN["size"]
    assert np.allclose(oblique.header.get_zooms(), demo.OBLIQUE_VOXEL_PIXELS * pixel)
    assert oblique.shape != t2.shape
    # The same anatomy, where the head moved to: the T2w's voxels seen through
    # `head_motion` match the second scan, and without it they do not.
    grid = np.stack(np.meshgrid(*map(np.arange, t2.shape), indexing="ij"), -1).astype(float)
    world = grid @ t2.affine[:3, :3].T + t2.affine[:3, 3]
    first = np.asarray(t2.dataobj, float)
    head = first > 40
    moved = _resampled_at(oblique, demo.head_motion(world))
    unmoved = _resampled_at(oblique, world)
    lined_up = np.corrcoef(first[head], moved[head])[0, 1]
    assert lined_up > 0.7 and lined_up > np.corrcoef(first[head], unmoved[head])[0, 1] + 0.3
    assert np.allclose(demo.head_motion(demo.head_motion(world), inverse=True), world)
    # Its own scan record: another TR/TE draw of the same subject.
    records = [scan for scan in manifest.acquisitions if scan.subject == subject]
    assert [scan.contrast for scan in records] == ["T1w", "T2w", "T2w (second scan)"]
    assert records[1].tr_ms != records[2].tr_ms


def test_command_line_writes_a_small_dataset(tmp_path, template):
    args = ["--output_dir", str(tmp_path), "--n_train_subjects", "1", "--slices_per_subject", "2"]
    args += ["--n_test_subjects", "1", "--test_slices_per_subject", "2", "--size", "64"]
    args += ["--n_lesion_subjects", "0"]
    assert demo.main([*args, "--no_volume"]) == 0
    assert len(list((tmp_path / "Tr1" / "TrainT1").glob("*.png"))) == 2
    assert len(list((tmp_path / "Test" / "T2").glob("*.png"))) == 2
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_validation_subjects_are_numbered_apart_and_their_noise_free_scans_line_up(
    tmp_path, template
):
    args = ["--n_train_subjects", "0", "--n_test_subjects", "1", "--first_test_subject", "31"]
    args += ["--test_slices_per_subject", "2", "--size", "64", "--no_volume"]
    args += ["--n_lesion_subjects", "0"]
    assert demo.main([*args, "--output_dir", str(tmp_path / "noisy")]) == 0
    assert demo.main([*args, "--output_dir", str(tmp_path / "clean"), "--noise_free"]) == 0
    for contrast in ("T1", "T2"):
        noisy = sorted((tmp_path / "noisy" / "Test" / contrast).glob("*.png"))
        clean = sorted((tmp_path / "clean" / "Test" / contrast).glob("*.png"))
        assert len(noisy) == 2 and all(path.name.startswith("sub-31_z") for path in noisy)
        assert [path.name for path in clean] == [path.name for path in noisy]
        for noisy_path, clean_path in zip(noisy, clean, strict=True):
            noisy_image, clean_image = _read_png(noisy_path), _read_png(clean_path)
            # The background (corners, outside the head) holds only the noise.
            assert noisy_image[:8, :8].mean() > 0 and clean_image[:8, :8].max() == 0
            head = _head_mask(clean_image)
            assert np.corrcoef(noisy_image[head], clean_image[head])[0, 1] > 0.9


def _lesion_and_ring(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask PNG's lesion, and the pixels 2-4 px from it (as evaluate.py's ring)."""
    lesion = mask == 255
    distance = ndimage.distance_transform_edt(~lesion)
    return lesion, (distance > 1) & (distance <= 4)


def test_lesion_set_is_paired_masked_and_shows_the_lesions(tmp_path, template):
    args = ["--n_train_subjects", "0", "--n_test_subjects", "0", "--n_lesion_subjects", "1"]
    args += ["--lesion_slices_per_subject", "3", "--size", "64", "--no_volume"]
    assert demo.main([*args, "--output_dir", str(tmp_path)]) == 0
    folders = {name: tmp_path / "Test" / "lesions" / name for name in ("T1", "T2", "masks")}
    names = {name: sorted(p.name for p in folder.glob("*.png")) for name, folder in folders.items()}
    assert len(names["masks"]) == 3 and names["T1"] == names["T2"] == names["masks"]
    assert all(name.startswith("sub-41_z") for name in names["masks"])
    assert not list((tmp_path / "Test" / "T1").glob("*.png"))  # no lesion-free test set
    pooled: dict[str, list[np.ndarray]] = {"T1 lesion": [], "T1 ring": [], "T2 lesion": []}
    pooled["T2 ring"] = []
    for name in names["masks"]:
        mask = _read_png(folders["masks"] / name)
        assert set(np.unique(mask)) == {0, 255}, name  # every slice shows lesion
        lesion, ring = _lesion_and_ring(mask)
        for contrast in ("T1", "T2"):
            image = _read_png(folders[contrast] / name).astype(float)
            pooled[f"{contrast} lesion"].append(image[lesion])
            pooled[f"{contrast} ring"].append(image[ring])
    means = {key: float(np.concatenate(values).mean()) for key, values in pooled.items()}
    assert means["T1 lesion"] < 0.97 * means["T1 ring"], means
    assert means["T2 lesion"] > 1.5 * means["T2 ring"], means


def test_lesions_lie_in_white_matter_of_subjects_apart_from_the_others(tmp_path, template):
    # The same anatomy with and without lesions would leak the answer.
    with pytest.raises(ValueError, match="numbered apart"):
        demo.make_demo(tmp_path, n_train_subjects=25, first_lesion_subject=41)
    lesions = demo.draw_lesions(template, seed=0, number=41)
    low, high = demo.LESION_COUNT_RANGE
    assert low <= len(lesions) <= high
    wm = template.fractions[demo.TISSUE_NAMES.index("wm")]
    for lesion in lesions:
        assert wm[tuple(lesion.centre.astype(int))] > 0.9
        assert np.all((3.0 <= lesion.semi_axes_mm) & (lesion.semi_axes_mm <= 7.0))
    fraction = demo.lesion_map(template, lesions)
    assert fraction.max() > 0.9 and np.all(fraction <= wm)  # it replaces white matter only


def test_command_line_defaults_are_make_demo_defaults():
    args = demo.parse_args([])
    assert args.output_dir == COMMITTED
    assert (args.seed, args.size, args.n_train_subjects) == (0, 256, 10)
    assert (args.slices_per_subject, args.n_test_subjects, args.test_slices_per_subject) == (
        11,
        3,
        15,
    )
    assert (args.n_lesion_subjects, args.lesion_slices_per_subject) == (3, 8)
    assert args.first_lesion_subject is None


# ---------------------------------------------------------------------------- committed data
def test_committed_dataset_has_the_promised_layout():
    train_t1 = sorted((COMMITTED / "Tr1" / "TrainT1").glob("*.png"))
    train_t2 = sorted((COMMITTED / "Tr2" / "TrainT2").glob("*.png"))
    test_t1 = sorted((COMMITTED / "Test" / "T1").glob("*.png"))
    test_t2 = sorted((COMMITTED / "Test" / "T2").glob("*.png"))
    assert len(train_t1) >= 100 and len(train_t2) >= 100
    assert len(test_t1) >= 40 and [p.name for p in test_t1] == [p.name for p in test_t2]
    for path in train_t1 + train_t2 + test_t1 + test_t2:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("L", (256, 256)), path
    subjects = [{p.name.split("_")[0] for p in paths} for paths in (train_t1, train_t2, test_t1)]
    assert not subjects[0] & subjects[1]
    assert not (subjects[0] | subjects[1]) & subjects[2]
    volumes = sorted((COMMITTED / "Test" / "volumes").glob("*.nii.gz"))
    assert [p.name.split("_")[1] for p in volumes] == ["T1w.nii.gz", "T2w.nii.gz"]
    assert {p.name.split("_")[0] for p in volumes} <= subjects[2]
    for path in volumes:
        image = nib.load(path)
        assert image.get_data_dtype() == np.uint8 and np.allclose(image.header.get_zooms(), 1.0)
    oblique = sorted((COMMITTED / demo.OBLIQUE_DIR).glob("*.nii.gz"))
    assert [p.name for p in oblique] == [volumes[1].name]  # a second T2w of that subject
    image = nib.load(oblique[0])
    assert image.get_data_dtype() == np.uint8 and np.allclose(image.header.get_zooms(), 2.0)
    assert nib.aff2axcodes(image.affine) == demo.OBLIQUE_AXCODES
    lesions = {
        name: sorted((COMMITTED / "Test" / "lesions" / name).glob("*.png"))
        for name in ("T1", "T2", "masks")
    }
    assert len(lesions["masks"]) >= 20
    assert [p.name for p in lesions["T1"]] == [p.name for p in lesions["T2"]]
    assert [p.name for p in lesions["T1"]] == [p.name for p in lesions["masks"]]
    lesion_subjects = {p.name.split("_")[0] for p in lesions["masks"]}
    assert not (subjects[0] | subjects[1] | subjects[2]) & lesion_subjects
    data = train_t1 + train_t2 + test_t1 + test_t2 + volumes + oblique + sum(lesions.values(), [])
    assert sum(path.stat().st_size for path in data) < 20 * 1000 * 1000


def test_committed_lesions_are_dark_on_t1w_and_bright_on_t2w_in_every_slice():
    folder = COMMITTED / "Test" / "lesions"
    for path in sorted((folder / "masks").glob("*.png")):
        mask = _read_png(path)
        assert set(np.unique(mask)) == {0, 255}, path.name
        lesion, ring = _lesion_and_ring(mask)
        t1 = _read_png(folder / "T1" / path.name).astype(float)
        t2 = _read_png(folder / "T2" / path.name).astype(float)
        assert t1[lesion].mean() < 0.97 * t1[ring].mean(), path.name
        assert t2[lesion].mean() > 1.5 * t2[ring].mean(), path.name


def test_committed_slices_are_what_the_generator_makes(tmp_path):
    # Regenerating the first T1w training subject with the default settings reproduces
    # its committed files byte for byte (each subject depends only on seed and number).
    manifest = demo.make_demo(
        tmp_path, n_train_subjects=1, n_test_subjects=0, n_lesion_subjects=0, write_volume=False
    )
    regenerated = [r.path for r in manifest.slices if r.contrast == "T1w"]
    committed = sorted((COMMITTED / "Tr1" / "TrainT1").glob("sub-01_*.png"))
    assert [p.name for p in regenerated] == [p.name for p in committed]
    for new, old in zip(regenerated, committed, strict=True):
        assert new.read_bytes() == old.read_bytes(), old.name
