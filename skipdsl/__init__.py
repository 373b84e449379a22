"""skipdsl: describe UNet-family networks as a grid of nodes and skip edges, compile them.

    >>> import skipdsl
    >>> model = skipdsl.compile("unetsharp", dims=3, widths=[4, 8, 16, 32, 64])
"""
from .compiler import compile, main_logits, prune
from .errors import DataError, SpecError
from .graph import build_graph, canonical_hash
from .spec import Spec, list_models, load, loads

__version__ = "0.1.0"


def graph(spec):
    """The validated networkx DAG of a spec (zoo name, path or ``Spec``)."""
    return build_graph(spec)


def load_checkpoint(path, *, spec=None):
    """A trained checkpoint (trial folder, its model.pt or a .pt) rebuilt and checked against
    its spec: see :func:`skipdsl.checkpoint.load_checkpoint` (imported on first use)."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, spec=spec)


def spec_hash(spec) -> str:
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


__all__ = ["compile", "prune", "main_logits", "load", "loads", "graph", "spec_hash",
           "list_models", "Spec", "SpecError", "DataError", "build_graph", "canonical_hash",
           "load_checkpoint"]
