"""The grid's trials and the training mix of each (pure functions: no Ray, no torch).

A trial is one U-Net training: generator x synthetic fraction (or count) x seed x fold x n_real. Its id is built
from those values, so the same trial has the same id in every run: "already done" is a file test
(`results/<trial_id>.parquet`), and adding a seed to a finished experiment trains only the new trials.

Mixing: n_syn = round(n_real * f / (1 - f)), drawn without replacement by seed. Draws use the same seed for every
generator, so a given seed sees the same real slices and the same CT source slices whichever generator translated
them: the gain over the real-only baseline is paired.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from datasets.errors import ConfigError
from grid.config import ExperimentConfig


@dataclass(frozen=True)
class TrialSpec:
    generator: str          # "none" (real only), "cyclegan" or "essnet"
    replicate: int          # which trained generator (0 unless essnet.replicates > 1)
    fraction: float         # synthetic fraction asked for (0 for the baseline); NaN when n_syn is absolute
    n_syn_abs: int          # absolute synthetic count asked for, or -1 when `fraction` rules
    n_real: int             # real training slices, or -1 for all slices of the training patients
    seed: int
    fold: int

    @property
    def trial_id(self) -> str:
        amount = f"f{self.fraction:.3f}" if self.n_syn_abs < 0 else f"ns{self.n_syn_abs}"
        nr = "all" if self.n_real < 0 else str(self.n_real)
        return f"{self.generator}-r{self.replicate}_{amount}_nr{nr}_s{self.seed}_k{self.fold}"

    def to_dict(self) -> dict:
        return {**asdict(self), "trial_id": self.trial_id}

    @classmethod
    def from_dict(cls, d: dict) -> "TrialSpec":
        return cls(**{k: d[k] for k in ("generator", "replicate", "fraction", "n_syn_abs", "n_real", "seed", "fold")})


def build_trials(cfg: ExperimentConfig) -> list[TrialSpec]:
    """Every trial of the grid, baseline once per (seed, fold, n_real)."""
    g = cfg.grid
    folds = g.fold_ids or tuple(range(g.folds)) if g.folds > 1 else (0,)
    n_reals = g.n_real or (-1,)
    out: list[TrialSpec] = []
    for fold in folds:
        for n_real in n_reals:
            for seed in g.seeds:
                if "none" in g.generators:
                    out.append(TrialSpec("none", 0, 0.0, -1, n_real, seed, fold))
                for gen in g.synthetic_generators:
                    for rep in range(cfg.essnet.replicates):
                        for f in g.fractions:
                            if f > 0:
                                out.append(TrialSpec(gen, rep, float(f), -1, n_real, seed, fold))
                        for n in g.n_syn:
                            if n > 0:
                                out.append(TrialSpec(gen, rep, float("nan"), int(n), n_real, seed, fold))
    return out


def n_syn_for(spec: TrialSpec, n_real: int) -> int:
    if spec.generator == "none":
        return 0
    if spec.n_syn_abs >= 0:
        return spec.n_syn_abs
    return int(round(n_real * spec.fraction / (1.0 - spec.fraction)))


def split_patients(trainval: list[str], folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) patients of one fold. One fold: about 20 % of the patients (at least 1) for validation.

    Raises:
        ConfigError: too few patients for the folds asked for.
    """
    pts = sorted(trainval)
    if len(pts) < 2:
        raise ConfigError(f"grid: {len(pts)} non-test MR patient(s) ({pts}); need at least 2 for train and val")
    order = list(np.random.default_rng(seed).permutation(len(pts)))
    shuffled = [pts[i] for i in order]
    if folds <= 1:
        n_val = max(1, int(round(0.2 * len(pts))))
        val = shuffled[:n_val]
    else:
        if folds > len(pts):
            raise ConfigError(f"grid.folds: {folds} folds but only {len(pts)} non-test MR patients")
        val = [p for i, p in enumerate(shuffled) if i % folds == fold]
    train = [p for p in pts if p not in val]
    return train, sorted(val)


