"""Train one U-Net of the grid: a fixed budget of optimizer steps, model selection on validation patients, and the
selected model's scores on the test patients at native resolution.

`train_unet` is a generator of `UNetEvent`s, one per evaluation, each with a checkpoint that resumes the run exactly
(Ray Tune's trainable reports them; see grid/trainable.py). Choices worth knowing:

- Compute budget: `cfg.steps` optimizer steps of `cfg.batch_size` slices, the same for every real/synthetic mix, so a
  larger training set never buys more compute. Batches are drawn epoch-wise (a seeded permutation, consumed in order),
  so every slice is seen equally often.
- Data live in memory as tensors (on the GPU when there is one); augmentation runs on those tensors.
- Augmentation (`cfg.augment`), per slice: with probability 0.5 a small affine (rotation +-10 degrees, scale +-10 %,
  shift +-5 %; masks nearest-neighbour), then gamma (x 1/1.3 .. 1.3), gain (+-10 %) and Gaussian noise (sigma up to
  0.03 in the [-1, 1] range). No flips: the liver sits on the patient's right, so a left-right flip makes anatomically
  impossible slices and an up-down flip impossible ones too.
- Loss: `models.losses.dice_ce_loss` (soft Dice + cross-entropy), AdamW, LR a pure function of the step
  (`lr_at`: linear warm-up, then cosine to `min_lr_ratio * lr`, or constant).
- Evaluation: every `eval_every` steps and at the end, the mean 3D Dice over the validation volumes at native
  resolution (`models.predict.predict_volume`); the best state (ties keep the earlier one) is kept and scores the
  test volumes on the final event. Without validation volumes the last state is the selected one (val_dice NaN).
  Test rows (`score_volume`): the CHAOS 3D scores from `models.metrics`, plus dice_slice_mean / iou_slice_mean, the
  mean 2D score over the slices where the prediction or the target has liver (slices empty in both are left out, so
  the many liver-free slices do not inflate it; 1.0 when no slice has liver).
- Speed: on CUDA bf16 autocast (`amp`), channels_last, fused AdamW, cudnn.benchmark, optional torch.compile; on CPU
  fp32 with `num_threads` threads. Loss values are checked for NaN/inf every step on CPU and in blocks of
  `_CUDA_CHECK_EVERY` steps on CUDA (one device sync per block), naming the first bad step either way.
- Randomness: weights from `cfg.seed` (a forked RNG, the global one is left alone); batch order and augmentation from
  two seeded `torch.Generator`s whose states travel in the checkpoint. On CPU, N steps straight equal k steps plus a
  resume from the step-k checkpoint plus the rest, bit for bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datasets.errors import ConfigError, EssgridError
from models.checkpoint import CheckpointError
from models.losses import NonFiniteLossError, check_finite, dice_ce_loss
from models.metrics import compute_volume_metrics, dice, iou, ravd, slice_dice, slice_iou, surface_voxels
from models.predict import predict_volume
from models.unet import UNet

__all__ = ["UNetTrainConfig", "EvalVolume", "UNetEvent", "train_unet", "lr_at", "augment_batch", "volume_dice",
           "score_volume", "NonFiniteLossError"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_CUDA_CHECK_EVERY = 25  # loss finiteness checked once per this many steps on CUDA (one sync each)
_RUNTIME_ONLY = ("compile", "eval_batch_size")  # config fields that may differ when resuming
_CHECKPOINT_KEYS = ("config", "image_size", "n_train", "step", "model", "optimizer", "best_model", "best_val_dice",
                    "best_step", "sampler", "rng")
# Augmentation ranges (see the module docstring).
AUG_P_AFFINE = 0.5
AUG_ROTATE_DEG = 10.0
AUG_SCALE = 0.10
AUG_SHIFT = 0.05
AUG_GAMMA = 1.3
AUG_GAIN = 0.10
AUG_NOISE = 0.03


@dataclass(frozen=True)
class UNetTrainConfig:
    """Everything that defines one U-Net training (the `unet` section of an experiment config, plus its seed)."""

    base: int = 16
    depth: int = 4
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr) or "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05
    eval_every: int = 100
    eval_batch_size: int = 32
    augment: bool = True
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (CPU always runs fp32)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the U-Net

    def __post_init__(self) -> None:
        ints = {"base": (1, None), "depth": (1, 8), "steps": (1, None), "batch_size": (1, None),
                "warmup_steps": (0, None), "eval_every": (1, None), "eval_batch_size": (1, None), "seed": (0, None)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ConfigError(f"{name} must be an int {bound}, got {v!r}")
        floats = {"lr": (0.0, 1.0, False), "weight_decay": (0.0, 1.0, True), "min_lr_ratio": (0.0, 1.0, True)}
        for name, (lo, hi, lo_ok) in floats.items():
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (
                lo <= v if lo_ok else lo < v) and v <= hi
            if not ok:
                raise ConfigError(f"{name} must be a number in {'[' if lo_ok else '('}{lo}, {hi}], got {v!r}")
        for name in ("augment", "amp", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetTrainConfig":
        """Build from a plain dict (YAML section, checkpoint).

        Raises:
            ConfigError: naming the first unknown key (with a suggestion), or a field out of range.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {sorted(known)}"
                raise ConfigError(f"{key}: unknown U-Net config key{hint}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class EvalVolume:
    """One validation or test patient: preprocessed slices in, native-resolution liver mask to score against.

    Raises:
        EssgridError: shapes that do not fit together (message names the patient and field).
    """

    patient_id: str
    images: np.ndarray  # float32 [Z, S, S] preprocessed, in [-1, 1]
    mask_native: np.ndarray  # bool [Z, H, W]
    spacing: tuple[float, float, float]  # (row, col, slice) mm
    native_shape: tuple[int, int]  # (H, W)

    def __post_init__(self) -> None:
        img, mask = np.asarray(self.images), np.asarray(self.mask_native)
        where = f"patient {self.patient_id!r}"
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] != img.shape[2]:
            raise EssgridError(f"{where}: images must be [Z, S, S] with Z >= 1, got {img.shape}")
        if len(self.native_shape) != 2 or mask.shape != (img.shape[0], *map(int, self.native_shape)):
            raise EssgridError(f"{where}: mask_native shape {mask.shape} must be (Z, H, W) = "
                               f"({img.shape[0]}, {tuple(self.native_shape)}) from images and native_shape")
        if len(self.spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in self.spacing):
            raise EssgridError(f"{where}: spacing must be three positive (row, col, slice) mm, got {self.spacing!r}")


