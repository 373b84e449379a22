"""Baselines from maintained libraries (the UNet# paper's Table 3), beside the zoo in one bench run.

A baseline is a registry entry whose builder constructs a library's own class (nothing is
re-implemented here) and states its constraints (dimensions, image sizes) before training
starts: a size the network cannot take is a :class:`~skipdsl.errors.SpecError` that says which
rule broke and what to do, not a shape error in the middle of a trial.

=================  =======================================  ===========================  =====
name               class                                    width scale reaches          dims
=================  =======================================  ===========================  =====
attention_unet     monai.networks.nets.AttentionUnet        channels (zoo UNet's 32..512) 2, 3
dynunet            monai.networks.nets.DynUNet, planned as  filters (nnU-Net's 32..320/   2, 3
                   nnU-Net would plan it (:func:`nnunet_plan`) 512)
unetr              monai.networks.nets.UNETR                feature_size, hidden_size,    2, 3
                                                            mlp_dim (12 heads kept)
swinunetr          monai.networks.nets.SwinUNETR            feature_size (a multiple of   2, 3
                                                            12: x0.25 gives 12 = x0.5)
deeplabv3plus      segmentation_models_pytorch.DeepLabV3Plus decoder_channels (encoder    2
                   (resnet34 encoder, encoder_weights=None)  resnet34 not scaled)
pspnet             segmentation_models_pytorch.PSPNet        psp_out_channels (encoder    2
                   (resnet34, depth 3, encoder_weights=None) resnet34 not scaled)
=================  =======================================  ===========================  =====

Size rules, checked at build time against the training size (the patch, or the whole image)
and the evaluation size (whole images): AttentionUnet and DynUNet need sizes divisible by their
total stride (16 for four poolings); SwinUNETR by 32 (patch 2 x four mergings); UNETR has a
fixed ``img_size``: it is built for the training patch (divisible by its ViT patch, 16) and
evaluated on whole images with MONAI's ``sliding_window_inference`` at that size (overlap 0.5,
Gaussian weights), so its cost figures count every window; DeepLabV3+ by 16 (its encoder
output stride), PSPNet by 8 (``2 ** encoder_depth``; the output is upsampled x8 back to the
input size).

TransUNet has no maintained package (the authors' repository is research code with no release);
UNETR and SwinUNETR stand for the transformer UNets. ENet, DUNet (deformable UNet) and RA-UNet
have no maintained implementation either (see the README).

In the trainer a baseline duck-types the parts of a :class:`~skipdsl.spec.Spec` it reads
(``name``, one head: no deep supervision, no loss of its own: the budget's, ``fast``), and
:func:`skipdsl.spec_hash` hashes its name, class and fixed settings. The built module exposes
its final convolution as ``heads``, so :func:`skipdsl.heads.init_heads` gives it the same
prior bias init as the zoo's heads.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from .errors import SpecError
from .registry import Registry, register_model

__all__ = ["BASELINES", "Baseline", "BaselineNet", "Geometry", "lookup", "list_baselines",
           "nnunet_plan", "describe", "scale_from_widths"]

#: Bump when a builder's fixed settings change: it is part of every baseline's hash.
BASELINE_VERSION = 1

#: The zoo's UNet widths (zoo/unet.yaml): AttentionUnet is given the same channels.
UNET_WIDTHS = (32, 64, 128, 256, 512)

BASELINES: Registry["Baseline"] = Registry("baseline")


@dataclass(frozen=True)
class Geometry:
    """What a baseline is built for: channels, classes and the sizes it must take."""

    dims: int
    in_channels: int
    num_classes: int
    train_size: tuple[int, ...]  # the training patch (or the whole image)
    eval_size: tuple[int, ...]  # the whole images it is evaluated on
    spacing: tuple[float, ...]

    @classmethod
    def make(cls, *, in_channels: int, num_classes: int, dims: int,
             image_size: int | Sequence[int], patch: int | Sequence[int] = 0,
             spacing: float | Sequence[float] | None = None) -> "Geometry":
        def tup(v, kind=int):
            return tuple(kind(x) for x in v) if isinstance(v, (list, tuple)) else (kind(v),) * dims

        eval_size = tup(image_size)
        train_size = tup(patch) if patch else eval_size
        return cls(int(dims), int(in_channels), int(num_classes), train_size, eval_size,
                   tup(1.0 if spacing is None else spacing, float))


@dataclass(frozen=True)
class Built:
    """What a baseline was built with (the module's ``spec``): the constructor's keyword
    arguments, the channel widths per level (``result['widths']``) and notes."""

    name: str
    cls: str
    kwargs: dict[str, Any]
    widths: list[int]
    notes: str = ""


class BaselineNet(nn.Module):
    """A library network with the zoo's interface: ``spec`` (a :class:`Built`), ``heads`` (its
    final convolution, for :func:`skipdsl.heads.init_heads`) and, for a network of fixed input
    size (``roi``), sliding-window inference on any other size."""

    def __init__(self, net: nn.Module, built: Built, head: str,
                 roi: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.net = net
        self.spec = built
        self.head_path = head
        self.roi = roi

    @property
    def heads(self) -> nn.ModuleDict:
        return nn.ModuleDict({"out": self.net.get_submodule(self.head_path)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.roi is not None and tuple(x.shape[2:]) != self.roi:
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(x, self.roi, 4, self.net, overlap=0.5,
                                            mode="gaussian")
        return self.net(x)


#: builder(geometry, width_scale) -> (module, constructor kwargs, final conv path, widths, roi)
Builder = Callable[[Geometry, float], tuple[Any, dict, str, list, Any]]


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: its library class, dims, what the width scale reaches, and the
    fixed settings that its hash covers. Duck-types a Spec for the trainer and the planner."""

    name: str
    cls: str
    dims: tuple[int, ...]
    description: str
    scaled: str
    fixed: dict[str, Any] = field(default_factory=dict)
    builder: Builder | None = None

    is_baseline: ClassVar[bool] = True
    heads: ClassVar[tuple[str, ...]] = ("out",)  # one output: no deep supervision
    loss: ClassVar[None] = None  # the budget's loss (else bce_dice)
    fast: ClassVar[None] = None

    @property
    def library(self) -> str:
        return self.cls.split(".")[0]

    def hash(self) -> str:
        """A stable hash of the name, class and fixed settings (the trial key's model part)."""
        blob = json.dumps({"baseline": self.name, "class": self.cls, "fixed": self.fixed,
                           "version": BASELINE_VERSION}, sort_keys=True, default=str)
        return "baseline-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def build(self, *, in_channels: int, num_classes: int, dims: int,
              image_size: int | Sequence[int], patch: int | Sequence[int] = 0,
              spacing: float | Sequence[float] | None = None, width_scale: float = 1.0):
        """The library network for this data, wrapped as a :class:`BaselineNet`.

        Raises :class:`SpecError` before anything is trained when the dims or a size breaks
        the network's rule, or when its library is not installed.
        """
        g = Geometry.make(in_channels=in_channels, num_classes=num_classes, dims=dims,
                          image_size=image_size, patch=patch, spacing=spacing)
        if g.dims not in self.dims:
            raise SpecError(f"baseline '{self.name}' ({self.cls}) has no {g.dims}D form",
                            expected=f"dims in {list(self.dims)}", found=g.dims,
                            hint="run it on 2D datasets only" if self.dims == (2,) else None)
        net, kwargs, head, widths, roi = self.builder(g, float(width_scale))
        built = Built(self.name, self.cls, kwargs, [int(w) for w in widths],
                      notes=f"width scale {width_scale:g} reaches {self.scaled}")
        return BaselineNet(net, built, head, roi)


