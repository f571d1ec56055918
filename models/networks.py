"""The CycleGAN building blocks EssNet is made of: the ResNet-9 generator and the 70x70 PatchGAN discriminator.

Both follow junyanz/pytorch-CycleGAN-and-pix2pix (`resnet_9blocks`, `basic` D with instance norm) so that parameter
counts and receptive fields match the papers. The same `ResnetGenerator`, with `tanh=False` and `output_nc` = number of
classes, is EssNet's segmentor netS (a class-logit head), as in SynSeg-Net's `cycle_seg` model.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResnetBlock", "ResnetGenerator", "NLayerDiscriminator", "init_weights", "count_parameters"]


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm and a skip connection; shape-preserving [B, dim, H, W]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        _check_positive("dim", dim)
        # bias=True: InstanceNorm2d(affine=False) has no shift of its own (as the CycleGAN code's use_bias rule).
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: 7x7 stem, two stride-2 downsamples, `n_blocks` residual blocks, two upsamples.

    Input H and W must be multiples of 4 (two stride-2 stages).

    Args:
        input_nc: input channels (1 for a grey CT/MR slice).
        output_nc: output channels (1 for an image; number of classes for the segmentor).
        ngf: filters in the first conv (64 in the paper).
        n_blocks: residual blocks at the bottleneck (9 in the paper, `resnet_9blocks`).
        tanh: end with tanh (images in [-1, 1]); False gives raw class logits (netS).

    Raises:
        ValueError: naming the argument, if a channel count or n_blocks is not a positive int (n_blocks may be 0).
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_blocks: int = 9, tanh: bool = True) -> None:
        super().__init__()
        _check_positive("input_nc", input_nc)
        _check_positive("output_nc", output_nc)
        _check_positive("ngf", ngf)
        _check_positive("n_blocks", n_blocks, minimum=0)
        self.input_nc, self.output_nc = input_nc, output_nc
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True),  # [B, ngf, H, W]
            nn.InstanceNorm2d(ngf, affine=False),
            nn.ReLU(True),
        ]
        n_downsampling = 2
        for i in range(n_downsampling):  # [B, ngf, H, W] -> [B, 2ngf, H/2, W/2] -> [B, 4ngf, H/4, W/4]
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult * 2, affine=False),
                nn.ReLU(True),
            ]
        mult = 2**n_downsampling
        layers += [ResnetBlock(ngf * mult) for _ in range(n_blocks)]  # [B, 4ngf, H/4, W/4]
        for i in range(n_downsampling):  # back to [B, ngf, H, W]
            mult = 2 ** (n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
                ),
                nn.InstanceNorm2d(ngf * mult // 2, affine=False),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]  # [B, output_nc, H, W]
        if tanh:
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_nc, H, W] -> [B, output_nc, H, W] (H, W multiples of 4)."""
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator; with n_layers=3 each output score sees a 70x70 input patch.

    Args:
        input_nc: input channels.
        ndf: filters in the first conv (64 in the paper).
        n_layers: stride-2 conv layers (3 gives the 70x70 PatchGAN).

    Raises:
        ValueError: naming the argument, if any is not a positive int.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        _check_positive("input_nc", input_nc)
        _check_positive("ndf", ndf)
        _check_positive("n_layers", n_layers)
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),  # [B, ndf, H/2, W/2]
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):  # each halves H, W: [B, ndf*min(2^n, 8), H/2^(n+1), W/2^(n+1)]
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=True),
                nn.InstanceNorm2d(ndf * nf_mult, affine=False),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=True),  # h-1
            nn.InstanceNorm2d(ndf * nf_mult, affine=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),  # [B, 1, h-2, w-2]
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_nc, H, W] -> [B, 1, h, w] patch scores (256 -> 30x30, 64 -> 6x6)."""
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02, generator: torch.Generator | None = None) -> nn.Module:
    """CycleGAN's 'normal' init: conv/linear weights ~ N(0, gain), biases 0, norm weights ~ N(1, gain).

    Args:
        net: the network, initialised in place.
        gain: standard deviation of the normal init.
        generator: RNG to draw from (seeded by the caller so construction does not touch the global RNG).

    Returns:
        `net`, for chaining.

    Raises:
        ValueError: if gain is not positive.
    """
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain!r}")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain, generator=generator)
            nn.init.zeros_(m.bias)
    return net


def count_parameters(net: nn.Module | None) -> int:
    """Number of trainable parameters (0 for None, e.g. the absent netS of the plain CycleGAN)."""
    return 0 if net is None else sum(p.numel() for p in net.parameters() if p.requires_grad)
