"""Stage 1: YAML text -> a checked ``Spec`` (pydantic), with errors located by file and line.

A spec describes a UNet-like network as a grid of nodes X[i,j] (level i, column j) and rules or
explicit lists for the skip edges between them. Everything here is data: channels, scales and
resampling are derived from it in :mod:`skipdsl.graph`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from .errors import SpecError, did_you_mean

NODE_RE = re.compile(r"^x_(\d+)_(\d+)$")
RULES = ("dense", "skip", "up", "fullscale_up", "fullscale_down", "deeper")
NODE_SETS = ("triangle", "diagonal")


def parse_node(name: str) -> tuple[int, int]:
    """``'x_2_1'`` -> ``(2, 1)``; anything else raises ``SpecError``."""
    m = NODE_RE.match(str(name))
    if not m:
        raise SpecError(f"'{name}' is not a node id", expected="x_<level>_<column>, e.g. x_2_1",
                        found=name)
    return int(m.group(1)), int(m.group(2))


def node_id(i: int, j: int) -> str:
    return f"x_{i}_{j}"


#: The largest convolution kernel a spec may ask for (V-Net's are 5, nnU-Net's at most 7).
MAX_KERNEL = 31


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


def _check_resampler(v: str, direction: str) -> str:
    from .layers import resampler_names  # the resampling registry (imports torch)

    names = resampler_names(direction)
    if v not in names:
        raise ValueError(f"unknown {direction} resampling '{v}'; {did_you_mean(v, names)}")
    return v


class Resample(_Model):
    """How an edge changes scale: ``down`` when the source is shallower, ``up`` when deeper
    (names from the resampling registry, ``skipdsl.layers.RESAMPLERS``). A learnable one
    (``conv``, ``transposed``) can change the channels (``channels``: an int, or ``level`` =
    the target level's grid width) and be followed by ``norm`` and ``act`` (V-Net)."""

    down: str = "maxpool"
    up: str = "bilinear"
    align_corners: bool = True
    channels: int | Literal["level"] | None = None
    norm: str | None = None
    act: str | None = None
    bias: bool | None = None  # learnable resamplings: conv bias (default true)

    @field_validator("down")
    @classmethod
    def _down(cls, v: str) -> str:
        return _check_resampler(v, "down")

    @field_validator("up")
    @classmethod
    def _up(cls, v: str) -> str:
        return _check_resampler(v, "up")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("channels must be > 0")
        return v


class Project(_Model):
    """An optional per-edge projection (UNet3+): conv k x k to ``channels`` + norm + act."""

    channels: int = Field(gt=0)
    kernel: int = Field(3, gt=0, le=MAX_KERNEL)
    norm: str | None = None
    act: str | None = None


class Block(_Model):
    """The block of a node: ``type`` from the block registry, e.g. conv-norm-act x repeats."""

    type: str = "conv"
    repeats: int = Field(2, ge=1, le=8)
    kernel: int = Field(3, gt=0, le=MAX_KERNEL)
    norm: str = "batch"
    act: str = "relu"
    bias: bool = True
    residual: bool = False
    dropout: float | None = Field(None, ge=0, lt=1)  # blocks that have one (vnet): channel dropout


class NodeConfig(_Model):
    """Per-node settings; ``width: concat`` makes the width equal to the incoming channels,
    ``width: x2`` twice the level's grid width (it follows ``widths`` overrides and scaling)."""

    width: int | Literal["concat"] | Annotated[str, Field(pattern=r"^x\d+(\.\d+)?$")] | None = None
    block: dict[str, Any] | None = None
    aggregate: Literal["concat", "sum"] | None = None
    checkpoint: bool | None = None  # recompute this node (resampling, concat, block) in backward
    # concatenation order of the inputs: shallow_first (default: by source level, column) or
    # deep_first (the upsampled deeper input first, as V-Net's cat(up, skip))
    order: Literal["shallow_first", "deep_first"] | None = None

    @field_validator("width")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("width must be > 0")
        if isinstance(v, str) and v != "concat" and float(v[1:]) <= 0:
            raise ValueError("a width multiplier must be > 0")
        return v


class EncoderConfig(NodeConfig):
    """The encoder column's settings; ``backbone`` puts a torchvision network's stages there
    (skipdsl.backbones), ``weights`` is ``none`` or the path of its state dict (local only).
    ``downsample: block``: each encoder node's first conv has its level's stride (nnU-Net's
    PlainConvEncoder, Isensee et al. 2021) instead of a separate resampling on the down edge
    (``edge``, the default: ``defaults.resample.down``)."""

    backbone: str | None = None
    weights: str | None = None
    downsample: Literal["edge", "block"] | None = None

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v):
        from .backbones import BACKBONES

        if v is not None and v not in BACKBONES:
            raise ValueError(f"unknown backbone '{v}'; {did_you_mean(v, BACKBONES)}")
        return v

    @model_validator(mode="after")
    def _weights_need_backbone(self):
        if self.weights is not None and self.weights != "none" and self.backbone is None:
            raise ValueError("encoder.weights needs encoder.backbone (weights load into a "
                             "torchvision backbone)")
        return self


