"""Dimension-generic layer factories (after MONAI's ``Conv[...]``) and the block registry.

Nothing outside this module names ``Conv2d``/``Conv3d``: every operation takes its 2D or 3D
form from ``dims``. Norms, activations and blocks are looked up by name in registries, so an
unknown name gets a did-you-mean answer and a new block is one decorated function.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .registry import Registry

NORMS: Registry[Callable[[int, int], nn.Module]] = Registry("norm")
ACTS: Registry[Callable[[], nn.Module]] = Registry("activation")
BLOCKS: Registry[Callable[..., nn.Module]] = Registry("block")


def conv_cls(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def conv_transpose_cls(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


def max_pool_fn(dims: int) -> Callable:
    return {2: F.max_pool2d, 3: F.max_pool3d}[dims]


def avg_pool_fn(dims: int) -> Callable:
    return {2: F.avg_pool2d, 3: F.avg_pool3d}[dims]


def linear_mode(dims: int) -> str:
    """The interpolation mode the DSL calls ``bilinear``: bilinear in 2D, trilinear in 3D."""
    return {2: "bilinear", 3: "trilinear"}[dims]


@NORMS.register("batch", "bn")
def _batch(channels: int, dims: int) -> nn.Module:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)


@NORMS.register("instance", "in")
def _instance(channels: int, dims: int) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, affine=True)


@NORMS.register("group", "gn")
def _group(channels: int, dims: int) -> nn.Module:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@NORMS.register("none")
def _no_norm(channels: int, dims: int) -> nn.Module:
    return nn.Identity()


ACTS.register("relu")(lambda: nn.ReLU(inplace=True))
ACTS.register("leakyrelu", "leaky_relu")(lambda: nn.LeakyReLU(0.01, inplace=True))
ACTS.register("gelu")(lambda: nn.GELU())
ACTS.register("silu", "swish")(lambda: nn.SiLU(inplace=True))
ACTS.register("elu")(lambda: nn.ELU(inplace=True))
ACTS.register("prelu")(lambda: nn.PReLU())
ACTS.register("none")(lambda: nn.Identity())


class ConvNormAct(nn.Module):
    """conv(k x k, 'same' padding) -> norm -> act: the unit every block is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int = 2,
        kernel: int = 3,
        norm: str = "batch",
        act: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv = conv_cls(dims)(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)
        self.norm = NORMS.get(norm)(out_channels, dims)
        self.act = ACTS.get(act)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Sequential):
    """A stack of ConvNormAct units plus a shortcut (1x1 conv where the channels change)."""

    def __init__(self, units: list[nn.Module], shortcut: nn.Module) -> None:
        super().__init__(*units)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name, unit in self._modules.items():
            if name != "shortcut":
                out = unit(out)
        return out + self.shortcut(x)


@BLOCKS.register("conv", "vgg")
def conv_block(
    in_channels: int,
    out_channels: int,
    *,
    dims: int,
    repeats: int = 2,
    kernel: int = 3,
    norm: str = "batch",
    act: str = "relu",
    bias: bool = True,
    residual: bool = False,
) -> nn.Module:
    """(conv k x k, norm, act) x repeats; the VGG block of the UNet family when repeats=2.

    With ``residual`` the input is added back (through a 1x1 conv when the widths differ).
    """
    units = [
        ConvNormAct(in_channels if r == 0 else out_channels, out_channels, dims=dims,
                    kernel=kernel, norm=norm, act=act, bias=bias)
        for r in range(repeats)
    ]
    if not residual:
        return nn.Sequential(*units)
    shortcut = (
        nn.Identity() if in_channels == out_channels
        else conv_cls(dims)(in_channels, out_channels, 1, bias=bias)
    )
    return ResidualBlock(units, shortcut)


@BLOCKS.register("identity")
def identity_block(in_channels: int, out_channels: int, *, dims: int, **_: object) -> nn.Module:
    """No layers: the aggregated inputs pass through (needs width == incoming channels)."""
    if in_channels != out_channels:
        raise ValueError(f"identity block needs width == incoming channels ({in_channels})")
    return nn.Identity()


def init_he(module: nn.Module) -> None:
    """He (Kaiming, fan_in) initialisation of convolutions, unit norms, as the UNet 3+ reference
    code does; fan_in keeps a 1-channel output head from starting with saturated logits."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
