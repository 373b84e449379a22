"""Stage 2: a checked ``Spec`` -> a validated ``networkx.DiGraph``.

Nodes are ``'input'`` and ``x_i_j``; edges carry their kind, scale factor, resampling and
projection. Channels and scales are derived here, once: the compiler, the CLI table and the
picture all read this graph.

Node attributes: ``level, column, kind ('input'|'encoder'|'decoder'), in_channels, width,
aggregate, block (dict), scale (2**level; 2**(level+1) over a backbone with a stride-2 stem)``;
over a backbone, encoder blocks are ``{type: backbone, backbone, stage}`` and the encoder's
down edges have ``op: identity, in_block: True`` (the stage downsamples). Edge attributes: ``kind, factor`` (> 1 upsamples,
< 1 downsamples, 1 keeps), ``op`` (identity | maxpool | avgpool | conv | bilinear | nearest |
transposed, or any other resampling registry entry), ``align_corners``, ``resample`` (dict of a
learnable resampling's ``channels``/``norm``/``act``/``bias``, or None), ``dropout``,
``project`` (dict or None), ``src_channels``, ``resampled`` (channels after the resampling),
``channels`` (what the edge delivers), ``order`` (concatenation position).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import networkx as nx

from .errors import SpecError, did_you_mean
from .layers import ACTS, BLOCKS, NORMS, RESAMPLERS
from .heads import HEADS
from .spec import Edge, EdgeRule, Head, Resample, Spec, load, node_id, parse_node

INPUT = "input"


def node_positions(spec: Spec) -> list[tuple[int, int]]:
    """The grid positions (level, column) of a spec's nodes, in order."""
    d = spec.depth
    if spec.nodes == "triangle":
        return [(i, j) for i in range(d) for j in range(d - i)]
    if spec.nodes == "diagonal":
        return [(i, 0) for i in range(d)] + [(i, d - 1 - i) for i in range(d - 1)]
    out = []
    for n in spec.nodes:
        i, j = _parse_in_grid(spec, n, where="nodes")
        out.append((i, j))
    have = set(out)
    missing = [node_id(i, 0) for i in range(d) if (i, 0) not in have]
    if missing:
        raise SpecError(f"the encoder nodes {', '.join(missing)} are missing from 'nodes'",
                        file=spec.source, hint="every level needs its encoder node x_<i>_0")
    return sorted(have, key=lambda t: (t[1], t[0]))


def _parse_in_grid(spec: Spec, name: str, *, where: str) -> tuple[int, int]:
    try:
        i, j = parse_node(name)
    except SpecError as e:
        raise e.located(spec.source) from None
    d, cols = spec.depth, spec.grid.columns
    if cols is not None and not (0 <= i < d and 0 <= j < cols):
        raise SpecError(f"{where}: node {name} is outside the grid of depth {d} and {cols} "
                        "columns", file=spec.source, node=name,
                        expected=f"x_i_j with i < {d} and j < {cols}", found=name)
    if cols is None and not (0 <= i < d and 0 <= j < d - i):
        raise SpecError(f"{where}: node {name} is outside the grid of depth {d}", file=spec.source,
                        node=name, expected=f"x_i_j with i < {d} and i + j <= {d - 1}", found=name,
                        hint="set grid.columns for a rectangular grid (feature pyramids)")
    return i, j


def _rule_sources(rule: str, i: int, j: int, nodes: set, depth: int, min_k: int | None,
                  max_k: int | None) -> list[tuple[int, int]]:
    """Sources that a rule connects into decoder node (i, j)."""
    lo = lambda default: default if min_k is None else max(default, min_k)  # noqa: E731
    hi = lambda default: default if max_k is None else min(default, max_k)  # noqa: E731
    if rule == "dense":
        cand = [(i, c) for c in range(j)]
    elif rule == "skip":
        cand = [(i, 0)]
    elif rule == "up":
        cand = [(i + 1, j - 1)]
    elif rule == "fullscale_up":
        cand = [(i + k, j - k) for k in range(lo(2), hi(j) + 1)]
    elif rule == "fullscale_down":
        cand = [(i - k, 0) for k in range(lo(1), hi(i) + 1)]
    elif rule == "deeper":  # every deeper decoder node, and the bottom node
        cand = [(a, b) for (a, b) in nodes if a > i and b < j and (b > 0 or a == depth - 1)
                and lo(1) <= a - i <= hi(depth)]
    else:  # pragma: no cover - rule names are checked by the schema
        raise AssertionError(rule)
    return [c for c in cand if c in nodes]


