"""How well does each synthetic MR set keep the liver where its carried CT mask says? (one number per generator)

EssNet's own score (netS on netG_A(CT) vs the CT mask) exists only where there is a netS, and it grades EssNet with
its own segmentor. This score treats every generator alike: a reference U-Net trained on real MR only (the non-test
patients) segments each synthetic set, and its pooled Dice against the carried CT masks is the alignment. Untranslated
CT, scored the same way, is the floor. A misaligned generator (the paper's CycleGAN failure) scores low even when
its images look like MR.
"""
from __future__ import annotations

import numpy as np

from datasets import uri as U
from grid.config import ExperimentConfig, from_dict, unet_config
from grid.experiment import Experiment
from grid.stages import generator_runs
from grid.trials import split_patients


def _pooled_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = float(np.logical_and(pred, gt).sum())
    total = float(pred.sum() + gt.sum())
    return 1.0 if total == 0 else 2 * inter / total


def reference_alignment(exp_root: str, cfg_dict: dict) -> dict[str, float]:
    """Train the reference U-Net on real MR and score every synthetic store (runs inside a Ray task)."""
    import torch

    from datasets.store import SliceStore, tensor_column_to_numpy
    from grid.trainable import REAL_COLUMNS, _eval_volumes
    from models.predict import predict_probs
    from models.train_unet import train_unet

    exp = Experiment(exp_root)
    cfg: ExperimentConfig = from_dict(cfg_dict)
    real = SliceStore(exp.store("real_mr")).read(columns=REAL_COLUMNS)
    pid = np.asarray(real.column("patient_id").to_pylist())
    split = np.asarray(real.column("split").to_pylist())
    train_pts, val_pts = split_patients(sorted(set(pid[split == "trainval"])), 1, 0, cfg.ingest.seed)
    rows = np.flatnonzero(np.isin(pid, train_pts))
    images = tensor_column_to_numpy(real, "image")[rows].astype(np.float32)
    masks = tensor_column_to_numpy(real, "mask")[rows].astype(np.uint8)
    val = _eval_volumes(real, np.arange(len(pid)), val_pts)
    model = None
    for ev in train_unet(images, masks, val, [], unet_config(cfg, seed=0), num_threads=int(cfg.essnet.num_cpus)):
        if ev.done:
            from models.unet import UNet

            model = UNet(**ev.checkpoint["unet"])
            model.load_state_dict(ev.checkpoint["best_model"])
    assert model is not None
    torch.set_num_threads(max(1, int(cfg.essnet.num_cpus)))

    def score(store_uri: str) -> float:
        t = SliceStore(store_uri).read(columns=["image", "mask", "has_liver"])
        keep = t.column("has_liver").to_numpy(zero_copy_only=False)
        x = tensor_column_to_numpy(t, "image")[keep].astype(np.float32)
        y = tensor_column_to_numpy(t, "mask")[keep].astype(bool)
        pred = predict_probs(model, x, batch_size=64).argmax(1).cpu().numpy().astype(bool)
        return _pooled_dice(pred, y)

    out = {"untranslated_ct": score(exp.store("real_ct"))}
    for g, r in generator_runs(cfg):
        out[f"{g}-r{r}"] = score(exp.synthetic_store(g, r))
    return out


def run_alignment(exp: Experiment, cfg: ExperimentConfig, key: str, say=print) -> dict[str, float]:
    """The alignment stage: a Ray task, recorded like any stage and skipped when done."""
    import ray

    if not generator_runs(cfg):
        return {}
    if exp.stage_done("alignment", key):
        return exp.stage_record("alignment")["scores"]
    say("[alignment] training a reference U-Net on real MR to score each synthetic set")
    task = ray.remote(reference_alignment).options(num_cpus=cfg.essnet.num_cpus, num_gpus=min(1, cfg.essnet.num_gpus))
    scores = ray.get(task.remote(exp.root, cfg.to_dict()))
    exp.mark_done("alignment", key, scores=scores)
    U.write_json(exp.path("alignment.json"), scores)
    say("[alignment] reference-U-Net Dice vs the carried CT masks: "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return scores