def baseline(name: str, *, cls: str, dims: Sequence[int], description: str, scaled: str,
             fixed: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(geometry, width_scale)`` as baseline ``name``."""

    def deco(fn: Builder) -> Builder:
        b = Baseline(name, cls, tuple(dims), description, scaled, dict(fixed or {}), fn)
        BASELINES.register(name)(b)
        register_model(name, task="semantic", dims=b.dims, source="baseline",
                       description=f"{cls}: {description}")(_model_builder(b))
        return fn

    return deco


def _model_builder(b: Baseline) -> Callable[..., nn.Module]:
    """``skipdsl.create_model(name, ...)`` of a baseline: :meth:`Baseline.build` with
    defaults (3 input channels, 1 class, its first dims, 96 pixels in 2D and 64 in 3D).
    ``widths`` (a ``--widths`` override) sets the width scale (:func:`scale_from_widths`);
    ``deep_supervision``, ``cgm`` and ``recompute`` are accepted and mean nothing here (one
    head, no CGM, a library's own forward)."""

    def build(*, in_channels: int = 3, num_classes: int = 1, dims: int | None = None,
              image_size: int | Sequence[int] | None = None, patch: int | Sequence[int] = 0,
              spacing: float | Sequence[float] | None = None, width_scale: float | None = None,
              widths: int | Sequence[int] | None = None, deep_supervision: bool = False,
              cgm: bool | None = None, recompute: str | None = None) -> nn.Module:
        dims = int(dims or b.dims[0])
        if width_scale is None:
            width_scale = 1.0 if widths is None else scale_from_widths(widths)
        return b.build(in_channels=in_channels, num_classes=num_classes, dims=dims,
                       image_size=image_size or (96 if dims == 2 else 64), patch=patch,
                       spacing=spacing, width_scale=width_scale)

    build.__name__ = b.name
    return build


def lookup(model: Any) -> Baseline | None:
    """The baseline named ``model``, or None (a zoo name, a spec path or dict)."""
    if isinstance(model, Baseline):
        return model
    if isinstance(model, str) and model in BASELINES and not Path(model).is_file():
        return BASELINES.get(model)
    return None


def list_baselines(pattern: str = "*") -> list[str]:
    """Names of the registered baselines (``fnmatch`` pattern)."""
    return BASELINES.names(pattern)


def scale_from_widths(widths: int | Sequence[int]) -> float:
    """A ``--widths`` override as a baseline width scale: its base (or first level) over the
    zoo's base width 32 (``--widths 8`` = x0.25)."""
    base = widths if isinstance(widths, (int, float)) else list(widths)[0]
    return float(base) / UNET_WIDTHS[0]


def _scale(values: Sequence[int], s: float, multiple: int = 1, least: int = 1) -> list[int]:
    return [max(least, multiple * int(round(v * s / multiple))) for v in values]


# --------------------------------------------------------------------------- size rules


def _require_divisible(name: str, g: Geometry, k: int, why: str, *, train_only: bool = False,
                       hint: str | None = None) -> None:
    sizes = [("training size", g.train_size)] + ([] if train_only else
                                                 [("evaluation size", g.eval_size)])
    for what, size in sizes:
        bad = [s for s in size if s % k]
        if bad:
            raise SpecError(
                f"baseline '{name}': {what} {'x'.join(map(str, size))} is not divisible by "
                f"{k} ({why})", expected=f"every side a multiple of {k}",
                found="x".join(map(str, size)),
                hint=hint or f"use a patch (--patch) and images whose sides are multiples of {k}")


def _require_bottleneck(name: str, g: Geometry, k: int, norm: str) -> None:
    """A training size that leaves one voxel at the 1/k bottleneck cannot be normalised."""
    if math.prod(t // k for t in g.train_size) < 2:
        raise SpecError(f"baseline '{name}': the training size {'x'.join(map(str, g.train_size))}"
                        f" leaves one voxel at its 1/{k} bottleneck, which {norm} norm cannot "
                        "normalise in training", expected=f"a side of at least {2 * k}",
                        found=g.train_size, hint=f"use --patch {2 * k} (or whole images)")


#: What to install for each library (the pyproject extras 'baselines' and 'smp').
INSTALL = {"monai": "pip install monai==1.6.1 (a skipdsl dependency)",
           "einops": "pip install einops==0.8.2 (the 'baselines' extra, in 'all')",
           "segmentation_models_pytorch": "pip install torch==2.14.1 torchvision==0.29.1 "
           "segmentation-models-pytorch==0.6.0 timm==1.0.22 (the 'smp' extra: smp imports "
           "torchvision, which needs torch 2.14)"}


def _import(module: str, name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        lib = module.split(".")[0]
        raise SpecError(f"baseline '{name}' needs {lib}, which does not import here ({err})",
                        hint=INSTALL[lib]) from None


# --------------------------------------------------------------------------- nnU-Net planning


def nnunet_plan(patch_size: Sequence[int], spacing: Sequence[float] | None = None, *,
                min_feature_map: int = 4, max_pools: int = 999, base_features: int = 32,
                max_features: int | None = None) -> dict[str, list]:
    """The network nnU-Net would plan for a patch size and voxel spacing, as DynUNet arguments.

    The rule (nnU-Net's ``get_pool_and_conv_props``, Isensee et al. 2021; v2 defaults):
    starting at the patch size and the spacing, pool (stride 2) every axis that is still at
    least ``2 * min_feature_map`` (4) voxels long and whose current spacing is within a factor
    of 2 of the smallest current spacing; a lone such axis pools only while it is at least
    ``3 * min_feature_map`` long; each pooled axis doubles its spacing and halves its size.
    Stop when no axis can pool (or after ``max_pools`` per axis). An axis gets kernel 3 from
    the stage at which its spacing is within a factor 2 of the smallest, kernel 1 before that
    (anisotropic data); the bottleneck is always 3. Features per stage: ``32 * 2**stage``,
    capped at 320 in 3D and 512 in 2D. Upsampling kernels equal the strides.

    Here the patch is the harness's training patch (nnU-Net also chooses the patch from the
    median image shape and a GPU memory target; the budget fixes it instead).
    """
    dim = len(patch_size)
    spacing = [1.0] * dim if spacing is None else [float(s) for s in spacing]
    size = [float(s) for s in patch_size]
    cur = list(spacing)
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if size[i] >= 2 * min_feature_map]
        if not valid:
            break
        smallest = min(cur[i] for i in valid)
        valid = [i for i in valid if cur[i] / smallest < 2 and pools[i] < max_pools]
        if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        kernel = [3 if kernel[d] == 3 or cur[d] / min(cur) < 2 else 1 for d in range(dim)]
        stride = [2 if i in valid else 1 for i in range(dim)]
        for i in valid:
            pools[i] += 1
            cur[i] *= 2
            size[i] = math.ceil(size[i] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    cap = max_features or (320 if dim == 3 else 512)
    filters = [min(base_features * 2 ** i, cap) for i in range(len(strides))]
    return {"kernel_size": kernels, "strides": strides, "upsample_kernel_size": strides[1:],
            "filters": filters}


def _total_stride(strides: Sequence[Sequence[int]], axis: int) -> int:
    return math.prod(s[axis] for s in strides)


# --------------------------------------------------------------------------- the baselines


@baseline("attention_unet", cls="monai.networks.nets.AttentionUnet", dims=(2, 3),
          description="Attention UNet (Oktay et al. 2018): UNet with attention gates on the "
                      "skips; the zoo UNet's widths",
          scaled="channels", fixed={"channels": UNET_WIDTHS, "strides": (2, 2, 2, 2)})
def _attention_unet(g: Geometry, s: float):
    nets = _import("monai.networks.nets", "attention_unet")
    _require_divisible("attention_unet", g, 16, "four stride-2 levels")
    _require_bottleneck("attention_unet", g, 16, "batch")
    channels = _scale(UNET_WIDTHS, s)
    kw = dict(spatial_dims=g.dims, in_channels=g.in_channels, out_channels=g.num_classes,
              channels=channels, strides=(2, 2, 2, 2))
    return nets.AttentionUnet(**kw), kw, "model.2.conv", channels, None


@baseline("dynunet", cls="monai.networks.nets.DynUNet", dims=(2, 3),
          description="nnU-Net's network (MONAI DynUNet) as nnU-Net plans it for the patch "
                      "size and spacing (skipdsl.baselines.nnunet_plan)",
          scaled="filters", fixed={"plan": "nnunet_v2", "norm": "instance",
                                   "act": "leakyrelu", "deep_supervision": False})
def _dynunet(g: Geometry, s: float):
    nets = _import("monai.networks.nets", "dynunet")
    plan = nnunet_plan(g.train_size, g.spacing)
    for axis in range(g.dims):
        k = _total_stride(plan["strides"], axis)
        for what, size in (("training", g.train_size), ("evaluation", g.eval_size)):
            if size[axis] % k:
                raise SpecError(
                    f"baseline 'dynunet': {what} size {'x'.join(map(str, size))} is not "
                    f"divisible by the planned total stride {k} on axis {axis} (plan for "
                    f"patch {'x'.join(map(str, g.train_size))}: strides {plan['strides']})",
                    expected=f"a multiple of {k}", found=size[axis],
                    hint="choose a patch and image size that are multiples of the stride")
    filters = _scale(plan["filters"], s)
    kw = dict(spatial_dims=g.dims, in_channels=g.in_channels, out_channels=g.num_classes,
              kernel_size=plan["kernel_size"], strides=plan["strides"],
              upsample_kernel_size=plan["upsample_kernel_size"], filters=filters,
              norm_name=("INSTANCE", {"affine": True}),
              act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
              deep_supervision=False, res_block=False)
    return nets.DynUNet(**kw), kw, "output_block.conv.conv", filters, None


@baseline("unetr", cls="monai.networks.nets.UNETR", dims=(2, 3),
          description="UNETR (Hatamizadeh et al. 2022): ViT encoder (patch 16, 12 layers, 12 "
                      "heads), CNN decoder; built for the training patch, whole images by "
                      "sliding window",
          scaled="feature_size, hidden_size, mlp_dim",
          fixed={"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12,
                 "eval": "sliding_window overlap 0.5 gaussian"})
def _unetr(g: Geometry, s: float):
    nets = _import("monai.networks.nets", "unetr")
    _import("einops", "unetr")  # MONAI's transformer blocks need it
    _require_divisible("unetr", g, 16, "its ViT patch is 16 and img_size is fixed at build: "
                       "it is built for the training size and slides over larger images",
                       train_only=True, hint="use a training patch whose sides are multiples "
                       "of 16 (the whole image is then covered by sliding windows)")
    if any(e < t for e, t in zip(g.eval_size, g.train_size)):
        raise SpecError("baseline 'unetr': the evaluation images are smaller than the "
                        "training size it is built for", expected=f">= {g.train_size}",
                        found=g.eval_size)
    hidden = _scale([768], s, multiple=12, least=12)[0]
    feature = _scale([16], s)[0]
    kw = dict(in_channels=g.in_channels, out_channels=g.num_classes, img_size=g.train_size,
              feature_size=feature, hidden_size=hidden, mlp_dim=4 * hidden, num_heads=12,
              spatial_dims=g.dims)
    widths = [feature, 2 * feature, 4 * feature, 8 * feature, hidden]
    roi = None if g.eval_size == g.train_size else g.train_size
    return nets.UNETR(**kw), kw, "out.conv.conv", widths, roi


@baseline("swinunetr", cls="monai.networks.nets.SwinUNETR", dims=(2, 3),
          description="Swin UNETR (Hatamizadeh et al. 2022): Swin transformer encoder (window "
                      "7, depths 2-2-2-2), CNN decoder",
          scaled="feature_size (a multiple of 12)",
          fixed={"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)})
def _swinunetr(g: Geometry, s: float):
    nets = _import("monai.networks.nets", "swinunetr")
    _import("einops", "swinunetr")  # MONAI's transformer blocks need it
    _require_divisible("swinunetr", g, 32, "patch embedding 2 and four patch mergings: 2**5")
    _require_bottleneck("swinunetr", g, 32, "instance")
    feature = _scale([24], s, multiple=12, least=12)[0]
    kw = dict(in_channels=g.in_channels, out_channels=g.num_classes, feature_size=feature,
              spatial_dims=g.dims)
    return (nets.SwinUNETR(**kw), kw, "out.conv.conv",
            [feature * 2 ** i for i in range(5)] + [feature * 16], None)


def _smp(name: str):
    return _import("segmentation_models_pytorch", name)


@baseline("deeplabv3plus", cls="segmentation_models_pytorch.DeepLabV3Plus", dims=(2,),
          description="DeepLabV3+ (Chen et al. 2018), resnet34 encoder without pretrained "
                      "weights, output stride 16",
          scaled="decoder_channels (the resnet34 encoder is not scaled)",
          fixed={"encoder_name": "resnet34", "encoder_weights": None,
                 "encoder_output_stride": 16, "decoder_channels": 256})
def _deeplabv3plus(g: Geometry, s: float):
    _require_divisible("deeplabv3plus", g, 16, "its encoder output stride is 16")
    smp = _smp("deeplabv3plus")
    decoder = _scale([256], s, multiple=8, least=8)[0]
    kw = dict(encoder_name="resnet34", encoder_weights=None, encoder_output_stride=16,
              decoder_channels=decoder, in_channels=g.in_channels, classes=g.num_classes)
    return (smp.DeepLabV3Plus(**kw), kw, "segmentation_head.0",
            [64, 64, 128, 256, 512, decoder], None)


@baseline("pspnet", cls="segmentation_models_pytorch.PSPNet", dims=(2,),
          description="PSPNet (Zhao et al. 2017), resnet34 encoder (depth 3) without "
                      "pretrained weights, pyramid pooling 1-2-3-6, upsampled x8",
          scaled="psp_out_channels (the resnet34 encoder is not scaled)",
          fixed={"encoder_name": "resnet34", "encoder_weights": None, "encoder_depth": 3,
                 "psp_out_channels": 512, "upsampling": 8})
def _pspnet(g: Geometry, s: float):
    _require_divisible("pspnet", g, 8, "output stride 2**encoder_depth = 8, upsampled x8 back "
                       "to the input size")
    small = [t // 8 for t in g.train_size]
    if min(small) < 6:
        raise SpecError(f"baseline 'pspnet': the training size {g.train_size} gives a "
                        f"{small} feature map, smaller than its largest pyramid bin (6)",
                        expected="sides >= 48", found=g.train_size,
                        hint="use a patch of at least 48")
    smp = _smp("pspnet")
    psp = _scale([512], s, multiple=8, least=8)[0]
    kw = dict(encoder_name="resnet34", encoder_weights=None, encoder_depth=3,
              psp_out_channels=psp, upsampling=8, in_channels=g.in_channels,
              classes=g.num_classes)
    net = smp.PSPNet(**kw)
    # smp keeps resnet34's layer3/layer4 at encoder_depth 3 (19.9M parameters that never run);
    # its forward stops at layer2, so they go, and params count what runs
    net.encoder.layer3, net.encoder.layer4 = nn.Identity(), nn.Identity()
    return net, kw, "segmentation_head.0", [64, 64, 128, psp], None


# --------------------------------------------------------------------------- costs, Table 3


def describe(name: str, *, dims: int = 2, size: int | None = None, in_channels: int = 3,
             num_classes: int = 1, width_scale: float = 1.0) -> dict[str, Any]:
    """Params and forward GFLOPs per image of a baseline at one size (as the zoo's
    ``skipdsl compile`` reports them): 96x96 in 2D, 64^3 in 3D by default."""
    from .train.metrics import count_params, gflops

    b = BASELINES.get(name)
    size = size or (96 if dims == 2 else 64)
    net = b.build(in_channels=in_channels, num_classes=num_classes, dims=dims, image_size=size,
                  width_scale=width_scale)
    return {"name": name, "class": b.cls, "dims": dims, "size": size,
            "params": count_params(net), "gflops": gflops(net, (in_channels,) + (size,) * dims),
            "widths": net.spec.widths}