def _merged_block(spec: Spec, name: str, kind: str, level: int = 0) -> dict[str, Any]:
    block = spec.defaults.block.model_dump()
    if spec.grid.kernels is not None:  # the level's kernel (grid.kernels) over the default
        block["kernel"] = spec.level_kernel(level)
    part = spec.encoder if kind == "encoder" else spec.decoder
    for cfg in (part, spec.node_overrides.get(name)):
        if cfg is not None and cfg.block:
            unknown = set(cfg.block) - set(block)
            if unknown:
                k = sorted(unknown)[0]
                raise SpecError(f"unknown block key '{k}'", file=spec.source, node=name,
                                hint=did_you_mean(k, block))
            block.update(cfg.block)
    if kind == "encoder" and spec.encoder.downsample == "block":
        stride = spec.level_strides[level]  # the first conv strides (nnU-Net's encoder)
        if any(st != 1 for st in stride):
            if block["type"] != "conv":
                raise SpecError(f"encoder.downsample: block needs conv blocks (found "
                                f"'{block['type']}')", file=spec.source, node=name,
                                hint="use block type conv, or downsample on the edges")
            block["stride"] = stride[0] if len(set(stride)) == 1 else list(stride)
    # options that no one set are left out: the blocks' own defaults apply, hashes are stable
    return {k: v for k, v in block.items() if v is not None}


def scale_ratio(a: "int | tuple", b: "int | tuple", dims: int) -> "float | tuple[float, ...]":
    """The factor from scale ``a`` to scale ``b`` (> 1 upsamples): one float where every axis
    agrees, else one per axis (anisotropic ``grid.strides``)."""
    if not isinstance(a, tuple) and not isinstance(b, tuple):
        return float(a) / float(b)
    ta = a if isinstance(a, tuple) else (a,) * dims
    tb = b if isinstance(b, tuple) else (b,) * dims
    out = tuple(float(x) / float(y) for x, y in zip(ta, tb))
    return out[0] if len(set(out)) == 1 else out


def factor_direction(f: "float | tuple[float, ...]") -> int:
    """+1 if a factor upsamples (on some axis), -1 if it downsamples, 0 if it keeps the scale.
    Cumulative strides only grow with the level, so no factor does both."""
    axes = f if isinstance(f, tuple) else (f,)
    return 1 if any(a > 1 for a in axes) else (-1 if any(a < 1 for a in axes) else 0)


def _node_setting(spec: Spec, name: str, kind: str, key: str):
    for cfg in (spec.node_overrides.get(name), spec.encoder if kind == "encoder" else spec.decoder):
        if cfg is not None and getattr(cfg, key) is not None:
            return getattr(cfg, key)
    return None


