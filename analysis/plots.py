"""Figures of an experiment: saturation curves, training curves, a translation gallery. PNG + SVG each.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and in threads, and importing this module changes nothing. No torch, no ray.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage import measure

from analysis.stats import BASELINE, METRICS, curve
from datasets import uri as U

log = logging.getLogger(__name__)

GENERATOR_COLORS = {"essnet": "tab:red", "cyclegan": "tab:blue", BASELINE: "black"}
_LINESTYLES = ("-", "--", ":", "-.")


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_base: str) -> list[str]:
    """Write `out_base`.png and `out_base`.svg (local path or URI); returns both."""
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120 if ext == "png" else None)
        uri = f"{out_base}.{ext}"
        U.write_bytes(uri, buf.getvalue())
        paths.append(uri)
    return paths


def _color(gen: str, k: int) -> str:
    return GENERATOR_COLORS.get(gen, f"C{(k + 2) % 10}")


def plot_saturation(summary: pd.DataFrame, points: pd.DataFrame, out_base: str, x: str = "fraction",
                    sat: pd.DataFrame | None = None) -> list[str]:
    """The saturation curve: Dice and IoU panels, one line per generator (and experiment) with its CI band.

    Args:
        summary: from `analysis.stats.summarize`.
        points: from `analysis.stats.trial_means` (per-seed points).
        out_base: path without extension.
        x: "fraction" (the synthetic fraction asked) or "n_syn" (the mean synthetic slice count of each point).
        sat: from `analysis.stats.saturation` (dice): its saturation point is marked with a star.
    Returns:
        The PNG and SVG paths.
    """
    if x not in ("fraction", "n_syn"):
        raise ValueError(f"x must be 'fraction' or 'n_syn', got {x!r}")
    fig = _new_figure(11, 4.2)
    axes = fig.subplots(1, 2)
    exps = list(dict.fromkeys(summary["exp"])) if len(summary) else []
    gens = [g for g in dict.fromkeys(summary["generator"]) if g != BASELINE] if len(summary) else []
    multi_nr = summary["n_real_key"].nunique() > 1 if len(summary) else False
    for ax, m in zip(axes, METRICS):
        for e_i, exp in enumerate(exps):
            ls = _LINESTYLES[e_i % len(_LINESTYLES)]
            for nr in dict.fromkeys(summary.loc[summary["exp"] == exp, "n_real_key"]):
                tag = " ".join(t for t in ((exp if len(exps) > 1 else ""), (f"n_real={nr}" if multi_nr else "")) if t)
                s = summary[(summary["exp"] == exp) & (summary["n_real_key"] == nr)]
                base = s[s["generator"] == BASELINE]
                if len(base):
                    b = base.iloc[0]
                    ax.axhline(b[f"{m}_mean"], color="black", lw=1, ls=ls, label=f"real only {tag}".strip())
                    ax.axhspan(b[f"{m}_lo"], b[f"{m}_hi"], color="black", alpha=0.08)
                for g_i, gen in enumerate(gens):
                    if not (s["generator"] == gen).any():
                        continue
                    c = curve(summary, exp, nr, gen)
                    xs = c["x"] if x == "fraction" or c["x_kind"].iloc[0] == "n_syn" else c["n_syn"]
                    col = _color(gen, g_i)
                    ax.plot(xs, c[f"{m}_mean"], ls, color=col, marker="o", label=f"{gen} {tag}".strip())
                    ax.fill_between(xs, c[f"{m}_lo"], c[f"{m}_hi"], color=col, alpha=0.15, lw=0)
                    p = points[(points["exp"] == exp) & (points["n_real_key"] == nr)
                               & points["generator"].isin([gen, BASELINE])]
                    px = p["x"] if x == "fraction" or c["x_kind"].iloc[0] == "n_syn" else p["n_syn"]
                    jitter = (np.random.default_rng(g_i).random(len(p)) - 0.5) * 0.01 * max(float(np.ptp(xs)), 1e-9)
                    ax.scatter(px + jitter, p[m], s=9, color=col, alpha=0.45, lw=0)
                    if sat is not None and len(sat):
                        r = sat[(sat["exp"] == exp) & (sat["n_real_key"] == nr) & (sat["generator"] == gen)]
                        if len(r):
                            at = c[c["x"] == r["saturation_x"].iloc[0]]
                            if len(at):
                                sx = at["x"] if x == "fraction" or c["x_kind"].iloc[0] == "n_syn" else at["n_syn"]
                                ax.scatter(sx, at[f"{m}_mean"], marker="*", s=180, color=col, edgecolor="black",
                                           zorder=5, label=f"{gen} saturation {tag}".strip())
        ax.set_xlabel("synthetic fraction of the training mix" if x == "fraction" else "synthetic slices (n_syn)")
        ax.set_ylabel(f"test {m.upper() if m == 'iou' else 'Dice'} (3D, per volume)")
        ax.grid(alpha=0.3)
    if len(summary):
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Real + synthetic MR: U-Net test score vs amount of synthetic data (mean, 95% cluster-bootstrap CI, "
                 "per-seed points)", fontsize=9)
    return save_figure(fig, out_base)


def plot_essnet_losses(losses: Mapping[str, pd.DataFrame], out_base: str) -> list[str]:
    """EssNet / CycleGAN training losses: one panel per generator run, one line per loss term, against step.

    Args:
        losses: run name (e.g. "essnet-r0") -> its losses.csv (a `step` column + one column per loss term).
    """
    names = list(losses)
    fig = _new_figure(5.5 * max(1, len(names)), 3.8)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(names))))
    for ax, name in zip(axes, names):
        df = losses[name]
        for col in [c for c in df.columns if c != "step"]:
            y = pd.to_numeric(df[col], errors="coerce")
            window = max(1, len(df) // 50)
            ax.plot(df["step"], y.rolling(window, min_periods=1).mean(), lw=1, label=col)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (running mean)")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    if not names:
        axes[0].text(0.5, 0.5, "no losses.csv found", ha="center", va="center")
    return save_figure(fig, out_base)


def plot_unet_curves(curves: Mapping[str, pd.DataFrame], generators: Mapping[str, str], out_base: str) -> list[str]:
    """U-Net validation Dice against step, one thin line per trial, coloured by generator.

    Args:
        curves: trial_id -> its curves/<trial_id>.csv (columns step, val_dice, ...).
        generators: trial_id -> generator (trials not in it are drawn grey).
    """
    fig = _new_figure(7, 4)
    ax = fig.subplots()
    seen: set[str] = set()
    gens = sorted(set(generators.values()))
    for tid, df in curves.items():
        if "val_dice" not in df or "step" not in df:
            continue
        gen = generators.get(tid, "?")
        col = _color(gen, gens.index(gen) if gen in gens else 0) if gen != "?" else "grey"
        ax.plot(df["step"], df["val_dice"], color=col, lw=0.8, alpha=0.6, label=None if gen in seen else gen)
        seen.add(gen)
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice")
    ax.set_title("U-Net validation Dice per trial", fontsize=9)
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=7)
    return save_figure(fig, out_base)


def plot_gallery(ct: np.ndarray, fake_essnet: np.ndarray | None, fake_cyclegan: np.ndarray | None,
                 real_mr: np.ndarray | None, ct_masks: np.ndarray, out_base: str) -> list[str]:
    """Rows = CT slices; columns = CT, EssNet fake MR, CycleGAN fake MR, real MR; the CT liver contour on each.

    The contour on the fake MRs shows whether the translation kept the liver where the CT mask says (EssNet's
    point); on the unpaired real MR it is only a reference outline.

    Args:
        ct, fake_essnet, fake_cyclegan, real_mr: [N, H, W] images (any range; each panel is scaled alone). A fake or
            real MR of None leaves its column out; real MR may have fewer rows (blank panels then).
        ct_masks: [N, H, W] CT liver masks.
    Raises:
        ValueError: ct and ct_masks differ in shape, or a fake MR has another shape than ct.
    """
    ct, ct_masks = np.asarray(ct, dtype=float), np.asarray(ct_masks).astype(bool)
    if ct.shape != ct_masks.shape or ct.ndim != 3:
        raise ValueError(f"ct {ct.shape} and ct_masks {ct_masks.shape} must be the same [N, H, W]")
    cols = [("CT", ct)]
    for title, arr in (("EssNet fake MR", fake_essnet), ("CycleGAN fake MR", fake_cyclegan)):
        if arr is not None:
            arr = np.asarray(arr, dtype=float)
            if arr.shape != ct.shape:
                raise ValueError(f"{title}: shape {arr.shape} != ct {ct.shape}")
            cols.append((title, arr))
    if real_mr is not None:
        cols.append(("real MR (unpaired)", np.asarray(real_mr, dtype=float)))
    n = ct.shape[0]
    fig = _new_figure(2.2 * len(cols), 2.2 * max(n, 1))
    axes = np.atleast_2d(fig.subplots(max(n, 1), len(cols), squeeze=False))
    for i in range(n):
        contours = measure.find_contours(ct_masks[i].astype(float), 0.5)
        for j, (title, arr) in enumerate(cols):
            ax = axes[i, j]
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
            if i >= arr.shape[0]:
                continue
            ax.imshow(arr[i], cmap="gray", interpolation="nearest")
            for c in contours:
                ax.plot(c[:, 1], c[:, 0], color="lime", lw=0.8)
    return save_figure(fig, out_base)
