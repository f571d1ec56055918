"""Stage 4: the Ray Tune grid of U-Net trainings, and its resume.

The grid is a list of `TrialSpec`s with stable ids. Trials whose result file exists are done. An interrupted Tune
experiment (under `<exp>/tune/grid-NNN`) is restored first with `Tuner.restore(..., resume_errored=True)`, so a
running trial continues from its last checkpoint and an errored one is retried; trials still missing after that
(new seeds or fractions, say) run in a new Tune experiment, because Tune cannot widen an old one.
"""
from __future__ import annotations

import io
import logging
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datasets import uri as U
from grid.config import ExperimentConfig, stage_key
from grid.experiment import Experiment
from grid.trainable import check_trial_data, run_trial
from grid.trials import TrialSpec, build_trials

log = logging.getLogger(__name__)


def done_trials(exp: Experiment) -> set[str]:
    return {n[: -len(".parquet")] for n in U.listdir(exp.results_dir) if n.endswith(".parquet")}


def _trainable(cfg: ExperimentConfig):
    from ray import tune

    return tune.with_resources(run_trial, {"cpu": cfg.grid.cpus_per_trial, "gpu": cfg.grid.gpus_per_trial})


def _run_config(exp: Experiment, cfg: ExperimentConfig, name: str):
    from ray import tune

    storage = exp.tune_dir if U.is_remote(exp.tune_dir) else os.path.abspath(exp.tune_dir)
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=1,
        failure_config=tune.FailureConfig(max_failures=cfg.grid.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


def _trial_name(trial) -> str:
    return trial.config["trial"]["trial_id"]


def _tune_experiments(exp: Experiment) -> list[str]:
    return [n for n in U.listdir(exp.tune_dir) if n.startswith("grid-")]


def run_grid(exp: Experiment, cfg: ExperimentConfig, say=print) -> dict:
    """Run every trial not done yet; returns counts. Validates every mix before any trial starts."""
    from ray import tune

    specs = build_trials(cfg)
    done = done_trials(exp)
    todo = [s for s in specs if s.trial_id not in done]
    say(f"[grid] {len(specs)} trials: {len(specs) - len(todo)} done earlier, {len(todo)} to run "
        f"({cfg.grid.cpus_per_trial} CPU, {cfg.grid.gpus_per_trial} GPU each)")
    check_trial_data(exp, todo, cfg)
    key = stage_key(cfg, "trials")
    base = {"exp": exp.root, "cfg": cfg.to_dict(), "config_hash": key}

    # 1. finish an interrupted Tune experiment where it stopped
    for name in _tune_experiments(exp):
        path = U.join(exp.tune_dir, name)
        ids = set(U.read_json(U.join(exp.path("grid"), f"{name}.json"))["trials"]) if U.exists(
            U.join(exp.path("grid"), f"{name}.json")) else set()
        if ids and ids <= done_trials(exp):
            continue
        if not tune.Tuner.can_restore(path if U.is_remote(path) else os.path.abspath(path)):
            continue
        say(f"[grid] restoring Tune experiment {name} (resume_errored=True)")
        tuner = tune.Tuner.restore(path if U.is_remote(path) else os.path.abspath(path),
                                   trainable=_trainable(cfg), resume_errored=True)
        _record(exp, name, tuner.fit())

    # 2. whatever is still missing runs in a new Tune experiment
    todo = [s for s in specs if s.trial_id not in done_trials(exp)]
    if todo:
        name = f"grid-{len(_tune_experiments(exp)):03d}"
        U.write_json(U.join(exp.path("grid"), f"{name}.json"), {"trials": [s.trial_id for s in todo]})
        tuner = tune.Tuner(
            _trainable(cfg),
            param_space={**base, "trial": tune.grid_search([s.to_dict() for s in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.grid.max_concurrent or None, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=_run_config(exp, cfg, name),
        )
        _record(exp, name, tuner.fit())
    states = write_trial_states(exp, specs)
    counts = states["status"].value_counts().to_dict() if len(states) else {}
    say(f"[grid] trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())))
    return counts


def _record(exp: Experiment, name: str, grid) -> None:
    """Keep each Tune trial's final status and error text (Tune's state stays where Tune put it)."""
    rows = []
    for r in grid:
        t = (r.config or {}).get("trial", {})
        rows.append({"trial_id": t.get("trial_id"), "tune_experiment": name,
                     "status": "ERROR" if r.error else "TERMINATED",
                     "error": _short(r.error) if r.error else ""})
    U.write_json(U.join(exp.path("grid"), f"{name}.states.json"), rows)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    tail = [ln for ln in text if ln.strip()][-3:]
    return f"{type(err).__name__}: " + " | ".join(tail)


def write_trial_states(exp: Experiment, specs: list[TrialSpec]) -> pd.DataFrame:
    """trial_states.parquet: one row per grid trial: TERMINATED (result file), ERROR (with reason) or PENDING."""
    done = done_trials(exp)
    errors: dict[str, str] = {}
    for n in U.listdir(exp.path("grid")):
        if n.endswith(".states.json"):
            for row in U.read_json(U.join(exp.path("grid"), n)):
                if row["status"] == "ERROR" and row["trial_id"]:
                    errors[row["trial_id"]] = row["error"]
    rows = []
    for s in specs:
        status = "TERMINATED" if s.trial_id in done else ("ERROR" if s.trial_id in errors else "PENDING")
        rows.append({**s.to_dict(), "status": status, "error": errors.get(s.trial_id, "") if status == "ERROR" else ""})
    df = pd.DataFrame(rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    U.write_bytes(exp.path("trial_states.parquet"), buf.getvalue())
    return df
