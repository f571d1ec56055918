"""`essgrid predict`: segment a DICOM series with a trained U-Net and write CHAOS-format PNG masks."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pandas as pd

from datasets import uri as U
from datasets.errors import EssgridError


def best_trial_checkpoint(exp_root: str, trial: str | None = None) -> tuple[str, str]:
    """(trial id, local path of its final U-Net weights) for the best trial on validation, or the named one."""
    from grid.experiment import Experiment

    exp = Experiment(exp_root)
    names = [n[:-8] for n in U.listdir(exp.results_dir) if n.endswith(".parquet")]
    if not names:
        raise EssgridError(f"{exp_root}: no finished trials (results/ is empty)")
    if trial is None:
        frames = [pd.read_parquet(io.BytesIO(U.read_bytes(U.join(exp.results_dir, f"{n}.parquet")))) for n in names]
        df = pd.concat(frames)
        trial = str(df.groupby("trial_id")["val_dice"].first().sort_values(ascending=False).index[0])
    elif trial not in names:
        raise EssgridError(f"--trial {trial!r}: no such finished trial in {exp_root}/results")
    uri = U.join(exp.path("models"), f"{trial}.pt")
    if not U.exists(uri):
        raise EssgridError(f"{uri}: the trial's U-Net weights are missing")
    if not U.is_remote(uri):
        return trial, uri
    fd, local = tempfile.mkstemp(suffix=".pt")
    with os.fdopen(fd, "wb") as f:
        f.write(U.read_bytes(uri))
    return trial, local


def predict(source: str, dicom_dir: str, out: str, trial: str | None = None, say=print) -> str:
    """Segment the series in `dicom_dir` with `source` (an experiment or a checkpoint file); returns `out`."""
    from datasets.chaos import read_dicom_series
    from datasets.preprocess import normalise_image
    from models.predict import load_unet, predict_volume, write_chaos_masks

    if not os.path.exists(source):
        raise EssgridError(f"{source}: no such experiment directory or checkpoint file")
    if os.path.isdir(source):
        trial, ckpt = best_trial_checkpoint(source, trial)
        say(f"using trial {trial} (best on validation)" if trial else "")
    else:
        ckpt = source
    model, meta = load_unet(ckpt)
    image, spacing, paths = read_dicom_series(dicom_dir)
    modality = _modality(paths[0])
    size = int(meta["size"])
    x = normalise_image(image, modality, size)
    mask = predict_volume(model, x, native_shape=image.shape[1:])
    write_chaos_masks(mask, out, modality)
    say(f"wrote {mask.shape[0]} {modality} masks ({int(mask.sum())} liver voxels) to {out}")
    return out


def _modality(path: str) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return "CT" if str(getattr(ds, "Modality", "")).upper() == "CT" else "MR"
