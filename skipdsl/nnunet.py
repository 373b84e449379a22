"""Skip schemes inside nnU-Net v2: any skipdsl topology as the network of an nnU-Net plan.

nnU-Net v2 (Isensee et al. 2021, https://github.com/MIC-DKFZ/nnUNet) builds its network from
the plans file: ``architecture.network_class_name`` is located by import path and called with
``arch_kwargs`` (``nnunetv2.utilities.get_network_from_plans``). :class:`SkipUNet` takes the
``arch_kwargs`` of nnU-Net's ``PlainConvUNet`` (dynamic-network-architectures) plus ``scheme``
(a zoo name such as ``unetpp``, ``unet3p``, ``unetsharp``, or a spec path), so a plan whose
class is ``skipdsl.nnunet.SkipUNet`` trains the scheme's skip graph with everything else of
nnU-Net's recipe held: preprocessing, patches, augmentation, schedule, loss, inference.

What comes from the plan and what from the scheme (:func:`plan_spec`):

* the plan: levels (``n_stages``), widths (``features_per_stage``), per-level strides and
  kernels (``grid.strides``/``grid.kernels``), convs per stage (encoder, and decoder unless
  the scheme sets ``decoder.block.repeats``, as UNet 3+'s one fusion conv does), conv bias,
  norm and nonlinearity; the encoder downsamples in each stage's first conv; the edge from
  the level below (the ``up`` rule, when it has no projection) is nnU-Net's transposed conv
  (kernel = stride, to the level's width); one 1x1 output conv per level on the level's last
  decoder node (the deep-supervision outputs at the scales nnU-Net derives from the strides);
  concatenation puts the upsampled input first, as nnU-Net's decoder does;
* the scheme: which nodes exist, every other edge with its own resampling (UNet 3+'s
  full-scale max-pools and bilinear upsamplings with projections, UNet#'s full-scale bilinear
  skips, UNet++'s dense same-level skips), decoder widths (``width: concat``) and projections
  (scaled from the scheme's ``widths[0]`` to the plan's first width unless
  ``project_channels`` is given). The classification-guided module (CGM) of UNet 3+/UNet# is
  off: nnU-Net's loss has no classification term.

With ``scheme='unet'`` the network is PlainConvUNet: the same parameter count and, after
:func:`plainconv_state_dict` maps PlainConvUNet's state dict onto it, the same outputs.
``wunet`` is UNet with every width times 35/32 (the zoo's Wide UNet against its UNet).
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import SpecError
from .spec import Spec, from_dict, load

#: the width multiplier a zoo scheme carries into nnU-Net (Wide UNet: 35 x 2^i against 32)
WIDTH_MULTIPLIERS = {"wunet": 35 / 32}
#: what nnU-Net's trainer sets to switch deep supervision (``nnUNetTrainer.
#: set_deep_supervision_enabled``: ``network.decoder.deep_supervision = enabled``)
CLASS_NAME = "skipdsl.nnunet.SkipUNet"
PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def _name_of(op: Any) -> str:
    if op is None:
        return "None"
    return op if isinstance(op, str) else f"{op.__module__}.{op.__qualname__}"


def _norm_name(norm_op: Any, kwargs: dict | None) -> str:
    kw = dict(kwargs or {})
    name = _name_of(norm_op).rsplit(".", 1)[-1]
    if norm_op is None:
        return "none"
    if name in ("InstanceNorm2d", "InstanceNorm3d"):
        if kw.get("affine", False) is not True or float(kw.get("eps", 1e-5)) != 1e-5 \
                or kw.get("track_running_stats", False):
            raise ValueError(f"SkipUNet: norm_op {name} with {kw} is not supported; nnU-Net's "
                             "plans use {'eps': 1e-05, 'affine': True}")
        return "instance"
    if name in ("BatchNorm2d", "BatchNorm3d"):
        if float(kw.get("eps", 1e-5)) != 1e-5 or float(kw.get("momentum", 0.1)) != 0.1 \
                or kw.get("affine", True) is not True:
            raise ValueError(f"SkipUNet: norm_op {name} with {kw} is not supported "
                             "(eps 1e-5, momentum 0.1, affine only)")
        return "batch"
    raise ValueError(f"SkipUNet: norm_op {_name_of(norm_op)} is not supported; use "
                     "InstanceNorm2d/3d or BatchNorm2d/3d (nnU-Net's plans: InstanceNorm)")


def _act_name(nonlin: Any, kwargs: dict | None) -> str:
    kw = {k: v for k, v in (kwargs or {}).items() if k != "inplace"}
    name = _name_of(nonlin).rsplit(".", 1)[-1]
    if nonlin is None:
        return "none"
    if name == "LeakyReLU" and float(kw.get("negative_slope", 1e-2)) == 1e-2 and \
            set(kw) <= {"negative_slope"}:
        return "leakyrelu"
    if name == "ReLU" and not kw:
        return "relu"
    raise ValueError(f"SkipUNet: nonlin {_name_of(nonlin)} with {kwargs} is not supported; "
                     "use LeakyReLU (negative_slope 0.01, nnU-Net's plans) or ReLU")


def _dims_of(conv_op: Any) -> int:
    name = _name_of(conv_op).rsplit(".", 1)[-1]
    if name not in ("Conv2d", "Conv3d"):
        raise ValueError(f"SkipUNet: conv_op {_name_of(conv_op)} is not Conv2d or Conv3d")
    return int(name[-2])


def _per_stage(v: Any, n: int, what: str, dims: int | None = None) -> list:
    if isinstance(v, (int, float)):
        v = [v] * n
    v = list(v)
    if len(v) != n:
        raise ValueError(f"SkipUNet: {what} has {len(v)} entries for {n} stages")
    if dims is not None:
        v = [[int(a)] * dims if isinstance(a, (int, float)) else [int(b) for b in a] for a in v]
    return v


def _depth_specific(data: dict) -> str | None:
    """Why a scheme is written for its own depth (names nodes), or None (rules only)."""
    if isinstance(data.get("nodes"), list):
        return "it lists its nodes"
    if data.get("node_overrides"):
        return "it has node_overrides"
    for e in data.get("edges", []):
        if isinstance(e, dict) and ("from" in e or "src" in e):
            return "it has explicit edges"
        if isinstance(e, dict) and e.get("to"):
            return f"its rule '{e.get('rule')}' names target nodes"
    return None


def plan_spec(scheme: "str | Path | Spec", *, input_channels: int, num_classes: int,
              n_stages: int, features_per_stage: Sequence[int], conv_op: Any,
              kernel_sizes: Any, strides: Any, n_conv_per_stage: Any,
              n_conv_per_stage_decoder: Any, conv_bias: bool = False, norm_op: Any = None,
              norm_op_kwargs: dict | None = None, nonlin: Any = None,
              nonlin_kwargs: dict | None = None, project_channels: int | None = None,
              width_multiplier: float | None = None, **_: Any) -> Spec:
    """The skipdsl spec of ``scheme`` on an nnU-Net plan (PlainConvUNet's ``arch_kwargs``):
    see the module docstring for what comes from where. Raises ``SpecError`` when the
    scheme cannot sit on the plan's levels."""
    base = load(scheme)
    src = base.source
    data = base.to_dict()
    dims = _dims_of(conv_op)
    n = int(n_stages)
    if base.pyramid is not None or base.encoder.backbone:
        raise SpecError("a feature pyramid or a backbone encoder cannot be an nnU-Net "
                        "network", file=src, hint="use a segmentation scheme on conv blocks")
    why = _depth_specific(data)
    if n < 3:
        raise SpecError(f"the plan has {n} stages; a skip scheme needs at least 3 levels",
                        file=src, hint="plan with a larger patch size (more stages)")
    if why and base.depth != n:
        raise SpecError(f"scheme '{base.name}' is written for depth {base.depth} ({why}); the "
                        f"plan has {n} stages", file=src,
                        hint=f"write the scheme for depth {n}, or use rules only (dense, up, "
                        "skip, fullscale_up, fullscale_down, deeper) so it fits any depth")
    feats = [int(f) for f in _per_stage(features_per_stage, n, "features_per_stage")]
    mult = width_multiplier if width_multiplier is not None else WIDTH_MULTIPLIERS.get(
        base.name, 1.0)
    widths = [max(1, int(round(f * mult))) for f in feats]
    kernels = _per_stage(kernel_sizes, n, "kernel_sizes", dims)
    stride_list = _per_stage(strides, n, "strides", dims)
    enc_rep = [int(r) for r in _per_stage(n_conv_per_stage, n, "n_conv_per_stage")]
    dec_rep = [int(r) for r in _per_stage(n_conv_per_stage_decoder, n - 1,
                                          "n_conv_per_stage_decoder")]
    norm, act = _norm_name(norm_op, norm_op_kwargs), _act_name(nonlin, nonlin_kwargs)
    block = {"type": "conv", "repeats": 2, "kernel": 3, "norm": norm, "act": act,
             "bias": bool(conv_bias), "residual": False}
    scheme_dec = dict((data.get("decoder") or {}).get("block") or {})
    scheme_dec_repeats = scheme_dec.get("repeats")
    ratio = widths[0] / base.widths[0]
    edges = []
    for e in data.get("edges", []):
        e = copy.deepcopy(e)
        if e.get("project"):
            e["project"]["channels"] = int(project_channels) if project_channels else \
                max(1, int(round(e["project"]["channels"] * ratio)))
            e["project"]["kernel"] = e["project"].get("kernel", 3)
            for k in ("norm", "act"):  # the plan's
                e["project"].pop(k, None)
        elif e.get("rule") == "up" and not e.get("resample"):
            e["resample"] = {"up": "transposed", "channels": "level", "bias": bool(conv_bias)}
        edges.append(e)
    out: dict[str, Any] = {
        "name": f"{base.name}_nnunet",
        "description": f"{base.name}'s skip scheme on an nnU-Net plan ({n} stages)",
        "dims": dims, "in_channels": int(input_channels), "num_classes": int(num_classes),
        "grid": {"depth": n, "widths": widths, "strides": stride_list, "kernels": kernels},
        "nodes": data.get("nodes", "triangle"),
        "defaults": {"block": block, "aggregate": data.get("defaults", {}).get(
            "aggregate", "concat"), "resample": data.get("defaults", {}).get("resample", {})},
        "encoder": {"downsample": "block"},
        "decoder": {k: v for k, v in (data.get("decoder") or {}).items()
                    if k in ("width", "aggregate")},
        "edges": edges, "init": "torch",
    }
    out["decoder"]["order"] = "deep_first"
    if len(set(enc_rep)) == 1:
        out["encoder"]["block"] = {"repeats": enc_rep[0]}
    if scheme_dec_repeats is not None:
        out["decoder"]["block"] = {"repeats": int(scheme_dec_repeats)}
    elif len(set(dec_rep)) == 1:
        out["decoder"]["block"] = {"repeats": dec_rep[0]}
    spec0 = from_dict({**out, "heads": [{"node": f"x_0_{n - 1}"}]}, source=src)
    # the levels' last decoder nodes carry the outputs (nnU-Net: one per decoder stage)
    from .graph import node_positions

    pos = node_positions(spec0)
    heads = []
    for i in range(n - 1):
        cols = [j for (a, j) in pos if a == i and j > 0]
        if not cols:
            raise SpecError(f"scheme '{base.name}' has no decoder node on level {i}: nnU-Net "
                            "needs one output per decoder level", file=src,
                            hint="add a decoder node on every level but the deepest")
        heads.append({"node": f"x_{i}_{max(cols)}", "kernel": 1, "match": "pool",
                      "main": i == 0})
    out["heads"] = heads
    overrides: dict[str, Any] = {}
    if len(set(enc_rep)) > 1:
        for i in range(n):
            overrides[f"x_{i}_0"] = {"block": {"repeats": enc_rep[i]}}
    if scheme_dec_repeats is None and len(set(dec_rep)) > 1:
        for (i, j) in pos:
            if j > 0:  # decoder stage s works on level n-2-s
                overrides[f"x_{i}_{j}"] = {"block": {"repeats": dec_rep[n - 2 - i]}}
    if overrides:
        out["node_overrides"] = overrides
    out["deep_supervision"] = True
    return from_dict(out, source=src)


class _DeepSupervisionSwitch:
    """``decoder.deep_supervision``: where nnU-Net's trainer switches deep supervision."""

    def __init__(self, on: bool) -> None:
        self.deep_supervision = bool(on)


class SkipUNet(nn.Module):
    """A skipdsl skip scheme with nnU-Net's PlainConvUNet interface (``arch_kwargs`` of a
    plan plus ``scheme``). ``forward`` returns the full-resolution logits, or with deep
    supervision a list, full resolution first, one output per decoder level at the level's
    scale (what ``nnUNetTrainer`` expects). ``self.network`` is the compiled skipdsl module
    (``network.code`` shows its forward); ``self.spec`` its spec."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Any,
                 conv_op: Any, kernel_sizes: Any, strides: Any, n_conv_per_stage: Any,
                 num_classes: int, n_conv_per_stage_decoder: Any, conv_bias: bool = False,
                 norm_op: Any = None, norm_op_kwargs: dict | None = None,
                 dropout_op: Any = None, dropout_op_kwargs: dict | None = None,
                 nonlin: Any = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 scheme: str = "unet", project_channels: int | None = None,
                 width_multiplier: float | None = None) -> None:
        super().__init__()
        if dropout_op is not None:
            raise ValueError("SkipUNet: dropout_op is not supported (nnU-Net's plans: None)")
        if nonlin_first:
            raise ValueError("SkipUNet: nonlin_first is not supported (conv -> norm -> act)")
        from .compiler import compile

        self.spec = plan_spec(
            scheme, input_channels=input_channels, num_classes=num_classes, n_stages=n_stages,
            features_per_stage=features_per_stage, conv_op=conv_op, kernel_sizes=kernel_sizes,
            strides=strides, n_conv_per_stage=n_conv_per_stage,
            n_conv_per_stage_decoder=n_conv_per_stage_decoder, conv_bias=conv_bias,
            norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
            nonlin_kwargs=nonlin_kwargs, project_channels=project_channels,
            width_multiplier=width_multiplier)
        self.scheme = str(scheme)
        self.network = compile(self.spec)
        self.heads = list(self.network.head_ids)  # level 0 first
        self.decoder = _DeepSupervisionSwitch(deep_supervision)

    def forward(self, x: torch.Tensor):
        out = self.network(x)
        if self.decoder.deep_supervision:
            return [out[h] for h in self.heads]
        return out[self.heads[0]]

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's ``InitWeights_He(1e-2)`` (what PlainConvUNet.initialize applies)."""
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)