class EdgeRule(_Model):
    """A rule that adds edges into every decoder node it applies to."""

    rule: str
    min_k: int | None = Field(None, ge=0)
    max_k: int | None = Field(None, ge=0)
    to: list[str] | None = None
    # which of the rule's sources it connects: all (unset), only encoder nodes (x_i_0) or only
    # decoder nodes; a feature pyramid gives the edges out of the backbone a lateral projection
    sources: Literal["encoder", "decoder"] | None = None
    resample: Resample | None = None
    project: Project | None = None
    dropout: float | None = Field(None, ge=0, lt=1)  # channel dropout before the resampling

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"rule": v} if isinstance(v, str) else v

    @field_validator("rule")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in RULES:
            raise ValueError(f"unknown rule '{v}'; {did_you_mean(v, RULES)}")
        return v


class Edge(_Model):
    """One explicit edge ``from -> to`` (what search generates)."""

    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    scale: float | None = Field(None, gt=0, allow_inf_nan=False)
    resample: Resample | None = None
    project: Project | None = None
    dropout: float | None = Field(None, ge=0, lt=1)


def _edge_kind(v: Any) -> str:
    if isinstance(v, dict) and "rule" not in v and ("from" in v or "to" in v or "src" in v):
        return "Edge"
    if isinstance(v, Edge):
        return "Edge"
    return "EdgeRule"


AnyEdge = Annotated[Union[Annotated[EdgeRule, Tag("EdgeRule")], Annotated[Edge, Tag("Edge")]],
                    Discriminator(_edge_kind)]


class Head(_Model):
    """An output head on a node. ``match``: upsample logits to the input size, or keep them at
    the node's size (the loss then pools the ground truth down)."""

    node: str
    type: str | None = None  # head registry (skipdsl.heads.HEADS): conv (default), vnet_output
    kernel: int = Field(1, gt=0, le=MAX_KERNEL)
    main: bool = False
    match: Literal["upsample", "pool"] = "upsample"
    cgm: Literal["unet3p", "full", "simple"] | None = None
    cgm_from: str | None = None  # node whose features the CGM reads (default: the head's node)


class Pyramid(_Model):
    """A feature pyramid instead of heads (a detector's backbone, skipdsl.detection): the
    output is one feature map per listed decoder node, shallowest first, each through a
    ``kernel`` x ``kernel`` conv (bias) to ``channels`` (FPN's 3x3 output convs, torchvision's
    ``layer_blocks``), named ``'0'``, ``'1'``, ...; ``pool`` adds ``'pool'``, the last level
    max-pooled with stride 2 (torchvision's ``LastLevelMaxPool``, the level the RPN expects)."""

    nodes: list[str] = Field(min_length=1)
    channels: int = Field(256, gt=0)
    kernel: int = Field(3, gt=0, le=MAX_KERNEL)
    pool: bool = True


class Widths(_Model):
    base: int = Field(gt=0)
    growth: float = Field(2.0, gt=0, allow_inf_nan=False)
    multipliers: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None


def _per_level(v: list, what: str, check) -> list:
    """Checks one entry per level (an int, or one int per axis); errors name level and axis."""
    for lvl, e in enumerate(v):
        axes = e if isinstance(e, list) else [e]
        if not axes:
            raise ValueError(f"grid.{what}[{lvl}] (level {lvl}) is empty; give an int or one "
                             "int per axis")
        for ax, k in enumerate(axes):
            problem = check(k)
            if problem:
                where = f"level {lvl}, axis {ax}" if isinstance(e, list) else f"level {lvl}"
                raise ValueError(f"grid.{what} at {where}: {k} {problem}")
    return v


