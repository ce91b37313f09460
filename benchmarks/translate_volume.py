"""Time the translation of a NIfTI volume, slice by slice, with a U-Net generator.

    python -m benchmarks.translate_volume --size 256 --slices 48 [--json]
    python -m benchmarks.translate_volume --volume dataset/Test/volumes/sub-21_T1w.nii.gz \\
        --preprocess_per volume --json

Builds a generator of the size asked (random weights: speed does not depend on them)
and a synthetic head-like volume of `--slices` slices of size x size (or reads
`--volume`), then times `translation.translate_volume` without and with N4, for each
preprocessing asked: per slice (each slice normalized and, with N4, corrected on its
own, as training preprocesses 2-D images) and per volume (one 3-D N4 and normalization
of the whole volume, then cut, as training preprocesses NIfTI volumes). The forward pass
is also timed alone. Rates count every slice of the volume, background ones included.
The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.summary import report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# --preprocess_per: which preprocessing to time.
PREPROCESSING = {"slice": ("slice",), "volume": ("volume",), "both": ("slice", "volume")}


def head_volume(size: int, slices: int):
    """A (size, size, slices) int16 ellipsoid 'head' with a darker core, a bias and noise."""
    import nibabel as nib
    import numpy as np

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (size, size, slices)), indexing="ij")
    radius = np.sqrt((x / 0.75) ** 2 + (y / 0.9) ** 2 + (z / 1.6) ** 2)
    head = np.where(radius < 1, 600.0, 0.0) * np.where(radius < 0.6, 0.6, 1.0) * (1 + 0.3 * x)
    noise = np.random.default_rng(0).normal(0, 10, head.shape) * (radius < 1)
    return nib.Nifti1Image(np.clip(head + noise, 0, None).astype(np.int16), np.eye(4))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="model height and width")
    parser.add_argument("--slices", type=int, default=48, help="slices of the synthetic volume")
    parser.add_argument("--volume", help="a NIfTI file to translate instead (axial slices)")
    parser.add_argument(
        "--preprocess_per",
        choices=tuple(PREPROCESSING),
        default="both",
        help="the preprocessing to time (default: both)",
    )
    parser.add_argument("--batch", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import nibabel as nib
    import numpy as np

    import inference
    import translation
    from mri_gan import unet_generator
    from volumes import view_shape

    keras.utils.set_random_seed(0)
    generator = inference.Generator(
        unet_generator(args.size, args.size, "t1_to_t2"), "t1_to_t2", n4=True
    )
    volume = nib.load(args.volume) if args.volume else head_volume(args.size, args.slices)
    volume.get_fdata()  # read now, not in the first timed run
    slices, rows, columns = view_shape(volume.shape, volume.affine, "axial")

    batch = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 1))
    generator(batch)  # traces the compiled forward pass that translation uses
    started = time.perf_counter()
    repeats = max(1, slices // args.batch)
    for _ in range(repeats):
        generator(batch)
    forward_rate = repeats * args.batch / (time.perf_counter() - started)

    result = {
        "size": args.size,
        "volume": args.volume or "synthetic",
        "slices": slices,
        "slice_shape": [rows, columns],
        "batch": args.batch,
        "forward_slices_per_s": round(forward_rate, 2),
    }
    parts = []
    for per in PREPROCESSING[args.preprocess_per]:
        # Per slice keeps the key names of earlier versions of this benchmark.
        suffix = "" if per == "slice" else "_per_volume"
        for n4 in (False, True):
            started = time.perf_counter()
            translation.translate_volume(
                generator,
                volume,
                axis="axial",
                preprocess_per=per,
                n4=n4,
                batch_size=args.batch,
                workers=None,  # as translate.py
            )
            seconds = time.perf_counter() - started
            name = "n4" if n4 else "no_n4"
            result[f"volume_seconds_{name}{suffix}"] = round(seconds, 2)
            result[f"volume_slices_per_s_{name}{suffix}"] = round(slices / seconds, 2)
        parts.append(
            f"per {per}: {result[f'volume_seconds_no_n4{suffix}']} s without N4, "
            f"{result[f'volume_seconds_n4{suffix}']} s with N4"
        )
    return report(
        f"translate_volume {result['volume']} ({slices} slices of {rows}x{columns}) at "
        f"{args.size}x{args.size}, batch {args.batch}: forward pass "
        f"{result['forward_slices_per_s']} slices/s; whole volume " + "; ".join(parts),
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