def plainconv_state_dict(state: dict[str, torch.Tensor], n_stages: int,
                         ) -> dict[str, torch.Tensor]:
    """PlainConvUNet's state dict as ``SkipUNet(scheme='unet')``'s, for the same plan.

    The key mapping (D = n_stages; decoder stage s works on level i = D-2-s, whose node is
    x_i_(D-1-i)):

    ========================================================  ==================================
    PlainConvUNet                                              SkipUNet
    ========================================================  ==================================
    ``encoder.stages.{i}.0.convs.{r}.conv|norm.*``            ``network.x_{i}_0.{r}.conv|norm.*``
    ``decoder.stages.{s}.convs.{r}.conv|norm.*``              ``network.x_{i}_{D-1-i}.{r}.…``
    ``decoder.transpconvs.{s}.*``                             ``network.edges.x_{i+1}_{D-2-i}__x_{i}_{D-1-i}.resample.*``
    ``decoder.seg_layers.{s}.*``                              ``network.heads.x_{i}_{D-1-i}.*``
    ========================================================  ==================================

    The duplicates PlainConvUNet's state dict holds (``…all_modules.k`` aliases of
    ``conv``/``norm``, and ``decoder.encoder.*``, the encoder seen from the decoder) are
    dropped.
    """
    D = int(n_stages)
    out: dict[str, torch.Tensor] = {}
    pats = [
        (r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(.+)$",
         lambda m: f"network.x_{m[1]}_0.{m[2]}.{m[3]}.{m[4]}"),
        (r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(.+)$",
         lambda m: (lambda i: f"network.x_{i}_{D - 1 - i}.{m[2]}.{m[3]}.{m[4]}")(D - 2 - int(m[1]))),
        (r"^decoder\.transpconvs\.(\d+)\.(.+)$",
         lambda m: (lambda i: f"network.edges.x_{i + 1}_{D - 2 - i}__x_{i}_{D - 1 - i}.resample."
                    f"{m[2]}")(D - 2 - int(m[1]))),
        (r"^decoder\.seg_layers\.(\d+)\.(.+)$",
         lambda m: (lambda i: f"network.heads.x_{i}_{D - 1 - i}.{m[2]}")(D - 2 - int(m[1]))),
    ]
    for k, v in state.items():
        if ".all_modules." in k or k.startswith("decoder.encoder."):
            continue
        for pat, fn in pats:
            m = re.match(pat, k)
            if m:
                out[fn(m)] = v
                break
        else:
            raise KeyError(f"PlainConvUNet state dict key {k!r} has no SkipUNet counterpart")
    return out


