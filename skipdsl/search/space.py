"""Search spaces as files: a YAML space -> Optuna parameters -> a checked DSL ``Spec``.

A space names, for every dimension of the network, either one fixed value or a list of choices
(a list means "choose one"): depth, widths (base, growth, per-level multipliers), the node set,
block settings of encoder and decoder, decoder width (per level, or ``concat``), candidate
edges (by rule or one by one; each can be off, on, or on with a projection to C channels),
head kernel, deep supervision with its head set, and CGM; optionally the encoder backbone
(``backbone: [none, resnet34, vgg16_bn]``: ``none`` is the grid's own conv encoder, a name puts
that torchvision network's stages in the encoder column, ``skipdsl.backbones``); and, per
budget, the widths scale and epochs the search trains at. See ``search/spaces/default.yaml``.

Three functions carry a point through the space:

- :meth:`SearchSpace.suggest` asks an Optuna trial (define-by-run) for a point: a flat dict of
  parameters whose values are plain ``str``/``int``/``float``/``bool``;
- :meth:`SearchSpace.build` turns a point into a checked :class:`~skipdsl.spec.Spec` and expands
  it with the graph validator, so an invalid point (a node with no input, a node that reaches no
  head, ...) raises :class:`~skipdsl.errors.SpecError` saying which node and why;
- :meth:`SearchSpace.point_of` goes the other way: the point of the space that describes a given
  spec (e.g. a zoo model), or a ``SpecError`` saying which dimension has no matching choice.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SpecError, did_you_mean
from ..spec import RULES, Spec, from_dict, node_id, parse_node, scale_spec  # noqa: F401

DEFAULT_SPACE = "default"
DS_HEADS = ("pruning", "hierarchical", "all")
CGM_VARIANTS = ("none", "unet3p", "unetsharp")
OFF, ON = "off", "on"
NO_BACKBONE = "none"  # the backbone choice of the grid's own (DSL) encoder

Scalar = Union[bool, int, float, str]


def choices_of(v: Any) -> list:
    """A scalar is one fixed choice; a list is the choices."""
    return list(v) if isinstance(v, (list, tuple)) else [v]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EdgeCandidate(_Model):
    """One candidate edge set: a grid rule (``rule``) or one explicit edge (``from``/``to``).

    ``project``: projection channels to choose from, 0 meaning no projection (UNet3+ uses 64).
    ``optional: false`` keeps the candidate always on. ``name`` overrides the parameter name.
    """

    rule: str | None = None
    src: str | None = Field(None, alias="from")
    to: str | list[str] | None = None
    min_k: int | None = Field(None, ge=0)
    max_k: int | None = Field(None, ge=0)
    project: int | list[int] = 0
    optional: bool = True
    resample: dict[str, Any] | None = None
    name: str | None = None
    # ``per_column: true`` on a rule: one choice per decoder column j (the space expands it into
    # candidates ``edge_<rule>_c<j>`` whose ``column`` is set), so a rule can feed some columns
    # and not others
    per_column: bool = False
    column: int | None = Field(None, ge=1)

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v):
        if v is not None and v not in RULES:
            raise ValueError(f"unknown rule '{v}'; {did_you_mean(v, RULES)}")
        return v

    @field_validator("project")
    @classmethod
    def _non_negative(cls, v):
        if any(int(c) < 0 for c in choices_of(v)):
            raise ValueError("projection channels must be >= 0 (0 = no projection)")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "EdgeCandidate":
        if (self.rule is None) == (self.src is None):
            raise ValueError("an edge candidate needs either 'rule' or 'from' + 'to'")
        if (self.per_column or self.column is not None) and (self.rule is None
                                                              or self.to is not None):
            raise ValueError("per_column needs a rule without 'to' (the column picks the "
                             "targets)")
        if self.src is not None:
            if not isinstance(self.to, str):
                raise ValueError("an explicit edge candidate needs one node in 'to'")
            parse_node(self.src), parse_node(self.to)
        return self

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.rule is not None:
            extra = ""
            if self.to is not None:
                extra += "_to_" + "_".join(choices_of(self.to))
            if self.min_k is not None or self.max_k is not None:
                extra += f"_k{self.min_k if self.min_k is not None else ''}-" \
                         f"{self.max_k if self.max_k is not None else ''}"
            if self.column is not None:
                extra += f"_c{self.column}"
            return f"edge_{self.rule}{extra}"
        return f"edge_{self.src}-{self.to}"

    def values(self) -> list[str]:
        """The parameter's choices: ``off``, ``on`` (no projection), ``p64`` (project to 64)."""
        on = [ON if int(c) == 0 else f"p{int(c)}" for c in choices_of(self.project)]
        return ([OFF] if self.optional else []) + on


