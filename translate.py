"""Translate scans with a trained generator, or export the generators for sharing.

    python translate.py --direction t1_to_t2 --checkpoint_dir output/checkpoints \\
        --input sub-01_T1w.nii.gz --output sub-01_T2w_synthetic.nii.gz
    python translate.py --direction t1_to_t2 --checkpoint_dir output/checkpoints \\
        --input sub-01_T1w.nii.gz --output t2.nii.gz --uncertainty 8 --cycle_residual
    python translate.py --export --checkpoint_dir output/checkpoints

This module only checks the command line and calls the library (`scan_io` to read and
write, `translation` to translate, `checkpoints` to export); bad input is a one-line
`error: ...` on stderr with exit code 2, and nothing is left at the output path.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from config import EXPORT_DIR_NAME, UNCERTAINTY_SEED, positive_int
from directions import DIRECTIONS, contrast_names, reverse_of
from errors import DataError, first_line
from preprocessing import PREPROCESSED_PER
from scan_io import IMAGE_SUFFIXES, WRITABLE_DTYPES
from volumes import NIFTI_SUFFIXES

# Keep TensorFlow's C++ start-up chatter off the console unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)

WRITABLE_IMAGE_SUFFIXES = tuple(WRITABLE_DTYPES)
# Read but never written: JPEG is lossy and BMP holds 8 bits only.
READ_ONLY_IMAGE_SUFFIXES = tuple(sorted(IMAGE_SUFFIXES - set(WRITABLE_DTYPES)))

EPILOG = """\
inputs and outputs:
  a .png/.tif/.jpg/.bmp file      -> the --output file (.png or .tif), or a file of the same
                                     name in the --output folder
  a folder of such images         -> the same names (and subfolders) under --output; a
                                     file that cannot be read is skipped with a warning
  a NIfTI volume (.nii, .nii.gz)  -> a NIfTI volume (--output .nii/.nii.gz) of the same
                                     shape, affine and header (qform/sform, zooms), float32
  a DICOM series folder           -> a NIfTI volume in scanner (RAS) geometry, and with
                                     --dicom_out also a new DICOM series
  Image files keep their bit depth unless --output_dtype says otherwise (8-bit -> 8-bit
  PNG, 16-bit -> 16-bit PNG, float -> float32 TIFF); values are never clipped to 8 bits:
  if the values do not fit the type you ask for, it is an error. .jpg/.bmp inputs are
  written as .png, float32 always as .tif.

slices and preprocessing:
  Volumes are translated slice by slice along --axis: a plane name picks the voxel axis
  closest to that plane's normal (axial is the third voxel axis of the usual axial
  acquisition), a number picks a voxel axis; by default the plane a model trained on
  volumes was cut along, else axial. Each slice is shown to the generator anterior (or
  superior) up, as the training PNGs of dataset/make_demo.py. Inputs are preprocessed
  as the model's training data were (--preprocess_per auto, from model.json or the run's
  config.json and data dir):
    volume  a model trained on NIfTI volumes: the whole volume gets one 3-D N4 bias
            correction, its minimum -> 0 and the 99.5th percentile of its foreground
            -> 1, then it is cut into slices, each resampled to the model size
    slice   a model trained on 2-D images (PNG/TIFF), and any model whose export does
            not say: each slice gets its own 2-D N4, its minimum -> 0 and the 99.5th
            percentile of its foreground -> 1, and is resampled to the model size
  N4 is on or off as the model was trained, unless --preprocess/--no-preprocess says
  otherwise. Image files are always preprocessed per slice. The translation is
  resampled back to the slice's own size. Slices with under 1 % foreground (against
  the whole volume) are not translated and stay background.

intensity:
  input (default)  [0, 1] is mapped linearly to [minimum, 99.5th percentile of the
                   foreground] of the input: the inverse of the training normalization,
                   taken over the whole volume for NIfTI/DICOM, per image for images.
                   Volumes get scanner-like values; background is the input's minimum.
  unit             [0, 1] floats; in a uint8/uint16 file, 0..255 or 0..65535.