class Grid(_Model):
    depth: int = Field(ge=3, le=10)
    widths: list[int] | Widths
    # a rectangular grid: nodes x_i_j with j < columns on every level (a feature pyramid needs
    # nodes on its deepest level); default: the UNet triangle, i + j < depth
    columns: int | None = Field(None, ge=2, le=12)
    # per level (the first: the input level, usually 1) the stride into it, an int or one per
    # axis (nnU-Net's anisotropic plans: [[1,1,1],[1,2,2],[2,2,2],...]); unset: 1 then 2s.
    # Every resampling scale is derived from the cumulative strides per axis.
    strides: list[int | list[int]] | None = None
    # per level the blocks' kernel size, an int or one per axis ([1,3,3]); unset:
    # defaults.block.kernel everywhere
    kernels: list[int | list[int]] | None = None

    @field_validator("strides")
    @classmethod
    def _strides(cls, v):
        if v is None:
            return v
        return _per_level(v, "strides", lambda k: None if isinstance(k, int) and k >= 1
                          else "is not a stride (an int >= 1)")

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v):
        if v is None:
            return v
        return _per_level(v, "kernels", lambda k: None if isinstance(k, int) and k >= 1 and k % 2
                          else "is not a kernel size (an odd int >= 1: 'same' padding)")

    def level_widths(self) -> list[int]:
        if isinstance(self.widths, list):
            return list(self.widths)
        w = self.widths
        mult = w.multipliers or [1.0] * self.depth
        out = []
        for i in range(min(self.depth, len(mult))):
            try:
                v = w.base * w.growth**i * mult[i]
            except OverflowError:
                v = math.inf
            if not math.isfinite(v) or v > 1e9:
                raise ValueError(f"grid.widths gives level {i} a width of {v:.3g} channels "
                                 f"(base {w.base} x growth {w.growth}^{i}); use a smaller "
                                 "base, growth or multiplier")
            out.append(int(round(v)))
        return out


class Defaults(_Model):
    block: Block = Field(default_factory=Block)
    aggregate: Literal["concat", "sum"] = "concat"
    resample: Resample = Field(default_factory=Resample)


