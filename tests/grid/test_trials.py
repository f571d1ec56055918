"""The grid's trials and mixes: stable ids, baseline once, n_syn = round(n_real f / (1 - f)), refusals."""
import numpy as np
import pytest

from datasets.errors import ConfigError
from grid.config import load_config
from grid.trials import TrialSpec, build_trials, n_syn_for, select_mix, split_patients, synthetic_keep


def test_baseline_runs_once_per_seed_not_per_generator():
    cfg = load_config(preset="quick", overrides=["grid.seeds=[0,1,2]", "grid.fractions=[0.25,0.5]"])
    specs = build_trials(cfg)
    base = [s for s in specs if s.generator == "none"]
    assert len(base) == 3
    assert len(specs) == 3 + 3 * 2 * 2
    assert len({s.trial_id for s in specs}) == len(specs)


def test_trial_ids_are_stable_and_adding_a_seed_only_adds_trials():
    a = {s.trial_id for s in build_trials(load_config(preset="quick"))}
    b = {s.trial_id for s in build_trials(load_config(preset="quick", overrides=["grid.seeds=[0,1,2]"]))}
    assert a < b and all("_s2_" in t for t in b - a)


def test_mixing_rule():
    spec = TrialSpec("essnet", 0, 0.75, -1, -1, 0, 0)
    assert n_syn_for(spec, 350) == round(350 * 0.75 / 0.25)
    assert n_syn_for(TrialSpec("none", 0, 0.0, -1, -1, 0, 0), 350) == 0
    assert n_syn_for(TrialSpec("essnet", 0, float("nan"), 714, 350, 0, 0), 350) == 714


def _tables(n_patients=6, per=10):
    pid = np.repeat([f"p{i}" for i in range(n_patients)], per)
    split = np.where(np.isin(pid, ["p0"]), "test", "trainval")
    return pid, split


def test_select_mix_counts_and_pairing():
    cfg = load_config(preset="quick", overrides=["grid.real_patients=0"])
    pid, split = _tables()
    keep = np.ones(100, bool)
    a = select_mix(TrialSpec("essnet", 0, 0.5, -1, 20, 3, 0), cfg, pid, split, keep)
    b = select_mix(TrialSpec("cyclegan", 0, 0.5, -1, 20, 3, 0), cfg, pid, split, keep)
    assert a.n_real == 20 and a.n_syn == 20
    assert np.array_equal(a.real_rows, b.real_rows) and np.array_equal(a.syn_rows, b.syn_rows)  # paired draws
    assert not set(pid[a.real_rows]) & set(a.val_patients)  # val patients never train
    assert "p0" not in set(pid[a.real_rows]) and "p0" not in a.val_patients  # test patients never seen


def test_a_mix_asking_for_too_many_slices_is_refused():
    cfg = load_config(preset="quick", overrides=["grid.real_patients=0"])
    pid, split = _tables()
    with pytest.raises(ConfigError, match=r"grid.fractions: f=0.8 .* needs 80 synthetic slices, but .* holds 30"):
        select_mix(TrialSpec("essnet", 0, 0.8, -1, 20, 0, 0), cfg, pid, split, np.arange(100) < 30)
    with pytest.raises(ConfigError, match="grid.n_real: 1000"):
        select_mix(TrialSpec("none", 0, 0.0, -1, 1000, 0, 0), cfg, pid, split, None)


def test_folds_partition_the_trainval_patients():
    pts = [f"p{i}" for i in range(10)]
    vals = [split_patients(pts, 5, k, seed=0)[1] for k in range(5)]
    assert sorted(sum(vals, [])) == sorted(pts)
    with pytest.raises(ConfigError, match="grid.folds"):
        split_patients(pts[:3], 5, 0, seed=0)


def test_synthetic_filter():
    cfg = load_config(preset="quick", overrides=["grid.synthetic_filter=quality", "grid.quality_threshold=0.5"])
    keep = synthetic_keep(np.array([1, 1, 0, 1], bool), np.array([0.9, 0.2, 0.9, np.nan], np.float32), cfg)
    assert keep.tolist() == [True, False, False, True]
