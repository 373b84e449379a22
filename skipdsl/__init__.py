"""skipdsl: describe UNet-family networks as a grid of nodes and skip edges, compile them.

    >>> import skipdsl
    >>> model = skipdsl.compile("unetsharp", dims=3, widths=[4, 8, 16, 32, 64])
    >>> skipdsl.list_models(task="semantic", dims=3)   # every model built by name
    >>> net = skipdsl.create_model("maskrcnn_sharp")    # zoo specs, baselines, Mask R-CNN
"""
from .compiler import compile, main_logits, prune
from .errors import DataError, SpecError
from .graph import build_graph, canonical_hash, spec_hash
from .models import create_model, list_models
from .spec import Spec, load, loads
from .version import __version__


def graph(spec):
    """The validated networkx DAG of a spec (zoo name, path or ``Spec``)."""
    return build_graph(spec)


def load_checkpoint(path, *, spec=None):
    """A trained checkpoint (trial folder, its model.pt or a .pt) rebuilt and checked against
    its spec: see :func:`skipdsl.checkpoint.load_checkpoint` (imported on first use)."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, spec=spec)


__all__ = ["compile", "create_model", "list_models", "prune", "main_logits", "load", "loads",
           "graph", "spec_hash", "Spec", "SpecError", "DataError", "build_graph",
           "canonical_hash", "load_checkpoint", "__version__"]