# --------------------------------------------------------------------------- plans files


def nnunet_env(name: str) -> Path:
    """The folder an nnU-Net environment variable names; a clear error when unset."""
    v = os.environ.get(name)
    if not v:
        raise SpecError(f"the environment variable {name} is not set",
                        hint=f"export {name}=/path/to/{name} (nnU-Net's folders: nnUNet_raw, "
                        "nnUNet_preprocessed, nnUNet_results; see nnU-Net's "
                        "documentation/set_environment_variables.md)")
    return Path(v)


def dataset_folder(dataset: str, root: Path) -> Path:
    """``DatasetXXX_Name`` under ``root`` from an id (``501``) or a name, as nnU-Net's
    commands take them."""
    if re.fullmatch(r"\d+", str(dataset)):
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(p for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
        if not found:
            raise SpecError(f"no dataset with id {dataset} in {root}",
                            hint=f"run nnUNetv2_plan_and_preprocess -d {dataset} first")
        return found[0]
    p = root / str(dataset)
    if not p.is_dir():
        raise SpecError(f"no dataset '{dataset}' in {root}",
                        hint=f"run nnUNetv2_plan_and_preprocess -d <id> first (datasets there: "
                        f"{sorted(q.name for q in root.iterdir()) if root.is_dir() else []})")
    return p


def swap_plans(plans: dict, scheme: str, *, configurations: Sequence[str] | None = None,
               plans_name: str | None = None, options: dict | None = None) -> dict:
    """nnU-Net plans with the architecture of ``configurations`` (default: every one that
    has a PlainConvUNet) swapped for ``SkipUNet`` with ``scheme``; everything else unchanged.
    The network is built once per configuration here, so a scheme that the plan cannot hold
    fails now, not in the trainer."""
    out = copy.deepcopy(plans)
    name = plans_name or f"{plans.get('plans_name', 'nnUNetPlans')}_{Path(str(scheme)).stem}"
    out["plans_name"] = name
    confs = out.get("configurations", {})
    chosen = list(configurations) if configurations else [
        c for c, v in confs.items()
        if v.get("architecture", {}).get("network_class_name") == PLAIN_CONV_UNET]
    if not chosen:
        raise SpecError("no configuration of these plans uses PlainConvUNet",
                        hint="name them with --configurations")
    for c in chosen:
        if c not in confs:
            raise SpecError(f"the plans have no configuration '{c}'",
                            hint=f"configurations: {', '.join(confs)}")
        arch = confs[c].get("architecture")
        if arch is None:
            raise SpecError(f"configuration '{c}' has no architecture of its own (it "
                            "inherits one)", hint="name configurations that have one")
        if arch.get("network_class_name") not in (PLAIN_CONV_UNET, CLASS_NAME):
            raise SpecError(f"configuration '{c}' uses {arch.get('network_class_name')}; "
                            "SkipUNet replaces PlainConvUNet only", hint="plan with the "
                            "default planner (ExperimentPlanner)")
        kw = {k: v for k, v in arch["arch_kwargs"].items()
              if k not in ("scheme", "project_channels", "width_multiplier")}
        kw["scheme"] = str(scheme)
        kw.update({k: v for k, v in (options or {}).items() if v is not None})
        arch["network_class_name"] = CLASS_NAME
        arch["arch_kwargs"] = kw
        build_from_arch(arch, input_channels=1, num_classes=2)  # fails here, not in training
    return out


def build_from_arch(arch: dict, *, input_channels: int, num_classes: int,
                    deep_supervision: bool | None = None) -> nn.Module:
    """A plan's ``architecture`` entry -> the network, the way nnU-Net's
    ``get_network_from_plans`` builds it (``pydoc.locate`` on the ``_kw_requires_import``
    entries)."""
    import pydoc

    kw = dict(arch["arch_kwargs"])
    for k in arch.get("_kw_requires_import", []):
        if kw.get(k) is not None:
            kw[k] = pydoc.locate(kw[k])
    if deep_supervision is not None:
        kw["deep_supervision"] = deep_supervision
    cls = pydoc.locate(arch["network_class_name"])
    if cls is None:
        raise SpecError(f"cannot import {arch['network_class_name']}")
    return cls(input_channels=input_channels, num_classes=num_classes, **kw)


def write_plans(dataset: str, scheme: str, *, plans: str = "nnUNetPlans",
                configurations: Sequence[str] | None = None,
                options: dict | None = None) -> tuple[Path, dict]:
    """Read ``nnUNet_preprocessed/DATASET/PLANS.json``, write ``PLANS_SCHEME.json`` beside it
    with the architecture swapped (:func:`swap_plans`); returns its path and content."""
    root = nnunet_env("nnUNet_preprocessed")
    folder = dataset_folder(dataset, root)
    src = folder / f"{plans}.json"
    if not src.is_file():
        have = sorted(p.stem for p in folder.glob("*.json") if p.stem not in
                      ("dataset", "dataset_fingerprint"))
        raise SpecError(f"dataset {folder.name} has not been planned: no {src.name} in {folder}",
                        hint=f"run nnUNetv2_plan_and_preprocess -d {dataset}"
                        + (f" (plans there: {', '.join(have)})" if have else ""))
    data = json.loads(src.read_text())
    stem = Path(str(scheme)).stem
    new = swap_plans(data, scheme, configurations=configurations,
                     plans_name=f"{plans}_{stem}", options=options)
    dst = folder / f"{plans}_{stem}.json"
    dst.write_text(json.dumps(new, indent=4, sort_keys=False))
    return dst, new


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["SkipUNet", "plan_spec", "plainconv_state_dict", "swap_plans", "write_plans",
           "build_from_arch", "nnunet_env", "dataset_folder", "CLASS_NAME"]
