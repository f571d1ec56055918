"""analysis/plots.py: every figure renders (PNG + SVG) from a synthetic results table."""
import numpy as np
import pytest
from PIL import Image

from analysis import plots
from analysis.stats import saturation, summarize, trial_means
from known_results import build_results


def _check(paths):
    png, svg = paths
    assert png.endswith(".png") and svg.endswith(".svg")
    with Image.open(png) as im:
        assert im.size[0] > 200 and np.asarray(im.convert("L")).std() > 0
    assert "<svg" in open(svg).read(500)


@pytest.mark.parametrize("x", ["fraction", "n_syn"])
def test_saturation_curve(tmp_path, x):
    df = build_results(seeds=[0, 1])
    s = summarize(df, n_boot=100)
    _check(plots.plot_saturation(s, trial_means(df), str(tmp_path / "sat"), x=x, sat=saturation(s)))


def test_saturation_curve_of_two_experiments(tmp_path):
    a, b = build_results(seeds=[0, 1]), build_results(seeds=[2, 3])
    a["exp"], b["exp"] = "A", "B"
    df = __import__("pandas").concat([a, b])
    s = summarize(df, n_boot=100)
    _check(plots.plot_saturation(s, trial_means(df), str(tmp_path / "sat2"), sat=saturation(s)))
    with pytest.raises(ValueError, match="x must be"):
        plots.plot_saturation(s, trial_means(df), str(tmp_path / "bad"), x="steps")


def test_training_curves(tmp_path):
    steps = np.arange(0, 100, 5)
    losses = {"essnet-r0": __import__("pandas").DataFrame({"step": steps, "loss_G_A": 1 / (1 + steps)})}
    _check(plots.plot_essnet_losses(losses, str(tmp_path / "losses")))
    import pandas as pd
    curves = {"t1": pd.DataFrame({"step": [1, 2, 3], "val_dice": [0.5, 0.7, 0.8]}),
              "t2": pd.DataFrame({"step": [1, 2, 3], "val_dice": [0.4, 0.6, 0.9]})}
    _check(plots.plot_unet_curves(curves, {"t1": "none", "t2": "essnet"}, str(tmp_path / "curves")))


def test_gallery(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.random((3, 32, 32))
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 8:20, 10:24] = True
    _check(plots.plot_gallery(ct, ct * 0.5, None, rng.random((2, 32, 32)), masks, str(tmp_path / "gallery")))
    with pytest.raises(ValueError, match="EssNet"):
        plots.plot_gallery(ct, ct[:, :16], None, None, masks, str(tmp_path / "bad"))
