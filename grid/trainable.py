"""The Tune trainable: one U-Net training of the grid, as a plain function of its config.

Restore first (`tune.get_checkpoint`), train with `models.train_unet` (a generator of evaluations), report metrics
with a checkpoint at each evaluation, and at the end write `results/<trial_id>.parquet` (one row per test volume,
config columns included): that file, not Tune's state, is what analysis reads. A trial whose result file already
exists reports it and returns, so a trial restored after its result was written never trains again and never
rewrites the file.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datasets import uri as U
from datasets.errors import EssgridError
from grid.config import from_dict, unet_config
from grid.experiment import Experiment
from grid.trials import Mix, TrialSpec, select_mix, synthetic_keep

log = logging.getLogger(__name__)

REAL_COLUMNS = ["patient_id", "slice_index", "split", "image", "mask", "spacing", "native_shape", "mask_native"]
SYN_COLUMNS = ["patient_id", "slice_index", "image", "mask", "has_liver", "quality"]


def _eval_volumes(table: pa.Table, rows: np.ndarray, patients: list[str]):
    """Group real MR rows of `patients` into EvalVolumes (slices in order, native masks unpacked)."""
    from datasets.store import tensor_column_to_numpy, unpack_native_mask
    from models.train_unet import EvalVolume

    pid = np.asarray(table.column("patient_id").to_pylist())
    sidx = np.asarray(table.column("slice_index").to_numpy())
    images = tensor_column_to_numpy(table, "image")
    spacing = table.column("spacing").to_pylist()
    native = table.column("native_shape").to_pylist()
    packed = table.column("mask_native").to_pylist()
    vols = []
    for p in patients:
        idx = rows[pid[rows] == p]
        idx = idx[np.argsort(sidx[idx], kind="stable")]
        shape = tuple(int(v) for v in native[idx[0]])
        mask = np.stack([unpack_native_mask(packed[i], shape) for i in idx])
        vols.append(EvalVolume(patient_id=str(p), images=images[idx].astype(np.float32), mask_native=mask,
                               spacing=tuple(float(s) for s in spacing[idx[0]]), native_shape=shape))
    return vols


def load_trial_data(exp: Experiment, spec: TrialSpec, cfg) -> dict:
    """Read the stores and build one trial's training mix, validation and test volumes."""
    from datasets.store import SliceStore, tensor_column_to_numpy

    real = SliceStore(exp.store("real_mr")).read(columns=REAL_COLUMNS)
    pid = np.asarray(real.column("patient_id").to_pylist())
    split = np.asarray(real.column("split").to_pylist())
    syn = None
    keep = None
    label = ""
    if spec.generator != "none":
        uri = exp.synthetic_store(spec.generator, spec.replicate)
        syn = SliceStore(uri).read(columns=SYN_COLUMNS)
        keep = synthetic_keep(syn.column("has_liver").to_numpy(), syn.column("quality").to_numpy(), cfg)
        label = f"the {spec.generator}-r{spec.replicate} store"
    mix: Mix = select_mix(spec, cfg, pid, split, keep, syn_label=label)
    real_img = tensor_column_to_numpy(real, "image")
    real_mask = tensor_column_to_numpy(real, "mask")
    images = [real_img[mix.real_rows]]
    masks = [real_mask[mix.real_rows]]
    if syn is not None and mix.n_syn:
        images.append(tensor_column_to_numpy(syn, "image")[mix.syn_rows])
        masks.append(tensor_column_to_numpy(syn, "mask")[mix.syn_rows])
    all_rows = np.arange(len(pid))
    test_pts = sorted(set(pid[split == "test"].tolist()))
    return {
        "train_images": np.concatenate(images).astype(np.float32),
        "train_masks": np.concatenate(masks).astype(np.uint8),
        "val": _eval_volumes(real, all_rows, mix.val_patients),
        "test": _eval_volumes(real, all_rows, test_pts),
        "mix": mix,
    }


def result_frame(spec: TrialSpec, cfg, mix: Mix, test_results: list[dict], config_hash: str, wall_s: float,
                 steps: int) -> pd.DataFrame:
    rows = []
    for r in test_results:
        rows.append({
            "trial_id": spec.trial_id, "generator": spec.generator, "replicate": spec.replicate,
            "fraction": (mix.n_syn / (mix.n_syn + mix.n_real)) if spec.n_syn_abs >= 0 else spec.fraction,
            "n_real": mix.n_real, "n_syn": mix.n_syn, "seed": spec.seed, "fold": spec.fold,
            "config_hash": config_hash, "preset": cfg.preset, "sequence": cfg.ingest.sequence,
            "steps": steps, "wall_s": wall_s, **r,
        })
    return pd.DataFrame(rows)


