"""What a compiled network costs: parameters, FLOPs and activation memory, per node and in all."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import INPUT, topo_order


@dataclass
class NodeCost:
    node: str
    level: int
    column: int
    kind: str
    in_channels: int
    width: int
    inputs: list[str]
    params: int
    gflops: float
    act_mb: float


@dataclass
class ModelCost:
    name: str
    size: tuple[int, ...]
    params: int
    gflops: float
    act_mb: float  # tensors saved for backward, batch 1, float32
    nodes: list[NodeCost] = field(default_factory=list)


def _params(mod: nn.Module | None) -> int:
    return 0 if mod is None else sum(p.numel() for p in mod.parameters())


def _sub(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def model_cost(model: nn.Module, size: int | tuple[int, ...] = 96) -> ModelCost:
    """Per-node parameters, forward GFLOPs and output memory per image at ``size``."""
    dag = model.dag
    spec = model.spec
    dims = spec.dims
    shape = (size,) * dims if isinstance(size, int) else tuple(size)
    batch = 2  # BN in training mode needs > 1 value per channel at the deepest level
    x = torch.randn(batch, spec.in_channels, *shape)
    was_training = model.training
    model.train()  # BN in training mode: the memory a training step needs
    with FlopCounterMode(display=False) as fc:
        act_bytes = saved_activation_bytes(model, x)
    model.train(was_training)
    counts = fc.get_flop_counts()
    prefix = type(model).__name__ + "."  # FlopCounterMode names modules '<class>.<path>'
    flops = {k.removeprefix(prefix): sum(v.values()) / batch for k, v in counts.items()}
    nodes = []
    for n in topo_order(dag):
        if n == INPUT:
            continue
        d = dag.nodes[n]
        ins = [u for u, _, _ in sorted(dag.in_edges(n, data=True), key=lambda e: e[2]["order"])]
        paths = [n] + [f"edges.{u}__{n}" for u in ins]
        spatial = 1
        sc = d["scale"] if isinstance(d["scale"], tuple) else (d["scale"],) * len(shape)
        for s, f in zip(shape, sc):
            spatial *= s // f
        nodes.append(NodeCost(
            node=n, level=d["level"], column=d["column"], kind=d["kind"],
            in_channels=d["in_channels"], width=d["width"], inputs=ins,
            params=sum(_params(_sub(model, p)) for p in paths),
            gflops=sum(flops.get(p, 0) for p in
                       [n] + [f"{e}.{part}" for e in paths[1:] for part in ("resample", "project")]
                       ) / 1e9,
            act_mb=d["width"] * spatial * 4 / 2**20,
        ))
    return ModelCost(name=spec.name, size=shape, params=_params(model),
                     gflops=flops.get("Global", 0) / 1e9, act_mb=act_bytes / batch / 2**20,
                     nodes=nodes)
