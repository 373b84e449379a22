"""Dimension-generic layer factories (after MONAI's ``Conv[...]``) and the block registry.

Nothing outside this module names ``Conv2d``/``Conv3d``: every operation takes its 2D or 3D
form from ``dims``. Norms, activations and blocks are looked up by name in registries, so an
unknown name gets a did-you-mean answer and a new block is one decorated function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

from .registry import Registry

NORMS: Registry[Callable[[int, int], nn.Module]] = Registry("norm")
ACTS: Registry[Callable[[], nn.Module]] = Registry("activation")
BLOCKS: Registry[Callable[..., nn.Module]] = Registry("block")


@dataclass(frozen=True)
class Resampler:
    """A way for an edge to change scale. ``direction``: 'down' or 'up'. A learnable one has
    ``build(in_channels, out_channels, factor, dims, norm=, act=, bias=) -> nn.Module`` (one
    module per edge); a stateless one has ``fn(dims, factor, align_corners) -> (function,
    kwargs)``, and the compiler emits the call once for every edge that needs the same one."""

    direction: str
    build: Callable[..., nn.Module] | None = None
    fn: Callable[[int, float, bool], tuple[Callable, dict[str, Any]]] | None = None

    @property
    def learnable(self) -> bool:
        return self.build is not None


RESAMPLERS: Registry[Resampler] = Registry("resampling")


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
#: PReLU with one slope per channel (MONAI's ``act="prelu"``, the V-Net paper's PReLU)
ACTS.register("prelu_channel")(lambda channels=1: nn.PReLU(channels))
_CHANNEL_ACTS = {"prelu_channel"}


def make_act(name: str, channels: int) -> nn.Module:
    """The activation ``name``; those with one parameter per channel get ``channels``."""
    builder = ACTS.get(name)
    return builder(channels) if name in _CHANNEL_ACTS else builder()


def channel_dropout(p: float, dims: int) -> nn.Module:
    """Dropout of whole channels (``Dropout2d``/``Dropout3d``), as MONAI's V-Net uses."""
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[dims](p)