def _write_parquet(df: pd.DataFrame, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    U.write_bytes(uri, buf.getvalue())


def _maybe_inject_fault(cfg_dict: dict, spec: TrialSpec, exp: Experiment, step: int) -> None:
    """Test hook (config `debug`): make chosen trials raise at a step, a given number of times in all."""
    dbg = cfg_dict.get("debug") or {}
    match = dbg.get("fail_trials") or []
    if not any(m in spec.trial_id for m in match) or step < int(dbg.get("fail_at_step", 0)):
        return
    marker = exp.path("debug", f"{spec.trial_id}.failures")
    n = int(U.read_text(marker)) if U.exists(marker) else 0
    if n < int(dbg.get("fail_times", 1)):
        U.write_text(marker, str(n + 1))
        raise RuntimeError(f"injected failure #{n + 1} in trial {spec.trial_id} at step {step}")


def run_trial(config: dict) -> None:
    """The Tune function trainable. `config` = {"exp", "cfg" (resolved experiment config), "trial" (TrialSpec)}."""
    from ray import tune

    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.train_unet import train_unet

    exp = Experiment(config["exp"])
    cfg_dict = config["cfg"]
    cfg = from_dict(cfg_dict)
    spec = TrialSpec.from_dict(config["trial"])
    result_uri = U.join(exp.results_dir, f"{spec.trial_id}.parquet")
    if U.exists(result_uri):  # finished before an interruption: report, never retrain or rewrite
        done = pd.read_parquet(io.BytesIO(U.read_bytes(result_uri)))
        tune.report({"step": int(done["steps"].iloc[0]), "val_dice": float(done["val_dice"].iloc[0]),
                     "test_dice": float(done["dice"].mean()), "done": True})
        return
    t0 = time.time()
    data = load_trial_data(exp, spec, cfg)
    ucfg = unet_config(cfg, seed=spec.seed)
    state = _restore_state(exp, spec, tune.get_checkpoint(), load_checkpoint)
    if (cfg_dict.get("debug") or {}).get("nan_trials") and any(
            m in spec.trial_id for m in cfg_dict["debug"]["nan_trials"]):
        data["train_images"][:] = np.nan  # the U-Net loop's NaN guard must stop this trial with a clear error
    cpus = int(max(1, cfg.grid.cpus_per_trial))
    resumed_from = int(state.get("step", -1)) if state else -1
    curve_rows = []
    for ev in train_unet(data["train_images"], data["train_masks"], data["val"], data["test"], ucfg,
                         checkpoint=state, num_threads=cpus):
        _maybe_inject_fault(cfg_dict, spec, exp, ev.step)
        metrics = {"step": ev.step, **{k: float(v) for k, v in ev.metrics.items()}, "done": bool(ev.done),
                   "n_real": data["mix"].n_real, "n_syn": data["mix"].n_syn, "resumed_from": resumed_from}
        curve_rows.append({k: metrics[k] for k in metrics if k not in ("done", "resumed_from")})
        _append_curve(exp, spec, curve_rows[-1:])
        if ev.done:
            df = result_frame(spec, cfg, data["mix"], ev.test_results, config_hash=config["config_hash"],
                              wall_s=time.time() - t0, steps=ev.step)
            _save_model(exp, spec, ev, cfg)
            _write_parquet(df, result_uri)
            U.delete(_state_uri(exp, spec))  # the result file is the trial's record from here on
            metrics["test_dice"] = float(df["dice"].mean())
            tune.report(metrics)
            return
        buf = io.BytesIO()
        save_checkpoint(buf, ev.checkpoint)
        U.write_bytes(_state_uri(exp, spec), buf.getvalue())  # written before Tune hears of it
        with tempfile.TemporaryDirectory() as d:
            Path(d, "pointer.json").write_text(json.dumps({"trial_id": spec.trial_id, "step": ev.step}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _state_uri(exp: Experiment, spec: TrialSpec) -> str:
    return U.join(exp.path("checkpoints"), f"{spec.trial_id}.pt")


def _restore_state(exp: Experiment, spec: TrialSpec, tune_ckpt, load_checkpoint) -> dict | None:
    """The trial's training state to continue from, or None to start fresh.

    The full state lives in the experiment (`checkpoints/<trial_id>.pt`, replaced at every evaluation); Tune's
    checkpoint holds a pointer to its step. The experiment copy is written before Tune is told, so it is never older
    than the pointer. This matters after a SIGKILL of the driver: Tune saves its experiment state periodically, and
    may restore a trial with an older checkpoint, or none, while the trial's own state is current.
    """
    uri = _state_uri(exp, spec)
    pointer = -1
    if tune_ckpt is not None:
        with tune_ckpt.as_directory() as d:
            p = Path(d) / "pointer.json"
            pointer = int(json.loads(p.read_text())["step"]) if p.exists() else -1
    if not U.exists(uri):
        if pointer >= 0:
            log.warning("trial %s: Tune restored step %d but %s is missing; starting over", spec.trial_id, pointer, uri)
        return None
    state = load_checkpoint(io.BytesIO(U.read_bytes(uri)))
    if int(state.get("step", -1)) < pointer:
        raise EssgridError(f"{uri}: holds step {state.get('step')}, older than Tune's checkpoint (step {pointer})")
    return state


def _save_model(exp: Experiment, spec: TrialSpec, ev, cfg) -> None:
    """The selected (best on validation) U-Net of a finished trial, for `essgrid predict`."""
    from models.predict import unet_export

    buf = io.BytesIO()
    unet_export(ev.checkpoint, buf, size=cfg.ingest.size, modality="MR", sequence=cfg.ingest.sequence)
    U.write_bytes(U.join(exp.path("models"), f"{spec.trial_id}.pt"), buf.getvalue())


def _append_curve(exp: Experiment, spec: TrialSpec, rows: list[dict]) -> None:
    """Add evaluations to the trial's curve (rows from an attempt before a restore are replaced, not repeated)."""
    uri = U.join(exp.curves_dir, f"{spec.trial_id}.csv")
    df = pd.DataFrame(rows)
    if U.exists(uri):
        old = pd.read_csv(io.BytesIO(U.read_bytes(uri)))
        df = pd.concat([old[~old["step"].isin(df["step"])], df]).sort_values("step")
    U.write_text(uri, df.to_csv(index=False))


def check_trial_data(exp: Experiment, specs: list[TrialSpec], cfg, *, before_generation: bool = False) -> None:
    """Validate every trial's mix against the stores without training.

    Called twice: right after ingest (synthetic counts predicted from the CT store, since a synthetic slice keeps its
    CT mask: exact unless `grid.synthetic_filter` is "quality"), so a mix asking for more slices than exist fails
    before EssNet trains; and before Tune starts, against the synthetic stores themselves.

    Raises:
        ConfigError: the mix asks for more slices than exist (names the field and the counts).
    """
    from datasets.store import SliceStore

    real = SliceStore(exp.store("real_mr")).read(columns=["patient_id", "split"])
    pid = np.asarray(real.column("patient_id").to_pylist())
    split = np.asarray(real.column("split").to_pylist())
    keeps: dict[tuple[str, int], tuple[np.ndarray, str]] = {}
    for spec in specs:
        keep, label = None, ""
        if spec.generator != "none":
            k = (spec.generator, spec.replicate)
            if k not in keeps:
                if before_generation:
                    ct = SliceStore(exp.store("real_ct")).read(columns=["has_liver"])
                    has = ct.column("has_liver").to_numpy(zero_copy_only=False)
                    q = np.full(len(has), np.nan, np.float32)
                    keeps[k] = (synthetic_keep(has, q, cfg), "the CT store (one synthetic slice per CT slice)")
                else:
                    syn = SliceStore(exp.synthetic_store(*k)).read(columns=["has_liver", "quality"])
                    keeps[k] = (synthetic_keep(syn.column("has_liver").to_numpy(zero_copy_only=False),
                                               syn.column("quality").to_numpy(zero_copy_only=False), cfg),
                                f"the {spec.generator}-r{spec.replicate} store")
            keep, label = keeps[k]
        select_mix(spec, cfg, pid, split, keep, syn_label=label)


__all__ = ["run_trial", "load_trial_data", "check_trial_data", "EssgridError"]
