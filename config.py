"""The one configuration object of a training run.

`TrainConfig` holds every setting, with its default written once here; `main.py`
builds it from the command line and every other module receives it explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from errors import first_line
from files import atomic_path

# The U-Net halves the image once per level; its depth is capped at the 8 levels of
# the reference pix2pix `unet_256`, and at least 4 levels keep it a U-Net.
MIN_UNET_LEVELS = 4
MAX_UNET_LEVELS = 8
# The 70x70 PatchGAN needs at least 32 px per side to leave a patch map of >= 1 px.
MIN_IMAGE_SIDE = 32
SIZE_MULTIPLE = 2**MIN_UNET_LEVELS


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run; defaults follow the original design."""

    data_dir_t1: Path = Path("dataset/Tr1")
    data_dir_t2: Path = Path("dataset/Tr2")
    img_height: int = 256
    img_width: int = 256
    batch_size: int = 16
    buffer_size: int = 1000
    epochs: int = 125
    # None: an epoch is one pass over the larger contrast folder.
    steps_per_epoch: int | None = None
    # A wall-clock budget for the run, preprocessing included: no epoch is started that
    # would end past it (judged by the epoch before). None: no budget.
    max_minutes: float | None = None
    output_dir: Path = Path("output")
    cache_dir: Path | None = None
    seed: int = 0
    lr: float = 2e-4
    beta_1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    # Weight of the MIND structure loss between each input and its translation
    # (loss.structure_loss); 0 leaves it out.
    lambda_structure: float = 0.0
    gan_loss: str = "lsgan"
    generator_filters: int = 64
    critic_filters: int = 64
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    n4: bool = True
    num_samples: int = 3
    test_dir_t1: Path | None = None
    test_dir_t2: Path | None = None
    eval_every: int = 1
    max_nonfinite: int = 10
    verbose: int = 1
    # Paper options (Zhu et al. 2017). The seed's U-Net and constant learning rate stay
    # the defaults; the paper's history pool of 50 is on, its jitter is opt-in.
    generator: str = "unet"
    upsample: str = "transpose"
    pool_size: int = 50
    decay_epochs: int = 0
    augment: bool = False
    # NIfTI volumes in a data dir: the plane slices are cut along, and the smallest
    # fraction of a slice that must be head for the slice to be used.
    slice_axis: str = "axial"
    min_foreground: float = 0.05
    # 2.5-D: each training example is a slice with this many neighbours on each side of
    # it in its volume, as channels (volumes only). 0: single slices.
    context_slices: int = 0
    # Devices: a tf.distribute strategy by name; None switches = on with a GPU, off without.
    strategy: str = "auto"
    mixed_precision: bool | None = None
    xla: bool | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.img_height, self.img_width)

    @property
    def channels(self) -> int:
        """Slices in one example, the networks' channels in and out: 2K + 1."""
        return stack_channels(self.context_slices)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One preprocessed example: (H, W) for a slice, (H, W, 2K + 1) for a slab."""
        return self.image_shape + ((self.channels,) if self.context_slices else ())

    @property
    def resolved_cache_dir(self) -> Path:
        """The preprocessing cache: `--cache_dir`, or `<output_dir>/cache`."""
        return self.cache_dir if self.cache_dir is not None else self.output_dir / "cache"

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def export_dir(self) -> Path:
        """Both generators as `.keras` files and `model.json`, written at the end."""
        return self.output_dir / EXPORT_DIR_NAME

    @property
    def epochs_dir(self) -> Path:
        """The figure of each epoch, `epoch_001.png` and on."""
        return self.output_dir / "epochs"

    @property
    def history_path(self) -> Path:
        """`history.csv`: a row per epoch."""
        return self.output_dir / "history.csv"

    @property
    def best_checkpoint_dir(self) -> Path:
        """The generators with the best mean test SSIM; checkpoint rotation never reaches it."""
        return self.checkpoint_dir / "best"

    @property
    def resolved_test_dirs(self) -> tuple[Path, Path] | None:
        """The paired test set to score during training: `--test_dir_t1/--test_dir_t2`,
        or the demo's when training on the demo data, or None."""
        if self.context_slices:
            return None  # 2-D test slices have no neighbours (main.py refuses them)
        if self.test_dir_t1 is not None and self.test_dir_t2 is not None:
            return (self.test_dir_t1, self.test_dir_t2)
        on_demo = (self.data_dir_t1, self.data_dir_t2) == (
            default_of("data_dir_t1"),
            default_of("data_dir_t2"),
        )
        if on_demo and all(folder.is_dir() for folder in DEMO_TEST_DIRS):
            return DEMO_TEST_DIRS
        return None


