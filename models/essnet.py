"""EssNet (Huo et al., ISBI 2018; SynSeg-Net's `cycle_seg` model): a CycleGAN whose CT->MR generator also feeds a
segmentor trained with the CT liver masks, so the synthetic MR stays aligned with the masks it carries.

Naming follows the CycleGAN code: domain A = CT, domain B = MRI. netG_A maps CT->MR, netG_B MR->CT; netD_A judges
MR (real_B vs fake_B = netG_A(real_A)), netD_B judges CT. netS segments fake_B into liver/background and is trained
with mask_A (the real CT mask); it shares one Adam with the generators. With `seg_branch=False` the same class is the
plain CycleGAN ablation: netS is None and loss_seg is absent.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datasets.errors import ConfigError
from models.losses import GANLoss, NonFiniteLossError, dice_ce_loss
from models.networks import NLayerDiscriminator, ResnetGenerator, init_weights

__all__ = ["EssNetConfig", "EssNet", "ImagePool", "lr_factor", "set_requires_grad"]

_INT_MIN = {  # field -> smallest allowed value
    "input_nc": 1, "output_nc": 1, "n_classes": 2, "ngf": 1, "ndf": 1, "n_blocks": 0, "n_layers_D": 1,
    "pool_size": 0, "steps": 0, "steps_decay": 0, "batch_size": 1, "seed": 0,
}
_FLOAT_MIN = {"lambda_A": 0.0, "lambda_B": 0.0, "lambda_identity": 0.0, "lambda_seg": 0.0, "init_gain": 0.0}


@dataclass(frozen=True)
class EssNetConfig:
    """Everything that defines an EssNet (or plain CycleGAN) run; defaults are the paper's / the CycleGAN code's.

    Total optimisation steps = steps (constant LR) + steps_decay (linear decay to 0).
    """

    input_nc: int = 1
    output_nc: int = 1
    n_classes: int = 2  # netS classes: background, liver
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_D: int = 3
    lambda_A: float = 10.0
    lambda_B: float = 10.0
    lambda_identity: float = 0.0  # EssNet code's default (CycleGAN's is 0.5)
    lambda_seg: float = 1.0
    seg_branch: bool = True  # False: the plain CycleGAN ablation
    pool_size: int = 50
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    steps: int = 2000
    steps_decay: int = 2000
    batch_size: int = 4
    seed: int = 0
    init_gain: float = 0.02
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU, which always runs fp32)
    compile: bool = False  # torch.compile the networks

    def __post_init__(self) -> None:
        for name, minimum in _INT_MIN.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"EssNetConfig.{name} must be an int >= {minimum}, got {value!r}")
        for name, minimum in _FLOAT_MIN.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
                raise ConfigError(f"EssNetConfig.{name} must be a finite number >= {minimum}, got {value!r}")
        if self.init_gain == 0:
            raise ConfigError(f"EssNetConfig.init_gain must be > 0, got {self.init_gain!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError(f"EssNetConfig.lr must be in (0, 1), got {self.lr!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"EssNetConfig.{name} must be in [0, 1), got {value!r}")
        for name in ("seg_branch", "amp", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"EssNetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.steps + self.steps_decay < 1:
            raise ConfigError(f"EssNetConfig.steps + steps_decay must be >= 1, got {self.steps} + {self.steps_decay}")

    @property
    def total_steps(self) -> int:
        return self.steps + self.steps_decay

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EssNetConfig":
        """Build from a plain dict (YAML, checkpoint).

        Raises:
            ConfigError: naming the first unknown key, or a field whose value is out of range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown EssNetConfig key {key!r}; expected one of {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_factor(step: int, steps: int, steps_decay: int) -> float:
    """LR multiplier for 0-based optimisation step `step`: 1 for the first `steps`, then linear toward 0.

    The last decay step (steps + steps_decay - 1) gets 1/steps_decay, as the CycleGAN 'linear' policy ends just above 0.
    """
    if step < steps or steps_decay == 0:
        return 1.0
    return max(0.0, 1.0 - (step - steps) / steps_decay)


def set_requires_grad(nets: tuple[nn.Module, ...], requires_grad: bool) -> None:
    """Freeze or unfreeze every parameter of `nets` (the CycleGAN code's trick to skip D grads during the G step)."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(requires_grad)


class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al. 2017): D sees a mix of current and past fakes.

    Once full, each incoming image is, with probability 1/2, swapped for a random stored one. The draws come from a
    seeded torch.Generator of its own, so the pool is repeatable and checkpointable without touching global RNG.
    """

    def __init__(self, pool_size: int, seed: int) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size!r}")
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []  # each [1, C, H, W], detached
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] fresh fakes -> [B, C, H, W] fakes for D (detached)."""
        if self.pool_size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif torch.rand((), generator=self.rng).item() > 0.5:
                idx = int(torch.randint(0, self.pool_size, (), generator=self.rng).item())
                out.append(self.images[idx].clone())
                self.images[idx] = image
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"images": [im.to("cpu", copy=True) for im in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [im.to(device) for im in state["images"]]
        self.rng.set_state(state["rng"])


def _cpu_copy(obj: Any) -> Any:
    """Deep copy of nested dicts/lists with every tensor copied to CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


