"""analysis/stats.py: on a table with a known answer the statistics find exactly that answer."""
import numpy as np
import pandas as pd
import pytest

from analysis.stats import cluster_bootstrap, paired_gains, saturation, sign_flip_test, summarize
from known_results import build_results


@pytest.fixture(scope="module")
def summary():
    return summarize(build_results(), n_boot=500)


def row(summary, gen, x):
    r = summary[(summary["generator"] == gen) & np.isclose(summary["x"], x)]
    assert len(r) == 1
    return r.iloc[0]


def test_known_gain_with_ci_and_paired_test(summary):
    r = row(summary, "essnet", 0.67)
    assert r["gain_dice"] == pytest.approx(0.05, abs=1e-12)
    assert r["gain_dice_lo"] < 0.05 < r["gain_dice_hi"] and r["gain_dice_lo"] > 0.045
    assert r["gain_dice_p"] == pytest.approx(2 / 64)  # 6 of 6 seed units up: exact sign-flip p
    assert r["n_trials"] == 6 and r["n_volumes"] == 24 and r["n_pairs"] == 6
    base = row(summary, "none", 0.0)
    assert r["dice_mean"] - base["dice_mean"] == pytest.approx(0.05)
    assert base["gain_dice"] == 0.0 and np.isnan(base["gain_dice_p"])
    assert (summary["generator"] == "none").sum() == 1  # the baseline serves every curve, listed once


def test_known_saturation_point_and_downturn(summary):
    s = saturation(summary).set_index("generator")
    ess = s.loc["essnet"]
    assert (ess["peak_x"], ess["saturation_x"], ess["degrades"], ess["degrades_from"], ess["helps"]) == (
        0.67, 0.5, True, 0.8, True)
    assert ess["peak_gain"] == pytest.approx(0.05)


def test_a_generator_that_never_helps(summary):
    cyc = saturation(summary).set_index("generator").loc["cyclegan"]
    assert not cyc["helps"] and cyc["peak_x"] == 0.0 and cyc["saturation_x"] == 0.0
    r = row(summary, "cyclegan", 0.5)
    assert r["gain_dice"] == pytest.approx(-0.01) and r["gain_dice_hi"] < 0


def test_monotone_curve_saturates_at_the_peak_and_does_not_degrade():
    df = build_results()
    df = df[~((df["generator"] == "essnet") & (df["fraction"] == 0.8))]
    s = saturation(summarize(df, n_boot=300)).set_index("generator").loc["essnet"]
    assert s["peak_x"] == 0.67 and not s["degrades"] and np.isnan(s["degrades_from"])


def test_gains_are_paired_by_seed_fold_and_patient():
    df = build_results()
    g = paired_gains(df)
    ess = g[(g["generator"] == "essnet") & (g["fraction"] == 0.25)]
    # the seed/patient effects of the baseline cancel: only the +/-0.004 seed term remains
    assert np.allclose(np.abs(ess["gain_dice"] - 0.02), 0.004)


def test_bootstrap_is_seeded_and_widens_with_seed_spread():
    df = build_results()
    base = df[df["generator"] == "none"]
    a, b = cluster_bootstrap(base, "dice", seed=1), cluster_bootstrap(base, "dice", seed=1)
    assert a == b
    noisy = base.copy()
    noisy["dice"] += np.where(noisy["seed"] % 2, 0.05, -0.05)
    wide = cluster_bootstrap(noisy, "dice", seed=1)
    assert wide[2] - wide[1] > 2 * (a[2] - a[1])
    assert a[1] <= a[0] <= a[2]
    one = base[(base["seed"] == 0) & (base["patient_id"] == "p1")]
    assert cluster_bootstrap(one, "dice")[1:] == (one["dice"].iloc[0],) * 2


def test_bootstrap_resamples_patients_as_clusters():
    df = build_results(seeds=[0])  # one seed: only the patients vary
    lo, hi = cluster_bootstrap(df[df["generator"] == "none"], "dice", n_boot=4000)[1:]
    vals = df[df["generator"] == "none"]["dice"].to_numpy()
    assert vals.min() <= lo < hi <= vals.max() and hi - lo > 0.01


def test_sign_flip_test():
    assert sign_flip_test(np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(2 / 16)
    assert sign_flip_test(np.array([0.1, -0.1, 0.2, -0.2])) == 1.0
    assert np.isnan(sign_flip_test(np.array([])))
    big = np.random.default_rng(0).normal(1.0, 0.1, 20)
    assert sign_flip_test(big) < 0.001


def test_count_grid_uses_n_syn_as_x():
    df = build_results()
    df["n_syn_abs"] = np.where(df["generator"] == "none", -1, df["n_syn"])
    s = summarize(df, n_boot=200)
    assert set(s["x_kind"]) == {"n_syn"}
    assert sorted(s.loc[s["generator"] == "essnet", "x"]) == sorted({round(40 * f / (1 - f)) for f in
                                                                    (0.25, 0.5, 0.67, 0.8)})
