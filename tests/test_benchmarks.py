"""The benchmark scripts run on a tiny size and end with their JSON summary.

Those that set process-wide TensorFlow options (one inter-op thread, oneDNN's verbose
log) run as `python -m benchmarks.X`; the others run their `main` in this process.
Speed targets are checked by running the benchmarks, not here.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mri_gan
from benchmarks.flops import cyclegan_step_flops, forward_conv_flops, layer_forward_flops
from tests.conftest import REPO, run_in_process


def run_in_this_process(module: str, *args: str) -> dict:
    """`python -m <module> *args --json`, run in this process: its JSON summary."""
    result = run_in_process(importlib.import_module(module).main, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_module(*args: str, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_flop_count_of_the_256_unet_and_patchgan():
    generator = mri_gan.unet_generator(256, 256, "g")
    critic = mri_gan.patchgan_discriminator(256, 256, "d")
    # The reference unet_256 forward pass is about 11.9 GFLOP.
    assert round(forward_conv_flops(generator) / 1e9, 1) == 11.9
    # First critic conv by hand: 2 * 4*4 * 1 * 64 * 128*128.
    assert forward_conv_flops(critic) > 2 * 16 * 64 * 128 * 128
    step = cyclegan_step_flops(generator, critic, batch=2)
    assert step == 2 * 3 * (6 * forward_conv_flops(generator) + 6 * forward_conv_flops(critic))
    # Within 5 % of the 313.5 GFLOP that the reference implementation counts at batch 1.
    assert abs(step / 2 / 1e9 - 313.5) / 313.5 < 0.05


def test_flop_count_of_the_256_resnet_by_hand():
    def conv(kernel, channels_in, channels_out, side):
        return 2 * kernel * kernel * channels_in * channels_out * side * side

    by_hand = (
        conv(7, 1, 64, 256)  # c7s1-64
        + conv(3, 64, 128, 128)  # d128
        + conv(3, 128, 256, 64)  # d256
        + 18 * conv(3, 256, 256, 64)  # 9 residual blocks of two convs
        + conv(3, 256, 128, 64)  # u128: each of the 64x64 input pixels scatters a kernel
        + conv(3, 128, 64, 128)  # u64
        + conv(7, 64, 1, 256)  # c7s1-1
    )
    assert forward_conv_flops(mri_gan.resnet_generator(256, 256, "g")) == by_hand


def test_train_step_benchmark_prints_its_summary():
    generator = "unet"
    summary = run_in_this_process(
        "benchmarks.train_step",
        *("--generator", generator, "--size", "32", "--batch", "1"),
        *("--steps", "2", "--warmup", "1", "--sustained_seconds", "0.5"),
    )
    for key in (
        "median_s_per_step",
        "images_per_s",
        "gflop_per_step",
        "gflop_per_s",
        "matmul_gflop_per_s",
        "fraction_of_matmul",
        "sustained_matmul_gflop_per_s",
    ):
        assert summary[key] > 0, key
    # Both sides are rounded in the summary: 3 decimals for the fraction, 1 for GFLOP/s.
    assert summary["fraction_of_sustained_matmul"] == pytest.approx(
        summary["gflop_per_s"] / summary["sustained_matmul_gflop_per_s"], rel=0.02, abs=2e-3
    )
    assert summary["size"] == 32 and summary["steps"] == 2
    assert summary["generator"] == generator
    assert (summary["mixed_precision"], summary["xla"]) == (False, False)  # CPU defaults


def test_conv_bound_benchmark_times_every_convolution_of_both_networks():
    generator = "unet"  # the ResNet's convolutions go through the same timing
    summary = run_in_this_process(
        "benchmarks.conv_bound", "--generator", generator, "--size", "32", "--repeats", "1"
    )
    networks = {
        "generator": mri_gan.GENERATORS[generator](32, 32, "g"),
        "critic": mri_gan.patchgan_discriminator(32, 32, "d"),
    }
    timed = collections.Counter(row["network"] for row in summary["layers"])
    assert timed == {
        name: sum(layer_forward_flops(layer) > 0 for layer in network.layers)
        for name, network in networks.items()
    }
    assert all(row["seconds"] > 0 for row in summary["layers"])
    # Two networks of each kind: twice the layers' sum.
    total = 2 * sum(row["seconds"] for row in summary["layers"])
    assert summary["conv_s_per_step"] == pytest.approx(total, rel=1e-3, abs=1e-4)
    assert summary["gflop_per_step"] == pytest.approx(
        cyclegan_step_flops(*networks.values()) / 1e9, rel=1e-4
    )
    assert summary["fraction_of_matmul"] == pytest.approx(
        summary["gflop_per_step"] / total / summary["matmul_gflop_per_s"], rel=1e-2, abs=1e-3
    )


def test_input_pipeline_benchmark_prints_its_summary(tiny_dataset):
    t1, t2 = tiny_dataset
    summary = run_in_this_process(
        "benchmarks.input_pipeline",
        "--data_dir_t1",
        str(t1),
        "--data_dir_t2",
        str(t2),
        "--size",
        "32",
        "--batch",
        "2",
        "--epochs",
        "2",
    )
    assert summary["images"] == 8 and summary["images_preprocessed"] == 8
    assert summary["preprocess_images_per_s"] > 0 and summary["preprocess_cores_busy"] > 0
    # Eight 40-px images are too little work to start worker processes for.
    assert (summary["method"], summary["workers"], summary["volumes"]) == ("pool", 1, 0)
    assert 0 <= summary["later_wait_fraction"] < 1


def test_translate_volume_benchmark_prints_its_summary():
    summary = run_in_this_process(
        "benchmarks.translate_volume", "--size", "32", "--slices", "4", "--batch", "2"
    )
    for key in ("forward_slices_per_s", "volume_slices_per_s_no_n4", "volume_slices_per_s_n4"):
        assert summary[key] > 0, key
    assert summary["slices"] == 4


def test_small_convs_benchmark_times_both_forms_of_every_unet_convolution():
    summary = run_in_this_process(
        "benchmarks.small_convs", "--size", "64", "--batch", "1", "--repeats", "1"
    )
    # A 64 px U-Net: 6 convolutions down, 5 transposed up, then the output layer.
    kinds = [row["kind"] for row in summary["layers"]]
    assert kinds == ["down"] * 6 + ["up"] * 6
    assert all(row["conv_ms"] > 0 and row["matmul_ms"] > 0 for row in summary["layers"])
    # By matmul: the one-channel input, and every input map of at most 16x16.
    used = [row["input_side"] for row in summary["layers"] if row["matmul_used"]]
    assert used == [64, 16, 8, 4, 2, 1, 2, 4, 8, 16]
    assert summary["used_layers_matmul_ms"] > 0


def test_importing_the_onednn_benchmark_leaves_the_environment_alone():
    # Children of a process with ONEDNN_VERBOSE=1 log every kernel call to their output:
    # set on import, it once filled the pipes of later tests' training runs, which hung.
    code = "import os, benchmarks.onednn_kernels; print(os.environ.get('ONEDNN_VERBOSE'))"
    environment = {key: value for key, value in os.environ.items() if key != "ONEDNN_VERBOSE"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_onednn_convolution_flops_from_a_problem_description():
    from benchmarks.onednn_kernels import convolution_flops

    # A residual 3x3 conv of the ResNet, batch 3: 2 x 3 x 256 x 256 x 64 x 64 x 3 x 3.
    residual = "mb3_ic256oc256_ih66oh64kh3sh1dh0ph0_iw66ow64kw3sw1dw0pw0"
    assert convolution_flops(residual) == 2 * 3 * 256 * 256 * 64 * 64 * 9
    # Grouped: each output channel sees c_in / groups input channels.
    assert convolution_flops("g4mb1_ic8oc8_ih5oh5kh1sh1dh0ph0_iw5ow5kw1sw1dw0pw0") == 2 * 2 * 8 * 25


def test_onednn_kernels_summary_counts_only_kernel_calls():
    from benchmarks.onednn_kernels import summarize

    problem = "mb1_ic2oc4_ih5oh3kh3sh1dh0ph0_iw5ow3kw3sw1dw0pw0"  # 2 x 2 x 4 x 9 x 9 FLOPs
    memory = "src:f32::blocked:acdb::f0 wei:f32::blocked:Acdb16a::f0"
    lines = [
        f"onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit,forward_training,{memory},,alg:convolution_direct,{problem},0.9",
        f"onednn_verbose,v1,primitive,exec,cpu,convolution,jit,forward_training,{memory},,alg:convolution_direct,{problem},0.5",
        # With ONEDNN_VERBOSE_TIMESTAMP=1 a time stamp comes first.
        f"onednn_verbose,1795733840.1,v1,primitive,exec,cpu,convolution,jit,forward_training,{memory},,alg:convolution_direct,{problem},1.5",
        f"onednn_verbose,v1,primitive,exec,cpu,convolution,jit,backward_weights,{memory},,alg:convolution_direct,{problem},0",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0,,,2x3x4x5,0.25",
        "onednn_verbose,v1,graph,exec,cpu,100002,sdp,,,,,0.7",
        "onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2",
        "train_step resnet 32x32 batch 1 on CPU: 0.1 s/step",
    ]
    kinds = summarize(lines)
    flops = 2 * 2 * 4 * 9 * 9
    assert kinds["convolution forward_training"] == {
        "calls": 2,
        "ms": 2.0,
        "gflop": round(2 * flops / 1e9, 3),
        "gflop_per_s": round(2 * flops / 1e9 / 2e-3, 1),
    }
    # A call timed at 0 ms has no rate, rather than a division by zero.
    assert "gflop_per_s" not in kinds["convolution backward_weights"]
    assert kinds["reorder undef"] == {"calls": 1, "ms": 0.25, "gflop": 0.0}
    assert set(kinds) == {
        "convolution forward_training",
        "convolution backward_weights",
        "reorder undef",
    }


def onednn_switched(on: bool) -> dict:
    """This process's environment with TensorFlow's oneDNN kernels turned on or off, so
    that both paths run on every CPU (TensorFlow's default depends on AVX-512)."""
    return {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if on else "0"}


def test_onednn_kernels_benchmark_says_plainly_when_onednn_is_off():
    args = ("--generator", "resnet", "--size", "32", "--steps", "1", "--warmup", "1", "--json")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.onednn_kernels", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=onednn_switched(False),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    line, document = result.stdout.strip().splitlines()  # the summary, then the JSON
    assert "not measured" in line and "TF_ENABLE_ONEDNN_OPTS=0" in line
    assert json.loads(document)["onednn"] is False


def test_quality_benchmark_trains_within_its_budget_and_scores_against_identity(
    tmp_path, tiny_dataset
):
    t1, t2 = tiny_dataset
    output = tmp_path / "quality"
    # Budget: a few seconds, the preprocessing included; main.py ends the run after its
    # first epoch of 2 steps (building the model alone takes longer), of the 3 asked.
    result = run_in_this_process(
        "benchmarks.quality",
        *("--recipe", "narrow", "--data_dir_t1", str(t1), "--data_dir_t2", str(t2)),
        *("--test_dir_t1", str(t1 / "TrainT1"), "--test_dir_t2", str(t2)),
        *("--size", "32", "--steps", "6", "--score_every", "2", "--minutes", "0.05"),
        *("--no_n4", "--output_dir", str(output)),
        "--main_flags=--generator_filters 8 --critic_filters 8 --batch_size 2",
    )
    assert result["recipe"] == "narrow" and result["steps"] == 2
    assert result["minutes"] > 0 and "cores of" in result["machine"]
    for direction in ("t1_to_t2", "t2_to_t1"):
        scores = result[direction]
        assert {"ssim", "psnr", "mae", "head_ssim", "identity_ssim", "identity_psnr"} <= set(scores)
        assert -1 <= scores["ssim"] <= 1 and scores["mae"] >= 0
    # Identity scores a direction's input against its target: the same two sets of
    # slices both ways, and SSIM and PSNR are symmetric.
    forward, backward = result["t1_to_t2"], result["t2_to_t1"]
    assert forward["identity_ssim"] == pytest.approx(backward["identity_ssim"], abs=1e-4)
    assert forward["identity_psnr"] == pytest.approx(backward["identity_psnr"], abs=1e-3)
    export = output / "narrow" / "export"
    assert json.loads((export / "model.json").read_text())["epoch"] == 1
    assert result["export_dir"] == str(export)
    rows = (output / "quality.csv").read_text().splitlines()
    assert rows[0].startswith("recipe,steps,minutes,t1_to_t2_ssim")
    assert [row.split(",")[:2] for row in rows[1:]] == [["narrow", "2"]]
    assert (output / "quality.png").stat().st_size > 10_000


def test_ceiling_benchmark_scores_the_noise_free_test_scans_against_the_noisy_ones(tmp_path):
    result = run_in_this_process(
        "benchmarks.ceiling", "--size", "32", "--no_n4", "--output_dir", str(tmp_path)
    )
    assert result["pairs"] == 45
    # The same slices without noise: sub-21's first slice in both folders.
    clean = sorted((tmp_path / "noise_free_test" / "Test" / "T2").glob("*.png"))
    assert [path.name for path in clean] == sorted(
        path.name for path in (REPO / "dataset" / "Test" / "T2").glob("*.png")
    )
    for direction in ("t1_to_t2", "t2_to_t1"):
        ceiling = result[direction]["ceiling"]
        # Near, not at, a perfect score: only the noise differs (averaged 8x at 32 px).
        assert 0.8 < ceiling["ssim"] < 0.999 and 0.9 < ceiling["head_ssim"] < 1
        assert 25 < ceiling["psnr"] < 60


def test_lesion_lookup_maps_each_intensity_to_the_mean_target_of_its_bin():
    from benchmarks.lesion_lookup import BINS, apply_lookup, fit_lookup

    # Two tissues: 0.2 -> 0.9 and 0.7 -> 0.3 (0.25 and 0.35 averaged); a masked-out pixel
    # that would pull the first tissue's mean away.
    source = np.array([[[0.2, 0.2, 0.7, 0.7, 0.2]]])
    target = np.array([[[0.9, 0.9, 0.25, 0.35, 0.0]]])
    masks = np.array([[[True, True, True, True, False]]])
    lookup = fit_lookup(source, target, masks)

    assert lookup.shape == (BINS,)
    assert apply_lookup(lookup, np.array([0.2, 0.7])) == pytest.approx([0.9, 0.3])
    # Between the two tissues' bins, the lookup interpolates; beyond them it holds.
    assert 0.3 < apply_lookup(lookup, np.array([0.45]))[0] < 0.9
    assert apply_lookup(lookup, np.array([0.0, 1.0])) == pytest.approx([0.9, 0.3])