class WidthSpace(_Model):
    """Level widths ``round(base * growth**i * multipliers[i])``, each a choice list."""

    base: int | list[int]
    growth: float | list[float] = 2.0
    multipliers: list[float | list[float]] | None = None


class BudgetSettings(_Model):
    """How the search trains under one ``--budget``: the widths scale, a cap on the forward
    GFLOPs of one image (a network above it is recorded as ``too_costly`` and not trained), and
    trainer settings that replace the trainer's budget (``None`` keeps it). Smoke trials are
    cheaper than the benchmark's smoke trials so that a dozen fit in minutes on 2 CPU cores."""

    width_scale: float = Field(1.0, gt=0)
    max_gflops: float | None = Field(None, gt=0)  # skip networks above this forward cost
    epochs: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in (("epochs", self.epochs), ("n", self.n),
                                  ("batch_size", self.batch_size)) if v is not None}


class SupernetSettings(_Model):
    """How the one-shot strategy (``search run --strategy oneshot``, :mod:`.supernet`) builds
    the space's supernet: the superset network with every candidate edge and node.

    A sampled sub-network must reuse the superset's weights whatever edges are on. With
    ``aggregate: sum`` every edge into a decoder node is projected to a fixed width
    (``project``: ``level`` = the target level's width, or a channel count; conv ``kernel`` x
    ``kernel`` + the block's norm and act) and the node sums its inputs: a node's block sees
    the same channels with one input or six. With ``aggregate: concat`` the edges are the
    space's own (no projection) and a node concatenates every candidate input; an input that
    is off contributes zeros, which is the same as a first convolution over the present
    inputs' channels alone, so concat networks such as UNet# and UNet++ are points of the
    supernet. The space's own per-edge projection choices do not apply (an edge is off or on). ``fix`` pins the dimensions that are not topology (depth, widths,
    blocks, head kernel, ...: one supernet has one of each) to a value; those not named take
    their first choice. The supernet trains the main head only (no deep supervision or CGM).
    """

    aggregate: Literal["sum", "concat"] = "sum"
    project: Union[int, Literal["level"]] = "level"
    kernel: int = Field(1, gt=0)
    fix: dict[str, Any] = Field(default_factory=dict)
    # uniform: each edge on with probability 1/2; edges: the number of open edges uniform over
    # 1..all, then that many edges at random (sparse paths such as UNet's get trained too)
    sampling: Literal["uniform", "edges"] = "uniform"

    @field_validator("project")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("supernet.project must be > 0 channels or 'level'")
        return v


DEFAULT_BUDGETS = {"smoke": {"width_scale": 0.125, "max_gflops": 2.0, "epochs": 5, "n": 96},
                   "short": {"width_scale": 0.5}, "paper": {"width_scale": 1.0}}