where is it unsure (--uncertainty N, --cycle_residual):
  Beside the output, named after it with a suffix before the extension (t2.nii.gz ->
  t2_mean.nii.gz; an output folder -> sibling folders out_mean/ ...), same format,
  geometry and data type (integer images round them: --output_dtype float32 keeps
  them fine); DICOM input gets them as NIfTI beside the NIfTI output:
    _mean            the mean of N stochastic passes: the U-Net's dropout kept on, every
                     other pass on the input mirrored left-right (then mirrored back)
    _uncertainty     their per-voxel standard deviation, in the output's units (the
                     width of the output's intensity range times the [0, 1] spread)
    _cycle_residual  |the output translated back by the other generator - the input|,
                     in the same units
  The main output stays the one deterministic translation. Bright = unsure: on the
  demo test set both maps find the worst 10 % of errors better than chance, but dark
  is no proof: lesions rendered wrongly are mostly not flagged (docs/trust.md).
  --seed fixes the dropout masks: the same seed gives the same maps.

export:
  --export --checkpoint_dir output/checkpoints writes output/export/t1_to_t2.keras,
  t2_to_t1.keras and model.json (image size, value range, and the preprocessing: N4,
  percentile, slice axis, per slice or per volume), reading output/config.json beside
  the checkpoint dir and the data dirs it names; translate then takes --model.

exit codes: 0 done; 2 bad arguments or unusable input; 1 a failed read or write; 130
interrupted. Files are written under a temporary name and renamed when complete, so
nothing half-written is ever left at an output path.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Translate brain MRI slices, NIfTI volumes or DICOM series between\n"
        "T1- and T2-weighted contrast with a trained mri-gan generator, or export the\n"
        "generators as .keras files. Synthetic images are for research, not diagnosis.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--direction", choices=tuple(DIRECTIONS), help="which generator to use")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint_dir",
        type=Path,
        help="a training run's checkpoints (e.g. output/checkpoints); the image size and "
        "preprocessing come from config.json beside it",
    )
    source.add_argument(
        "--model",
        type=Path,
        help="an exported generator (e.g. output/export/t1_to_t2.keras) or export folder",
    )
    parser.add_argument(
        "--input", type=Path, help="image file, folder of images, NIfTI file or DICOM folder"
    )
    parser.add_argument("--output", type=Path, help="output file or folder (see below)")
    parser.add_argument(
        "--axis",
        choices=("axial", "coronal", "sagittal", "0", "1", "2"),
        help="volumes: the slice plane, or a voxel axis 0-2 (default: the plane of the "
        "training volumes for a model trained on volumes, else axial)",
    )
    parser.add_argument(
        "--preprocess_per",
        default="auto",
        choices=("auto", *PREPROCESSED_PER),
        help="volumes: N4 and normalization per volume (before cutting) or per slice; "
        "default auto: as the model's training data were, per slice when not recorded",
    )
    parser.add_argument(
        "--preprocess",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="N4 bias correction before translating (default: as the model was trained); "
        "normalization and resampling always happen",
    )
    parser.add_argument(
        "--intensity",
        default="input",
        choices=("input", "unit"),
        help="output intensity scale, see below (default: input)",
    )
    parser.add_argument(
        "--output_dtype",
        choices=("uint8", "uint16", "float32"),
        help="output data type (default: images as the input, volumes float32)",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=8,
        help="slices per forward pass of the generator (default: 8)",
    )
    parser.add_argument(
        "--dicom_out",
        type=Path,
        help="DICOM input only: also write the result as a new DICOM series in this folder",
    )
    parser.add_argument(
        "--uncertainty",
        type=int,
        metavar="N",
        help="also write the mean and the standard deviation (in the output's units) of "
        "N >= 2 stochastic passes: suffixes _mean and _uncertainty, see below",
    )
    parser.add_argument(
        "--cycle_residual",
        action="store_true",
        help="also write |back-translation - input| (suffix _cycle_residual); needs the "
        "other generator: --checkpoint_dir, or --model in an export folder",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=UNCERTAINTY_SEED,
        help="seed of the stochastic passes (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--export",
        action="store_true",
        help="export both generators of --checkpoint_dir as .keras files, then stop",
    )
    parser.add_argument(
        "--export_dir",
        type=Path,
        help="where --export writes (default: export/ beside the checkpoint dir)",
    )
    return parser


