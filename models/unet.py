"""The classic 2D U-Net (Ronneberger et al. 2015) that segments the liver in real and synthetic MR slices.

Per level: two 3x3 convs, each followed by batch norm and ReLU (`DoubleConv`); 2x2 max-pool down, 2x2 transposed
conv up, skip concatenation. The convs are padded ("same"), unlike the paper's valid convs, so the output has the
input's H x W; this is the common modern form (e.g. milesial/Pytorch-UNet). Channels double at each level:
base, 2 base, ..., 2**depth base at the bottleneck. base=64, depth=4 is the ~31.0 M parameter U-Net of the
paper; the quick presets use base 16 (~1.9 M).

Shapes are BCHW; H and W must be multiples of 2**depth (each max-pool halves them exactly).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DoubleConv", "UNet"]


def _check_int(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2; [B, in_ch, H, W] -> [B, out_ch, H, W]. bias=False: BN has its own shift."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2x2 transposed conv halving the channels, concatenation with the skip, DoubleConv back to out_ch."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # [B, in_ch, h, w] -> [B, in_ch/2, 2h, 2w]
        return self.conv(torch.cat([skip, x], dim=1))  # [B, in_ch/2 + out_ch, 2h, 2w] -> [B, out_ch, 2h, 2w]


class UNet(nn.Module):
    """U-Net returning class logits [B, out_channels, H, W] for images [B, in_channels, H, W].

    Args:
        in_channels: image channels (1 for a grey MR slice).
        out_channels: classes (2: background, liver); logits, no softmax.
        base: filters at the first level (64 in the original U-Net; 16 in the quick presets).
        depth: number of max-pool steps (4 in the original); H and W must be multiples of 2**depth.

    Raises:
        ValueError: naming the argument, if a channel count, base or depth is not a positive int (depth <= 8).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base: int = 64, depth: int = 4) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("base", base, 1)
        _check_int("depth", depth, 1, 8)
        self.in_channels, self.out_channels, self.base, self.depth = in_channels, out_channels, base, depth
        widths = [base * 2**i for i in range(depth + 1)]  # [base, 2 base, ..., 2**depth base]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this (2**depth)."""
        return 2**self.depth

    def config(self) -> dict[str, int]:
        """Constructor arguments, stored beside the weights so a checkpoint rebuilds the same net."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "base": self.base,
                "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images.

        Args:
            x: [B, in_channels, H, W], H and W multiples of 2**depth.

        Returns:
            [B, out_channels, H, W] class logits.

        Raises:
            ValueError: wrong rank or channels, or H/W not a multiple of 2**depth.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet input must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"UNet input size {h}x{w} must be divisible by 2**depth = {self.multiple} (depth={self.depth}); "
                f"resize or pad the slices, or use a smaller depth"
            )
        skips = [self.inc(x)]  # [B, base, H, W]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))  # level i+1: [B, base 2**(i+1), H/2**(i+1), W/2**(i+1)]
        x = skips.pop()  # bottleneck [B, base 2**depth, H/2**depth, W/2**depth]
        for up in self.ups:
            x = up(x, skips.pop())  # back up one level per step
        return self.outc(x)  # [B, out_channels, H, W]