class SearchSpace(_Model):
    """A search space file (see module doc). ``fixed`` holds spec keys copied into every sample
    (dims, in_channels, num_classes, loss, defaults, ...)."""

    name: str
    description: str = ""
    fixed: dict[str, Any] = Field(default_factory=dict)
    depth: int | list[int] = 5
    widths: WidthSpace
    nodes: Union[str, list[Union[str, list[str]]]] = "triangle"
    encoder_block: dict[str, Any] = Field(default_factory=dict)
    decoder_block: dict[str, Any] = Field(default_factory=dict)
    decoder_width: Union[Literal["level", "concat"], list[Literal["level", "concat"]]] = "level"
    project_kernel: int = Field(3, gt=0)
    edges: list[EdgeCandidate]
    # drop decoder nodes that get no input or reach no head instead of refusing the point (a
    # per-column space leaves parts of the triangle unfed); a point that loses the main head or
    # an encoder level is still invalid
    trim: bool = False
    head_kernel: int | list[int] = 1
    hierarchical_head_kernel: int = 3
    deep_supervision: bool | list[bool] = False
    ds_heads: Union[str, list[str]] = "all"
    cgm: Union[str, list[str]] = "none"
    # encoder backbone choices (none = the grid's own encoder); absent: no backbone dimension
    backbone: Union[str, list[str], None] = None
    # the one-shot strategy's supernet (SupernetSettings); absent: its defaults
    supernet: SupernetSettings | None = None
    budgets: dict[str, BudgetSettings] = Field(
        default_factory=lambda: {k: BudgetSettings(**v) for k, v in DEFAULT_BUDGETS.items()})
    source: str | None = Field(None, exclude=True)

    @field_validator("fixed")
    @classmethod
    def _fixed_keys(cls, v):
        searched = {"grid", "nodes", "edges", "heads", "encoder", "decoder", "deep_supervision",
                    "cgm", "name"}
        bad = sorted(set(v) & searched)
        if bad:
            raise ValueError(f"fixed may not set {bad}: the space searches them; use the "
                             f"space's own keys (depth, widths, nodes, edges, ...)")
        unknown = sorted(set(v) - set(Spec.model_fields) - {"description"})
        if unknown:
            raise ValueError(f"unknown spec key(s) {unknown} in fixed; "
                             f"{did_you_mean(unknown[0], Spec.model_fields)}")
        return v

    @field_validator("backbone")
    @classmethod
    def _known_backbones(cls, v):
        from ..backbones import BACKBONES

        if v is None:
            return v
        valid = [NO_BACKBONE, *BACKBONES]
        choices = [str(c) for c in choices_of(v)]
        if not choices:
            raise ValueError("give a backbone or a list of choices, e.g. [none, resnet34]; "
                             + did_you_mean("", valid))
        for c in choices:
            if c not in valid:
                raise ValueError(f"unknown backbone '{c}'; {did_you_mean(c, valid)} "
                                 f"(none: the grid's own encoder)")
        dup = sorted({c for c in choices if choices.count(c) > 1})
        if dup:
            raise ValueError(f"backbone '{dup[0]}' is listed twice")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        for v in choices_of(self.ds_heads):
            if v not in DS_HEADS:
                raise ValueError(f"ds_heads: unknown head set '{v}'; {did_you_mean(v, DS_HEADS)}")
        for v in choices_of(self.cgm):
            if v not in CGM_VARIANTS:
                raise ValueError(f"cgm: unknown variant '{v}'; {did_you_mean(v, CGM_VARIANTS)}")
        self._check_backbone()
        self._expand_columns()
        for v in choices_of(self.nodes):
            if isinstance(v, str) and v not in ("triangle", "diagonal"):
                raise ValueError(f"nodes: '{v}' is not a node set; use triangle, diagonal or a "
                                 f"list of node ids")
        keys = [e.key for e in self.edges]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"two edge candidates share the parameter name {dup[0]}; give one "
                             f"of them a 'name'")
        if not self.edges:
            raise ValueError("a space needs at least one edge candidate")
        depths = choices_of(self.depth)
        mult = self.widths.multipliers
        if mult is not None and len(mult) < max(depths):
            raise ValueError(f"widths.multipliers has {len(mult)} levels but depth can be "
                             f"{max(depths)}; give one entry (or choice list) per level")
        return self

    def _expand_columns(self) -> None:
        """Replace each ``per_column`` rule by one candidate per decoder column (1 .. deepest
        depth - 1) that the rule can feed (``fullscale_up`` needs j >= 2)."""
        if not any(e.per_column for e in self.edges):
            return
        cols = range(1, max(choices_of(self.depth)))
        out: list[EdgeCandidate] = []
        for e in self.edges:
            if not e.per_column:
                out.append(e)
                continue
            first = 2 if e.rule == "fullscale_up" else 1  # no sources in column 1
            last = cols[-1] - 1 if e.rule == "fullscale_down" else cols[-1]  # x_0_(d-1): none
            for j in cols:
                if first <= j <= last:
                    out.append(e.model_copy(update={"per_column": False, "column": j,
                                                    "name": f"{e.name}_c{j}" if e.name else None}))
        self.edges = out

    def edges_at(self, depth: int) -> list[EdgeCandidate]:
        """The edge candidates that exist at ``depth`` (a column candidate needs its column)."""
        return [e for e in self.edges if e.column is None or e.column < depth]

    def backbone_choices(self) -> list[str]:
        """The backbone dimension's choices (``none`` = the grid's own encoder); ``[]`` when the
        space has no backbone key."""
        return [] if self.backbone is None else [str(v) for v in choices_of(self.backbone)]

    def _check_backbone(self) -> None:
        """Nothing in the space that a named backbone cannot be (the field validator has
        already checked the names): 2D only, and no deeper than its stages (the backbone fixes
        the encoder's blocks and channels; the space's widths are the decoder's, and its
        encoder_block applies to ``none`` only)."""
        from ..backbones import BACKBONES

        named = [v for v in self.backbone_choices() if v != NO_BACKBONE]
        if not named:
            return
        dims = self.fixed.get("dims", 2)
        if dims != 2:
            raise ValueError(f"backbone: {', '.join(named)}: 2D torchvision networks only, but "
                             f"fixed.dims is {dims}; use dims: 2 or drop the backbone key")
        deepest = max(choices_of(self.depth))
        for v in named:
            n = len(BACKBONES.get(v).channels)
            if deepest > n:
                raise ValueError(f"backbone: {v} has {n} stages but depth can be {deepest}; "
                                 f"keep depth at most {n} or drop {v}")

    # -- parameters ---------------------------------------------------------------------
    def node_choices(self) -> list[str]:
        """Node-set choices as parameter values: 'triangle', 'diagonal' or 'x_0_0,x_1_0,...'."""
        return [v if isinstance(v, str) else ",".join(v) for v in choices_of(self.nodes)]

    def dimensions(self, depth: int | None = None) -> list[tuple[str, list]]:
        """Every (parameter, choices) pair; ``depth`` limits the per-level ones."""
        w = self.widths
        dims: list[tuple[str, list]] = [("depth", choices_of(self.depth))]
        if self.backbone is not None:
            dims.append(("backbone", self.backbone_choices()))
        dims += [("width_base", choices_of(w.base)), ("width_growth", choices_of(w.growth))]
        levels = max(choices_of(self.depth)) if depth is None else depth
        for i, m in enumerate((w.multipliers or [])[:levels]):
            dims.append((f"width_mult_{i}", choices_of(m)))
        dims.append(("nodes", self.node_choices()))
        for part, blk in (("enc", self.encoder_block), ("dec", self.decoder_block)):
            for k, v in blk.items():
                dims.append((f"{part}_{k}", choices_of(v)))
        dims.append(("decoder_width", choices_of(self.decoder_width)))
        dims += [(e.key, e.values()) for e in
                 (self.edges if depth is None else self.edges_at(depth))]
        dims += [("head_kernel", choices_of(self.head_kernel)),
                 ("deep_supervision", choices_of(self.deep_supervision)),
                 ("ds_heads", choices_of(self.ds_heads)),
                 ("cgm", choices_of(self.cgm))]
        return dims

    def size(self) -> int:
        """Number of distinct points (conditional parameters counted where they apply)."""
        total = 0
        for d in choices_of(self.depth):
            n = enc = 1
            for name, ch in self.dimensions(d):
                if name in ("depth", "ds_heads", "backbone"):
                    continue
                if name == "deep_supervision":
                    n *= (False in ch) + (True in ch) * len(choices_of(self.ds_heads))
                elif name.startswith("enc_"):
                    enc *= len(ch)
                else:
                    n *= len(ch)
            bbs = self.backbone_choices() or [NO_BACKBONE]
            # encoder block settings apply to the grid's own encoder only
            total += n * sum(enc if b == NO_BACKBONE else 1 for b in bbs)
        return total

    @staticmethod
    def _applies(name: str, point: dict[str, Any]) -> bool:
        """Whether a conditional dimension exists at ``point``: ``ds_heads`` with deep
        supervision on, ``enc_*`` (the encoder's block) without a backbone."""
        if name == "ds_heads":
            return bool(point["deep_supervision"])
        if name.startswith("enc_"):
            return point.get("backbone", NO_BACKBONE) == NO_BACKBONE
        return True

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial (or anything with ``suggest_categorical``) for a point.

        Only dimensions with more than one choice become trial parameters; ``width_mult_i``
        exists for the sampled depth only, ``ds_heads`` only with deep supervision on and the
        encoder block's ``enc_*`` only without a backbone.
        """
        point: dict[str, Any] = {}
        depth = self._pick(trial, "depth", choices_of(self.depth), point)
        for name, ch in self.dimensions(depth):
            if name == "depth" or not self._applies(name, point):
                continue
            self._pick(trial, name, ch, point)
        return point

    @staticmethod
    def _pick(trial: Any, name: str, choices: list, point: dict) -> Any:
        point[name] = trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0]
        return point[name]

    def complete(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` with the fixed (single-choice) dimensions filled in; unknown keys or values
        outside the choices raise ``SpecError``."""
        depth = point.get("depth", choices_of(self.depth)[0])
        out: dict[str, Any] = {}
        dims = dict(self.dimensions(depth))
        dims_all = dict(self.dimensions())
        unknown = sorted(set(point) - set(dims_all))
        if unknown:
            raise SpecError(f"unknown search parameter '{unknown[0]}' for space '{self.name}'",
                            file=self.source, hint=did_you_mean(unknown[0], dims_all))
        for name, ch in dims.items():
            if name == "ds_heads" and not point.get("deep_supervision",
                                                    choices_of(self.deep_supervision)[0]):
                continue
            if name.startswith("enc_") and out.get("backbone", NO_BACKBONE) != NO_BACKBONE:
                continue
            v = point.get(name, ch[0])
            if v not in ch:
                raise SpecError(f"search parameter {name} = {v!r} is not one of the choices",
                                file=self.source, expected=ch, found=v)
            out[name] = v
        return out

    # -- point -> spec --------------------------------------------------------------------
    def build(self, point: dict[str, Any], *, name: str | None = None,
              description: str | None = None, check: bool = True) -> Spec:
        """The checked spec of a point; raises ``SpecError`` when it is not a valid network.
        ``check=False`` checks the spec's schema only, not its graph (the one-shot supernet
        trims a point's dead nodes itself)."""
        p = self.complete(point)
        depth = int(p["depth"])
        mult = [float(p.get(f"width_mult_{i}", 1.0)) for i in range(depth)]
        widths: dict[str, Any] = {"base": int(p["width_base"]), "growth": float(p["width_growth"])}
        if any(m != 1.0 for m in mult):
            widths["multipliers"] = mult
        nodes = p["nodes"] if p["nodes"] in ("triangle", "diagonal") else p["nodes"].split(",")
        data: dict[str, Any] = {
            "name": name or self.name,
            "description": description if description is not None else
            f"sampled from search space '{self.name}'",
            **{k: v for k, v in self.fixed.items() if k != "description"},
            "grid": {"depth": depth, "widths": widths},
            "nodes": nodes,
        }
        enc = {k[4:]: p[k] for k in p if k.startswith("enc_")}
        dec = {k[4:]: p[k] for k in p if k.startswith("dec_")}
        backbone = p.get("backbone", NO_BACKBONE)
        if backbone != NO_BACKBONE:  # its stages fix the encoder (no weights: none is trained)
            data["encoder"] = {"backbone": backbone, "weights": "none"}
        elif enc:
            data["encoder"] = {"block": enc}
        data["decoder"] = {**({"block": dec} if dec else {}),
                           **({"width": "concat"} if p["decoder_width"] == "concat" else {})}
        edges = []
        have = grid_node_ids(nodes, depth)
        merged = self._merged_columns(p, depth)
        for e in self.edges_at(depth):
            v = p[e.key]
            if v == OFF or (e.column is not None and merged.get(e.rule, e.column) != e.column):
                continue
            item: dict[str, Any]
            if e.rule is not None:
                item = {"rule": e.rule}
                if e.to is not None:
                    item["to"] = choices_of(e.to)
                elif e.column is not None and e.rule not in merged:
                    item["to"] = sorted((n for n in have if parse_node(n)[1] == e.column),
                                        key=lambda n: parse_node(n))
                for k in ("min_k", "max_k"):
                    if getattr(e, k) is not None:
                        item[k] = getattr(e, k)
            else:
                item = {"from": e.src, "to": e.to}
            if e.resample:
                item["resample"] = dict(e.resample)
            if v != ON:
                item["project"] = {"channels": int(v[1:]), "kernel": self.project_kernel}
            edges.append(item)
        data["edges"] = edges
        data["heads"], data["deep_supervision"] = self._heads(p, depth, nodes)
        if p["cgm"] != "none":
            data["cgm"] = True
        if self.trim and check:  # unchecked (the supernet's raw points): it gates itself
            data = self._trimmed(data)
        spec = from_dict(data, source=f"<search space {self.name}>")
        if check:
            from skipdsl.graph import build_graph

            build_graph(spec)  # raises SpecError for an invalid network
        return spec

    def _merged_columns(self, p: dict, depth: int) -> dict[str, int]:
        """Rules whose every column candidate is on with the same value: ``{rule: first
        column}``; the spec then holds the rule once, without ``to`` (as the zoo writes it)."""
        by_rule: dict[str, list[EdgeCandidate]] = {}
        for e in self.edges_at(depth):
            if e.column is not None:
                by_rule.setdefault(e.rule, []).append(e)
        out = {}
        for rule, cands in by_rule.items():
            vals = {p[e.key] for e in cands}
            if len(vals) == 1 and OFF not in vals:
                out[rule] = min(e.column for e in cands)
        return out

    def _trimmed(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` without the decoder nodes that no input reaches or that reach no head
        (iterated to a fixed point by reachability); the nodes become an explicit list."""
        import networkx as nx

        from skipdsl.graph import INPUT, build_graph

        raw = from_dict(data, source=f"<search space {self.name}>")
        g = build_graph(raw, check=False)
        heads = [h["node"] for h in data["heads"]]
        fwd = nx.descendants(g, INPUT)
        back: set[str] = set()
        for h in heads:
            if h in g:
                back |= nx.ancestors(g, h) | {h}
        live = {n for n in fwd & back if n != INPUT}
        dead = [n for n in g.nodes if n != INPUT and n not in live]
        if not dead:
            return data
        main = next(h["node"] for h in data["heads"] if h.get("main"))
        lost = [n for n in dead if n == main or parse_node(n)[1] == 0]
        if lost:
            why = f"no path from the input reaches the main head ({main})" if main in lost \
                else f"encoder node {lost[0]} reaches no head"
            raise SpecError(f"the point is not a network: {why}",
                            node=main if main in lost else lost[0],
                            file=self.source, hint="open more edges into the decoder")
        out = dict(data)
        out["nodes"] = sorted(live, key=lambda n: (parse_node(n)[1], parse_node(n)[0]))
        items = []
        for item in data["edges"]:
            if "to" in item and "rule" in item:
                to = [t for t in item["to"] if t in live]
                if not to:
                    continue
                item = {**item, "to": to}
            items.append(item)
        out["edges"] = items
        out["heads"] = [h for h in data["heads"] if h["node"] in live]
        out["deep_supervision"] = bool(data["deep_supervision"] and len(out["heads"]) > 1)
        return out

    def _heads(self, p: dict, depth: int, nodes: Any) -> tuple[list[dict], bool]:
        """Main head on x_0_(depth-1); with deep supervision the chosen head set (the heads on
        nodes that exist); CGM variants as in UNet3+ / UNet#."""
        have = grid_node_ids(nodes, depth)
        main = node_id(0, depth - 1)
        k = int(p["head_kernel"])
        heads = [{"node": main, "kernel": k, "main": True}]
        if p["deep_supervision"]:
            kind = p["ds_heads"]
            if kind in ("pruning", "all"):
                heads += [{"node": node_id(0, j), "kernel": k} for j in range(1, depth - 1)]
            if kind in ("hierarchical", "all"):
                heads += [{"node": node_id(i, depth - 1 - i),
                           "kernel": self.hierarchical_head_kernel} for i in range(1, depth)]
            heads = [h for h in heads if h["node"] in have]
        cgm = p["cgm"]
        for h in heads:
            lvl = parse_node(h["node"])[0]
            if cgm == "unet3p":
                h.update(cgm="unet3p", cgm_from=node_id(depth - 1, 0))
            elif cgm == "unetsharp":
                h["cgm"] = "full" if lvl >= depth - 2 else "simple"
        return heads, len(heads) > 1

    # -- spec -> point --------------------------------------------------------------------
    def point_of(self, spec: "Spec | str") -> dict[str, Any]:
        """The point of this space whose network is ``spec``'s (as trained: the active heads,
        i.e. the main head only unless the spec has deep supervision on).

        Raises ``SpecError`` naming the dimension that has no matching choice.
        """
        from skipdsl.spec import load

        spec = load(spec)
        where = spec.source or spec.name
        depth = spec.depth

        def need(name: str, value: Any, choices: list) -> Any:
            if value not in choices:
                raise SpecError(f"'{spec.name}' is not a point of search space '{self.name}': "
                                f"{name} {value!r} is not a choice", file=where,
                                expected=choices, found=value)
            return value

        p: dict[str, Any] = {"depth": need("depth", depth, choices_of(self.depth))}
        backbone = spec.encoder.backbone or NO_BACKBONE
        if self.backbone is not None or backbone != NO_BACKBONE:
            p["backbone"] = need("backbone", backbone, self.backbone_choices() or [NO_BACKBONE])
        p.update(self._width_point(spec, need))
        nodes = spec.nodes if isinstance(spec.nodes, str) else None
        if nodes is None:  # an explicit list: match a set choice by its nodes
            want = grid_node_ids(spec.nodes, depth)
            nodes = next((c for c in self.node_choices()
                          if grid_node_ids(c if c in ("triangle", "diagonal") else c.split(","),
                                       depth) == want), ",".join(spec.nodes))
        p["nodes"] = need("nodes", nodes, self.node_choices())
        base_block = spec.defaults.block.model_dump()
        for part, blk_space, cfg in (("enc", self.encoder_block, spec.encoder),
                                     ("dec", self.decoder_block, spec.decoder)):
            if part == "enc" and backbone != NO_BACKBONE:
                continue  # the backbone's stages, not the space's encoder block
            blk = {**base_block, **(cfg.block or {})}
            for k, ch in blk_space.items():
                p[f"{part}_{k}"] = need(f"{part}_{k}", blk[k], choices_of(ch))
        p["decoder_width"] = need("decoder_width",
                                  "concat" if spec.decoder.width == "concat" else "level",
                                  choices_of(self.decoder_width))
        p.update(self._edge_point(spec, need))
        main = spec.main_head
        p["head_kernel"] = need("head_kernel", main.kernel, choices_of(self.head_kernel))
        active = [main] + ([h for h in spec.heads if h is not main] if spec.deep_supervision else [])
        ds = len(active) > 1
        p["deep_supervision"] = need("deep_supervision", ds, choices_of(self.deep_supervision))
        if ds:
            got = {h.node for h in active} - {main.node}
            for kind in choices_of(self.ds_heads):
                heads, _ = self._heads({**p, "ds_heads": kind, "cgm": "none"}, depth,
                                       spec.nodes)
                if {h["node"] for h in heads} - {main.node} == got:
                    p["ds_heads"] = kind
                    break
            else:
                need("ds_heads", sorted(got), choices_of(self.ds_heads))
        p["cgm"] = need("cgm", _cgm_variant(spec, active), choices_of(self.cgm))
        return self.complete(p)

    def _width_point(self, spec: Spec, need) -> dict[str, Any]:
        want = spec.widths
        w = self.widths
        for base, growth in itertools.product(choices_of(w.base), choices_of(w.growth)):
            mults = []
            for i, target in enumerate(want):
                opts = choices_of((w.multipliers or [])[i]) if w.multipliers else [1.0]
                m = next((m for m in opts
                          if int(round(base * growth**i * m)) == target), None)
                if m is None:
                    break
                mults.append(m)
            else:
                point = {"width_base": base, "width_growth": growth}
                if w.multipliers:
                    point.update({f"width_mult_{i}": m for i, m in enumerate(mults)})
                return point
        return need("widths", want, [f"base {w.base}, growth {w.growth}, multipliers "
                                     f"{w.multipliers}"])

    def _edge_point(self, spec: Spec, need) -> dict[str, Any]:
        """Each rule / explicit edge of the spec switches on the candidate of the same rule
        (and target filter) with the same projection; all other candidates are off."""
        from ..spec import EdgeRule

        edges = self.edges_at(spec.depth)
        point = {e.key: OFF for e in edges}
        for item in spec.edges:
            if isinstance(item, EdgeRule):
                match = [e for e in edges if e.rule == item.rule and e.column is None
                         and _norm_to(e.to) == _norm_to(item.to)
                         and (e.min_k, e.max_k) == (item.min_k, item.max_k)]
                cols = [e for e in edges if e.rule == item.rule and e.column is not None
                        and (e.min_k, e.max_k) == (item.min_k, item.max_k)]
                if not match and cols and item.to is None:  # the rule in every column
                    match = cols
                label = f"rule {item.rule}"
            else:
                match = [e for e in self.edges if e.src == item.src and e.to == item.dst]
                label = f"edge {item.src} -> {item.dst}"
            if not match:
                need("edges", label, [e.key for e in edges])
            proj = item.project
            for e in match if match[0].column is not None else match[:1]:
                if proj is not None and proj.kernel != self.project_kernel:
                    need(f"{e.key} projection kernel", proj.kernel, [self.project_kernel])
                value = ON if proj is None else f"p{proj.channels}"
                point[e.key] = need(e.key, value, e.values())
        return point

    # -- identity -------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A hash of the space's content (stored with a study to refuse mixing spaces)."""
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("backbone", "supernet"):  # a space without the key keeps its fingerprint
            if data.get(key) is None:
                data.pop(key, None)
        if not data.get("trim"):  # keys added later leave older spaces' fingerprints alone
            data.pop("trim", None)
        for e in data["edges"]:
            if not e.get("per_column"):
                e.pop("per_column", None)
            if e.get("column") is None:
                e.pop("column", None)
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def budget(self, name: str) -> BudgetSettings:
        """The search's settings for a budget (defaults: :data:`DEFAULT_BUDGETS`)."""
        if name in self.budgets:
            return self.budgets[name]
        return BudgetSettings(**DEFAULT_BUDGETS.get(name, {}))


def _norm_to(to: Any) -> tuple | None:
    return None if to is None else tuple(sorted(choices_of(to)))


def grid_node_ids(nodes: Any, depth: int) -> set[str]:
    """The node ids of a ``nodes`` choice (``triangle``, ``diagonal`` or a list) at ``depth``."""
    if nodes == "triangle":
        return {node_id(i, j) for i in range(depth) for j in range(depth - i)}
    if nodes == "diagonal":
        return {node_id(i, 0) for i in range(depth)} | {node_id(i, depth - 1 - i)
                                                         for i in range(depth - 1)}
    return set(nodes)


def _cgm_variant(spec: Spec, active: list) -> str:
    if not spec.cgm:
        return "none"
    kinds = {h.cgm for h in active if h.cgm}
    if not kinds:
        return "none"
    if kinds == {"unet3p"}:
        return "unet3p"
    if kinds <= {"simple", "full"}:
        return "unetsharp"
    return "+".join(sorted(str(k) for k in kinds))


# scaling (the widths a budget trains at): skipdsl.spec.scale_spec, shared with the trainer


def active_spec(spec: Spec) -> Spec:
    """``spec`` with only the heads it trains with (the main head alone without deep
    supervision): the network a trial measures, and what its hash is taken of."""
    if spec.deep_supervision or len(spec.heads) == 1:
        return spec
    data = spec.to_dict()
    main = spec.main_head.model_dump(mode="json", exclude_none=True)
    main["main"] = True
    data["heads"] = [main]
    return from_dict(data, source=spec.source)


# ---------------------------------------------------------------------------------------
# files


def spaces_dir():
    return resources.files("skipdsl") / "spaces"


def list_spaces() -> list[str]:
    """Names of the space files shipped with the package."""
    return sorted(p.name[:-5] for p in spaces_dir().iterdir() if p.name.endswith(".yaml"))


def loads_space(text: str, *, source: str | None = None) -> SearchSpace:
    """A space from YAML text; a bad one raises ``SpecError`` with the file and line."""
    from ..spec import clean_loc, line_for, read_yaml

    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecError("a search space must be a YAML mapping", file=source, line=1)
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = clean_loc(tuple(e["loc"]), data)
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # a check of the whole space names its key first ("depth: ...")
            key, _, rest = msg.partition(": ")
            if key in data:
                loc, msg = (key,), rest
        where = ".".join(str(p) for p in loc) or "(top level)"
        hint = None
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(e["loc"][-1]), [f.alias or n for n, f in
                                                     SearchSpace.model_fields.items()])
        raise SpecError(f"search space: bad value at {where}: {msg}", file=source,
                        line=line_for(loc, lines) if loc else None, hint=hint) from None
    space.source = source
    return space


def load_space(name_or_path: "str | Path | SearchSpace | None" = None) -> SearchSpace:
    """A shipped space name (``default``), a path to a space YAML, or ``None`` (the default)."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    name_or_path = name_or_path or DEFAULT_SPACE
    p = Path(name_or_path)
    if p.is_file():
        return loads_space(p.read_text(), source=str(p))
    stem = p.name[:-5] if p.name.endswith((".yaml", ".yml")) else p.name
    f = spaces_dir() / f"{stem}.yaml"
    if str(p.parent) in ("", ".") and f.is_file():
        return loads_space(f.read_text(), source=f"spaces/{stem}.yaml")
    raise SpecError(f"no search space file '{name_or_path}' and no shipped space '{stem}'",
                    hint=did_you_mean(stem, list_spaces()) + " (or give a path to a .yaml file)")
