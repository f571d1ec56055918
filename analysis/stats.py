"""Statistics of the grid: per-point means with cluster-bootstrap CIs, paired gains over real-only, saturation point.

The unit of replication is not the test volume: the same test patients are scored by every trial, and each seed
(and fold, and generator replicate) trains one U-Net scored on all of them. So CIs come from a crossed cluster
bootstrap that resamples test patients AND seeds (AND folds, AND replicates when there are several) with replacement,
each factor independently; a bootstrap mean is the mean over all (seed, fold, replicate, patient) cells weighted by
the product of the factors' draw counts. Vectorised: one einsum over a dense [seed, fold, replicate, patient] array
for all draws at once. Seeded (`seed`), so the same table gives the same intervals.

Gain = Dice (or IoU) of a trial's test volume minus that of the real-only baseline (generator "none", fraction 0)
trained with the same seed and fold (and real budget), on the same volume: paired, since a seed draws the same real
slices whichever generator is mixed in. Its test: a two-sided sign-flip permutation test on the per-(seed, fold)
mean gains (exact over all 2^n sign patterns up to n = 16, else 20 000 seeded random patterns); with 4 seeds the
smallest possible p is 0.125, which is why the design asks for >= 8 seeds per point.

Saturation (per experiment, real budget and generator; the baseline is the curve's point at x = 0 with gain 0):
the peak is the x of highest mean gain; saturation is the smallest x whose mean gain lies inside the peak's 95% CI;
`degrades` flags a curve with a point past the peak whose mean gain falls below the peak's CI (the paper's "gains
reverse past ~70 % synthetic"); `helps` says the peak's CI excludes zero from above.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BASELINE = "none"
CLUSTERS = ("seed", "fold", "replicate", "patient_id")
CURVE_KEYS = ("exp", "n_real_key", "generator")
METRICS = ("dice", "iou")
_EXACT_MAX = 16
_RANDOM_FLIPS = 20_000


def _with_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Missing optional key columns filled with their single value (one experiment, no folds, no replicates)."""
    df = df.copy()
    for col, value in (("exp", "exp"), ("n_real_key", "all"), ("fold", 0), ("replicate", 0), ("n_syn_abs", -1)):
        if col not in df:
            df[col] = value
    return df


def x_axis(df: pd.DataFrame) -> str:
    """"n_syn" for a grid over absolute synthetic counts, else "fraction"."""
    return "n_syn" if "n_syn_abs" in df and (df["n_syn_abs"] >= 0).any() else "fraction"


def _dense(rows: pd.DataFrame, value: str) -> np.ndarray:
    """Values as a dense [seed, fold, replicate, patient] array, NaN where a cell has no row."""
    codes = [pd.factorize(rows[c], sort=True) for c in CLUSTERS]
    shape = tuple(len(levels) for _, levels in codes)
    arr = np.full(shape, np.nan)
    idx = tuple(c for c, _ in codes)
    arr[idx] = rows[value].to_numpy(dtype=float)
    return arr