def build_graph(spec: "Spec | str", *, check: bool = True) -> nx.DiGraph:
    """Expand a spec into its DAG and validate it (raises ``SpecError``).

    ``check=False`` returns the expanded nodes and edges only: not validated (a node may have
    no input or reach no head) and without derived channels. The one-shot supernet
    (:mod:`skipdsl.search.supernet`) reads a sampled point's edges from it before trimming
    the nodes that a gate leaves without an input or a way to the head."""
    spec = load(spec)
    src = spec.source
    depth, widths = spec.depth, spec.widths
    pos = node_positions(spec)
    nodes = set(pos)
    g = nx.DiGraph(name=spec.name, dims=spec.dims, depth=depth, in_channels=spec.in_channels,
                   num_classes=spec.num_classes, source=src)
    g.add_node(INPUT, level=0, column=-1, kind="input", width=spec.in_channels,
               in_channels=spec.in_channels, scale=1)
    for name in spec.node_overrides:
        i, j = _parse_in_grid(spec, name, where="node_overrides")
        if (i, j) not in nodes:
            raise SpecError("node_overrides names a node that the spec does not have",
                            file=src, node=name, hint=f"nodes are: {spec.nodes}")
    backbone = spec.encoder.backbone
    s0 = spec.first_scale_log2
    for i, j in pos:
        name = node_id(i, j)
        kind = "encoder" if j == 0 else "decoder"
        if kind == "encoder" and backbone:
            ov = spec.node_overrides.get(name)
            if ov is not None and (ov.block or ov.width is not None):
                raise SpecError("a backbone stage's layers and width are fixed", file=src,
                                node=name, hint="drop its block/width override")
            from .backbones import BACKBONES

            g.add_node(name, level=i, column=j, kind=kind, scale=2 ** (i + s0),
                       block={"type": "backbone", "backbone": backbone, "stage": i},
                       aggregate="concat", checkpoint=False, order="shallow_first",
                       width_cfg=BACKBONES.get(backbone).channels[i])
            continue
        block = _merged_block(spec, name, kind, i)
        for reg, key in ((BLOCKS, "type"), (NORMS, "norm"), (ACTS, "act")):
            if block[key] not in reg:
                raise SpecError(f"unknown {reg.kind} '{block[key]}'", file=src, node=name,
                                hint=did_you_mean(block[key], reg))
        g.add_node(name, level=i, column=j, kind=kind, block=block, scale=spec.level_scale(i),
                   aggregate=_node_setting(spec, name, kind, "aggregate") or spec.defaults.aggregate,
                   width_cfg=_node_setting(spec, name, kind, "width") or widths[i],
                   checkpoint=bool(_node_setting(spec, name, kind, "checkpoint")),
                   order=_node_setting(spec, name, kind, "order") or "shallow_first")

    default_rs = spec.defaults.resample

    def add_edge(a: tuple[int, int] | str, b: tuple[int, int], kind: str, rs: Resample | None,
                 project, scale: float | None = None, dropout: float | None = None) -> None:
        u = a if isinstance(a, str) else node_id(*a)
        v = node_id(*b)
        if g.has_edge(u, v):
            return  # two rules gave the same edge: keep the first
        if u == v:
            raise SpecError("an edge from a node to itself", file=src, edge=(u, v),
                            hint="remove it")
        li = g.nodes[u]["level"]
        if spec.grid.strides is None or u == INPUT:
            factor = 2.0 ** (li - b[0])
        else:  # from the cumulative strides per axis
            factor = scale_ratio(g.nodes[u]["scale"], g.nodes[v]["scale"], spec.dims)
        if scale is not None and (isinstance(factor, tuple) or abs(scale - factor) > 1e-9):
            raise SpecError("edge scale does not fit the grid", file=src, edge=(u, v),
                            expected=f"scale {factor} (level {li} -> level {b[0]})",
                            found=f"scale {scale:g}", hint="drop 'scale' or connect other levels")
        rs = rs or default_rs
        way = factor_direction(factor)
        op = "identity" if way == 0 else (rs.up if way > 0 else rs.down)
        if kind == "down" and (backbone or spec.encoder.downsample == "block"):
            # the backbone stage (or the block's strided first conv) downsamples itself
            g.add_edge(u, v, kind=kind, factor=factor, op="identity", in_block=True,
                       align_corners=rs.align_corners, resample=None, dropout=None, project=None)
            return
        extra = {k: getattr(rs, k) for k in ("channels", "norm", "act", "bias")
                 if getattr(rs, k) is not None}
        learned = None
        if op != "identity" and RESAMPLERS.get(op).learnable:
            learned = extra
            if extra.get("channels") == "level":
                learned = {**extra, "channels": widths[b[0]]}
            for key, reg in (("norm", NORMS), ("act", ACTS)):
                if key in extra and extra[key] not in reg:
                    raise SpecError(f"unknown {reg.kind} '{extra[key]}' in the resampling",
                                    file=src, edge=(u, v), hint=did_you_mean(extra[key], reg))
        elif op != "identity" and extra:
            raise SpecError(f"'{op}' has no weights: resample options {sorted(extra)} need a "
                            "learnable resampling", file=src, edge=(u, v),
                            hint="use 'conv' (down) or 'transposed' (up), or drop them")
        proj = project.model_dump() if project is not None else None
        g.add_edge(u, v, kind=kind, factor=factor, op=op, align_corners=rs.align_corners,
                   resample=learned or None, dropout=dropout or None, project=proj)

    add_edge(INPUT, (0, 0), "input", None, None)
    for i in range(1, depth):
        add_edge((i - 1, 0), (i, 0), "down", None, None)
    decoder = [(i, j) for (i, j) in pos if j > 0]
    for e in spec.edges:
        if isinstance(e, EdgeRule):
            targets = decoder
            if e.to is not None:
                targets = [_parse_in_grid(spec, t, where=f"rule {e.rule}: to") for t in e.to]
            for i, j in targets:
                for s in _rule_sources(e.rule, i, j, nodes, depth, e.min_k, e.max_k):
                    if e.sources is not None and (s[1] == 0) != (e.sources == "encoder"):
                        continue
                    add_edge(s, (i, j), e.rule, e.resample, e.project, dropout=e.dropout)
        else:
            a = _parse_in_grid(spec, e.src, where="edge 'from'")
            b = _parse_in_grid(spec, e.dst, where="edge 'to'")
            for n, t in ((e.src, a), (e.dst, b)):
                if t not in nodes:
                    raise SpecError(f"edge names node {n}, which the spec does not have",
                                    file=src, edge=(e.src, e.dst),
                                    hint="add it to 'nodes' or use 'nodes: triangle'")
            if b[1] == 0:
                raise SpecError("edges into encoder nodes are fixed (x_<i-1>_0 -> x_<i>_0)",
                                file=src, edge=(e.src, e.dst), hint="connect to a decoder node")
            add_edge(a, b, "explicit", e.resample, e.project, e.scale, e.dropout)

    if not check:
        return g
    _validate(spec, g)
    _derive_channels(spec, g)
    return g