class Spec(_Model):
    """A checked network description. ``source`` records where it came from."""

    name: str
    description: str = ""
    dims: Literal[2, 3] = 2
    in_channels: int = Field(3, gt=0)
    num_classes: int = Field(1, gt=0)
    grid: Grid
    nodes: Union[Literal["triangle", "diagonal"], list[str]] = "triangle"
    defaults: Defaults = Field(default_factory=Defaults)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    decoder: NodeConfig = Field(default_factory=NodeConfig)
    node_overrides: dict[str, NodeConfig] = Field(default_factory=dict)
    edges: list[AnyEdge] = Field(default_factory=list)
    heads: list[Head] = Field(default_factory=list)
    pyramid: Pyramid | None = None
    deep_supervision: bool = False
    cgm: bool = False
    loss: str | None = None
    init: Literal["he", "torch"] = "he"
    # how to run it, not what it is: off | on | a list of parts (skipdsl.fast); not hashed
    fast: str | None = None
    # none | resample | split (skipdsl.compile's recompute): what the backward pass recomputes
    # instead of storing; the same network and gradients, so not hashed either
    recompute: Literal["none", "resample", "split"] | None = None
    source: str | None = Field(None, exclude=True)

    @field_validator("fast", mode="before")
    @classmethod
    def _fast(cls, v):
        from .fast import normalize

        return None if v is None else normalize(v)

    @model_validator(mode="after")
    def _check(self) -> "Spec":
        widths = self.grid.level_widths()
        if len(widths) != self.grid.depth:
            raise ValueError(
                f"grid.widths has {len(widths)} entries but grid.depth is {self.grid.depth}; "
                f"give one width per level"
            )
        if any(w <= 0 for w in widths):
            raise ValueError(f"grid.widths must be positive, found {widths}")
        for what in ("strides", "kernels"):
            v = getattr(self.grid, what)
            if v is None:
                continue
            if len(v) != self.grid.depth:
                raise ValueError(f"grid.{what} has {len(v)} entries but grid.depth is "
                                 f"{self.grid.depth}; give one per level (the first for level 0)")
            for lvl, e in enumerate(v):
                if isinstance(e, list) and len(e) != self.dims:
                    raise ValueError(f"grid.{what} at level {lvl} has {len(e)} axes but the spec "
                                     f"is {self.dims}D; give {self.dims} values or one int")
        if self.grid.strides is not None:
            if self.encoder.backbone:
                raise ValueError("grid.strides does not apply over a backbone (its stages fix "
                                 "the strides); remove one of them")
            first = self.level_strides[0]
            if any(s != 1 for s in first) and self.encoder.downsample != "block":
                raise ValueError(f"grid.strides at level 0 is {list(first)}: a stride into the "
                                 "input level needs 'encoder: {downsample: block}' (the first "
                                 "conv strides); or make it 1")
        if self.encoder.downsample == "block" and self.encoder.backbone:
            raise ValueError("encoder.downsample does not apply over a backbone (its stages "
                             "downsample themselves)")
        if self.pyramid is not None:
            if self.heads or self.deep_supervision or self.cgm:
                raise ValueError("a pyramid spec outputs its levels: heads, deep_supervision and "
                                 "cgm do not apply (remove them)")
        elif not self.heads:
            raise ValueError("at least one head is needed, e.g. heads: [{node: x_0_4, main: true}]")
        if sum(h.main for h in self.heads) > 1:
            raise ValueError("more than one head has main: true; mark exactly one")
        if self.encoder.backbone:
            from .backbones import BACKBONES

            n = len(BACKBONES.get(self.encoder.backbone).channels)
            if self.dims != 2:
                raise ValueError(f"backbone {self.encoder.backbone} is a 2D torchvision "
                                 f"network; use dims: 2 (found dims: {self.dims})")
            if self.depth > n:
                raise ValueError(f"backbone {self.encoder.backbone} has {n} stages; grid.depth "
                                 f"must be at most {n} (found {self.depth})")
            if self.encoder.block or self.encoder.width is not None:
                raise ValueError("encoder.block and encoder.width do not apply to a backbone: "
                                 "its stages fix the encoder's layers and channels")
        return self

    # -- derived -------------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        return self.grid.level_widths()

    @property
    def depth(self) -> int:
        return self.grid.depth

    @property
    def first_scale_log2(self) -> int:
        """x_0_0 sits at 1 / 2**this of the input (1 for a backbone with a stride-2 stem)."""
        if not self.encoder.backbone:
            return 0
        from .backbones import BACKBONES

        return BACKBONES.get(self.encoder.backbone).first_scale_log2

    @property
    def level_strides(self) -> list[tuple[int, ...]]:
        """Per level, the stride into it per axis (``grid.strides``; unset: 1, then 2s)."""
        if self.grid.strides is None:
            return [(1,) * self.dims] + [(2,) * self.dims] * (self.depth - 1)
        return [tuple(e) if isinstance(e, list) else (e,) * self.dims for e in self.grid.strides]

    def level_scale(self, level: int) -> "int | tuple[int, ...]":
        """How much smaller than the input level ``level`` is: ``2**level`` (times a backbone
        stem's 2), or with ``grid.strides`` the cumulative stride per axis, one int where every
        axis agrees (a tuple only for anisotropic levels)."""
        if self.grid.strides is None:
            return 2 ** (level + self.first_scale_log2)
        out = [1] * self.dims
        for st in self.level_strides[:level + 1]:
            out = [a * b for a, b in zip(out, st)]
        return out[0] if len(set(out)) == 1 else tuple(out)

    def level_kernel(self, level: int) -> "int | list[int] | None":
        """``grid.kernels`` at ``level`` (None: unset)."""
        if self.grid.kernels is None:
            return None
        k = self.grid.kernels[level]
        return k[0] if isinstance(k, list) and len(set(k)) == 1 else k

    @property
    def input_multiples(self) -> tuple[int, ...]:
        """Per axis, what input sizes must be multiples of: the deepest level's scale."""
        s = self.level_scale(self.depth - 1)
        return s if isinstance(s, tuple) else (s,) * self.dims

    @property
    def input_multiple(self) -> int:
        """Input sizes must be multiples of this: the deepest level's downsampling (with
        anisotropic ``grid.strides``, a common multiple of every axis's)."""
        if self.grid.strides is None:
            return 2 ** (self.depth - 1 + self.first_scale_log2)
        return math.lcm(*self.input_multiples)

    @property
    def main_head(self) -> Head:
        return next((h for h in self.heads if h.main), self.heads[0])

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"source"})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "Spec":
        """A new checked spec with top-level fields changed (``None`` values are ignored)."""
        data = self.to_dict()
        changes = {k: v for k, v in changes.items() if v is not None}
        if "widths" in changes:
            w = changes.pop("widths")
            data["grid"]["widths"] = {"base": w} if isinstance(w, int) else list(w)
        data.update(changes)
        out = from_dict(data, source=self.source)
        return out

    def with_backbone(self, backbone: str | None, weights: str | None = None,
                      rename: bool = False) -> "Spec":
        """This spec over a torchvision encoder (``encoder: {backbone, weights}``); the
        encoder's own block/width settings are dropped (the backbone fixes them). ``rename``
        appends the backbone to the name (``unetsharp_resnet101``)."""
        if backbone is None and weights is None:
            return self
        data = self.to_dict()
        enc = {k: v for k, v in data.get("encoder", {}).items() if k not in ("block", "width")}
        enc.update({k: v for k, v in (("backbone", backbone), ("weights", weights)) if v})
        data["encoder"] = enc
        bb = enc.get("backbone")
        if rename and bb and not data["name"].endswith(f"_{bb}"):
            data["name"] = f"{data['name']}_{bb}"
        return from_dict(data, source=self.source)

    def hash(self) -> str:
        """A stable hash of the spec's content (graph-level canonical hash: skipdsl.graph).
        ``fast`` and ``recompute`` say how to run the network, not what it is: they are left
        out."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("fast", "recompute")}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# YAML with line numbers


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that also records the line of every mapping key and sequence item."""