class EssNet:
    """EssNet / plain CycleGAN: the networks, their two optimizers and the image pools; one step at a time.

    Args:
        cfg: the run's configuration (cfg.seg_branch=False builds the CycleGAN ablation: netS is None).
        device: where the networks live (default CPU). On CUDA: channels_last, fused Adam and (cfg.amp) bf16 autocast.
    """

    def __init__(self, cfg: EssNetConfig, device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.on_cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if self.on_cuda else torch.contiguous_format
        init_rng = torch.Generator().manual_seed(cfg.seed)  # weights depend on cfg.seed only

        self.netG_A = ResnetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_blocks)  # CT -> MR
        self.netG_B = ResnetGenerator(cfg.output_nc, cfg.input_nc, cfg.ngf, cfg.n_blocks)  # MR -> CT
        self.netD_A = NLayerDiscriminator(cfg.output_nc, cfg.ndf, cfg.n_layers_D)  # real_B vs fake_B (MR)
        self.netD_B = NLayerDiscriminator(cfg.input_nc, cfg.ndf, cfg.n_layers_D)  # real_A vs fake_A (CT)
        self.netS: ResnetGenerator | None = (
            ResnetGenerator(cfg.output_nc, cfg.n_classes, cfg.ngf, cfg.n_blocks, tanh=False) if cfg.seg_branch else None
        )
        self.generators: tuple[nn.Module, ...] = (self.netG_A, self.netG_B) + ((self.netS,) if self.netS else ())
        self.discriminators: tuple[nn.Module, ...] = (self.netD_A, self.netD_B)
        for _, net in self.named_networks():  # netS last: both variants start from the same G_A, G_B, D_A, D_B
            init_weights(net, cfg.init_gain, generator=init_rng)
            net.to(self.device, memory_format=self.memory_format)
            if cfg.compile:
                net.compile()  # in place: state_dict keys stay unprefixed

        self.criterionGAN = GANLoss().to(self.device)
        self.criterionCycle = nn.L1Loss()
        self.criterionIdt = nn.L1Loss()
        adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True) if self.on_cuda else dict(
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)
        )
        # One Adam over G_A, G_B (and S): netS learns together with the generators, as in SynSeg-Net.
        self.optimizer_G = torch.optim.Adam(itertools.chain(*(n.parameters() for n in self.generators)), **adam)
        self.optimizer_D = torch.optim.Adam(itertools.chain(*(n.parameters() for n in self.discriminators)), **adam)
        self.fake_A_pool = ImagePool(cfg.pool_size, seed=cfg.seed + 1)
        self.fake_B_pool = ImagePool(cfg.pool_size, seed=cfg.seed + 2)
        self.step = 0  # optimisation steps completed

    # ---- bookkeeping -------------------------------------------------------------------------------------------
    def named_networks(self) -> tuple[tuple[str, nn.Module], ...]:
        """(name, net) for every network that exists, written out (netS only with the segmentation branch)."""
        pairs: tuple[tuple[str, nn.Module], ...] = (
            ("netG_A", self.netG_A), ("netG_B", self.netG_B), ("netD_A", self.netD_A), ("netD_B", self.netD_B),
        )
        return pairs + ((("netS", self.netS),) if self.netS is not None else ())

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.on_cuda and self.cfg.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor, name: str, image: bool) -> torch.Tensor:
        if image:
            if x.ndim == 3:
                x = x.unsqueeze(1)  # [B, H, W] -> [B, 1, H, W]
            if x.ndim != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
                raise ValueError(f"{name} must be [B, C, H, W] with H, W multiples of 4, got {tuple(x.shape)}")
            return x.to(self.device, torch.float32, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x.to(self.device, torch.long, non_blocking=True)

    def set_lr(self, step: int) -> float:
        """Set both optimizers' LR for 0-based step `step` (a pure function of the step); returns it."""
        lr = self.cfg.lr * lr_factor(step, self.cfg.steps, self.cfg.steps_decay)
        for opt in (self.optimizer_G, self.optimizer_D):
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def _check(self, names: tuple[str, ...], values: torch.Tensor) -> dict[str, float]:
        floats = dict(zip(names, values.tolist()))  # one device sync per call
        for name, value in floats.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss term {name!r} is {value} at step {self.step + 1}")
        return floats

    # ---- the CycleGAN script -----------------------------------------------------------------------------------
    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both cycles (and netS on fake_B); inputs [B, 1, H, W] on self.device."""
        fake_B = self.netG_A(real_A)  # G_A(A): CT -> MR
        rec_A = self.netG_B(fake_B)  # G_B(G_A(A))
        fake_A = self.netG_B(real_B)  # G_B(B): MR -> CT
        rec_B = self.netG_A(fake_A)  # G_A(G_B(B))
        out = {"fake_B": fake_B, "rec_A": rec_A, "fake_A": fake_A, "rec_B": rec_B}
        if self.netS is not None:
            out["seg_fake_B"] = self.netS(fake_B)  # [B, n_classes, H, W] logits
        return out

    def backward_G(self, real_A: torch.Tensor, mask_A: torch.Tensor, real_B: torch.Tensor,
                   v: dict[str, torch.Tensor]) -> dict[str, float]:
        """Generator (+ segmentor) losses, checked for NaN/inf, then backward."""
        cfg = self.cfg
        zero = torch.zeros((), device=self.device)
        loss_idt_A = loss_idt_B = zero
        with self._autocast():
            if cfg.lambda_identity > 0:
                loss_idt_A = self.criterionIdt(self.netG_A(real_B).float(), real_B) * cfg.lambda_B * cfg.lambda_identity
                loss_idt_B = self.criterionIdt(self.netG_B(real_A).float(), real_A) * cfg.lambda_A * cfg.lambda_identity
            loss_G_A = self.criterionGAN(self.netD_A(v["fake_B"]), True)
            loss_G_B = self.criterionGAN(self.netD_B(v["fake_A"]), True)
            loss_cycle_A = self.criterionCycle(v["rec_A"].float(), real_A) * cfg.lambda_A
            loss_cycle_B = self.criterionCycle(v["rec_B"].float(), real_B) * cfg.lambda_B
            names = ("loss_G_A", "loss_G_B", "loss_cycle_A", "loss_cycle_B", "loss_idt_A", "loss_idt_B")
            terms = [loss_G_A, loss_G_B, loss_cycle_A, loss_cycle_B, loss_idt_A, loss_idt_B]
            if self.netS is not None:
                names += ("loss_seg",)
                terms.append(dice_ce_loss(v["seg_fake_B"], mask_A) * cfg.lambda_seg)
        losses = self._check(names, torch.stack([t.detach().float() for t in terms]))
        torch.stack(terms).sum().backward()
        return losses

    def backward_D_basic(self, netD: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """LSGAN D loss, halved as in the CycleGAN code; `fake` is detached so no gradient reaches the generator."""
        loss_D_real = self.criterionGAN(netD(real), True)
        loss_D_fake = self.criterionGAN(netD(fake.detach()), False)
        return (loss_D_real + loss_D_fake) * 0.5

    def backward_D(self, real_A: torch.Tensor, real_B: torch.Tensor, v: dict[str, torch.Tensor]) -> dict[str, float]:
        """Both discriminators' losses (on pooled fakes), checked for NaN/inf, then backward."""
        fake_B = self.fake_B_pool.query(v["fake_B"])
        fake_A = self.fake_A_pool.query(v["fake_A"])
        with self._autocast():
            loss_D_A = self.backward_D_basic(self.netD_A, real_B, fake_B)
            loss_D_B = self.backward_D_basic(self.netD_B, real_A, fake_A)
        losses = self._check(("loss_D_A", "loss_D_B"), torch.stack([loss_D_A.detach(), loss_D_B.detach()]))
        (loss_D_A + loss_D_B).backward()
        return losses

    def optimize_parameters(self, real_A: torch.Tensor, mask_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """One training step: forward, G(+S) step with Ds frozen, then D_A and D_B step.

        Args:
            real_A: [B, 1, H, W] (or [B, H, W]) CT in [-1, 1].
            mask_A: [B, H, W] CT liver mask (0/1, any int dtype); unused without the segmentation branch.
            real_B: [B, 1, H, W] (or [B, H, W]) MR in [-1, 1], unpaired with real_A; no MR mask exists.

        Returns:
            Every loss term as a float: loss_G_A, loss_G_B, loss_cycle_A, loss_cycle_B, loss_idt_A, loss_idt_B,
            loss_seg (EssNet only), loss_D_A, loss_D_B.

        Raises:
            NonFiniteLossError: a term is NaN or inf (named, with the 1-based step); no weights are updated.
        """
        real_A = self._to_device(real_A, "real_A", image=True)
        real_B = self._to_device(real_B, "real_B", image=True)
        mask_A = self._to_device(mask_A, "mask_A", image=False)
        self.set_lr(self.step)
        with self._autocast():
            v = self.forward(real_A, real_B)
        # G_A, G_B (and S)
        set_requires_grad(self.discriminators, False)  # Ds need no gradients during the G step
        self.optimizer_G.zero_grad(set_to_none=True)
        losses = self.backward_G(real_A, mask_A, real_B, v)
        self.optimizer_G.step()
        # D_A and D_B
        set_requires_grad(self.discriminators, True)
        self.optimizer_D.zero_grad(set_to_none=True)
        losses |= self.backward_D(real_A, real_B, v)
        self.optimizer_D.step()
        self.step += 1
        return losses

    def optimize_G_only(self, real_A: torch.Tensor, mask_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """A generator(+S) step with the discriminators frozen and not updated (for tests and diagnostics)."""
        real_A, real_B = self._to_device(real_A, "real_A", True), self._to_device(real_B, "real_B", True)
        mask_A = self._to_device(mask_A, "mask_A", False)
        with self._autocast():
            v = self.forward(real_A, real_B)
        set_requires_grad(self.discriminators, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        losses = self.backward_G(real_A, mask_A, real_B, v)
        self.optimizer_G.step()
        set_requires_grad(self.discriminators, True)
        return losses

    def optimize_D_only(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        """A discriminator step with the generators fixed (for tests and diagnostics)."""
        real_A, real_B = self._to_device(real_A, "real_A", True), self._to_device(real_B, "real_B", True)
        with torch.no_grad(), self._autocast():
            v = self.forward(real_A, real_B)
        self.optimizer_D.zero_grad(set_to_none=True)
        losses = self.backward_D(real_A, real_B, v)
        self.optimizer_D.step()
        return losses

    # ---- checkpoint state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A deep copy in plain containers and CPU tensors (loadable with weights_only=True; no aliasing of live state)."""
        state: dict[str, Any] = {"config": self.cfg.to_dict(), "step": self.step}
        for name, net in self.named_networks():
            state[name] = {k: t.detach().to("cpu", copy=True) for k, t in net.state_dict().items()}
        state["optimizer_G"] = _cpu_copy(self.optimizer_G.state_dict())
        state["optimizer_D"] = _cpu_copy(self.optimizer_D.state_dict())
        state["fake_A_pool"] = self.fake_A_pool.state_dict()
        state["fake_B_pool"] = self.fake_B_pool.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights, optimizer moments, pools and step from `state_dict()` output."""
        for name, net in self.named_networks():
            net.load_state_dict(state[name])
        self.optimizer_G.load_state_dict(state["optimizer_G"])
        self.optimizer_D.load_state_dict(state["optimizer_D"])
        self.fake_A_pool.load_state_dict(state["fake_A_pool"], self.device)
        self.fake_B_pool.load_state_dict(state["fake_B_pool"], self.device)
        self.step = int(state["step"])

    @torch.inference_mode()
    def synthesize(self, real_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """real_A [B, 1, H, W] -> (fake_B [B, 1, H, W] float32, seg logits [B, n_classes, H, W] float32 or None)."""
        real_A = self._to_device(real_A, "real_A", image=True)
        with self._autocast():
            fake_B = self.netG_A(real_A)
            seg = self.netS(fake_B) if self.netS is not None else None
        return fake_B.float(), (seg.float() if seg is not None else None)