def _validate(spec: Spec, g: nx.DiGraph) -> None:
    src = spec.source
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        raise SpecError(f"the edges form a cycle: {path}", file=src, edge=tuple(cycle[-1][:2]),
                        hint="remove one of these edges; data must flow from the input to a head")
    for h in spec.heads:
        if h.type is not None and h.type not in HEADS:
            raise SpecError(f"unknown head type '{h.type}'", file=src, node=h.node,
                            hint=did_you_mean(h.type, HEADS))
        if h.node not in g:
            _parse_in_grid(spec, h.node, where="heads")
            raise SpecError("a head sits on a node that the spec does not have", file=src,
                            node=h.node, hint="put the head on an existing node")
    reach = nx.descendants(g, INPUT) | {INPUT}
    for n in g:
        if n not in reach:
            raise SpecError("node is unreachable from the input (it has no incoming edge)",
                            file=src, node=n,
                            hint="add a rule or an explicit edge into it, or remove the node")
    heads = {h.node for h in spec.heads}
    if spec.pyramid is not None:
        for n in spec.pyramid.nodes:
            if n not in g:
                _parse_in_grid(spec, n, where="pyramid.nodes")
                raise SpecError("a pyramid level sits on a node that the spec does not have",
                                file=src, node=n, hint="list existing decoder nodes")
            if g.nodes[n]["kind"] != "decoder":
                raise SpecError("a pyramid level must be a decoder node (x_i_j, j > 0)",
                                file=src, node=n, hint="add a decoder node on that level")
        levels = [g.nodes[n]["level"] for n in spec.pyramid.nodes]
        if levels != sorted(set(levels)):
            raise SpecError("pyramid.nodes must be on distinct levels, shallowest first",
                            file=src, found=spec.pyramid.nodes,
                            hint="one node per level, e.g. [x_1_4, x_2_3, x_3_2, x_4_1]")
        heads |= set(spec.pyramid.nodes)
    feeds = set(heads)
    for h in heads:
        feeds |= nx.ancestors(g, h)
    for n in g:
        if n not in feeds:
            raise SpecError("node does not reach any head (its output would be unused)",
                            file=src, node=n,
                            hint="add an edge out of it, a head on it, or remove the node")