def _compose_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            lines[path + (key,)] = k.start_mark.line + 1
            _compose_lines(v, path + (key,), lines)
            lines[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for idx, item in enumerate(node.value):
            _compose_lines(item, path + (idx,), lines)


def read_yaml(text: str, file: str | None) -> tuple[Any, dict[tuple, int]]:
    """Parsed YAML and the line of every key path in it (for errors that name the line)."""
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(e, "problem", None) or str(e)
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark is not None and cmark.line + 1 != line:
            problem += f" ({ctx} started on line {cmark.line + 1})"
        raise SpecError(f"YAML syntax error: {problem}", file=file, line=line,
                        hint="check indentation, colons and brackets on that line") from None
    lines: dict[tuple, int] = {}
    if root is not None:
        _compose_lines(root, (), lines)
    return data, lines


def line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of a key path, or of its nearest parent that has one."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def clean_loc(loc: tuple, data: Any) -> tuple:
    """Keep the parts of a pydantic location that are real keys/indices of the data (drops
    union-branch names such as ``EdgeRule`` or ``list[str]``). A last unknown part is kept:
    it is the offending key of an 'extra' or 'missing' error."""
    out, cur = [], data
    for k, p in enumerate(loc):
        if isinstance(cur, dict) and p in cur:
            out.append(p)
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and 0 <= p < len(cur):
            out.append(p)
            cur = cur[p]
        elif k == len(loc) - 1:
            out.append(p)
    return tuple(out)


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items() if n != "source"]


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in getattr(ann, "__args__", ()) or ():
        out += _models_in(a)
    origin = getattr(ann, "__origin__", None)
    if origin is not None and not getattr(ann, "__args__", None):
        out += _models_in(origin)
    return out


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """Which schema class sits at a location (for 'did you mean' on unknown keys)."""
    model: Any = Spec
    cur = data
    for p in loc:
        cur = cur[p] if isinstance(cur, (dict, list)) else None
        if isinstance(p, int):
            continue
        f = model.model_fields.get(p) if model is not None else None
        if f is None:
            return None
        cands = _models_in(f.annotation)
        if Edge in cands and EdgeRule in cands:
            continue  # decided by the item itself, below
        model = cands[0] if cands else None
    if model is Spec and loc and loc[0] == "edges":
        model = Edge if _edge_kind(cur) == "Edge" else EdgeRule
    return model


def _to_spec_error(err: ValidationError, file: str | None, lines: dict, data: Any) -> SpecError:
    # unknown keys first; a union's "not this branch" errors (list_type, model_type, ...) last,
    # so that `growth: .inf` reports the finite-number error, not "Input should be a list"
    errs = err.errors()
    errors = sorted(errs, key=lambda e: (e["type"] != "extra_forbidden",
                                         len(errs) > 1 and e["type"].endswith("_type")))
    e = errors[0]
    loc = clean_loc(tuple(e["loc"]), data)
    where = ".".join(str(p) for p in loc) or "(top level)"
    line = line_for(loc, lines)
    if e["type"] == "extra_forbidden":
        key = loc[-1]
        model = _model_at(loc[:-1], data)
        hint = did_you_mean(str(key), _known_keys(model)) if model else "remove it"
        return SpecError(f"unknown key '{key}' at {where}", file=file, line=line, hint=hint)
    if e["type"] == "missing":
        return SpecError(f"missing required key '{loc[-1] if loc else where}'", file=file, line=line,
                         hint="add it; see zoo/unet.yaml for a complete example")
    found = e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "literal_error":
        return SpecError(f"bad value at {where}: {msg}", file=file, line=line,
                         found=found, hint=did_you_mean(str(found), re.findall(r"'([^']+)'", msg)))
    return SpecError(f"bad value at {where}: {msg}", file=file, line=line,
                     found=None if isinstance(found, (dict, list)) else found,
                     hint=f"{len(err.errors())} problem(s) in all; fix this one first"
                     if len(err.errors()) > 1 else None)