@dataclass(frozen=True, eq=False)
class UNetEvent:
    """One evaluation: metrics, a checkpoint that resumes the run exactly, and (final event only) test results."""

    step: int  # optimizer steps done
    metrics: dict[str, float]  # loss (mean since the last event), val_dice, best_val_dice, best_step, lr
    checkpoint: dict[str, Any]  # plain containers and CPU tensors (models.checkpoint.save_checkpoint-able)
    done: bool
    test_results: list[dict[str, Any]] | None  # per test volume, with the selected model; only when done


def lr_at(step: int, cfg: UNetTrainConfig) -> float:
    """Learning rate of 0-based optimizer step `step`: linear warm-up, then cosine to min_lr_ratio * lr (or flat)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def augment_batch(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                  noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine + intensity jitter of a batch (ranges in the module docstring).

    Args:
        x: [B, 1, S, S] float images in [-1, 1].
        y: [B, S, S] long class indices.
        gen: CPU generator for the per-slice parameters.
        noise_gen: generator on x's device for the noise.

    Returns:
        (x', y') of the same shapes; x' clipped to [-1, 1].
    """
    b, device = x.shape[0], x.device
    u = torch.rand(b, 7, generator=gen, dtype=torch.float64)  # per-slice parameters, CPU
    angle = (u[:, 0] * 2 - 1) * math.radians(AUG_ROTATE_DEG)
    inv_scale = 1.0 / (1.0 + (u[:, 1] * 2 - 1) * AUG_SCALE)
    shift = (u[:, 2:4] * 2 - 1) * (2 * AUG_SHIFT)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    sel = torch.nonzero(u[:, 4] < AUG_P_AFFINE).flatten()  # slices that get an affine (warp only those)
    if sel.numel():
        sel_d = sel.to(device)
        grid = F.affine_grid(theta[sel].to(device, torch.float32), [sel.numel(), *x.shape[1:]],
                             align_corners=False)  # [b, S, S, 2]
        warped = F.grid_sample(x[sel_d] + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
        y_warped = F.grid_sample(y[sel_d][:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)[:, 0].long()
        x = x.index_copy(0, sel_d, warped)  # pads with -1 (background) where the warp leaves the image
        y = y.index_copy(0, sel_d, y_warped)
    gamma = torch.exp((u[:, 5] * 2 - 1) * math.log(AUG_GAMMA)).to(device, torch.float32)[:, None, None, None]
    gain = (1.0 + (u[:, 6] * 2 - 1) * AUG_GAIN).to(device, torch.float32)[:, None, None, None]
    x01 = ((x + 1.0) * 0.5).clamp(0.0, 1.0) ** gamma
    sigma = torch.rand(b, generator=noise_gen, device=device)[:, None, None, None] * AUG_NOISE
    noise = torch.randn(x.shape, generator=noise_gen, device=device) * sigma
    return ((x01 * 2.0 - 1.0) * gain + noise).clamp(-1.0, 1.0), y


def volume_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """3D Dice of two bool volumes (`models.metrics.dice`: 1.0 when both are empty)."""
    return dice(np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool))


def _slice_mean(scores: np.ndarray) -> float:
    """Mean over slices where either mask has liver (both-empty slices are NaN and left out); 1.0 if none has."""
    scores = np.asarray(scores, dtype=np.float64)
    return 1.0 if np.isnan(scores).all() else float(np.nanmean(scores))


def score_volume(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The per-volume scores of a result row: CHAOS dice, iou, ravd, assd, mssd and the per-slice Dice/IoU means.

    A mask with no surface (one that fills the whole volume: `models.metrics` counts outside the array as foreground)
    gets assd = mssd = inf, as a missing surface does in `compute_volume_metrics`.
    """
    spacing = tuple(float(s) for s in spacing)
    if (pred.any() and not surface_voxels(pred).any()) or (gt.any() and not surface_voxels(gt).any()):
        m = {"dice": dice(pred, gt), "iou": iou(pred, gt), "ravd": ravd(pred, gt), "assd": math.inf, "mssd": math.inf}
    else:
        m = compute_volume_metrics(pred, gt, spacing)
    out = {k: float(m[k]) for k in ("dice", "iou", "ravd", "assd", "mssd")}
    out["dice_slice_mean"] = _slice_mean(slice_dice(pred, gt, empty=float("nan")))
    out["iou_slice_mean"] = _slice_mean(slice_iou(pred, gt, empty=float("nan")))
    return out


def _cpu_clone(obj: Any) -> Any:
    """Deep copy of nested containers, tensors copied to CPU (an event's checkpoint must not change later)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_clone(v) for v in obj)
    return obj


class _EpochSampler:
    """Batch indices from a seeded permutation, consumed in order and redrawn when spent (state: perm, pos)."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        parts, need = [], batch_size
        while need:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


def _check_train_data(train_images: Any, train_masks: Any, multiple: int) -> None:
    if not isinstance(train_images, np.ndarray) or train_images.ndim != 3:
        raise EssgridError(f"train_images: expected an array [N, S, S], got "
                           f"{getattr(train_images, 'shape', type(train_images).__name__)}")
    if train_images.shape[0] == 0:
        raise EssgridError("train_images: empty training set (0 slices)")
    n, h, w = train_images.shape
    if h != w:
        raise EssgridError(f"train_images: slices must be square [N, S, S], got {train_images.shape}")
    if h % multiple:
        raise EssgridError(f"train_images: slice size {h} must be divisible by 2**depth = {multiple}")
    if not isinstance(train_masks, np.ndarray) or train_masks.shape != train_images.shape:
        raise EssgridError(f"train_masks: shape {getattr(train_masks, 'shape', None)} must equal train_images' "
                           f"{train_images.shape}")
    if train_masks.dtype.kind not in "biu" or (train_masks.size and int(train_masks.max()) > 1) or (
            train_masks.size and int(train_masks.min()) < 0):
        raise EssgridError(f"train_masks: expected 0/1 integer masks, got dtype {train_masks.dtype} "
                           f"with values in [{train_masks.min()}, {train_masks.max()}]")


def _check_eval(name: str, vols: Sequence[EvalVolume], size: int) -> None:
    for v in vols:
        if not isinstance(v, EvalVolume):
            raise EssgridError(f"{name}: expected EvalVolume items, got {type(v).__name__}")
        if v.images.shape[1] != size:
            raise EssgridError(f"{name}: patient {v.patient_id!r} has slices of size {v.images.shape[1]}, "
                               f"the training slices {size}")


def train_unet(
    train_images: np.ndarray,
    train_masks: np.ndarray,
    val: Sequence[EvalVolume],
    test: Sequence[EvalVolume],
    cfg: UNetTrainConfig,
    *,
    checkpoint: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
) -> Iterator[UNetEvent]:
    """Train a U-Net for cfg.steps steps, yielding an event at every evaluation (the last one with done=True).

    Args:
        train_images: float32 [N, S, S] in [-1, 1] (real and synthetic MR slices, mixed by the caller).
        train_masks: uint8 [N, S, S] liver 0/1.
        val: validation volumes (model selection); may be empty (then the last state is selected).
        test: test volumes, scored once with the selected model on the final event.
        cfg: the training configuration.
        checkpoint: an event's checkpoint to resume from (same cfg; same data assumed).
        device: default CUDA when available, else CPU.
        num_threads: torch CPU threads (the CPUs this trial was given); None leaves torch's setting.

    Yields:
        UNetEvent per evaluation; the final one (done=True) carries test_results, one dict per test volume:
        {patient_id, dice, iou, ravd, assd, mssd, dice_slice_mean, iou_slice_mean, best_step, val_dice}.

    Raises:
        EssgridError: empty or mismatched training data, or bad eval volumes (names the argument).
        ConfigError: a checkpoint written with another configuration (names the field).
        CheckpointError: a checkpoint that lacks an entry train_unet writes.
        NonFiniteLossError: the loss became NaN or inf (names the term and step).
    """
    multiple = 2**cfg.depth
    _check_train_data(train_images, train_masks, multiple)
    size = int(train_images.shape[1])
    _check_eval("val", val, size)
    _check_eval("test", test, size)
    if not np.isfinite(train_images).all():
        raise EssgridError(f"train_images: {int((~np.isfinite(train_images)).sum())} non-finite values (NaN or inf)")
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise EssgridError(f"num_threads must be an int >= 1, got {num_threads!r}")
        torch.set_num_threads(num_threads)
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    fmt = torch.channels_last if on_cuda and cfg.channels_last else torch.contiguous_format
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda and cfg.amp else contextlib.nullcontext

    with torch.random.fork_rng(devices=[]):  # weights depend on cfg.seed only; the global RNG is left as it was
        torch.manual_seed(cfg.seed)
        model = UNet(in_channels=1, out_channels=2, base=cfg.base, depth=cfg.depth)
    model.to(device, memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if on_cuda else {}))
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch order + augmentation parameters (CPU)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # augmentation noise (on device)
    sampler = _EpochSampler(int(train_images.shape[0]), gen)

    step, best_val, best_step, best_state = 0, -math.inf, 0, None
    last_metrics: dict[str, float] = {}
    if checkpoint is not None:
        missing = [k for k in _CHECKPOINT_KEYS if k not in checkpoint]
        if missing:
            raise CheckpointError(f"U-Net checkpoint lacks {missing} (not written by train_unet?)")
        saved = checkpoint["config"]
        now = cfg.to_dict()
        for key in now:
            if key not in _RUNTIME_ONLY and saved.get(key) != now[key]:
                raise ConfigError(f"{key}: checkpoint was written with {saved.get(key)!r}, the config says "
                                  f"{now[key]!r}; start a fresh run to change it")
        if checkpoint.get("image_size") != size or checkpoint.get("n_train") != int(train_images.shape[0]):
            raise EssgridError(f"train_images: the checkpoint was trained on {checkpoint.get('n_train')} slices of "
                               f"size {checkpoint.get('image_size')}, got {train_images.shape[0]} of size {size}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        gen.set_state(checkpoint["rng"]["sampler"])
        noise_gen.set_state(checkpoint["rng"]["noise"])
        sampler.load_state_dict(checkpoint["sampler"])
        step, best_step = int(checkpoint["step"]), int(checkpoint["best_step"])
        best_val, best_state = float(checkpoint["best_val_dice"]), _cpu_clone(checkpoint["best_model"])
        last_metrics = dict(checkpoint.get("metrics", {}))
        log.info("resumed U-Net training at step %d/%d", step, cfg.steps)
    if cfg.compile:
        model.compile()  # in place: state_dict keys stay unprefixed

    images_t = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32)).to(device)  # [N, S, S]
    masks_t = torch.from_numpy(np.ascontiguousarray(train_masks, dtype=np.uint8)).to(device)  # [N, S, S]

    def evaluate(vols: Sequence[EvalVolume]) -> list[np.ndarray]:
        return [predict_volume(model, v.images, v.native_shape, batch_size=cfg.eval_batch_size, amp=cfg.amp,
                               channels_last=cfg.channels_last) for v in vols]

    def snapshot() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "unet": model.config(), "image_size": size,
            "n_train": int(train_images.shape[0]), "step": step, "model": _cpu_clone(model.state_dict()),
            "optimizer": _cpu_clone(optimizer.state_dict()), "best_model": _cpu_clone(best_state),
            "best_val_dice": float(best_val), "best_step": int(best_step),
            "sampler": sampler.state_dict(), "rng": {"sampler": gen.get_state(), "noise": noise_gen.get_state().cpu()},
            "metrics": dict(last_metrics),
        }

    def test_results() -> list[dict[str, Any]]:
        current = _cpu_clone(model.state_dict())
        model.load_state_dict(best_state)
        rows = []
        for v, pred in zip(test, evaluate(test)):
            gt = np.asarray(v.mask_native, dtype=bool)
            rows.append({"patient_id": v.patient_id, **score_volume(pred, gt, v.spacing),
                         "best_step": int(best_step), "val_dice": float(best_val) if val else float("nan")})
        model.load_state_dict(current)
        return rows

    if step >= cfg.steps:  # resumed from the final checkpoint: repeat the final event
        yield UNetEvent(step, dict(last_metrics), snapshot(), True, test_results())
        return

    model.train()
    check_every = _CUDA_CHECK_EVERY if on_cuda else 1
    pending: list[torch.Tensor] = []  # per-step losses not yet checked
    loss_sum, loss_n = 0.0, 0

    def check_pending(first_step: int) -> None:
        nonlocal loss_sum, loss_n
        if not pending:
            return
        values = torch.stack(pending).tolist()  # one sync
        pending.clear()
        for i, value in enumerate(values):
            check_finite({"dice_ce": value}, first_step + i)
        loss_sum, loss_n = loss_sum + sum(values), loss_n + len(values)

    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = sampler.next(cfg.batch_size).to(device)
        real = images_t[idx].unsqueeze(1)  # [B, 1, S, S]
        target = masks_t[idx].long()  # [B, S, S]
        if cfg.augment:
            real, target = augment_batch(real, target, gen, noise_gen)
        with autocast():
            logits = model(real.contiguous(memory_format=fmt))  # [B, 2, S, S]
        loss = dice_ce_loss(logits, target)  # fp32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        pending.append(loss.detach())
        if len(pending) >= check_every:
            check_pending(step - len(pending) + 1)
        if step % cfg.eval_every and step != cfg.steps:
            continue
        check_pending(step - len(pending) + 1)
        dices = [volume_dice(p, np.asarray(v.mask_native, dtype=bool)) for v, p in zip(val, evaluate(val))]
        val_dice = float(np.mean(dices)) if dices else float("nan")
        if best_state is None or not dices or val_dice > best_val:  # no val volumes: the last state is selected
            best_val, best_step, best_state = val_dice, step, _cpu_clone(model.state_dict())
        last_metrics = {"loss": loss_sum / max(1, loss_n), "val_dice": val_dice, "best_val_dice": float(best_val),
                        "best_step": float(best_step), "lr": float(lr)}
        loss_sum, loss_n = 0.0, 0
        done = step == cfg.steps
        log.info("step %d/%d loss %.4f val_dice %.4f best %.4f@%d", step, cfg.steps, last_metrics["loss"],
                 val_dice, best_val, best_step)
        yield UNetEvent(step, dict(last_metrics), snapshot(), done, test_results() if done else None)