class ConvNormAct(nn.Module):
    """conv(k x k, 'same' padding) -> norm -> act: the unit every block is made of. ``kernel``
    and ``stride`` take an int or one per axis (nnU-Net's anisotropic plans)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dims: int = 2,
        kernel: "int | list[int]" = 3,
        norm: str = "batch",
        act: str = "relu",
        bias: bool = True,
        stride: "int | list[int]" = 1,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {} if stride == 1 else {"stride": _axes(stride)}
        self.conv = conv_cls(dims)(in_channels, out_channels, _axes(kernel),
                                   padding=_same_padding(kernel), bias=bias, **kw)
        self.norm = NORMS.get(norm)(out_channels, dims)
        self.act = make_act(act, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _axes(v: "int | list[int] | tuple[int, ...]") -> "int | tuple[int, ...]":
    return v if isinstance(v, int) else tuple(int(a) for a in v)


def _same_padding(kernel: "int | list[int] | tuple[int, ...]") -> "int | tuple[int, ...]":
    return kernel // 2 if isinstance(kernel, int) else tuple(int(k) // 2 for k in kernel)


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
    stride: "int | list[int]" = 1,
) -> nn.Module:
    """(conv k x k, norm, act) x repeats; the VGG block of the UNet family when repeats=2.

    With ``residual`` the input is added back (through a 1x1 conv when the widths differ).
    ``stride`` (an int or one per axis): the first conv's, a block that downsamples (nnU-Net's
    ``StackedConvBlocks``; ``encoder: {downsample: block}``).
    """
    units = [
        ConvNormAct(in_channels if r == 0 else out_channels, out_channels, dims=dims,
                    kernel=kernel, norm=norm, act=act, bias=bias,
                    **({"stride": stride} if r == 0 and stride != 1 else {}))
        for r in range(repeats)
    ]
    if residual and stride != 1:
        raise ValueError("a residual conv block cannot stride (its shortcut keeps the size)")
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


class VNetStage(nn.Module):
    """A V-Net residual stage (Milletari et al. 2016; MONAI's ``LUConv`` stack): ``repeats``
    units of conv k x k -> norm -> act, the input added back, then act:
    ``act(units(dropout(x)) + x)``. The dropout (channel dropout, training only) applies to
    the units' input, not to the shortcut, as in MONAI's ``DownTransition``. Where the width
    differs from the incoming channels (the ++/3+/# skip schemes on V-Net stages) the first
    unit changes the channels and the shortcut is a 1x1 conv + norm (ResNet's projection)."""

    def __init__(self, units: list[nn.Module], act: nn.Module, dropout: float | None,
                 dims: int, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.dropout = channel_dropout(dropout, dims) if dropout else nn.Identity()
        self.units = nn.Sequential(*units)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.units(self.dropout(x)) + self.shortcut(x))


@BLOCKS.register("vnet", "vnet_stage")
def vnet_stage(
    in_channels: int,
    out_channels: int,
    *,
    dims: int,
    repeats: int = 2,
    kernel: int = 5,
    norm: str = "batch",
    act: str = "elu",
    bias: bool = False,
    dropout: float | None = None,
    **_: object,
) -> nn.Module:
    """V-Net's residual stage (see :class:`VNetStage`). As in V-Net, the shortcut is the
    identity when the node's width equals its incoming channels (``width: concat``, or edges
    that deliver the width with ``resample: {channels: level}``); otherwise it is a 1x1 conv
    + norm. The stage is residual by definition: the conv-block option ``residual`` does not
    apply to it."""
    units = [ConvNormAct(in_channels if r == 0 else out_channels, out_channels, dims=dims,
                         kernel=kernel, norm=norm, act=act, bias=bias) for r in range(repeats)]
    shortcut = None
    if in_channels != out_channels:
        shortcut = nn.Sequential(conv_cls(dims)(in_channels, out_channels, 1, bias=bias),
                                 NORMS.get(norm)(out_channels, dims))
    return VNetStage(units, make_act(act, out_channels), dropout, dims, shortcut)


class VNetInput(nn.Module):
    """V-Net's input stage (MONAI's ``InputTransition``): conv k x k -> norm, plus the input
    repeated to the output width (channels tiled), then act."""

    def __init__(self, in_channels: int, out_channels: int, *, dims: int, kernel: int,
                 norm: str, act: str, bias: bool) -> None:
        super().__init__()
        self.repeats = out_channels // in_channels
        self.conv = conv_cls(dims)(in_channels, out_channels, kernel, padding=kernel // 2,
                                   bias=bias)
        self.norm = NORMS.get(norm)(out_channels, dims)
        self.act = make_act(act, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiled = x.repeat(1, self.repeats, *([1] * (x.dim() - 2)))
        return self.act(self.norm(self.conv(x)) + tiled)


@BLOCKS.register("vnet_input")
def vnet_input(in_channels: int, out_channels: int, *, dims: int, kernel: int = 5,
               norm: str = "batch", act: str = "elu", bias: bool = False,
               **_: object) -> nn.Module:
    """V-Net's input stage (see :class:`VNetInput`); one conv, so ``repeats`` is not used.
    The width must be a multiple of the input channels (the input is tiled to it)."""
    if out_channels % in_channels:
        raise ValueError(f"the V-Net input stage tiles its {in_channels} input channels to its "
                         f"width {out_channels}: the width must be a multiple of "
                         f"{in_channels}")
    return VNetInput(in_channels, out_channels, dims=dims, kernel=kernel, norm=norm, act=act,
                     bias=bias)


# -- resampling (edge operations) ------------------------------------------------------------


class ResampleConv(nn.Module):
    """A learnable resampling with norm and act: strided conv (down) or transposed conv (up),
    k = stride = the scale factor, then norm and act (V-Net's down/up transitions)."""

    def __init__(self, conv: nn.Module, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = conv, norm, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _learnable(cls_of: Callable[[int], type[nn.Module]]) -> Callable[..., nn.Module]:
    def build(in_channels: int, out_channels: int, factor: "int | tuple[int, ...]", dims: int, *,
              norm: str | None = None, act: str | None = None,
              bias: bool | None = None) -> nn.Module:
        conv = cls_of(dims)(in_channels, out_channels, factor, stride=factor,
                            bias=True if bias is None else bias)
        if norm is None and act is None:
            return conv  # the plain form: edges.<u>__<v>.resample.weight
        return ResampleConv(conv, NORMS.get(norm or "none")(out_channels, dims),
                            make_act(act or "none", out_channels))
    return build


def _pool(fn_of: Callable[[int], Callable]):
    def fn(dims: int, factor: "float | tuple[float, ...]", align_corners: bool):
        k = (tuple(int(round(1 / f)) for f in factor) if isinstance(factor, tuple)
             else int(round(1 / factor)))
        return fn_of(dims), {"kernel_size": k, "stride": k}
    return fn


def _interp(mode: str | None):
    def fn(dims: int, factor: "float | tuple[float, ...]", align_corners: bool):
        sf = tuple(float(f) for f in factor) if isinstance(factor, tuple) else float(factor)
        kw: dict[str, Any] = {"scale_factor": sf, "mode": mode or linear_mode(dims)}
        if mode is None:
            kw["align_corners"] = align_corners
        return F.interpolate, kw
    return fn


RESAMPLERS.register("maxpool")(Resampler("down", fn=_pool(max_pool_fn)))
RESAMPLERS.register("avgpool")(Resampler("down", fn=_pool(avg_pool_fn)))
RESAMPLERS.register("conv")(Resampler("down", build=_learnable(conv_cls)))
RESAMPLERS.register("bilinear")(Resampler("up", fn=_interp(None)))
RESAMPLERS.register("nearest")(Resampler("up", fn=_interp("nearest")))
RESAMPLERS.register("transposed")(Resampler("up", build=_learnable(conv_transpose_cls)))


def resampler_names(direction: str) -> list[str]:
    return [n for n in RESAMPLERS if RESAMPLERS.get(n).direction == direction]


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