def cluster_bootstrap(rows: pd.DataFrame, value: str, n_boot: int = 2000, ci: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of `value` and its percentile CI under a crossed cluster bootstrap over `CLUSTERS`.

    Args:
        rows: one row per (seed, fold, replicate, patient_id) cell (duplicates are averaged).
        value: the column to average.
        n_boot: bootstrap draws.
        ci: the interval's coverage.
        seed: the generator's seed.
    Returns:
        (mean, low, high); NaN for no finite value; (mean, mean, mean) when no factor has two levels.
    """
    rows = rows[np.isfinite(rows[value].to_numpy(dtype=float))]
    if rows.empty:
        return (np.nan, np.nan, np.nan)
    rows = rows.groupby(list(CLUSTERS), as_index=False)[value].mean()
    arr = _dense(rows, value)
    mean = float(np.nanmean(arr))
    if all(n == 1 for n in arr.shape):
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    weights = [rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float) if n > 1
               else np.ones((n_boot, 1)) for n in arr.shape]
    present = np.isfinite(arr).astype(float)
    num = np.einsum("bs,bk,br,bp,skrp->b", *weights, np.nan_to_num(arr), optimize=True)
    den = np.einsum("bs,bk,br,bp,skrp->b", *weights, present, optimize=True)
    draws = num[den > 0] / den[den > 0]
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return (mean, float(lo), float(hi))


def sign_flip_test(units: np.ndarray, seed: int = 0) -> float:
    """Two-sided p of "mean gain = 0" by flipping the signs of the paired unit means.

    Args:
        units: one mean gain per (seed, fold) pair.
        seed: for the random patterns when there are more than 16 units.
    Returns:
        p in (0, 1]; NaN for no unit; 1.0 when every unit is exactly 0.
    """
    units = np.asarray(units, dtype=float)
    units = units[np.isfinite(units)]
    n = units.size
    if n == 0:
        return float("nan")
    if n <= _EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(_RANDOM_FLIPS, n))
        signs[0] = 1.0  # the observed pattern is one of the permutations
    observed = abs(units.mean())
    flipped = np.abs(signs @ units / n)
    return float(np.mean(flipped >= observed - 1e-12))


def paired_gains(df: pd.DataFrame) -> pd.DataFrame:
    """Every non-baseline row with `gain_dice` and `gain_iou` over its baseline (same exp, real budget, seed, fold,
    patient). Rows with no matching baseline keep NaN gains.
    """
    df = _with_defaults(df)
    keys = ["exp", "n_real_key", "seed", "fold", "patient_id"]
    base = df[df["generator"] == BASELINE].groupby(keys, as_index=False)[list(METRICS)].mean()
    base = base.rename(columns={m: f"base_{m}" for m in METRICS})
    out = df[df["generator"] != BASELINE].merge(base, on=keys, how="left")
    for m in METRICS:
        out[f"gain_{m}"] = out[m] - out[f"base_{m}"]
    missing = out["base_dice"].isna()
    if missing.any():
        log.warning("%d result rows have no real-only baseline of the same seed and fold; their gain is NaN",
                    int(missing.sum()))
    return out


def trial_means(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its mean Dice and IoU over the test volumes (the per-seed points of a curve), with `x`."""
    df = _with_defaults(df)
    df["x"] = _point_key(df, x_axis(df))
    keys = list(CURVE_KEYS) + ["x", "trial_id", "seed", "fold", "replicate"]
    return df.groupby(keys, as_index=False).agg(dice=("dice", "mean"), iou=("iou", "mean"),
                                                fraction=("fraction", "mean"), n_syn=("n_syn", "mean"))


def _point_key(df: pd.DataFrame, x: str) -> pd.Series:
    """The grid point of each row: the asked fraction (or the synthetic count), rounded against float noise."""
    if x == "n_syn":
        return df["n_syn_abs"].where(df["n_syn_abs"] >= 0, df["n_syn"]).astype(float)
    return df["fraction"].astype(float).round(6)


def summarize(df: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per (exp, n_real_key, generator, grid point): mean, spread, bootstrap CI, paired gain with CI and p.

    Args:
        df: the tidy results table (`analysis.results.load_results`).
        n_boot, ci, seed: of the cluster bootstrap (and the seed of the permutation test).
    Returns:
        One row per point, sorted: keys, `x` (fraction, or n_syn for a count grid), `x_kind`, fraction and n_syn
        (means), n_trials, n_seeds, n_volumes, then for m in (dice, iou): m_mean, m_std (spread of the trials' means
        across seeds/folds), m_lo, m_hi; gain_m, gain_m_lo, gain_m_hi, gain_m_p (baseline rows: gain 0, p NaN);
        n_pairs (seed-fold pairs behind the gain test).
    """
    df = _with_defaults(df)
    if df.empty:
        return pd.DataFrame()
    x = x_axis(df)
    df["x"] = _point_key(df, x)
    gains = paired_gains(df)
    gains["x"] = _point_key(gains, x)
    tm = trial_means(df)
    rows = []
    for key, grp in df.groupby(list(CURVE_KEYS) + ["x"], sort=True):
        exp, nr, gen, xv = key
        row = {"exp": exp, "n_real_key": nr, "generator": gen, "x": float(xv), "x_kind": x,
               "fraction": float(grp["fraction"].mean()), "n_syn": float(grp["n_syn"].mean()),
               "n_trials": int(grp["trial_id"].nunique()), "n_seeds": int(grp["seed"].nunique()),
               "n_volumes": int(len(grp))}
        t = tm[(tm["exp"] == exp) & (tm["n_real_key"] == nr) & (tm["generator"] == gen) & (tm["x"] == xv)]
        for m in METRICS:
            mean, lo, hi = cluster_bootstrap(grp, m, n_boot, ci, seed)
            row.update({f"{m}_mean": mean, f"{m}_std": float(t[m].std(ddof=1)) if len(t) > 1 else 0.0,
                        f"{m}_lo": lo, f"{m}_hi": hi})
        g = gains[(gains["exp"] == exp) & (gains["n_real_key"] == nr) & (gains["generator"] == gen)
                  & (gains["x"] == xv)]
        if gen == BASELINE:
            for m in METRICS:
                row.update({f"gain_{m}": 0.0, f"gain_{m}_lo": 0.0, f"gain_{m}_hi": 0.0, f"gain_{m}_p": np.nan})
            row["n_pairs"] = 0
        else:
            units = g.groupby(["seed", "fold"])[[f"gain_{m}" for m in METRICS]].mean()
            for m in METRICS:
                mean, lo, hi = cluster_bootstrap(g, f"gain_{m}", n_boot, ci, seed)
                row.update({f"gain_{m}": mean, f"gain_{m}_lo": lo, f"gain_{m}_hi": hi,
                            f"gain_{m}_p": sign_flip_test(units[f"gain_{m}"].to_numpy(), seed)})
            row["n_pairs"] = int(units["gain_dice"].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows).sort_values(list(CURVE_KEYS) + ["x"], key=_baseline_first).reset_index(drop=True)


def _baseline_first(col: pd.Series) -> pd.Series:
    return col.map(lambda v: "" if v == BASELINE else v) if col.name == "generator" else col


def curve(summary: pd.DataFrame, exp: str, n_real_key: str, generator: str) -> pd.DataFrame:
    """One generator's curve: its points plus the shared baseline as the point x = 0 (gain 0), sorted by x."""
    s = summary[(summary["exp"] == exp) & (summary["n_real_key"] == n_real_key)]
    pts = pd.concat([s[s["generator"] == BASELINE], s[s["generator"] == generator]], ignore_index=True)
    return pts.sort_values("x", kind="stable").drop_duplicates("x", keep="last").reset_index(drop=True)


def saturation(summary: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Peak, saturation point and downturn of each generator's gain curve.

    Args:
        summary: from `summarize`.
        metric: "dice" or "iou".
    Returns:
        One row per (exp, n_real_key, generator) other than the baseline: x_kind, peak_x, peak_gain, peak_lo,
        peak_hi, peak_p, saturation_x, saturation_gain, degrades (bool), degrades_from (first x past the peak below
        its CI, NaN if none), helps (peak CI above zero), metric.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    rows = []
    if summary.empty:
        return pd.DataFrame(rows)
    g_col = f"gain_{metric}"
    for (exp, nr, gen), _ in summary[summary["generator"] != BASELINE].groupby(list(CURVE_KEYS), sort=True):
        c = curve(summary, exp, nr, gen)
        if not (c["generator"] == BASELINE).any():  # no baseline: the gain is undefined, the x = 0 point missing
            log.warning("%s n_real=%s: no real-only baseline; no saturation point for %s", exp, nr, gen)
        finite = c[np.isfinite(c[g_col])]
        if finite.empty:
            continue
        peak = finite.loc[finite[g_col].idxmax()]
        lo, hi = float(peak[f"{g_col}_lo"]), float(peak[f"{g_col}_hi"])
        inside = finite[(finite[g_col] >= lo) & (finite[g_col] <= hi)]
        sat = inside.iloc[0] if len(inside) else peak
        past = finite[(finite["x"] > peak["x"]) & (finite[g_col] < lo)]
        rows.append({"exp": exp, "n_real_key": nr, "generator": gen, "x_kind": peak["x_kind"],
                     "peak_x": float(peak["x"]), "peak_gain": float(peak[g_col]), "peak_lo": lo, "peak_hi": hi,
                     "peak_p": float(peak[f"{g_col}_p"]), "saturation_x": float(sat["x"]),
                     "saturation_gain": float(sat[g_col]), "degrades": bool(len(past)),
                     "degrades_from": float(past["x"].iloc[0]) if len(past) else np.nan,
                     "helps": bool(lo > 0), "metric": metric})
    return pd.DataFrame(rows)