@dataclass(frozen=True)
class Mix:
    """Row indices (into the real MR table and the synthetic table) of one trial's training set."""

    real_rows: np.ndarray
    syn_rows: np.ndarray
    train_patients: list[str]
    val_patients: list[str]

    @property
    def n_real(self) -> int:
        return int(len(self.real_rows))

    @property
    def n_syn(self) -> int:
        return int(len(self.syn_rows))


def select_mix(spec: TrialSpec, cfg: ExperimentConfig, real_patient_ids: np.ndarray, real_split: np.ndarray,
               syn_keep: np.ndarray | None, *, syn_label: str = "") -> Mix:
    """Choose the real and synthetic training rows of one trial.

    Args:
        real_patient_ids, real_split: per-row columns of the real MR store.
        syn_keep: per-row bool of the synthetic store after `grid.synthetic_filter` (None for the baseline).

    Raises:
        ConfigError: the mix asks for more slices than exist (names the field, the counts and the store).
    """
    trainval = sorted(set(real_patient_ids[real_split == "trainval"].tolist()))
    train_pts, val_pts = split_patients(trainval, cfg.grid.folds, spec.fold, cfg.ingest.seed)
    rng = np.random.default_rng([spec.seed, spec.fold, 7919])
    if cfg.grid.real_patients:
        if cfg.grid.real_patients > len(train_pts):
            raise ConfigError(f"grid.real_patients: {cfg.grid.real_patients} asked, but fold {spec.fold} has "
                              f"{len(train_pts)} training patients ({', '.join(train_pts)})")
        train_pts = sorted(rng.choice(train_pts, size=cfg.grid.real_patients, replace=False).tolist())
    pool = np.flatnonzero(np.isin(real_patient_ids, train_pts))
    if spec.n_real < 0:
        real_rows = pool
    else:
        if spec.n_real > len(pool):
            raise ConfigError(f"grid.n_real: {spec.n_real} real slices asked, but the training patients "
                              f"({', '.join(train_pts)}) hold {len(pool)}")
        real_rows = np.sort(rng.choice(pool, size=spec.n_real, replace=False))
    n_syn = n_syn_for(spec, len(real_rows))
    syn_rows = np.zeros(0, dtype=np.int64)
    if n_syn:
        assert syn_keep is not None
        syn_pool = np.flatnonzero(syn_keep)
        if n_syn > len(syn_pool):
            what = f"grid.fractions: f={spec.fraction:g}" if spec.n_syn_abs < 0 else f"grid.n_syn: {spec.n_syn_abs}"
            raise ConfigError(f"{what} with {len(real_rows)} real slices needs {n_syn} synthetic slices, but "
                              f"{syn_label or 'the synthetic store'} holds {len(syn_pool)} (after "
                              f"grid.synthetic_filter={cfg.grid.synthetic_filter})")
        syn_rng = np.random.default_rng([spec.seed, spec.fold, 104729])
        syn_rows = np.sort(syn_rng.choice(syn_pool, size=n_syn, replace=False))
    return Mix(real_rows.astype(np.int64), syn_rows.astype(np.int64), train_pts, val_pts)


def synthetic_keep(has_liver: np.ndarray, quality: np.ndarray, cfg: ExperimentConfig) -> np.ndarray:
    """Rows of a synthetic store allowed into training (the paper keeps slices where the liver is visible)."""
    f = cfg.grid.synthetic_filter
    if f == "none":
        return np.ones(len(has_liver), dtype=bool)
    keep = has_liver.astype(bool)
    if f == "quality":
        q = np.nan_to_num(quality.astype(np.float64), nan=1.0)
        keep &= q >= cfg.grid.quality_threshold
    return keep


def expected_total(n_real: int, fraction: float) -> int:
    return n_real + int(math.floor(n_real * fraction / (1 - fraction) + 0.5))