def from_dict(data: Any, *, source: str | None = None, lines: dict | None = None) -> Spec:
    """Check a plain dict (parsed YAML) against the schema; raise a located ``SpecError``."""
    if not isinstance(data, dict):
        raise SpecError("a spec must be a YAML mapping (key: value lines)", file=source, line=1,
                        found=type(data).__name__)
    data = copy.deepcopy(data)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise _to_spec_error(err, source, lines or {}, data) from None
    spec.source = source
    return spec


def loads(text: str, *, source: str | None = None) -> Spec:
    """Parse YAML text (safe loader) into a checked ``Spec``."""
    data, lines = read_yaml(text, source)
    return from_dict(data, source=source, lines=lines)


def zoo_dir():
    return resources.files("skipdsl") / "zoo"


def zoo_names(dims: int | None = 2, task: Literal["semantic", "instance"] = "semantic"
              ) -> list[str]:
    """Names of the zoo specs shipped with the package whose spec is ``dims``-D: 2 (the
    default) is the UNet family that ``bench run --models all`` and the search use (each
    also runs in 3D), 3 the V-Net family (3D-native), ``None`` all of them. ``task``:
    ``semantic`` (specs with heads) or ``instance`` (feature pyramids: ``pyramid:``, the
    backbones of ``bench run --task instance``)."""
    out = []
    for p in sorted(zoo_dir().iterdir(), key=lambda p: p.name):
        if not p.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(p.read_text()) or {}
        if ("pyramid" in data) != (task == "instance"):
            continue
        if dims is None or data.get("dims", 2) == dims:
            out.append(p.name[:-5])
    return out


def resolve(name_or_path: str | Path) -> tuple[str, str]:
    """Find a spec: an existing path, or a zoo name (``unetsharp`` or ``unetsharp.yaml``).

    Returns ``(text, source)``.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p.read_text(), str(p)
    stem = p.name[:-5] if p.name.endswith((".yaml", ".yml")) else p.name
    if p.parent == Path(".") or str(p.parent) == "":
        z = zoo_dir() / f"{stem}.yaml"
        if z.is_file():
            return z.read_text(), f"zoo/{stem}.yaml"
    raise SpecError(
        f"no spec file '{name_or_path}' and no zoo model '{stem}'",
        hint=did_you_mean(stem, zoo_names(dims=None)) + " (or give a path to a .yaml file)",
    )


def load(name_or_path: "str | Path | Spec") -> Spec:
    """A zoo name, a path or a Spec -> a checked ``Spec``."""
    if isinstance(name_or_path, Spec):
        return name_or_path
    text, source = resolve(name_or_path)
    return loads(text, source=source)


def scale_spec(spec: Spec, scale: float) -> Spec:
    """``spec`` with every level width and projection scaled by ``scale`` (at least 1 channel).

    A reduced budget trains at scaled widths (the trainer, the search); the scaled spec is the
    network that is measured, hashed and written out.
    """
    if scale == 1.0:
        return spec
    data = spec.to_dict()
    data["grid"]["widths"] = [max(1, int(round(w * scale))) for w in spec.widths]
    for e in data.get("edges", []):
        if isinstance(e, dict) and e.get("project"):
            e["project"]["channels"] = max(1, int(round(e["project"]["channels"] * scale)))
    for cfg in [data.get("encoder"), data.get("decoder"), *data.get("node_overrides", {}).values()]:
        if isinstance(cfg, dict) and isinstance(cfg.get("width"), int):
            cfg["width"] = max(1, int(round(cfg["width"] * scale)))
    if data.get("pyramid"):
        data["pyramid"]["channels"] = max(1, int(round(data["pyramid"]["channels"] * scale)))
    return from_dict(data, source=spec.source)
