"""Stage 3: a validated DAG -> a ``torch.fx.GraphModule`` with readable generated code.

The module's children are named by node id: ``x_2_1`` is the block of X[2,1],
``edges.x_4_0__x_0_4`` holds an edge's learnable parts (projection, strided/transposed conv),
``heads.x_0_4`` a head and ``cgm.x_4_0`` a classification-guided module. ``model.code`` shows
the generated forward, one line per operation, and tracebacks point into it.

A stateless resampling (pooling, interpolation) that several edges need is emitted once.
"""
from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Iterable

import networkx as nx
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.graph_module import _copy_attr

from .errors import SpecError
from .graph import INPUT, build_graph, topo_order
from .heads import CGMS, HEADS, CGMGate
from .limits import check_size
from .layers import BLOCKS, RESAMPLERS, ConvNormAct, channel_dropout, init_he, linear_mode
from .spec import Head, Spec, load


def check_input(x: torch.Tensor, multiple: "int | tuple[int, ...]", channels: int,
                name: str) -> torch.Tensor:
    """Raise a clear error for inputs the network cannot take; returns ``x`` unchanged.
    ``multiple``: one for every axis, or one per axis (anisotropic ``grid.strides``)."""
    spatial = tuple(x.shape[2:])
    if x.dim() != 2 + len(spatial) or x.shape[1] != channels:
        raise SpecError(f"model '{name}' expects {channels} input channels",
                        expected=f"(batch, {channels}, *spatial)", found=tuple(x.shape),
                        hint="set in_channels when compiling, or convert the images")
    per_axis = multiple if isinstance(multiple, tuple) else (multiple,) * len(spatial)
    bad = [s for s, m in zip(spatial, per_axis) if s % m]
    if bad:
        ok = [((s + m - 1) // m) * m for s, m in zip(spatial, per_axis)]
        what = (f"{multiple} (2^(depth-1))" if isinstance(multiple, int)
                else f"{multiple} per axis (the cumulative strides)")
        raise SpecError(f"model '{name}': input size {spatial} is not divisible by {what}",
                        expected=f"multiples of {multiple}", found=spatial,
                        hint=f"pad or resize the input, e.g. to {tuple(ok)}")
    return x


def _factor_label(f: "float | tuple[float, ...]", op: str) -> str:
    """``up2``/``maxpool4``; per axis ``up1_2_2``/``maxpool1_2_2`` (fx node names)."""
    axes = f if isinstance(f, tuple) else (f,)
    up = any(a > 1 for a in axes)
    parts = [str(int(round(a if up else 1 / a))) for a in axes]
    return ("up" if up else op) + "_".join(parts)


def _kernel_of(f: "float | tuple[float, ...]") -> "int | tuple[int, ...]":
    """A learnable resampling's kernel = stride per axis: the factor or its inverse."""
    if isinstance(f, tuple):
        return tuple(int(round(max(a, 1 / a))) for a in f)
    return int(round(max(f, 1 / f)))


class _EdgeOps(nn.Module):
    """An edge's modules: ``dropout``, ``resample`` (a learnable resampling: strided or
    transposed conv) and ``project``, applied in that order."""


def _interp_kwargs(op: str, factor: "float | tuple", align: bool, dims: int) -> dict[str, Any]:
    mode = linear_mode(dims) if op == "bilinear" else "nearest"
    sf = tuple(float(f) for f in factor) if isinstance(factor, tuple) else float(factor)
    kw: dict[str, Any] = {"scale_factor": sf, "mode": mode}
    if mode != "nearest":
        kw["align_corners"] = align
    return kw


def _active_heads(spec: Spec, deep_supervision: bool) -> list[Head]:
    main = spec.main_head
    return [main] + ([h for h in spec.heads if h is not main] if deep_supervision else [])


def _outputs(spec: Spec) -> tuple[list[Head], bool]:
    """The heads a compiled ``spec`` runs and whether it returns a dict: a pyramid's output
    convs (feature maps, :mod:`skipdsl.detection`), else the main head and, with deep
    supervision, the others."""
    if spec.pyramid is not None:
        return [Head(node=n, kernel=spec.pyramid.kernel) for n in spec.pyramid.nodes], True
    return _active_heads(spec, spec.deep_supervision), spec.deep_supervision or spec.cgm


def _cgm_key(h: Head) -> str:
    return h.cgm_from or h.node


def _build_modules(spec: Spec, dag: nx.DiGraph, heads: list[Head],
                   use_cgm: bool) -> tuple[nn.Module, Any]:
    """The root module (blocks, edges, heads, CGMs) and the backbone encoder (or None)."""
    dims = spec.dims
    root = nn.Module()
    encoder = None
    if spec.encoder.backbone:  # the encoder column is a torchvision network's stages
        from .backbones import BackboneEncoder

        encoder = BackboneEncoder(spec.encoder.backbone, spec.in_channels, spec.depth)
    for n in topo_order(dag):
        if n == INPUT:
            continue
        d = dag.nodes[n]
        if d["block"]["type"] == "backbone":
            root.add_module(n, encoder.stages[d["block"]["stage"]])
            continue
        kw = {k: v for k, v in d["block"].items() if k != "type"}
        try:
            block = BLOCKS.get(d["block"]["type"])(d["in_channels"], d["width"], dims=dims, **kw)
        except (TypeError, ValueError) as e:
            raise SpecError(f"block '{d['block']['type']}' could not be built: {e}",
                            file=spec.source, node=n) from None
        root.add_module(n, block)
    edges = nn.ModuleDict()
    for u, v, d in dag.edges(data=True):
        ops = _EdgeOps()
        c = d["src_channels"]
        k = _kernel_of(d["factor"])
        if d.get("dropout"):
            ops.dropout = channel_dropout(d["dropout"], dims)
        if d["op"] != "identity" and RESAMPLERS.get(d["op"]).learnable:
            opts = {key: val for key, val in (d["resample"] or {}).items() if key != "channels"}
            ops.resample = RESAMPLERS.get(d["op"]).build(c, d["resampled"], k, dims, **opts)
        if d["project"]:
            p = d["project"]
            blk = dag.nodes[v]["block"]
            ops.project = ConvNormAct(d["resampled"], p["channels"], dims=dims,
                                      kernel=p["kernel"], norm=p["norm"] or blk["norm"],
                                      act=p["act"] or blk["act"], bias=blk["bias"])
        if len(ops._modules):
            edges[f"{u}__{v}"] = ops
    if len(edges):
        root.edges = edges
    # a pyramid's output convs are conv heads to the pyramid's channels (FPN's layer_blocks)
    out_channels = spec.pyramid.channels if spec.pyramid is not None else spec.num_classes
    root.heads = nn.ModuleDict({
        h.node: HEADS.get(h.type or "conv")(dag.nodes[h.node]["width"], out_channels,
                                            h.kernel, dims, block=dag.nodes[h.node]["block"])
        for h in heads
    })
    if use_cgm:
        cgm = nn.ModuleDict()
        for h in heads:
            if h.cgm and _cgm_key(h) not in cgm:
                src = _cgm_key(h)
                if src not in dag:
                    raise SpecError("cgm_from names a node the spec does not have",
                                    file=spec.source, node=src)
                cgm[src] = CGMS.get(h.cgm)(dag.nodes[src]["width"], dims)
        if not len(cgm):
            raise SpecError("cgm is on but no active head names a CGM variant", file=spec.source,
                            hint="add 'cgm: unet3p|full|simple' to a head")
        root.cgm = cgm
        root.cgm_gate = CGMGate()
    return root, encoder


def _emit_edge(graph: fx.Graph, spec: Spec, u: str, v: str, d: dict, t: fx.Node,
               source: fx.Node, shared: dict[tuple, fx.Node], edge_mods: nn.Module,
               split: bool = False) -> fx.Node:
    """Emit one edge's operations on ``t`` (the value of ``u``, which is ``source``): dropout,
    resampling, projection. With ``split`` (``recompute="split"``) a stateless resampling
    followed by a projection is emitted by :func:`_emit_resampled_conv`: the resampled copy
    is not kept for the backward pass."""
    eid = f"{u}__{v}"
    mods = getattr(edge_mods, eid, None)
    if split and _projected(d, mods):
        conv = mods.project.conv
        parts = _emit_resampled_conv(graph, spec, d, t, f"edges.{eid}.project.conv", conv, 0,
                                     d["resampled"], eid)
        t = parts[0] if len(parts) == 1 else graph.create_node(
            "call_function", _sum_parts, (parts,), name=f"{eid}_sum")
        t = graph.create_node("call_module", f"edges.{eid}.project.norm", (t,),
                              name=f"{eid}_norm")
        return graph.create_node("call_module", f"edges.{eid}.project.act", (t,), name=eid)
    if hasattr(mods, "dropout"):
        t = graph.create_node("call_module", f"edges.{eid}.dropout", (t,), name=f"{eid}_drop")
    if hasattr(mods, "resample"):
        t = graph.create_node("call_module", f"edges.{eid}.resample", (t,), name=f"{eid}_rs")
    elif d["op"] != "identity":
        # a stateless resampling used by several edges is emitted once (not after dropout)
        key = (u if t is source else eid, d["op"], d["factor"], d["align_corners"])
        if key not in shared:
            fn, kw = RESAMPLERS.get(d["op"]).fn(spec.dims, d["factor"], d["align_corners"])
            label = _factor_label(d["factor"], d["op"])
            shared[key] = graph.create_node("call_function", fn, (t,), kw,
                                            name=f"{key[0]}_{label}")
        t = shared[key]
    if hasattr(mods, "project"):
        t = graph.create_node("call_module", f"edges.{eid}.project", (t,), name=eid)
    return t


def _in_edges(dag: nx.DiGraph, v: str) -> list[tuple[str, str, dict]]:
    return sorted(dag.in_edges(v, data=True), key=lambda e: e[2]["order"])


def _emit_node(graph: fx.Graph, spec: Spec, dag: nx.DiGraph, v: str,
               values: dict[str, fx.Node], shared: dict[tuple, fx.Node],
               edge_mods: nn.Module, split: bool = False) -> fx.Node:
    """Emit one node: resample and project each input, aggregate, then the block."""
    parts = [_emit_edge(graph, spec, u, v, d, values[u], values[u], shared, edge_mods, split)
             for u, _, d in _in_edges(dag, v)]
    if len(parts) == 1:
        agg = parts[0]
    elif dag.nodes[v]["aggregate"] == "concat":
        agg = graph.create_node("call_function", torch.cat, (parts,), {"dim": 1}, name=f"{v}_in")
    else:
        agg = parts[0]
        for p in parts[1:]:
            agg = graph.create_node("call_function", operator.add, (agg, p), name=f"{v}_in")
    return graph.create_node("call_module", v, (agg,), name=v)


#: ``recompute`` values: ``none`` stores every activation the backward pass needs (PyTorch's
#: default); ``resample`` recomputes resampled tensors and concatenations instead; ``split``
#: also splits the first convolution of a concatenating node per input (no concatenation).
RECOMPUTE = ("none", "resample", "split")
#: The aten ops ``recompute="resample"`` recomputes in the backward pass: the stateless
#: resamplings (interpolation, pooling) and the concatenation.
_RESAMPLE_OPS = ("upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
                 "upsample_trilinear3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
                 "avg_pool2d", "avg_pool3d", "cat")


def _resample_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """Selective activation checkpointing's policy for ``recompute="resample"``: recompute the
    resamplings and concatenations, keep every other op's output from the forward pass. A kept
    op is not run again when the backward pass recomputes: a BatchNorm updates its running
    statistics once, and a convolution is not computed twice."""
    from torch.utils.checkpoint import CheckpointPolicy

    name = getattr(getattr(op, "overloadpacket", None), "__name__", "")
    return (CheckpointPolicy.PREFER_RECOMPUTE if name in _RESAMPLE_OPS
            else CheckpointPolicy.MUST_SAVE)


def _resample_contexts():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    # the blocks' in-place activations (ReLU(inplace=True)) overwrite the cached output of the
    # BatchNorm before them, as in eager mode: no backward formula reads a BatchNorm's output
    # and the recomputed ops read the activation's, so the cache may be mutated
    return create_selective_checkpoint_contexts(_resample_policy,
                                                allow_cache_entry_mutation=True)


class _Checkpointed:
    """Calls a node's own small graph (resampling, projections, concat, block) under
    activation checkpointing: only the source tensors are kept for the backward pass. With
    ``selective`` (``recompute="resample"``) only the resamplings and the concatenation are
    recomputed (PyTorch's selective activation checkpointing, :func:`_resample_policy`): the
    large upsampled copies of small tensors are not stored, everything else is."""

    def __init__(self, name: str, fn: fx.GraphModule, selective: bool = False) -> None:
        self.__name__ = f"{'recompute' if selective else 'checkpoint'}_{name}"
        self.fn = fn
        self.selective = selective

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            from torch.utils.checkpoint import checkpoint

            if self.selective:
                return checkpoint(self.fn, *inputs, use_reentrant=False,
                                  context_fn=_resample_contexts)
            return checkpoint(self.fn, *inputs, use_reentrant=False)
        return self.fn(*inputs)


def _recomputes(spec: Spec, dag: nx.DiGraph, v: str) -> bool:
    """Whether ``recompute="resample"`` has something to recompute in node ``v``: a stateless
    resampling on one of its edges, or a concatenation of several inputs."""
    ins = list(dag.in_edges(v, data=True))
    stateless = any(d["op"] != "identity" and not RESAMPLERS.get(d["op"]).learnable
                    for _, _, d in ins)
    return stateless or (len(ins) > 1 and dag.nodes[v]["aggregate"] == "concat")


def _checkpointed_node(spec: Spec, dag: nx.DiGraph, v: str, root: nn.Module,
                       selective: bool = False) -> _Checkpointed:
    sub = fx.Graph()
    srcs = [u for u, _, _ in sorted(dag.in_edges(v, data=True), key=lambda e: e[2]["order"])]
    values = {u: sub.placeholder(u) for u in srcs}
    out = _emit_node(sub, spec, dag, v, values, {}, getattr(root, "edges", nn.Module()))
    sub.output(out)
    # not a child module: it refers to the root's own modules, so no parameter is duplicated
    return _Checkpointed(v, fx.GraphModule(root, sub, class_name=f"node_{v}"), selective)


def _resampled_only(d: dict) -> bool:
    """An edge that only resamples, statelessly (UNet#'s full-scale skips, UNet++'s and
    UNet's upsamplings): its copy can be made again from its source in the backward pass."""
    return (d["op"] != "identity" and not RESAMPLERS.get(d["op"]).learnable
            and not d["project"] and not d.get("dropout"))


def _projected(d: dict, mods: nn.Module | None) -> bool:
    """An edge that resamples statelessly, then projects (UNet 3+'s full-scale skips): its
    projection's convolution can take the resampled copy chunk by chunk."""
    if d["op"] == "identity" or RESAMPLERS.get(d["op"]).learnable or d.get("dropout"):
        return False
    proj = getattr(mods, "project", None)
    return isinstance(proj, ConvNormAct) and _splittable(proj.conv)


def _splittable(conv: nn.Module) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _split_conv(root: nn.Module, dag: nx.DiGraph, v: str) -> nn.Module | None:
    """The first convolution of node ``v``'s block where ``recompute="split"`` can split it per
    input: a concatenation of several inputs (none behind dropout) feeding a plain block
    (``conv`` without ``residual``: its input reaches the first convolution alone) whose
    first convolution is ungrouped with zero padding. ``None`` where it cannot."""
    ins = _in_edges(dag, v)
    if len(ins) < 2 or dag.nodes[v]["aggregate"] != "concat" or any(d.get("dropout")
                                                                    for *_, d in ins):
        return None
    if not any(_resampled_only(d) for *_, d in ins):
        return None  # nothing large to split off (UNet 3+: every input is projected)
    block = getattr(root, v, None)
    if type(block) is not nn.Sequential or not len(block) or not isinstance(block[0],
                                                                             ConvNormAct):
        return None
    conv = block[0].conv
    return conv if _splittable(conv) else None


def _conv_part(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               ranges: tuple[tuple[int, int], ...], stride: tuple, padding: tuple,
               dilation: tuple) -> torch.Tensor:
    """The share of the input channels ``ranges`` ((start, count), ...; ``x`` holds them in
    that order) in a convolution: the convolution of the concatenation is the sum of these
    over its parts (plus the bias, given to one)."""
    w = (weight.narrow(1, *ranges[0]) if len(ranges) == 1
         else torch.cat([weight.narrow(1, a, n) for a, n in ranges], 1))
    return _conv(x, w, bias, stride, padding, dilation)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
          padding: Any, dilation: Any) -> torch.Tensor:
    """A 2D or 3D convolution, by the weight's rank."""
    fn = F.conv2d if weight.dim() == 4 else F.conv3d
    return fn(x, weight, bias, stride, padding, dilation)


class _ResampledConvFn(torch.autograd.Function):
    """conv(resample(src), weight, bias) that keeps ``src`` (a tensor stored anyway) for the
    backward pass instead of the resampled copy: the backward pass resamples again, takes the
    convolution's gradients and frees the copy. Neither the copy nor the convolution's output
    is kept (selective checkpointing would cache the output)."""

    @staticmethod
    def forward(ctx: Any, src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                call: "_ResampledConv") -> torch.Tensor:
        ctx.call = call
        ctx.has_bias = bias is not None
        kind = src.device.type
        # under autocast (bf16 on CUDA) the backward pass resamples in the same dtype
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.save_for_backward(src, weight)
        with torch.no_grad():
            return call.conv(call.resample(src), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        src, weight = ctx.saved_tensors
        call = ctx.call
        kind, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(kind, dtype=dtype, enabled=enabled):
            leaf = src.detach().requires_grad_(ctx.needs_input_grad[0])
            resampled = call.resample(leaf)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and
                ctx.needs_input_grad[2]]
        # the convolution ran in grad's dtype (autocast casts its input and weight): so do its
        # gradients, cast back to the dtypes of what the forward pass was given
        g_in, g_w, g_b = torch.ops.aten.convolution_backward(
            grad, resampled.detach().to(grad.dtype), weight.to(grad.dtype),
            [weight.shape[0]] if ctx.has_bias else None, call.stride, call.padding,
            call.dilation, False, [0] * (weight.dim() - 2), 1, mask)
        g_src = None
        if mask[0]:
            (g_src,) = torch.autograd.grad(resampled, leaf, g_in.to(resampled.dtype))
        if g_w is not None:
            g_w = g_w.to(weight.dtype)
        if g_b is not None:
            g_b = g_b.to(weight.dtype)
        return g_src, g_w, g_b, None


class _ResampledConv:
    """The fx target of one ``recompute="split"`` part: input channels ``src_start:+channels``
    of ``src``, resampled (``fn(**kwargs)``), convolved with the first convolution's weight
    slice at ``w_start`` (:class:`_ResampledConvFn` when gradients are needed)."""

    def __init__(self, name: str, fn: Any, kwargs: dict, src_start: int, src_channels: int,
                 w_start: int, stride: tuple, padding: tuple, dilation: tuple) -> None:
        self.__name__ = f"resampled_conv_{name}"
        self.fn, self.kwargs = fn, kwargs
        self.src_start, self.src_channels, self.w_start = src_start, src_channels, w_start
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.kwargs)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _conv(x, weight, bias, self.stride, self.padding, self.dilation)

    def __call__(self, src: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.src_channels != src.shape[1]:
            src = src.narrow(1, self.src_start, self.src_channels)
        weight = weight.narrow(1, self.w_start, self.src_channels)
        if torch.is_grad_enabled() and (src.requires_grad or weight.requires_grad):
            return _ResampledConvFn.apply(src, weight, bias, self)
        return self.conv(self.resample(src), weight, bias)


def _sum_parts(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of a split convolution's parts, accumulated in float32 (under autocast the
    parts are bf16 or fp16: one rounding at the end, as a single convolution has)."""
    acc = parts[0].float() + parts[1].float()
    for p in parts[2:]:
        acc += p
    return acc.to(parts[0].dtype)


#: ``recompute="split"`` convolves a resampled input in chunks of at most this many times the
#: node's width channels (at least :data:`SPLIT_MIN_CHUNK`): one chunk's copy is live at a time.
SPLIT_CHUNK_RATIO = 4
SPLIT_MIN_CHUNK = 32


def _emit_resampled_conv(graph: fx.Graph, spec: Spec, d: dict, src: fx.Node, conv_name: str,
                         conv: nn.Module, w_start: int, channels: int, label: str) -> list[fx.Node]:
    """conv(resample(src)) restricted to the weight's input channels ``w_start:+channels``, as
    :class:`_ResampledConv` calls over chunks of ``src``'s channels (their sum is the
    convolution; the bias, if any, goes to the first)."""
    fn, fkw = RESAMPLERS.get(d["op"]).fn(spec.dims, d["factor"], d["align_corners"])
    kw = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))
    chunk = max(SPLIT_MIN_CHUNK, SPLIT_CHUNK_RATIO * conv.out_channels)
    weight = graph.get_attr(f"{conv_name}.weight")
    bias = graph.get_attr(f"{conv_name}.bias") if conv.bias is not None and w_start == 0 else None
    parts = []
    for c in range(0, channels, chunk):
        n = min(chunk, channels - c)
        name = label + (f"_c{c}" if n < channels else "")
        call = _ResampledConv(name, fn, fkw, c, n, w_start + c, *kw)
        args = (src, weight) if bias is None or parts else (src, weight, bias)
        parts.append(graph.create_node("call_function", call, args, name=f"{name}_part"))
    return parts


def _emit_split(graph: fx.Graph, spec: Spec, dag: nx.DiGraph, v: str,
                values: dict[str, fx.Node], root: nn.Module, conv: nn.Module) -> fx.Node:
    """``recompute="split"`` for node ``v``: conv(cat(inputs), W) + b written as a sum of
    convolutions, each over some inputs with their slice of W (+ b once), then the rest of
    the block.

    An input that is only resampled (:func:`_resampled_only`: UNet#'s full-scale skips) is
    convolved alone by :class:`_ResampledConv`, in chunks of channels: the backward pass
    resamples each chunk again just before its share of the gradient is taken and frees it,
    so no resampled copy, nor its gradient, is ever whole. The other inputs (identity,
    projected, learnably resampled) are concatenated and convolved together, under selective
    checkpointing where there is a concatenation or a resampling to recompute
    (:func:`_resample_policy`), as ``"resample"`` does for a whole node."""
    edge_mods = getattr(root, "edges", nn.Module())
    kw = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))
    start, parts, group = 0, [], []
    for u, _, d in _in_edges(dag, v):
        channels = d["project"]["channels"] if d["project"] else d["resampled"]
        if _resampled_only(d):
            parts += _emit_resampled_conv(graph, spec, d, values[u], f"{v}.0.conv", conv, start,
                                          channels, f"{u}__{v}")
        else:
            group.append((u, d, start, channels))
        start += channels
    if group:
        ranges = tuple((a, n) for _, _, a, n in group)
        # a concatenation of stored tensors (identity edges) is recomputed, as "resample" does
        recompute = len(group) > 1 and not any(_projected(d, getattr(edge_mods, f"{u}__{v}", None))
                                               for u, d, _, _ in group)
        g = fx.Graph() if recompute else graph
        src = {u: g.placeholder(u) for u, *_ in group} if recompute else values
        ts = [_emit_edge(g, spec, u, v, d, src[u], src[u], {}, edge_mods, split=True)
              for u, d, _, _ in group]
        t = ts[0] if len(ts) == 1 else g.create_node("call_function", torch.cat, (ts,),
                                                     {"dim": 1}, name=f"{v}_in")
        w = g.get_attr(f"{v}.0.conv.weight")
        b = g.get_attr(f"{v}.0.conv.bias") if conv.bias is not None else None
        if ranges[0][0] != 0:  # the bias goes to the part with input channel 0
            b = None
        out = g.create_node("call_function", _conv_part, (t, w, b, ranges, *kw),
                            name=f"{v}_group_part")
        if recompute:
            g.output(out)
            fn = _Checkpointed(f"{v}_group", fx.GraphModule(root, g, class_name=f"group_{v}"),
                               selective=True)
            out = graph.create_node("call_function", fn, tuple(values[u] for u, *_ in group),
                                    name=f"{v}_group_part")
        parts.insert(0, out)
    if start != conv.in_channels:
        raise SpecError(f"recompute='split': the inputs have {start} channels, the first "
                        f"convolution takes {conv.in_channels}", node=v)
    total = parts[0] if len(parts) == 1 else graph.create_node(
        "call_function", _sum_parts, (parts,), name=f"{v}_sum")
    t = graph.create_node("call_module", f"{v}.0.norm", (total,), name=f"{v}_norm")
    t = graph.create_node("call_module", f"{v}.0.act", (t,), name=f"{v}_act")
    block = getattr(root, v)
    for k in range(1, len(block)):
        t = graph.create_node("call_module", f"{v}.{k}", (t,), name=v if k == len(block) - 1
                              else f"{v}_{k}")
    return t


def _emit(spec: Spec, dag: nx.DiGraph, heads: list[Head], use_cgm: bool,
          as_dict: bool, root: nn.Module, recompute: str = "none") -> fx.Graph:
    """Write the forward as an fx graph, one named node per operation (with ``recompute``
    ``resample``: one call per node that resamples or concatenates, its own graph inside)."""
    dims = spec.dims
    graph = fx.Graph()
    x = graph.placeholder("x")
    per_axis = spec.input_multiples  # one int where every axis agrees
    multiple = per_axis if len(set(per_axis)) > 1 else spec.input_multiple
    x = graph.call_function(check_input, (x, multiple, spec.in_channels, spec.name))
    values: dict[str, fx.Node] = {INPUT: x}
    shared: dict[tuple, fx.Node] = {}
    edge_mods = getattr(root, "edges", nn.Module())
    needed = set()
    for h in heads:
        needed |= nx.ancestors(dag, h.node) | {h.node}
        if use_cgm and h.cgm:
            needed |= nx.ancestors(dag, _cgm_key(h)) | {_cgm_key(h)}

    for v in topo_order(dag):
        if v == INPUT or v not in needed:
            continue
        full = dag.nodes[v]["checkpoint"]
        conv = None if full or recompute != "split" else _split_conv(root, dag, v)
        if conv is not None:
            values[v] = _emit_split(graph, spec, dag, v, values, root, conv)
        elif recompute == "split" and not full and any(
                _projected(d, getattr(edge_mods, f"{u}__{v}", None)) for u, _, d in
                dag.in_edges(v, data=True)):
            values[v] = _emit_node(graph, spec, dag, v, values, shared, edge_mods, split=True)
        elif full or (recompute in ("resample", "split") and _recomputes(spec, dag, v)):
            srcs = [u for u, _, _ in sorted(dag.in_edges(v, data=True), key=lambda e: e[2]["order"])]
            fn = _checkpointed_node(spec, dag, v, root, selective=not full)
            values[v] = graph.create_node("call_function", fn, tuple(values[u] for u in srcs),
                                          name=v)
        else:
            values[v] = _emit_node(graph, spec, dag, v, values, shared, edge_mods)

    if spec.pyramid is not None:
        _emit_pyramid(graph, spec, values)
        graph.lint()
        return graph
    outputs: dict[str, fx.Node] = {}
    cls: dict[str, fx.Node] = {}
    for h in heads:
        t = graph.create_node("call_module", f"heads.{h.node}", (values[h.node],),
                              name=f"head_{h.node}")
        scale = dag.nodes[h.node]["scale"]  # 2**level (2**(level+1) over a stride-2 stem)
        if h.match == "upsample" and (any(a > 1 for a in scale) if isinstance(scale, tuple)
                                      else scale > 1):
            label = scale if isinstance(scale, int) else _factor_label(scale, "up")[2:]
            t = graph.create_node("call_function", F.interpolate, (t,),
                                  _interp_kwargs("bilinear", scale, True, dims),
                                  name=f"head_{h.node}_up{label}")
        if use_cgm and h.cgm:
            src = _cgm_key(h)
            if src not in cls:
                cls[src] = graph.create_node("call_module", f"cgm.{src}", (values[src],),
                                             name=f"cgm_{src}")
            t = graph.create_node("call_module", "cgm_gate", (t, cls[src]),
                                  name=f"gated_{h.node}")
        outputs[h.node] = t
    if as_dict:
        result: Any = dict(outputs)
        result.update({f"cgm:{k}": n for k, n in cls.items()})
        graph.output(result)
    else:
        graph.output(outputs[heads[0].node])
    graph.lint()
    return graph


def pool_level(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``LastLevelMaxPool``: the extra level the RPN expects (1x1 max pool,
    stride 2)."""
    return F.max_pool2d(x, 1, 2, 0)


def _emit_pyramid(graph: fx.Graph, spec: Spec, values: dict[str, fx.Node]) -> None:
    """A pyramid's output: ``{'0': conv(level 0 node), '1': ..., 'pool': maxpool(last)}``."""
    out: dict[str, fx.Node] = {}
    for k, node in enumerate(spec.pyramid.nodes):
        out[str(k)] = graph.create_node("call_module", f"heads.{node}", (values[node],),
                                        name=f"p_{node}")
    if spec.pyramid.pool:
        out["pool"] = graph.create_node("call_function", pool_level, (out[str(k)],),
                                        name="p_pool")
    graph.output(out)


def _first_uses(graph: fx.Graph) -> list[str]:
    """The root's children named by ``graph`` (and by the graphs of its recomputed nodes, where
    they are called), in the order of their first use."""
    seen: dict[str, None] = {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            seen.setdefault(n.target.split(".")[0])
        elif n.op == "call_function" and isinstance(n.target, _Checkpointed):
            for k in _first_uses(n.target.fn.graph):
                seen.setdefault(k)
    return list(seen)


def _finish(root: nn.Module, graph: fx.Graph, spec: Spec, dag: nx.DiGraph, heads: list[Head],
            as_dict: bool, use_cgm: bool) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph, class_name=spec.name.replace("-", "_") or "SkipNet")
    # modules used only inside checkpointed nodes' own graphs must be children too
    for n in graph.nodes:
        if n.op == "call_function" and isinstance(n.target, _Checkpointed):
            for m in n.target.fn.graph.nodes:
                if m.op in ("call_module", "get_attr"):
                    _copy_attr(root, gm, m.target)
    # a block used by parts (recompute="split": its first convolution's weight, its norm) is
    # the block itself, not a stub holding those parts
    for k, m in list(gm._modules.items()):
        if k in dag and k in root._modules and m is not root._modules[k]:
            gm._modules[k] = root._modules[k]
    edges, real = gm._modules.get("edges"), root._modules.get("edges")
    if edges is not None and real is not None and edges is not real:  # an edge's modules too
        for k in list(edges._modules):
            edges._modules[k] = real._modules[k]
    # children in the order in which the forward first uses them, looking into recomputed
    # nodes' own graphs: every recompute mode has the default's order of parameters
    order = {k: i for i, k in enumerate(_first_uses(graph))}
    gm._modules = dict(sorted(gm._modules.items(), key=lambda kv: order.get(kv[0], len(order))))
    gm.spec = spec
    gm.dag = dag
    gm.head_ids = [h.node for h in heads]
    gm.main_head = heads[0].node
    gm.returns_dict = as_dict
    gm.uses_cgm = use_cgm
    return gm


def compile(
    spec: "Spec | str | Path",
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    dims: int | None = None,
    widths: "list[int] | int | None" = None,
    deep_supervision: bool | None = None,
    cgm: bool | None = None,
    checkpoint: bool | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    recompute: str | None = None,
    max_params: int | None = None,
) -> fx.GraphModule:
    """Compile a spec (zoo name, path or ``Spec``) into a PyTorch module.

    ``None`` keeps the spec's value. ``widths`` takes a list (one per level) or an int base
    (doubling per level). The module returns logits: one tensor from the main head, or, with
    deep supervision or CGM, a dict from head node id to logits (plus ``'cgm:<node>'`` class
    logits when CGM is on; main head first). ``checkpoint=True`` recomputes every decoder
    node (its resampling, concatenation and block) in the backward pass instead of storing
    it: less activation memory for more compute (per node: ``checkpoint`` in the spec).
    ``backbone`` (``vgg16_bn``, ``resnet34``, ``resnet50``, ``resnet101``) puts a torchvision
    network's stages in the encoder column, ``weights`` (``none`` or a local file) sets its
    weights (spec: ``encoder: {backbone, weights}``; :mod:`skipdsl.backbones`). A spec with
    ``pyramid:`` returns its feature maps instead of logits: ``{'0': ..., 'pool': ...}``, one
    output conv per level (:mod:`skipdsl.detection` wraps it for torchvision's Mask R-CNN).

    ``recompute="resample"`` (spec: ``recompute: resample``; ``None`` keeps the spec's, else
    ``"none"``) recomputes the resampled tensors and the concatenations built from them in the
    backward pass instead of storing them (selective activation checkpointing, Korthikanti et
    al. 2022, "Reducing Activation Recomputation in Large Transformer Models"; PyTorch's
    ``torch.utils.checkpoint.create_selective_checkpoint_contexts``): every other activation
    is kept, so the extra work is the resamplings alone and the outputs and BatchNorm
    statistics are those of ``"none"``, the gradients too (bitwise, but where a pooling that
    ``"none"`` emits once for two nodes is recomputed per node: its gradients are then summed
    in another order, float rounding apart). UNet#'s and UNet 3+'s full-scale skips
    upsample deep maps to full resolution: their copies are most of a training step's memory.
    ``recompute="split"`` goes further: the first convolution of a node that concatenates is
    computed as the sum of one convolution per input (with that input's slice of the weight,
    the bias once), so no concatenation is built, and an input that is only resampled is
    resampled again in the backward pass, chunk by chunk of channels, just before its share
    of the gradient is taken (:class:`_ResampledConvFn`): no full-resolution copy and no
    gradient of one is ever whole. The same network (parameter names, state dict, BatchNorm
    statistics); outputs and gradients equal ``"none"``'s to float rounding (the sum runs in
    another order), not bitwise. Nodes whose block is not a plain ``conv`` block (residual,
    V-Net stages) are recomputed as with ``"resample"``.

    A spec whose graph would hold more than ``max_params`` weights (default
    :data:`skipdsl.limits.MAX_PARAMS`, 1e9, or ``$SKIPDSL_MAX_PARAMS``) is refused with a
    :class:`SpecError` naming the node or edge responsible, before anything is allocated.
    """
    if recompute is not None and recompute not in RECOMPUTE:
        raise SpecError(f"unknown recompute '{recompute}'", expected=" | ".join(RECOMPUTE),
                        found=recompute, hint="recompute='resample' or 'split' stores less")
    spec = load(spec).with_backbone(backbone, weights).replace(
        in_channels=in_channels, num_classes=num_classes, dims=dims, widths=widths,
        deep_supervision=deep_supervision, cgm=cgm)
    if checkpoint is not None:
        data = spec.to_dict()
        data.setdefault("decoder", {})["checkpoint"] = checkpoint
        spec = spec.replace(decoder=data["decoder"])
    dag = build_graph(spec)
    check_size(spec, dag, max_params)
    heads, as_dict = _outputs(spec)
    root, encoder = _build_modules(spec, dag, heads, spec.cgm)
    if spec.init == "he":
        init_he(root)
    if encoder is not None and spec.encoder.weights not in (None, "none"):
        encoder.load(spec.encoder.weights, spec_file=spec.source)  # after init: kept as loaded
    recompute = recompute or spec.recompute or "none"
    graph = _emit(spec, dag, heads, spec.cgm, as_dict, root, recompute)
    gm = _finish(root, graph, spec, dag, heads, as_dict, spec.cgm)
    gm.recompute = recompute
    return gm


def prune(model: fx.GraphModule, level: int, *, deep_supervision: bool = False) -> fx.GraphModule:
    """The sub-network that feeds head ``x_0_<level>``, sharing the trained weights.

    No copy and no retraining: the returned module holds the same parameter tensors and
    returns one tensor equal to the full model's ``x_0_<level>`` head (UNet++/UNet# pruning);
    with ``deep_supervision=True`` it returns the dict of its pruning heads ``x_0_1`` ..
    ``x_0_<level>`` instead (to train the sub-network alone, 'isolated' training). As in the
    reference code, the pruned network holds those lower pruning heads in both cases, so its
    parameter count includes them. The full model must have the heads, i.e. be compiled with
    ``deep_supervision=True`` (or have its main head on ``x_0_<level>``).
    """
    spec, dag = model.spec, model.dag
    node = f"x_0_{level}"
    if node not in dag:
        raise SpecError(f"cannot prune to level {level}: the model has no node {node}",
                        node=node, hint=f"levels 1..{spec.depth - 1} exist on a full triangle")
    if node not in model.head_ids:
        raise SpecError(f"cannot prune to level {level}: the model has no head on {node}",
                        node=node, hint="compile with deep_supervision=True (the heads on "
                        "x_0_1..x_0_k are the pruning heads)")
    keep = nx.ancestors(dag, node) | {node}
    by_node = {h.node: h for h in spec.heads}
    lower = [by_node[n] for n in model.head_ids
             if n != node and n in keep and dag.nodes[n]["level"] == 0]
    lower.sort(key=lambda h: dag.nodes[h.node]["column"])
    heads = [by_node[node]] + lower
    use_cgm = model.uses_cgm and any(h.cgm for h in heads)
    graph = _emit(spec, dag, heads if deep_supervision else heads[:1], use_cgm,
                  deep_supervision or use_cgm, model, getattr(model, "recompute", "none"))
    gm = _finish(model, graph, spec, dag.subgraph(keep).copy(), heads,
                 deep_supervision or use_cgm, use_cgm)
    gm.recompute = getattr(model, "recompute", "none")
    for h in lower:  # held (and counted) even when forward does not use them
        if not hasattr(gm.heads, h.node):
            gm.heads.add_module(h.node, getattr(model.heads, h.node))
    return gm


#: What must agree between a superset's graph and a sub-network's for the modules to be shared.
_NODE_KEYS = ("in_channels", "width", "block", "aggregate")
_EDGE_KEYS = ("op", "factor", "align_corners", "resample", "project", "dropout", "src_channels")


def subnetwork(model: fx.GraphModule, spec: "Spec | str | Path") -> fx.GraphModule:
    """The network of ``spec`` run on the modules of ``model``, a compiled superset of it.

    ``spec`` must describe a sub-graph of ``model``'s graph whose every node and edge is built
    as in ``model`` (same input channels, width, block and aggregation per node; same
    resampling, projection and channels per edge), e.g. the superset spec with some edges and
    nodes left out (:mod:`skipdsl.search.supernet`, where a sum aggregate over per-edge
    projections keeps each block's input channels whatever edges are on). The returned module
    holds the same parameter tensors (no copy), returns what ``skipdsl.compile(spec)`` would
    return, and runs only the sub-graph: the left-out edges and nodes have no operation in its
    generated code. Raises ``SpecError`` naming the first node or edge that ``model`` lacks
    or builds differently.
    """
    spec = load(spec)
    dag, full = build_graph(spec), model.dag
    for n, d in dag.nodes(data=True):
        if n == INPUT:
            continue
        if n not in full:
            raise SpecError("node is not in the superset model", file=spec.source, node=n,
                            hint="a sub-network may only leave nodes and edges out")
        bad = [k for k in _NODE_KEYS if d.get(k) != full.nodes[n].get(k)]
        if bad:
            raise SpecError(f"node is built differently in the superset model ({bad[0]}: "
                            f"{full.nodes[n].get(bad[0])!r} there, {d.get(bad[0])!r} here)",
                            file=spec.source, node=n,
                            hint="use a sum aggregate over per-edge projections, so that a "
                            "node's input channels do not depend on which edges are on")
    for u, v, d in dag.edges(data=True):
        if not full.has_edge(u, v):
            raise SpecError("edge is not in the superset model", file=spec.source, edge=(u, v),
                            hint="a sub-network may only leave nodes and edges out")
        bad = [k for k in _EDGE_KEYS if d.get(k) != full.edges[u, v].get(k)]
        if bad:
            raise SpecError(f"edge is built differently in the superset model ({bad[0]})",
                            file=spec.source, edge=(u, v), expected=full.edges[u, v].get(bad[0]),
                            found=d.get(bad[0]))
    heads, as_dict = _outputs(spec)
    missing = [h.node for h in heads if not hasattr(model.heads, h.node)]
    if missing or (spec.cgm and not getattr(model, "uses_cgm", False)):
        raise SpecError("the superset model has no head (or CGM) for this sub-network",
                        file=spec.source, node=(missing or [heads[0].node])[0],
                        hint="compile the superset with the same heads")
    recompute = getattr(model, "recompute", "none")
    graph = _emit(spec, dag, heads, spec.cgm, as_dict, model, recompute)
    gm = _finish(model, graph, spec, dag, heads, as_dict, spec.cgm)
    gm.recompute = recompute
    return gm


def main_logits(model: nn.Module, out: Any) -> torch.Tensor:
    """The main head's logits from a model output (tensor or deep-supervision dict)."""
    if isinstance(out, dict):
        return out[getattr(model, "main_head", next(iter(out)))]
    return out
