"""Size limits checked before a network is allocated.

:func:`check_size` bounds the weights of an expanded graph from its channels alone (no module
is built) and refuses a network above :data:`MAX_PARAMS` with a :class:`SpecError` that names
the node or edge holding the most weights, instead of an allocator error from deep inside
PyTorch ("you tried to allocate 36018434359296 bytes").
"""
from __future__ import annotations

import math

import os

from .errors import SpecError

__all__ = ["MAX_PARAMS", "estimate_params", "check_size"]

#: The largest network :func:`skipdsl.compile` builds unless told otherwise (``max_params=``
#: or ``$SKIPDSL_MAX_PARAMS``): 1e9 parameters (4 GB of float32 weights), 15x the largest zoo
#: network (V-Net#, 69M). A spec above it is almost always a typo (``channels: 1000000``).
MAX_PARAMS = 1_000_000_000

def _max_params(limit: int | None) -> int:
    if limit is not None:
        return int(limit)
    env = os.environ.get("SKIPDSL_MAX_PARAMS")
    return int(float(env)) if env else MAX_PARAMS


def estimate_params(dag, dims: int, spec=None) -> dict[str, int]:
    """Approximate weights per node and edge of an expanded graph (conv weights only:
    ``k^d * c_in * c_out`` per convolution; norms, biases and heads are left out), keyed
    ``x_i_j`` and ``u->v``. A lower bound within a few percent for the built-in blocks."""
    out: dict[str, int] = {}
    dims = int(dims)
    for n, d in dag.nodes(data=True):
        if d.get("kind") == "input" or not d.get("block") or d["block"].get("type") == "backbone":
            continue
        b = d["block"]
        if b.get("type") == "identity":
            continue
        kern = b.get("kernel") or 3  # an int, or one per axis (grid.kernels)
        k = math.prod(kern) if isinstance(kern, list) else int(kern) ** dims
        r = int(b.get("repeats") or 1)
        cin, w = int(d.get("in_channels") or 0), int(d.get("width") or 0)
        out[n] = k * (cin * w + (r - 1) * w * w)
    for u, v, d in dag.edges(data=True):
        p = d.get("project")
        total = 0
        if d.get("resample") and d.get("resampled"):  # a learnable resampling (2^d kernel)
            total += 2 ** dims * int(d.get("src_channels") or 0) * int(d["resampled"])
        if p:
            total += int(p["kernel"]) ** dims * int(d.get("resampled") or 0) * int(p["channels"])
        if total:
            out[f"{u}->{v}"] = total
    if spec is not None:  # output convolutions: heads, or a feature pyramid's levels
        for h in spec.heads:
            if h.node in dag:
                out[f"head {h.node}"] = (h.kernel ** dims * int(dag.nodes[h.node]["width"])
                                         * int(spec.num_classes))
        if spec.pyramid is not None:
            p = spec.pyramid
            for n in p.nodes:
                if n in dag:
                    out[f"pyramid {n}"] = p.kernel ** dims * int(dag.nodes[n]["width"]) * p.channels
    return out


def check_size(spec, dag, max_params: int | None = None) -> None:
    """Raise a :class:`SpecError` naming the node or edge that holds the most weights when the
    graph's estimated size exceeds ``max_params`` (default :data:`MAX_PARAMS`)."""
    limit = _max_params(max_params)
    est = estimate_params(dag, spec.dims, spec)
    total = sum(est.values())
    if total <= limit:
        return
    where, most = max(est.items(), key=lambda kv: kv[1])
    if "->" in where:
        node, edge = None, tuple(where.split("->"))
        what = f"edge {where} (projection/resampling to {dag.edges[edge]['channels']} channels)"
    elif " " in where:  # a head or a pyramid level
        node, edge = where.split(" ", 1)[1], None
        what = f"the {where.split(' ')[0]} on {node}"
    else:
        node, edge = where, None
        what = (f"node {where} ({dag.nodes[where]['in_channels']} -> "
                f"{dag.nodes[where]['width']} channels)")
    raise SpecError(
        f"the network would hold about {total:.3g} parameters, above the limit of {limit:.3g}; "
        f"the largest part is {what} with {most:.3g}",
        file=spec.source, node=node, edge=edge,
        hint="check the widths and channels for a typo; to build it anyway, pass "
             "max_params= to skipdsl.compile or set $SKIPDSL_MAX_PARAMS")