# Exit codes, as main.py: 2 for arguments or input that cannot be used, 1 for a failed
# read or write (a full disk), 130 when Ctrl-C stopped the run.
EXIT_BAD_INPUT = 2
EXIT_READ_WRITE_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse missing or conflicting flags (argparse exit 2) before any work."""
    if args.export:
        if args.checkpoint_dir is None:
            parser.error("--export needs --checkpoint_dir")
        return
    missing = [flag for flag in ("direction", "input", "output") if getattr(args, flag) is None]
    if missing:
        parser.error("the following arguments are required: --" + ", --".join(missing))
    if args.checkpoint_dir is None and args.model is None:
        parser.error("give the trained model: --checkpoint_dir or --model")
    if args.uncertainty is not None and args.uncertainty < 2:
        fail(
            f"--uncertainty {args.uncertainty}: give at least 2 passes (the spread of one "
            "pass is 0)"
        )


def input_kind(path: Path) -> str:
    """The kind of input: "nifti", "image", "images" (a folder) or "dicom" (a folder).

    Exits with an error for a missing path, an empty folder or an unknown file type.
    """
    if not path.exists():
        fail(f"input {path} does not exist")
    if path.is_file():
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            return "nifti"
        if path.suffix.lower() in WRITABLE_IMAGE_SUFFIXES + READ_ONLY_IMAGE_SUFFIXES:
            return "image"
        fail(
            f"input {path} is not an image (.png .tif .jpg .bmp), a NIfTI volume "
            "(.nii, .nii.gz) or a folder"
        )
    files = [file for file in path.rglob("*") if file.is_file()]
    if not files:
        fail(f"input folder {path} is empty")
    if any(
        file.suffix.lower() in WRITABLE_IMAGE_SUFFIXES + READ_ONLY_IMAGE_SUFFIXES for file in files
    ):
        return "images"
    return "dicom"


def check_before_tensorflow(args: argparse.Namespace, kind: str) -> None:
    """The checks of input and model paths that need no TensorFlow, so that common
    mistakes answer at once; `translation` checks again (it serves notebooks too), and more.
    """
    if kind == "nifti":
        import nibabel as nib

        try:
            shape = nib.load(args.input).shape  # reads the header only
        except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
            fail(f"input {args.input} is not a readable NIfTI volume: {first_line(error)}")
        if len(shape) != 3:
            fail(
                f"NIfTI {args.input} is {len(shape)}-D ({'x'.join(map(str, shape))}); "
                "translation takes one 3-D volume (split a 4-D series into volumes first)"
            )
    elif kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.input) as image:
                image.load()
        except UnidentifiedImageError:
            fail(f"input {args.input}: not an image")
        except (OSError, SyntaxError, ValueError):
            fail(f"input {args.input}: unreadable or truncated image")
    elif kind == "dicom":
        from pydicom.misc import is_dicom

        if not any(is_dicom(file) for file in args.input.rglob("*") if file.is_file()):
            fail(f"DICOM folder {args.input} holds no DICOM image")
    if args.model is not None and not args.model.exists():
        fail(f"model {args.model} does not exist")
    if args.checkpoint_dir is not None:
        if not args.checkpoint_dir.is_dir():
            fail(f"checkpoint dir {args.checkpoint_dir} does not exist or is not a directory")
        if not (args.checkpoint_dir / "checkpoint").is_file():  # CheckpointManager's index
            nested = args.checkpoint_dir / "checkpoints"
            hint = f" (did you mean {nested}?)" if nested.is_dir() else ""
            fail(f"checkpoint dir {args.checkpoint_dir} holds no checkpoint{hint}")


def volume_output(args: argparse.Namespace, kind: str) -> Path:
    """The NIfTI file to write: --output, or a file named after the input in that folder."""
    if args.output.name.lower().endswith(NIFTI_SUFFIXES):
        return args.output
    if args.output.is_dir():
        name = args.input.name if kind == "nifti" else f"{args.input.resolve().name}.nii.gz"
        return args.output / name
    fail(f"output {args.output} must end in .nii or .nii.gz, or be an existing folder")


def same_path(first: Path, second: Path) -> bool:
    return first.resolve() == second.resolve()


def output_target(parser: argparse.ArgumentParser, args: argparse.Namespace, kind: str) -> Path:
    """Where the result goes (a NIfTI file for volumes, else --output); exits if unusable."""
    if args.dicom_out is not None:
        if kind != "dicom":
            parser.error("--dicom_out needs a DICOM series folder as --input")
        if args.dicom_out.exists() and (
            not args.dicom_out.is_dir() or any(args.dicom_out.iterdir())
        ):
            fail(f"--dicom_out {args.dicom_out} exists and is not an empty folder")
    suffix = args.output.suffix.lower()
    if kind == "images" and args.output.is_file():
        fail(f"output {args.output} is a file; a folder of images needs an output folder")
    if kind == "image" and suffix in READ_ONLY_IMAGE_SUFFIXES:
        fail(f"output {args.output}: write .png or .tif (JPEG is lossy, BMP holds 8 bits)")
    if kind == "image" and args.output_dtype == "float32" and suffix == ".png":
        fail(f"output {args.output}: PNG cannot hold float32 values; name it .tif")
    target = volume_output(args, kind) if kind in ("nifti", "dicom") else args.output
    if same_path(args.input, target):
        fail(f"output {target} is the input; choose another path")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    # Our own messages at INFO; other libraries' (TensorFlow's) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in (__name__, "translation", "inference"):
        logging.getLogger(name).setLevel(logging.INFO)
    # TensorFlow's warnings about checkpoint parts deliberately not restored are noise here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if args.export:
        check_before_tensorflow(args, "export")
        run_export(args)
        return

    kind = input_kind(args.input)
    if args.preprocess_per == "volume" and kind in ("image", "images"):
        parser.error("--preprocess_per volume needs a NIfTI volume or DICOM series as --input")
    target = output_target(parser, args, kind)
    check_before_tensorflow(args, kind)

    with errors_as_one_line("interrupted; no file was left half-written", target):
        translate(args, kind, target)


@contextlib.contextmanager
def errors_as_one_line(interrupted: str, target: Path | str) -> Iterator[None]:
    """Turn the errors a command can meet into one `error:` line and its exit code."""
    try:
        yield
    except DataError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(interrupted, EXIT_INTERRUPTED)
    except OSError as error:
        fail(f"{error.strerror or error}: {error.filename or target}", EXIT_READ_WRITE_FAILED)


def back_generator(args: argparse.Namespace):
    """The other direction's generator, for --cycle_residual; DataError if there is none."""
    import translation
    from checkpoints import MODEL_INFO_NAME

    reverse = reverse_of(args.direction)
    if args.checkpoint_dir is not None:
        return translation.load_generator(args.checkpoint_dir, reverse)
    folder = args.model if args.model.is_dir() else args.model.parent
    if not (folder / MODEL_INFO_NAME).is_file():
        raise DataError(
            f"--cycle_residual needs the {reverse} generator too: give --checkpoint_dir, or "
            f"--model an export folder holding both .keras files ({folder} has no "
            f"{MODEL_INFO_NAME})"
        )
    return translation.load_generator(folder, reverse)