def _derive_channels(spec: Spec, g: nx.DiGraph) -> None:
    src = spec.source
    for n in nx.topological_sort(g):
        if n == INPUT:
            continue
        deep = g.nodes[n].get("order") == "deep_first"
        ins = sorted(g.in_edges(n, data=True),
                     key=lambda e: ((-1 if deep else 1) * g.nodes[e[0]]["level"],
                                    g.nodes[e[0]]["column"]))
        chans = []
        for k, (u, _, d) in enumerate(ins):
            d["order"] = k
            d["src_channels"] = g.nodes[u]["width"]
            d["resampled"] = (d["resample"] or {}).get("channels", d["src_channels"])
            d["channels"] = d["project"]["channels"] if d["project"] else d["resampled"]
            chans.append(d["channels"])
        nd = g.nodes[n]
        if nd["aggregate"] == "sum" and len(set(chans)) > 1:
            detail = ", ".join(f"{u}: {d['channels']}" for u, _, d in ins)
            raise SpecError("'sum' aggregation needs inputs of equal channels", file=src, node=n,
                            expected="one channel count", found=detail,
                            hint="add 'project: {channels: C}' to its edges or use 'concat'")
        nd["in_channels"] = sum(chans) if nd["aggregate"] == "concat" else chans[0]
        w = nd.pop("width_cfg")
        if w == "concat":
            nd["width"] = nd["in_channels"]
        elif isinstance(w, str):  # 'x2': a multiple of the level's grid width
            nd["width"] = max(1, int(round(spec.widths[nd["level"]] * float(w[1:]))))
        else:
            nd["width"] = int(w)
        if nd["block"]["type"] == "identity" and nd["width"] != nd["in_channels"]:
            raise SpecError("an identity block cannot change the channels", file=src, node=n,
                            expected=nd["in_channels"], found=nd["width"],
                            hint="set 'width: concat' or use the 'conv' block")


def topo_order(g: nx.DiGraph) -> list[str]:
    """Nodes in a deterministic topological order (column-major, as the grid is read)."""
    key = lambda n: (g.nodes[n]["column"], g.nodes[n]["level"])  # noqa: E731
    return list(nx.lexicographical_topological_sort(g, key=key))


def canonical_hash(g: nx.DiGraph, heads: Iterable[str] = ()) -> str:
    """A hash of the network the graph describes: same topology and settings, same hash,
    whatever order the spec listed things in (nodes are keyed by their grid position)."""
    parts = [f"dims={g.graph['dims']};in={g.graph['in_channels']};out={g.graph['num_classes']}"]
    for n in sorted(g.nodes):
        d = g.nodes[n]
        blk = sorted(d.get("block", {}).items())
        order = "" if d.get("order", "shallow_first") == "shallow_first" else f":{d['order']}"
        parts.append(f"N{n}:{d['width']}:{d.get('aggregate')}:{blk}{order}")
    for u, v in sorted(g.edges):
        d = g.edges[u, v]
        extra = "".join(f":{k}={d[k]}" for k in ("resample", "dropout") if d.get(k))
        parts.append(f"E{u}>{v}:{d['op']}:{d['align_corners']}:"
                     f"{sorted((d['project'] or {}).items())}{extra}")
    parts += [f"H{h}" for h in sorted(heads)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def spec_hash(spec: Any) -> str:
    """Canonical hash of a spec's network: same topology and settings, same hash. A library
    baseline (:mod:`skipdsl.baselines`) hashes its name, class and fixed settings."""
    if getattr(spec, "is_baseline", False):
        return spec.hash()
    s = load(spec)
    heads = [f"{h.node}:{h.kernel}:{h.match}" + (f":{h.type}" if h.type else "") for h in s.heads]
    if s.pyramid is not None:  # a feature pyramid's levels and output convs
        p = s.pyramid
        heads += [f"pyramid:{','.join(p.nodes)}:{p.channels}:{p.kernel}:{p.pool}"]
    return canonical_hash(build_graph(s), heads)
