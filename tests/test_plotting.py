"""The per-epoch figure, the loss curves and the GIF are real image files."""

from __future__ import annotations

import numpy as np
from PIL import Image

import plotting


def test_plot_translations_draws_one_row_per_sample(tmp_path):
    images = np.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
    one_row, two_rows = tmp_path / "one.png", tmp_path / "two.png"

    plotting.plot_translations(images[:1], images[:1], images[:1], images[:1], one_row)
    plotting.plot_translations(images, images, images, images, two_rows, title="Epoch 1")

    with Image.open(one_row) as small, Image.open(two_rows) as tall:
        assert tall.height > small.height and tall.width == small.width
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_loss_curves_and_gif_from_history(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(
        "epoch,generator_loss,cycle_loss,t1_critic_loss,seconds\n"
        "1,9.0,5.0,0.5,3.0\n2,7.5,4.0,0.4,2.9\n"
    )
    assert plotting.read_history(history)["cycle_loss"] == [5.0, 4.0]
    plotting.plot_loss_curves(history, tmp_path / "loss.png")
    frames = []
    for index, shade in enumerate((0, 128, 255)):
        frame = tmp_path / f"epoch_{index}.png"
        Image.new("L", (20, 10), shade).save(frame)
        frames.append(frame)

    plotting.make_gif(frames, tmp_path / "training.gif")

    with Image.open(tmp_path / "loss.png") as curves:
        assert curves.width > 500
    with Image.open(tmp_path / "training.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (20, 10)


def test_loss_curves_add_a_test_ssim_panel_when_the_history_has_scores(tmp_path):
    losses_only = tmp_path / "losses.csv"
    losses_only.write_text("epoch,generator_loss,seconds\n1,9.0,3.0\n2,7.5,2.9\n")
    scored = tmp_path / "scored.csv"
    # Epoch 1 was not scored: its cells are empty.
    scored.write_text(
        "epoch,generator_loss,t1_to_t2_ssim,t2_to_t1_ssim,seconds\n1,9.0,,,3.0\n2,7.5,0.4,0.5,2.9\n"
    )
    assert plotting.read_history(scored)["t1_to_t2_ssim"][1] == 0.4

    plotting.plot_loss_curves(losses_only, tmp_path / "two.png")
    plotting.plot_loss_curves(scored, tmp_path / "three.png")

    with Image.open(tmp_path / "two.png") as two, Image.open(tmp_path / "three.png") as three:
        assert three.width > two.width * 1.3
