"""Stages 1 and 2: ingest (phantom first when no data is given) and train the generators once, as Ray tasks.

Each stage writes its outputs, then its record (`stages/<stage>.json`) carrying the key of the config parts it
depends on; a stage whose record holds the current key is skipped. EssNet trains as a Ray task asking for the GPUs
its config names (paper preset: 1, so an autoscaling cluster waits for a GPU worker instead of silently training on
a CPU). The plain CycleGAN ablation is the same task with the segmentation branch off.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from datasets import uri as U
from datasets.errors import EssgridError
from grid.config import ExperimentConfig, essnet_model_config, from_dict, stage_key
from grid.experiment import Experiment

log = logging.getLogger(__name__)


def phantom_dir(exp: Experiment) -> str:
    return exp.path("data", "phantom")


def run_ingest(exp: Experiment, cfg: ExperimentConfig, say=print) -> dict:
    """Write the phantom (default) or read the given CHAOS tree, and ingest it into real_ct / real_mr."""
    from datasets.ingest import ingest

    key = stage_key(cfg, "ingest")
    if exp.stage_done("ingest", key):
        rec = exp.stage_record("ingest")
        say(f"[ingest] done earlier: {rec.get('summary', '')}")
        return rec
    tmp = None
    if cfg.data.source == "phantom":
        from datasets.phantom import write_phantom

        p = cfg.data.phantom
        if U.is_remote(exp.root):  # the CHAOS reader reads local files: write the phantom to a temporary folder
            tmp = tempfile.mkdtemp(prefix="essgrid-phantom-")
            src = tmp
        else:
            src = phantom_dir(exp)
        if not _phantom_complete(src):
            if os.path.exists(src):
                shutil.rmtree(src)  # a phantom torn by an interruption: write it again (deterministic by seed)
            say(f"[ingest] writing the CHAOS-layout phantom ({p.ct_patients} CT + {p.mr_patients} MR patients) "
                f"to {src}")
            write_phantom(src + ".partial", ct_patients=p.ct_patients, mr_patients=p.mr_patients, seed=p.seed,
                          ct_size=p.ct_size, mr_size=p.mr_size, ct_slices=tuple(p.ct_slices),
                          mr_slices=tuple(p.mr_slices))
            os.replace(src + ".partial", src)
    else:
        src = cfg.data.source
        if not os.path.isdir(src):
            raise EssgridError(f"data.source: {src}: CHAOS folder does not exist")
    i = cfg.ingest
    say(f"[ingest] {src} -> {exp.stores} (size {i.size}, MR sequence {i.sequence})")
    try:
        res = ingest(src, exp.stores, size=i.size, sequence=i.sequence, n_test_mr=i.n_test_mr, n_val_ct=i.n_val_ct,
                     seed=i.seed, config_hash=key)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = res.summary() if hasattr(res, "summary") else str(res)
    say(f"[ingest] {summary}")
    exp.mark_done("ingest", key, source=src, summary=summary)
    return exp.stage_record("ingest")


def _phantom_complete(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "CT")) and os.path.isdir(os.path.join(path, "MR"))


# --- stage 2: the generators --------------------------------------------------------------------------------


def generator_runs(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(generator, replicate) pairs the grid needs."""
    return [(g, r) for g in cfg.grid.synthetic_generators for r in range(cfg.essnet.replicates)]


def essnet_key(cfg: ExperimentConfig, generator: str, replicate: int) -> str:
    from grid.config import config_hash

    return config_hash({"stage": stage_key(cfg, "essnet"), "generator": generator, "replicate": replicate})


def load_essnet_inputs(exp: Experiment, cfg: ExperimentConfig, seed: int) -> dict:
    """CT slices with masks (train split, optionally subsampled), held-out CT, and MR images of non-test patients.

    No MR mask is read: EssNet never sees an MR label.
    """
    from datasets.store import SliceStore, tensor_column_to_numpy

    ct = SliceStore(exp.store("real_ct")).read(columns=["split", "image", "mask"])
    split = np.asarray(ct.column("split").to_pylist())
    ct_img = tensor_column_to_numpy(ct, "image")
    ct_mask = tensor_column_to_numpy(ct, "mask")
    train = np.flatnonzero(split != "val")
    if cfg.essnet.ct_subsample < 1:
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(train, size=max(1, int(len(train) * cfg.essnet.ct_subsample)), replace=False))
    val = np.flatnonzero(split == "val")
    mr = SliceStore(exp.store("real_mr")).read(columns=["split", "image"])
    mr_split = np.asarray(mr.column("split").to_pylist())
    mr_img = tensor_column_to_numpy(mr, "image")[mr_split != "test"]
    return {
        "ct_images": ct_img[train].astype(np.float32), "ct_masks": ct_mask[train].astype(np.uint8),
        "mr_images": mr_img.astype(np.float32),
        "val_ct_images": ct_img[val].astype(np.float32) if len(val) else None,
        "val_ct_masks": ct_mask[val].astype(np.uint8) if len(val) else None,
    }


