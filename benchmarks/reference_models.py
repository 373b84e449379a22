"""Hand-written eager PyTorch baselines of the UNet family: the test oracle of the compiler
(tests/test_reference_models.py, tests/test_reference_equivalence.py) and the other side of
the speed race in ``benchmarks/speed.py``. A project file, not part of the installed package.

These are what the public research code does (an explicit ``forward`` that names every node,
no graph machinery, no shared resampling), minus its copy-paste: one ``Unit`` (conv, norm, act)
and one ``vgg_block`` instead of per-edge attributes. Every class is dims-generic
(``dims=2`` or ``3``) and returns logits (no sigmoid).

Module names equal the compiled skipdsl models' names, so a ``state_dict`` loads across:

- node X[i,j]                 -> ``x_{i}_{j}``, an ``nn.Sequential`` of units
                                 (``x_0_0.0.conv.weight``, ``x_0_0.1.norm.running_mean``)
- UNet3+ projection on an edge -> ``edges['{src}__{dst}'].project`` (a unit)
- head on node X[0,4]          -> ``heads['x_0_4']`` (a plain conv)

Parameter counts at in_channels=3, num_classes=1, dims=2, as the papers' public code builds
them (UNet 3+: Huang et al., ICASSP 2020, github.com/ZJUGiveLab/UNet-Version; UNet#: Qian et
al., 2022):
UNet 7,852,545; WUNet 9,392,916; UNet++ 9,163,329; UNet3+ 26,971,777; UNet# 10,748,481.

A decoder node concatenates its inputs sorted by source level, then source column.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REFERENCE_MODELS", "PARAM_COUNTS", "DEFAULT_WIDTHS", "WUNET_WIDTHS", "UNET3P_WIDTHS",
           "Unit", "Projection", "vgg_block", "he_init", "UNet", "UNetPlusPlus", "UNetSharp",
           "UNet3Plus", "unet", "wunet", "unetpp", "unet3p", "unetsharp"]

DEFAULT_WIDTHS = (32, 64, 128, 256, 512)
WUNET_WIDTHS = (35, 70, 140, 280, 560)
UNET3P_WIDTHS = (64, 128, 256, 512, 1024)


def _conv(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def _batch_norm(dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


class Unit(nn.Module):
    """conv3x3 (padding 1, bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dims: int) -> None:
        super().__init__()
        self.conv = _conv(dims)(in_channels, out_channels, 3, padding=1, bias=True)
        self.norm = _batch_norm(dims)(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def vgg_block(in_channels: int, out_channels: int, dims: int, repeats: int = 2) -> nn.Sequential:
    """(conv3x3, BN, ReLU) x repeats."""
    return nn.Sequential(*[Unit(in_channels if r == 0 else out_channels, out_channels, dims)
                           for r in range(repeats)])


class Projection(nn.Module):
    """A UNet3+ edge: its input goes through its own conv3x3 -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dims: int) -> None:
        super().__init__()
        self.project = Unit(in_channels, out_channels, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)


def he_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit BatchNorm: the references' init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _GridNet(nn.Module):
    """Shared plumbing: the five-level encoder X[i,0], down/up resampling, the head."""

    depth = 5

    def __init__(self, in_channels: int, widths: Sequence[int], dims: int) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if len(widths) != self.depth:
            raise ValueError(f"widths needs {self.depth} values (one per level), got {list(widths)}")
        self.dims = dims
        self.widths = list(widths)
        w = self.widths
        self.x_0_0 = vgg_block(in_channels, w[0], dims)
        self.x_1_0 = vgg_block(w[0], w[1], dims)
        self.x_2_0 = vgg_block(w[1], w[2], dims)
        self.x_3_0 = vgg_block(w[2], w[3], dims)
        self.x_4_0 = vgg_block(w[3], w[4], dims)

    def down(self, x: torch.Tensor, factor: int = 2) -> torch.Tensor:
        pool: Callable = F.max_pool2d if self.dims == 2 else F.max_pool3d
        return pool(x, kernel_size=factor, stride=factor)

    def up(self, x: torch.Tensor, factor: int = 2) -> torch.Tensor:
        mode = "bilinear" if self.dims == 2 else "trilinear"
        return F.interpolate(x, scale_factor=float(factor), mode=mode, align_corners=True)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x00 = self.x_0_0(x)
        x10 = self.x_1_0(self.down(x00))
        x20 = self.x_2_0(self.down(x10))
        x30 = self.x_3_0(self.down(x20))
        x40 = self.x_4_0(self.down(x30))
        return x00, x10, x20, x30, x40


def _cat(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=1)


class UNet(_GridNet):
    """UNet (and WUNet with wider widths): decoder X[i,4-i] <- X[i,0], up2(X[i+1,3-i])."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 widths: Sequence[int] = DEFAULT_WIDTHS, dims: int = 2) -> None:
        super().__init__(in_channels, widths, dims)
        w = self.widths
        self.x_3_1 = vgg_block(w[3] + w[4], w[3], dims)
        self.x_2_2 = vgg_block(w[2] + w[3], w[2], dims)
        self.x_1_3 = vgg_block(w[1] + w[2], w[1], dims)
        self.x_0_4 = vgg_block(w[0] + w[1], w[0], dims)
        self.heads = nn.ModuleDict({"x_0_4": _conv(dims)(w[0], num_classes, 1)})
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x00, x10, x20, x30, x40 = self.encode(x)
        x31 = self.x_3_1(_cat(x30, self.up(x40)))
        x22 = self.x_2_2(_cat(x20, self.up(x31)))
        x13 = self.x_1_3(_cat(x10, self.up(x22)))
        x04 = self.x_0_4(_cat(x00, self.up(x13)))
        return self.heads["x_0_4"](x04)


class UNetPlusPlus(_GridNet):
    """UNet++: every X[i,j] with i+j <= 4 <- X[i,0..j-1] (dense), up2(X[i+1,j-1])."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 widths: Sequence[int] = DEFAULT_WIDTHS, dims: int = 2) -> None:
        super().__init__(in_channels, widths, dims)
        w = self.widths
        for i, j in self.decoder_nodes():
            self.add_module(f"x_{i}_{j}", vgg_block(self.in_width(i, j), w[i], dims))
        self.heads = nn.ModuleDict({"x_0_4": _conv(dims)(w[0], num_classes, 1)})
        he_init(self)

    @classmethod
    def decoder_nodes(cls) -> list[tuple[int, int]]:
        """(i, j) of every decoder node, column by column."""
        return [(i, j) for j in range(1, cls.depth) for i in range(cls.depth - j)]

    def in_width(self, i: int, j: int) -> int:
        return j * self.widths[i] + self.widths[i + 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x00, x10, x20, x30, x40 = self.encode(x)
        up = self.up
        x01 = self.x_0_1(_cat(x00, up(x10)))
        x11 = self.x_1_1(_cat(x10, up(x20)))
        x21 = self.x_2_1(_cat(x20, up(x30)))
        x31 = self.x_3_1(_cat(x30, up(x40)))

        x02 = self.x_0_2(_cat(x00, x01, up(x11)))
        x12 = self.x_1_2(_cat(x10, x11, up(x21)))
        x22 = self.x_2_2(_cat(x20, x21, up(x31)))

        x03 = self.x_0_3(_cat(x00, x01, x02, up(x12)))
        x13 = self.x_1_3(_cat(x10, x11, x12, up(x22)))

        x04 = self.x_0_4(_cat(x00, x01, x02, x03, up(x13)))
        return self.heads["x_0_4"](x04)


class UNetSharp(UNetPlusPlus):
    """UNet#: UNet++ plus full-scale up(2^k)(X[i+k,j-k]) for k = 2..j (no projection)."""

    def in_width(self, i: int, j: int) -> int:
        return j * self.widths[i] + sum(self.widths[i + k] for k in range(1, j + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x00, x10, x20, x30, x40 = self.encode(x)
        up = self.up
        x01 = self.x_0_1(_cat(x00, up(x10)))
        x11 = self.x_1_1(_cat(x10, up(x20)))
        x21 = self.x_2_1(_cat(x20, up(x30)))
        x31 = self.x_3_1(_cat(x30, up(x40)))

        x02 = self.x_0_2(_cat(x00, x01, up(x11), up(x20, 4)))
        x12 = self.x_1_2(_cat(x10, x11, up(x21), up(x30, 4)))
        x22 = self.x_2_2(_cat(x20, x21, up(x31), up(x40, 4)))

        x03 = self.x_0_3(_cat(x00, x01, x02, up(x12), up(x21, 4), up(x30, 8)))
        x13 = self.x_1_3(_cat(x10, x11, x12, up(x22), up(x31, 4), up(x40, 8)))

        x04 = self.x_0_4(_cat(x00, x01, x02, x03, up(x13), up(x22, 4), up(x31, 8), up(x40, 16)))
        return self.heads["x_0_4"](x04)


class UNet3Plus(_GridNet):
    """UNet3+: one decoder node per level, X[i,4-i] for i = 3..0.

    Its inputs: every encoder X[k,0] with k <= i (max-pooled by 2^(i-k)), every deeper decoder
    node and X[4,0] (bilinear up by 2^(k-i)); each goes through its own projection
    (conv3x3 -> ``cat_channels``, BN, ReLU), the five are concatenated and fused by one
    conv3x3 -> BN -> ReLU. Head: a 3x3 conv on X[0,4].
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 widths: Sequence[int] = UNET3P_WIDTHS, dims: int = 2,
                 cat_channels: int = 64) -> None:
        super().__init__(in_channels, widths, dims)
        w = self.widths
        fused = self.depth * cat_channels
        self.edges = nn.ModuleDict()
        for i in range(self.depth - 2, -1, -1):
            dst = self.node(i)
            for src, _ in self.sources(i):
                level, column = (int(v) for v in src.split("_")[1:])
                width = w[level] if column == 0 else fused   # encoder node or decoder node
                self.edges[f"{src}__{dst}"] = Projection(width, cat_channels, dims)
            self.add_module(dst, vgg_block(fused, fused, dims, repeats=1))
        self.heads = nn.ModuleDict({"x_0_4": _conv(dims)(fused, num_classes, 3, padding=1)})
        he_init(self)

    @classmethod
    def node(cls, i: int) -> str:
        """The decoder node of level i (X[4,0] plays that role at the bottom)."""
        return f"x_{i}_{cls.depth - 1 - i}"

    @classmethod
    def sources(cls, i: int) -> list[tuple[str, int]]:
        """(source node, scale factor) of decoder level i's inputs, shallowest first.

        factor < 0 means max-pool by -factor, 1 identity, > 1 bilinear up.
        """
        down = [(f"x_{k}_0", -(2 ** (i - k)) if k < i else 1) for k in range(i + 1)]
        up = [(cls.node(k), 2 ** (k - i)) for k in range(i + 1, cls.depth)]
        return down + up

    def fuse(self, i: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Project each (already resampled) input on its own edge, concatenate, fuse."""
        dst = self.node(i)
        projected = [self.edges[f"{src}__{dst}"](t) for src, t in inputs.items()]
        return getattr(self, dst)(torch.cat(projected, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x00, x10, x20, x30, x40 = self.encode(x)
        down, up = self.down, self.up
        x31 = self.fuse(3, {"x_0_0": down(x00, 8), "x_1_0": down(x10, 4), "x_2_0": down(x20, 2),
                            "x_3_0": x30, "x_4_0": up(x40, 2)})
        x22 = self.fuse(2, {"x_0_0": down(x00, 4), "x_1_0": down(x10, 2), "x_2_0": x20,
                            "x_3_1": up(x31, 2), "x_4_0": up(x40, 4)})
        x13 = self.fuse(1, {"x_0_0": down(x00, 2), "x_1_0": x10,
                            "x_2_2": up(x22, 2), "x_3_1": up(x31, 4), "x_4_0": up(x40, 8)})
        x04 = self.fuse(0, {"x_0_0": x00,
                            "x_1_3": up(x13, 2), "x_2_2": up(x22, 4), "x_3_1": up(x31, 8),
                            "x_4_0": up(x40, 16)})
        return self.heads["x_0_4"](x04)


def unet(in_channels: int = 3, num_classes: int = 1, widths: Sequence[int] | None = None,
         dims: int = 2) -> UNet:
    return UNet(in_channels, num_classes, widths or DEFAULT_WIDTHS, dims)


def wunet(in_channels: int = 3, num_classes: int = 1, widths: Sequence[int] | None = None,
          dims: int = 2) -> UNet:
    return UNet(in_channels, num_classes, widths or WUNET_WIDTHS, dims)


def unetpp(in_channels: int = 3, num_classes: int = 1, widths: Sequence[int] | None = None,
           dims: int = 2) -> UNetPlusPlus:
    return UNetPlusPlus(in_channels, num_classes, widths or DEFAULT_WIDTHS, dims)


def unet3p(in_channels: int = 3, num_classes: int = 1, widths: Sequence[int] | None = None,
           dims: int = 2) -> UNet3Plus:
    return UNet3Plus(in_channels, num_classes, widths or UNET3P_WIDTHS, dims)


def unetsharp(in_channels: int = 3, num_classes: int = 1, widths: Sequence[int] | None = None,
              dims: int = 2) -> UNetSharp:
    return UNetSharp(in_channels, num_classes, widths or DEFAULT_WIDTHS, dims)


# zoo name -> builder(in_channels=3, num_classes=1, widths=None (the model's own), dims=2)
REFERENCE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": unet,
    "wunet": wunet,
    "unetpp": unetpp,
    "unet3p": unet3p,
    "unetsharp": unetsharp,
}

# parameter counts at in_channels=3, num_classes=1, dims=2, default widths (the papers' code)
PARAM_COUNTS = {
    "unet": 7_852_545,
    "wunet": 9_392_916,
    "unetpp": 9_163_329,
    "unet3p": 26_971_777,
    "unetsharp": 10_748_481,
}
