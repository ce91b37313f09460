"""Time the translation of a NIfTI volume, slice by slice, with a U-Net generator.

    python -m benchmarks.translate_volume --size 256 --slices 48 [--json]

Builds a generator of the size asked (random weights: speed does not depend on them)
and a synthetic head-like volume of `--slices` slices of size x size, then times
`translation.translate_volume` twice: without N4 (generator plus normalization and
resampling) and with N4 on every slice, as training preprocesses. The forward pass is
also timed alone. The last line printed is the summary (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.summary import report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    parser.add_argument("--size", type=int, default=256, help="slice height and width")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    import inference
    import translation
    from mri_gan import unet_generator

    keras.utils.set_random_seed(0)
    generator = inference.Generator(
        unet_generator(args.size, args.size, "t1_to_t2"), "t1_to_t2", n4=True
    )
    volume = head_volume(args.size, args.slices)

    batch = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 1))
    generator(batch)  # traces the compiled forward pass that translation uses
    started = time.perf_counter()
    repeats = max(1, args.slices // args.batch)
    for _ in range(repeats):
        generator(batch)
    forward_rate = repeats * args.batch / (time.perf_counter() - started)

    rates = {}
    for n4 in (False, True):
        started = time.perf_counter()
        translation.translate_volume(generator, volume, n4=n4, batch_size=args.batch)
        rates[n4] = args.slices / (time.perf_counter() - started)
    result = {
        "size": args.size,
        "slices": args.slices,
        "batch": args.batch,
        "forward_slices_per_s": round(forward_rate, 2),
        "volume_slices_per_s_no_n4": round(rates[False], 2),
        "volume_slices_per_s_n4": round(rates[True], 2),
    }
    return report(
        f"translate_volume {args.size}x{args.size}x{args.slices}, batch {args.batch}: "
        f"forward pass {result['forward_slices_per_s']} slices/s; whole volume "
        f"{result['volume_slices_per_s_no_n4']} slices/s without N4, "
        f"{result['volume_slices_per_s_n4']} slices/s with N4",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