def train_generator(exp_root: str, cfg_dict: dict, generator: str, replicate: int) -> dict:
    """Train one generator (runs inside a Ray task). Continues from its checkpoint when one exists."""
    import torch

    from models.train_essnet import train_essnet

    exp = Experiment(exp_root)
    cfg = from_dict(cfg_dict)
    seed = 1000 * replicate + (0 if generator == "essnet" else 1)
    mcfg = essnet_model_config(cfg, seg_branch=(generator == "essnet"), seed=seed)
    data = load_essnet_inputs(exp, cfg, seed)
    remote = U.is_remote(exp.root)
    out_dir = tempfile.mkdtemp(prefix="essgrid-essnet-") if remote else exp.essnet_dir(generator, replicate)
    if remote:
        U.download_dir(exp.essnet_dir(generator, replicate), out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = max(1, int(cfg.essnet.num_cpus))
    res = train_essnet(data["ct_images"], data["ct_masks"], data["mr_images"], mcfg, out_dir,
                       val_ct_images=data["val_ct_images"], val_ct_masks=data["val_ct_masks"], resume=True,
                       device=device, num_threads=threads)
    if remote:
        U.upload_dir(out_dir, exp.essnet_dir(generator, replicate))
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"generator": generator, "replicate": replicate, "alignment_seg": res.alignment_dice, "device": device,
            "steps": res.steps, "seconds": res.seconds}


def run_essnet(exp: Experiment, cfg: ExperimentConfig, say=print) -> dict[str, dict]:
    """Train every generator the grid needs (in parallel Ray tasks), skipping those already trained."""
    import ray

    runs = generator_runs(cfg)
    if not runs:
        return {}
    out: dict[str, dict] = {}
    todo = []
    for g, r in runs:
        key = essnet_key(cfg, g, r)
        if exp.stage_done(f"essnet-{g}-r{r}", key):
            out[f"{g}-r{r}"] = exp.stage_record(f"essnet-{g}-r{r}")
        else:
            todo.append((g, r, key))
    if not todo:
        say("[essnet] generators trained earlier: " + ", ".join(out))
        return out
    m = essnet_model_config(cfg)
    say(f"[essnet] training {', '.join(f'{g}-r{r}' for g, r, _ in todo)} ({m.steps} + {m.steps_decay} steps, "
        f"{cfg.essnet.num_gpus} GPU and {cfg.essnet.num_cpus} CPU each)")
    task = ray.remote(train_generator).options(num_gpus=cfg.essnet.num_gpus, num_cpus=cfg.essnet.num_cpus,
                                               max_retries=1)
    refs = {task.remote(exp.root, cfg.to_dict(), g, r): (g, r, key) for g, r, key in todo}
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        g, r, key = refs[ready[0]]
        info = ray.get(ready[0])
        exp.mark_done(f"essnet-{g}-r{r}", key, **{k: v for k, v in info.items() if k not in ("generator",)})
        out[f"{g}-r{r}"] = exp.stage_record(f"essnet-{g}-r{r}")
        say(f"[essnet] {g}-r{r} trained on {info['device']}; netS alignment Dice on held-out CT: "
            f"{_fmt(info.get('alignment_seg'))}")
    return out


def _fmt(v) -> str:
    if isinstance(v, dict):
        v = v.get("dice", v.get("alignment"))
    return "n/a (no netS)" if v is None else f"{float(v):.3f}"


def read_alignment(exp: Experiment, generator: str, replicate: int) -> dict | None:
    p = U.join(exp.essnet_dir(generator, replicate), "alignment.json")
    return json.loads(U.read_text(p)) if U.exists(p) else None


__all__ = ["run_ingest", "run_essnet", "generator_runs", "train_generator", "Path"]
