"""The tidy results table: one row per trial x test volume, from the per-trial result files of one or more experiments.

Reads `<exp>/results/<trial_id>.parquet` (one row per test volume; schema: docs/ARCHITECTURE.md "Result row") and
`<exp>/trial_states.parquet` (trial_id, status, error, + the trial's config columns). A trial listed in the states
without a result file (ERROR, PENDING, RUNNING) goes to a second table, never silently dropped.

Columns added to the result rows:
- `exp`: the experiment's name (its folder name; made unique when two experiments share one).
- `n_real_key`: the real-slice budget the trial ASKED for ("all" or a count, as text): the actual `n_real` varies
  with the fold when the budget is "all", so curves are grouped by what was asked.
- `n_syn_abs`: the absolute synthetic count asked for (-1 where the fraction rules).
pandas + pyarrow only: no torch, no ray.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import PurePosixPath

import pandas as pd

from datasets import uri as U
from datasets.errors import EssgridError

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("trial_id", "generator", "replicate", "fraction", "n_real", "n_syn", "seed", "fold", "config_hash",
                  "patient_id", "sequence", "dice", "iou", "ravd", "assd", "mssd", "dice_slice_mean",
                  "iou_slice_mean", "val_dice", "best_step", "steps")
REQUIRED = ("trial_id", "generator", "fraction", "n_syn", "seed", "patient_id", "dice", "iou")
_NR = re.compile(r"_nr(all|\d+)_")
_NS = re.compile(r"_ns(\d+)_")


class ResultsError(EssgridError):
    """An experiment folder or result file that cannot be read as essgrid results."""


def _read_parquet(uri: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(U.read_bytes(uri)))
    except EssgridError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file, named
        raise ResultsError(f"{uri}: not a readable Parquet file ({type(err).__name__}: {err})") from err


def _exp_names(exps: Sequence[str]) -> list[str]:
    """Folder names, suffixed where two experiments share one."""
    names = [PurePosixPath(str(e).rstrip("/")).name or str(e) for e in exps]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return out


def _n_real_key(df: pd.DataFrame) -> pd.Series:
    """The asked real budget: from the trial states' n_real if merged, else the trial id, else the actual count."""
    if "n_real_asked" in df:
        asked = df["n_real_asked"]
        return asked.map(lambda v: "all" if pd.isna(v) or int(v) < 0 else str(int(v)))
    from_id = df["trial_id"].astype(str).str.extract(_NR, expand=False)
    return from_id.fillna(df["n_real"].astype("Int64").astype(str) if "n_real" in df else "all")


def load_experiment(exp: str, name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One experiment's result rows and its trials without results.

    Args:
        exp: the experiment directory (local path or URI).
        name: the value of the `exp` column (default: the folder name).
    Returns:
        (results, unfinished): results one row per trial x test volume; unfinished one row per trial listed in
        trial_states.parquet with no result file (trial_id, status, error, + config columns).
    Raises:
        ResultsError: the folder does not exist, holds neither results/ nor trial_states.parquet, or a result file is
            unreadable or lacks a required column (naming the file and column).
    """
    exp = str(exp).rstrip("/")
    name = name or _exp_names([exp])[0]
    if not U.is_dir(exp):
        raise ResultsError(f"{exp}: experiment folder does not exist")
    results_dir = U.join(exp, "results")
    states_uri = U.join(exp, "trial_states.parquet")
    files = sorted(n for n in U.listdir(results_dir) if n.endswith(".parquet")) if U.is_dir(results_dir) else []
    if not files and not U.exists(states_uri):
        raise ResultsError(f"{exp}: no results/<trial_id>.parquet and no trial_states.parquet; is this an essgrid "
                           f"experiment folder that has run its grid?")
    frames = []
    for f in files:
        uri = U.join(results_dir, f)
        df = _read_parquet(uri)
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise ResultsError(f"{uri}: column {missing[0]!r} missing (result rows need {list(REQUIRED)})")
        frames.append(df)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RESULT_COLUMNS))
    states = _read_parquet(states_uri) if U.exists(states_uri) else pd.DataFrame(columns=["trial_id", "status",
                                                                                          "error"])
    if len(states) and "trial_id" not in states.columns:
        raise ResultsError(f"{states_uri}: column 'trial_id' missing")
    done = set(results["trial_id"].astype(str))
    unfinished = states[~states["trial_id"].astype(str).isin(done)].copy()
    if len(states):
        extra = states[["trial_id"] + [c for c in ("n_real", "n_syn_abs") if c in states.columns]]
        extra = extra.rename(columns={"n_real": "n_real_asked"}).drop_duplicates("trial_id")
        results = results.merge(extra, on="trial_id", how="left")
    results["n_real_key"] = _n_real_key(results) if len(results) else pd.Series(dtype=str)
    if "n_syn_abs" not in results:
        ns = results["trial_id"].astype(str).str.extract(_NS, expand=False)
        results["n_syn_abs"] = pd.to_numeric(ns).fillna(-1).astype(int) if len(results) else pd.Series(dtype=int)
    results["n_syn_abs"] = results["n_syn_abs"].fillna(-1).astype(int)
    results = results.drop(columns=["n_real_asked"], errors="ignore")
    results.insert(0, "exp", name)
    unfinished.insert(0, "exp", name)
    if len(unfinished):
        log.warning("%s: %d trial(s) without results (%s)", exp, len(unfinished),
                    ", ".join(f"{k} {v}" for k, v in unfinished["status"].value_counts().items()))
    return results, unfinished.reset_index(drop=True)


def load_results(exps: Sequence[str] | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy table of several experiments (see `load_experiment`), concatenated, with an `exp` column.

    Raises:
        ResultsError: as `load_experiment`, or no experiment given.
    """
    exps = [exps] if isinstance(exps, str) else list(exps)
    if not exps:
        raise ResultsError("no experiment folder given")
    parts = [load_experiment(e, n) for e, n in zip(exps, _exp_names(exps))]
    results = pd.concat([p[0] for p in parts], ignore_index=True)
    unfinished = pd.concat([p[1] for p in parts], ignore_index=True)
    return results, unfinished


def save_results(df: pd.DataFrame, out_dir: str) -> tuple[str, str]:
    """Write the tidy table as results.parquet and results.csv in `out_dir` (created if needed).

    Returns:
        (parquet uri, csv uri).
    """
    U.makedirs(out_dir)
    pq_uri, csv_uri = U.join(out_dir, "results.parquet"), U.join(out_dir, "results.csv")
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    U.write_bytes(pq_uri, buf.getvalue())
    U.write_text(csv_uri, df.to_csv(index=False))
    return pq_uri, csv_uri