def map_targets(args: argparse.Namespace, kind: str, target: Path) -> list[Path]:
    """Where the maps of --uncertainty and --cycle_residual go: NIfTI files beside a
    volume's output, sibling folders of an output folder; an image's maps are named by
    `translation`. Exits if one of them is the input."""
    from uncertainty import MAP_NAMES, map_folder, map_path

    wanted = {"mean": args.uncertainty, "uncertainty": args.uncertainty}
    wanted["cycle_residual"] = args.cycle_residual
    if kind == "image":
        return []
    place = map_folder if kind == "images" else map_path
    targets = [place(target, name) for name in MAP_NAMES if wanted[name]]
    for path in targets:
        if same_path(args.input, path):
            fail(f"a map would be written to {path}, the input; choose another --output")
    return targets


def translate(args: argparse.Namespace, kind: str, target: Path) -> None:
    import scan_io
    import translation
    from uncertainty import map_folder, map_path

    map_paths = map_targets(args, kind, target)

    # Read the input first: a bad input fails before the model is loaded.
    if kind == "nifti":
        volume = scan_io.read_nifti(args.input)
    elif kind == "dicom":
        volume = scan_io.read_dicom_series(args.input)
    elif kind == "images":
        inputs = scan_io.find_images(args.input)
    else:
        scan_io.read_image(args.input)
        inputs = [args.input]
    source = args.model if args.model is not None else args.checkpoint_dir
    generator = translation.load_generator(source, args.direction)
    maps = {
        "uncertainty": args.uncertainty or 0,
        "seed": args.seed,
        "back_model": back_generator(args) if args.cycle_residual else None,
    }
    axis = int(args.axis) if args.axis and args.axis.isdigit() else args.axis
    progress = not args.quiet

    if kind in ("nifti", "dicom"):
        images = translation.translate_volume_maps(
            generator,
            volume,
            **maps,
            axis=axis,
            preprocess_per=None if args.preprocess_per == "auto" else args.preprocess_per,
            n4=args.preprocess,
            intensity=args.intensity,
            batch_size=args.batch_size,
            progress=progress,
            workers=None,
        )
        translated = images.pop("translation")
        for path, image in zip((target, *map_paths), (translated, *images.values()), strict=True):
            scan_io.write_nifti(image, path, args.output_dtype or "float32", args.intensity)
            log.info("Wrote %s", path)
        if args.dicom_out is not None:
            _, contrast = contrast_names(args.direction)
            files = scan_io.write_dicom_series(
                translated,
                args.input,
                args.dicom_out,
                f"synthetic {contrast} (mri-gan, research only)",
            )
            log.info("Wrote %d DICOM files to %s", len(files), args.dicom_out)
        return

    def output_path(path: Path, dtype: str) -> Path:
        if kind == "image" and args.output.suffix.lower() in WRITABLE_IMAGE_SUFFIXES:
            return args.output
        relative = path.relative_to(args.input) if kind == "images" else Path(path.name)
        return (args.output / relative).with_suffix(
            scan_io.image_output_suffix(relative.suffix, dtype)
        )

    def map_output_path(translated: Path, name: str) -> Path:
        if kind == "images":  # out/a/b.png -> out_uncertainty/a/b.png
            return map_folder(args.output, name) / translated.relative_to(args.output)
        return map_path(translated, name)

    result = translation.translate_image_files(
        generator,
        inputs,
        output_path,
        **maps,
        map_output_path=map_output_path,
        n4=args.preprocess,
        intensity=args.intensity,
        output_dtype=args.output_dtype,
        batch_size=args.batch_size,
        progress=progress and kind == "images",
    )
    if not result.written:
        fail(f"input {args.input}: no readable image to translate")
    where = result.written[0] if kind == "image" else args.output
    skipped = f", skipped {len(result.skipped)}" if result.skipped else ""
    log.info("Wrote %d image(s) to %s%s", len(result.written), where, skipped)
    if result.maps:
        places = result.maps if kind == "image" else map_paths
        log.info("Wrote the maps to %s", ", ".join(str(path) for path in places))


def run_export(args: argparse.Namespace) -> None:
    with errors_as_one_line("interrupted; no generator file was left half-written", "export"):
        from checkpoints import export_generators, restore_run

        run = restore_run(args.checkpoint_dir)
        export_dir = args.export_dir or args.checkpoint_dir.parent / EXPORT_DIR_NAME
        paths = export_generators(run.model, run.config, export_dir, epoch=run.epoch)
    log.info(
        "Exported the generators of %s (epoch %d) to %s: %s",
        run.checkpoint,
        run.epoch,
        export_dir,
        ", ".join(path.name for path in paths.values()),
    )


if __name__ == "__main__":
    main()