CONFIG_FILE_NAME = "config.json"
# Beside `checkpoints/` in a run's output dir; `translate.py --export` writes it there too.
EXPORT_DIR_NAME = "export"
PATH_FIELDS = (
    "data_dir_t1",
    "data_dir_t2",
    "output_dir",
    "cache_dir",
    "test_dir_t1",
    "test_dir_t2",
)
# The paired test set shipped with the demo data, scored during training on the demo data.
DEMO_TEST_DIRS = (Path("dataset/Test/T1"), Path("dataset/Test/T2"))
# The seed of the stochastic passes of `uncertainty.py` (translate.py and evaluate.py
# --seed): the same seed gives the same uncertainty maps.
UNCERTAINTY_SEED = 0
# How evaluate.py brings a T2 volume into its T1's space (`volume_evaluation`).
REGISTRATIONS = ("none", "rigid", "affine")


def stack_channels(context_slices: int) -> int:
    """The slices of a slab with `context_slices` neighbours on each side: 2K + 1."""
    return 2 * context_slices + 1


def context_of(channels: int) -> int:
    """The context K of a network taking `channels` = 2K + 1 slices."""
    return (channels - 1) // 2


def save_config(config: TrainConfig, path: Path) -> None:
    """Write `config` as JSON (paths as strings), through a temporary file and a rename."""
    values = {
        name: str(value) if isinstance(value, Path) else value
        for name, value in dataclasses.asdict(config).items()
    }
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(values, indent=2) + "\n")


def load_config(path: Path) -> TrainConfig:
    """Read a config written by `save_config`; unknown keys are ignored, missing ones default."""
    values = json.loads(path.read_text())
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    known = {name: value for name, value in values.items() if name in fields}
    for name, value in known.items():
        if value is not None and name in PATH_FIELDS:
            known[name] = Path(value)
    return TrainConfig(**known)


def default_of(name: str):
    """The default value of the `TrainConfig` field `name`."""
    return {field.name: field.default for field in dataclasses.fields(TrainConfig)}[name]


def number_parser(kind: type, minimum: float, inclusive: bool, description: str):
    """An argparse `type` that reads a `kind` (int or float) of at least `minimum`
    (or above it, when not `inclusive`); anything else is refused with `description`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        # Written so that NaN, which compares false to everything, is refused too.
        if value is None or not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = number_parser(int, 1, True, "a positive integer")
non_negative_int = number_parser(int, 0, True, "zero or a positive integer")
positive_float = number_parser(float, 0.0, False, "a positive number")
non_negative_float = number_parser(float, 0.0, True, "zero or positive")


def unit_fraction(text: str) -> float:
    """An argparse `type` for a fraction from 0 to 1."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def image_size_problem(height: int, width: int) -> str | None:
    """Why the networks cannot take a `height` x `width` image, or None if they can."""
    for name, side in (("height", height), ("width", width)):
        if side < MIN_IMAGE_SIDE:
            return f"image {name} {side} is below the minimum of {MIN_IMAGE_SIDE}"
        if side % SIZE_MULTIPLE:
            return f"image {name} {side} is not a multiple of {SIZE_MULTIPLE}"
    return None


def unet_levels(height: int, width: int) -> int:
    """How many times the U-Net halves a `height` x `width` image (8 at 256, 7 at 128).

    The depth is the largest number of halvings that both sides allow, capped at 8.
    """
    levels = 0
    while (
        levels < MAX_UNET_LEVELS
        and height % 2 ** (levels + 1) == 0
        and width % 2 ** (levels + 1) == 0
    ):
        levels += 1
    return levels


def tf_config_problem(text: str | None = None) -> str | None:
    """Why the TF_CONFIG of a multi-worker run (`text`, default the environment's) cannot
    set up the workers, or None when it may: unreadable JSON, or a task index outside
    its kind's list in the cluster. TensorFlow checks the rest."""
    text = os.environ.get("TF_CONFIG", "{}") if text is None else text
    try:
        spec = json.loads(text or "{}")
    except ValueError as error:
        return f"TF_CONFIG cannot set up the workers: {first_line(error)}"
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not (isinstance(cluster, dict) and isinstance(task, dict)):
        return None
    members = cluster.get(task.get("type"))
    try:
        index = int(task.get("index", 0))  # TensorFlow reads "1" as 1 too
    except (TypeError, ValueError):
        index = -1
    if isinstance(members, list) and not 0 <= index < len(members):
        return (
            f"TF_CONFIG cannot set up the workers: task {task.get('type')} "
            f"{task.get('index')} is not one of the cluster's {len(members)}"
        )
    return None
