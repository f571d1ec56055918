"""`essgrid status EXP`: what is done, what is running, what failed, and the best trial so far."""
from __future__ import annotations

import io
import os

import pandas as pd

from datasets import uri as U
from datasets.errors import EssgridError
from grid.experiment import Experiment


def _live_tune_states(exp: Experiment) -> dict[str, str]:
    """Trial id -> Tune status, read from Tune's own experiment state (best effort: Tune may be mid-write)."""
    states: dict[str, str] = {}
    try:
        from ray.tune import ExperimentAnalysis
    except ImportError:
        return states
    for name in U.listdir(exp.tune_dir):
        path = U.join(exp.tune_dir, name)
        try:
            ea = ExperimentAnalysis(path if U.is_remote(path) else os.path.abspath(path))
            for t in ea.trials:
                states[t.config["trial"]["trial_id"]] = t.status
        except Exception:  # an experiment still being written, or from an older Ray: skip it
            continue
    return states


def collect_status(exp_root: str) -> dict:
    exp = Experiment(exp_root)
    cfg = exp.saved_config()
    if cfg is None:
        raise EssgridError(f"{exp_root}: not an essgrid experiment (no config.yaml)")
    from grid.trials import build_trials

    stages = sorted(n[:-5] for n in U.listdir(exp.path("stages")) if n.endswith(".json"))
    shards = {}
    ct_shards = [n for n in U.listdir(exp.path("stores", "real_ct", "shards")) if n.endswith(".manifest.json")]
    for name in U.listdir(exp.path("stores", "synthetic_mr")):
        done = [n for n in U.listdir(exp.path("stores", "synthetic_mr", name, "shards")) if n.endswith(".manifest.json")]
        shards[name] = (len(done), len(ct_shards))
    specs = build_trials(cfg)
    done = {n[:-8] for n in U.listdir(exp.results_dir) if n.endswith(".parquet")}
    live = _live_tune_states(exp)
    errors = {}
    for n in U.listdir(exp.path("grid")):
        if n.endswith(".states.json"):
            errors.update({r["trial_id"]: r["error"] for r in U.read_json(exp.path("grid", n)) if r["status"] == "ERROR"})
    counts = {"TERMINATED": 0, "ERROR": 0, "RUNNING": 0, "PENDING": 0}
    for s in specs:
        if s.trial_id in done:
            counts["TERMINATED"] += 1
        elif live.get(s.trial_id) == "RUNNING":
            counts["RUNNING"] += 1
        elif s.trial_id in errors or live.get(s.trial_id) == "ERROR":
            counts["ERROR"] += 1
        else:
            counts["PENDING"] += 1
    best = None
    if done:
        frames = [pd.read_parquet(io.BytesIO(U.read_bytes(U.join(exp.results_dir, f"{t}.parquet")))) for t in sorted(done)]
        df = pd.concat(frames)
        by = df.groupby("trial_id").agg(dice=("dice", "mean"), val_dice=("val_dice", "first"))
        top = by.sort_values("val_dice", ascending=False).iloc[0]
        best = {"trial_id": top.name, "val_dice": float(top["val_dice"]), "test_dice": float(top["dice"])}
    return {"stages": stages, "shards": shards, "trials": counts, "errors": errors, "best": best,
            "n_trials": len(specs)}


def print_status(exp_root: str) -> None:
    st = collect_status(exp_root)
    print(f"experiment {exp_root}")
    print("stages done: " + (", ".join(st["stages"]) or "none"))
    for name, (d, n) in sorted(st["shards"].items()):
        print(f"synthetic store {name}: {d}/{n} shards")
    t = st["trials"]
    print(f"trials ({st['n_trials']}): {t['TERMINATED']} terminated, {t['ERROR']} errored, {t['RUNNING']} running, "
          f"{t['PENDING']} pending")
    for tid, err in sorted(st["errors"].items()):
        print(f"  errored {tid}: {err}")
    if st["best"]:
        b = st["best"]
        print(f"best on validation so far: {b['trial_id']} (val Dice {b['val_dice']:.4f}, test Dice {b['test_dice']:.4f})")
