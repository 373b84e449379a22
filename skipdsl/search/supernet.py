"""A one-shot supernet over a search space's skip edges: one set of weights for every candidate.

The supernet is a spec-level construction, compiled by the one compiler:

- **Superset spec** (:func:`superset_spec`): the space's point with every candidate edge on and
  every candidate node present (the union of the node-set choices), the other dimensions
  pinned (``supernet.fix`` in the space, else their first choice), rewritten into *supernet
  form*: every edge into a decoder node becomes an explicit edge with a projection to a fixed
  width (conv + norm + act, ``supernet.project``: the target level's width by default) and
  every decoder node sums its inputs. A node's block then sees the same channels whatever
  edges are on, so every sub-network can use the superset's weights. ``skipdsl.compile``
  builds it like any spec.
- **Gates**: a sampled point switches each optional edge (an edge candidate of the space) and
  each optional node (the node-set choice) on or off. A node whose gate is on but that gets no
  input through the open edges, or reaches the head through none, is gated off too
  (:meth:`Supernet.candidate`). Every encoder level and the head must stay on; a point that
  loses one is not a network (``SpecError``, and the sampler draws again).
- **Sub-network** (:class:`Candidate`): the superset spec with the gated-off edges and nodes
  left out, a spec in its own right (it compiles alone and is what the search exports).
  :func:`skipdsl.compiler.subnetwork` emits its forward over the superset's modules: shared
  weights, and the gated-off edges have no operation at all in the generated code.

Training (:func:`train_supernet`) is single-path uniform sampling (SPOS, Guo et al. 2020):
each optimiser step draws one point uniformly from the space's topology parameters (each edge
candidate off or on with probability 1/2, each node-set choice equally likely; draws that are
not a network are rejected and drawn again) and updates that path's weights only. It reuses
the trainer's data loading, normalisation, augmentation, loss and epoch loop
(:func:`skipdsl.train.trainer.load_data`, :func:`~skipdsl.train.trainer.train_epoch`).

Ranking (:func:`inherited_score`): a candidate is scored with the supernet's weights on the
validation split, after its BatchNorm statistics are recalibrated on a few training batches
(shared BN statistics are those of no single path; Guo et al. 2020).
"""
from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import networkx as nx
import torch
from torch import fx, nn

from ..errors import SpecError
from ..graph import INPUT, build_graph, factor_direction
from ..spec import Spec, from_dict, node_id, parse_node, scale_spec
from .space import OFF, ON, SearchSpace, SupernetSettings, choices_of, grid_node_ids, load_space

#: The space's dimensions that a supernet samples (the rest are pinned): the edge candidates
#: (by their parameter names) and this one.
NODES = "nodes"
#: Trainer edges that are not gates: the input into x_0_0 and the encoder's down path.
FIXED_KINDS = ("input", "down")


@dataclass(frozen=True)
class Candidate:
    """A sub-network of a supernet: its topology point, its spec (supernet form; compiles on
    its own), the edges and nodes that are on, the nodes that the gates switched off, and its
    canonical hash (two points that trim to the same network share it)."""

    point: dict[str, Any]
    spec: Spec
    edges: frozenset[tuple[str, str]]
    nodes: frozenset[str]
    gated_off: tuple[str, ...]
    hash: str


def topology_dims(space: SearchSpace) -> list[str]:
    """The parameters a supernet samples: every edge candidate, and the node set when it is a
    choice."""
    return [e.key for e in space.edges] + ([NODES] if len(space.node_choices()) > 1 else [])


def pinned_point(space: SearchSpace) -> dict[str, Any]:
    """The non-topology dimensions' values: ``supernet.fix``, else each one's first choice."""
    settings = space.supernet or SupernetSettings()
    topo = set(topology_dims(space)) | {NODES}
    allowed = {name for name, _ in space.dimensions()} - topo
    bad = sorted(set(settings.fix) - allowed)
    if bad:
        from ..errors import did_you_mean

        raise SpecError(f"supernet.fix: '{bad[0]}' is not a dimension the supernet pins",
                        file=space.source, hint=did_you_mean(bad[0], sorted(allowed))
                        + " (edges and nodes are sampled, not pinned)")
    point = {"deep_supervision": False, "cgm": "none"}  # the supernet trains the main head
    point.update({k: v for k, v in settings.fix.items()})
    depth = point.get("depth", choices_of(space.depth)[0])
    point["depth"] = depth
    for name, ch in space.dimensions(depth):
        if name not in topo and name not in point and name != "ds_heads":
            point[name] = ch[0]
    if point.get("deep_supervision") or point.get("cgm") != "none":
        raise SpecError("supernet.fix: the supernet trains the main head only: deep_supervision "
                        "false and cgm none", file=space.source)
    return space.complete(point)


def _on_value(space: SearchSpace, key: str) -> str:
    """The value that switches an edge candidate on in a plain build (its first 'on' choice:
    in supernet form every edge gets the supernet's projection anyway)."""
    values = next(e.values() for e in space.edges if e.key == key)
    return next(v for v in values if v != OFF)


def _raw_point(space: SearchSpace, pins: dict, topo: dict[str, Any]) -> dict[str, Any]:
    p = dict(pins)
    for e in space.edges:
        p[e.key] = OFF if topo.get(e.key, ON) == OFF else _on_value(space, e.key)
    if NODES in topo:
        p[NODES] = topo[NODES]
    return p


def superset_spec(space: SearchSpace, *, in_channels: int | None = None,
                  num_classes: int | None = None) -> Spec:
    """The space's superset network in supernet form (see the module doc), at its widths."""
    settings = space.supernet or SupernetSettings()
    pins = pinned_point(space)
    depth = int(pins["depth"])
    union = sorted(set().union(*(grid_node_ids(c if c in ("triangle", "diagonal") else c.split(","),
                                           depth) for c in space.node_choices())),
                   key=lambda n: (parse_node(n)[1], parse_node(n)[0]))
    topo = {e.key: ON for e in space.edges}
    raw = space.build(_raw_point(space, pins, topo), name=f"{space.name}_supernet",
                      check=False)
    data = raw.to_dict()
    data["nodes"] = union
    raw = from_dict(data, source=raw.source)
    g = build_graph(raw)  # validated: the superset is a network
    widths = raw.widths
    edges = []
    concat = settings.aggregate == "concat"
    for u, v, d in sorted(g.edges(data=True), key=lambda e: (e[1], e[0])):
        if d["kind"] in FIXED_KINDS:
            continue
        ch = widths[g.nodes[v]["level"]] if settings.project == "level" else settings.project
        item: dict[str, Any] = {"from": u, "to": v}
        if not concat:  # sum: a fixed width per edge; concat: the edge as the space has it
            item["project"] = {"channels": int(ch), "kernel": settings.kernel}
        rs: dict[str, Any] = {}
        if d["op"] != "identity":
            rs["up" if factor_direction(d["factor"]) > 0 else "down"] = d["op"]
            rs["align_corners"] = d["align_corners"]
            rs.update(d["resample"] or {})
        if rs:
            item["resample"] = rs
        if d.get("dropout"):
            item["dropout"] = d["dropout"]
        edges.append(item)
    data = raw.to_dict()
    data.update(description=f"supernet of search space '{space.name}': every candidate edge, "
                + ("concatenated (an edge that is off contributes zeros)" if concat else
                   "projected to a fixed width and summed"), nodes=union, edges=edges)
    data["grid"]["widths"] = list(widths)
    data["decoder"] = {**data.get("decoder", {}), "aggregate": settings.aggregate}
    data["decoder"].pop("width", None)  # 'concat' of one projection = the level's width
    if in_channels is not None:
        data["in_channels"] = int(in_channels)
    if num_classes is not None:
        data["num_classes"] = int(num_classes)
    return from_dict(data, source=f"<supernet of {space.source or space.name}>")


class Supernet(nn.Module):
    """The compiled superset network (``self.net``) and its sampled sub-networks.

    ``candidate(point)`` gates a topology point into a :class:`Candidate`; ``path(candidate)``
    is its module over the shared weights (cached; not registered as a child, so the state dict
    is the superset's alone). In training mode with a ``sampler`` set, every forward call draws
    a candidate (SPOS) and runs its path; otherwise it runs ``self.active`` (``use``) or, with
    none, the whole superset.
    """

    def __init__(self, space: "SearchSpace | str | None" = None, *, width_scale: float = 1.0,
                 in_channels: int | None = None, num_classes: int | None = None,
                 cache: int = 256) -> None:
        super().__init__()
        from skipdsl.models import create_model

        self.space = load_space(space)
        self.pins = pinned_point(self.space)
        self.dims = topology_dims(self.space)
        self.spec = scale_spec(superset_spec(self.space, in_channels=in_channels,
                                             num_classes=num_classes), width_scale)
        self.width_scale = float(width_scale)
        self.net = create_model(self.spec)
        self.head = self.spec.main_head.node
        self.encoder = [node_id(i, 0) for i in range(self.spec.depth)]
        self._edge_items = {(e["from"], e["to"]): e for e in self.spec.to_dict()["edges"]}
        self.__dict__["_paths"] = OrderedDict()  # plain dict: paths share the net's modules
        self.__dict__["_cache"] = int(cache)
        self.active: Candidate | None = None
        self.sampler: Callable[[], Candidate] | None = None
        self.settings = self.space.supernet or SupernetSettings()
        self.concat = self.settings.aggregate == "concat"
        self.__dict__["_mask"] = None  # concat: the active path's edge set
        if self.concat:
            self._layout = self._concat_layout()
            for v in self._layout:
                getattr(self.net, v).register_forward_pre_hook(partial(self._mask_inputs, v))

    def _concat_layout(self) -> dict[str, list[tuple[tuple[str, str], int]]]:
        """Per decoder node, its inputs in concat order with their channel counts."""
        dag = self.net.dag
        out = {}
        for v in dag.nodes:
            if v == INPUT or dag.nodes[v]["kind"] != "decoder":
                continue
            ins = sorted(dag.in_edges(v, data=True), key=lambda e: e[2]["order"])
            out[v] = [((u, v), int(d["channels"])) for u, _, d in ins]
        return out

    def _mask_inputs(self, v: str, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook of a decoder node's block: zero the channels of the inputs that
        the active path leaves out (concat supernet)."""
        edges = self.__dict__["_mask"]
        if edges is None:
            return None
        (x,) = args
        keep = [e in edges for e, _ in self._layout[v]]
        if all(keep):
            return None
        mask = torch.cat([torch.full((c,), float(k), device=x.device, dtype=x.dtype)
                          for k, (_, c) in zip(keep, self._layout[v])])
        return (x * mask.view(1, -1, *([1] * (x.dim() - 2))),)

    # -- gates ----------------------------------------------------------------------------
    def choices(self) -> dict[str, list]:
        """Each topology parameter's values as the supernet sees them (an edge: off or on)."""
        out: dict[str, list] = {e.key: ([OFF] if e.optional else []) + [ON]
                                for e in self.space.edges}
        if NODES in self.dims:
            out[NODES] = self.space.node_choices()
        return out

    def candidate(self, point: dict[str, Any], *, name: str = "candidate") -> Candidate:
        """The sub-network that a topology point gates on (edge keys off/on, plus ``nodes``
        when it is a choice; missing keys are on / the first node set). Raises ``SpecError``
        when the point loses the head or an encoder level."""
        from skipdsl.graph import spec_hash

        choices = self.choices()
        topo = {}
        for k, ch in choices.items():
            v = point.get(k, ch[-1] if k != NODES else ch[0])
            v = v if k == NODES or v == OFF else ON
            if v not in ch:
                raise SpecError(f"supernet point: {k} = {v!r} is not a choice",
                                file=self.space.source, expected=ch, found=v)
            topo[k] = v
        unknown = sorted(set(point) - set(choices))
        if unknown:
            raise SpecError(f"supernet point: '{unknown[0]}' is not a topology parameter of "
                            f"space '{self.space.name}'", file=self.space.source,
                            hint=f"parameters: {', '.join(choices)}")
        raw = self.space.build(_raw_point(self.space, self.pins, topo), check=False)
        g = build_graph(raw, check=False)
        fwd = nx.descendants(g, INPUT) | {INPUT}
        back = (nx.ancestors(g, self.head) | {self.head}) if self.head in g else set()
        live = fwd & back
        lost = [n for n in [self.head] + self.encoder if n not in live]
        if lost:
            why = ("no open path from the input reaches the head" if self.head not in live else
                   f"encoder node {lost[0]} reaches the head through no open edge")
            raise SpecError(f"the point is not a network: {why}", node=lost[0],
                            file=self.space.source, hint="open more edges into the decoder")
        edges = sorted((u, v) for u, v, d in g.edges(data=True)
                       if u in live and v in live and d["kind"] not in FIXED_KINDS)
        nodes = sorted((n for n in live if n != INPUT),
                       key=lambda n: (parse_node(n)[1], parse_node(n)[0]))
        data = self.spec.to_dict()
        data.update(name=name, nodes=nodes, edges=[self._edge_items[e] for e in edges],
                    description=f"sub-network of the supernet of search space "
                    f"'{self.space.name}'")
        spec = from_dict(data, source=f"<supernet candidate of {self.space.name}>")
        off = tuple(n for n in self.spec_nodes() if n not in live)
        return Candidate(point=topo, spec=spec, edges=frozenset(edges),
                         nodes=frozenset(nodes), gated_off=off, hash=spec_hash(spec))

    def spec_nodes(self) -> list[str]:
        return [n for n in self.net.dag.nodes if n != INPUT]

    def sample(self, rng: random.Random, tries: int = 1000) -> Candidate:
        """A draw over the topology parameters (SPOS), rejecting non-networks: each edge on
        with probability 1/2 (``sampling: uniform``), or the number of open edges uniform and
        then which ones (``sampling: edges``, so sparse and dense paths are trained alike)."""
        choices = self.choices()
        last: SpecError | None = None
        optional = [k for k, ch in choices.items() if k != NODES and OFF in ch]
        for _ in range(tries):
            point = {k: rng.choice(ch) for k, ch in choices.items()}
            if self.settings.sampling == "edges" and optional:
                opened = set(rng.sample(optional, rng.randint(1, len(optional))))
                point.update({k: ON if k in opened else OFF for k in optional})
            try:
                return self.candidate(point)
            except SpecError as err:
                last = err
        raise SpecError(f"{tries} uniform draws from space '{self.space.name}' gave no network "
                        f"(last: {last})", file=self.space.source)

    def point_of_edges(self, edges: set[tuple[str, str]],
                       nodes: "set[str] | None" = None) -> dict[str, Any]:
        """The topology point whose open candidates give exactly ``edges`` (decoder edges of
        the superset, e.g. a zoo model's at the space's depth); ``SpecError`` when an edge is
        not in the space or a candidate covers it only together with edges not asked for.
        ``nodes``: the network's nodes, which pick the node-set choice (default: every node
        the edges touch) when the space has one."""
        point: dict[str, Any] = {}
        covered: set = set()
        node_set = None
        if NODES in self.dims:
            want = set(nodes) if nodes is not None else {n for e in edges for n in e}
            depth = self.spec.depth
            fits = [c for c in self.space.node_choices()
                    if want <= grid_node_ids(c if c in ("triangle", "diagonal")
                                             else c.split(","), depth)]
            if not fits:
                raise SpecError("no node-set choice of the space holds the network's nodes",
                                file=self.space.source, node=sorted(want)[0])
            node_set = min(fits, key=lambda c: len(grid_node_ids(
                c if c in ("triangle", "diagonal") else c.split(","), depth)))
            point[NODES] = node_set
        for e in self.space.edges:
            mine = self._candidate_edges(e.key, node_set)
            point[e.key] = ON if mine and mine <= edges else OFF
            covered |= mine if point[e.key] == ON else set()
        missing = sorted(set(edges) - covered)
        if missing:
            raise SpecError("the edges are not a point of the supernet's space",
                            file=self.space.source, edge=missing[0],
                            hint="each edge must be an edge candidate, or a rule whose edges "
                            "are all asked for")
        return point

    def _candidate_edges(self, key: str, nodes: str | None = None) -> set[tuple[str, str]]:
        topo = {e.key: (ON if e.key == key else OFF) for e in self.space.edges}
        if NODES in self.dims:
            topo[NODES] = nodes or ("triangle" if "triangle" in self.space.node_choices() else
                                    self.space.node_choices()[0])
        raw = self.space.build(_raw_point(self.space, self.pins, topo), check=False)
        g = build_graph(raw, check=False)
        return {(u, v) for u, v, d in g.edges(data=True) if d["kind"] not in FIXED_KINDS}

    # -- modules --------------------------------------------------------------------------
    def path(self, cand: Candidate) -> nn.Module:
        """The candidate's module over the supernet's weights (compiled once, then cached; for
        a concat supernet, the whole superset with the left-out inputs zeroed)."""
        from ..compiler import subnetwork

        if self.concat:
            return _MaskedPath(self, cand)

        paths = self.__dict__["_paths"]
        key = cand.hash
        if key in paths:
            paths.move_to_end(key)
            return paths[key]
        gm = subnetwork(self.net, cand.spec)
        paths[key] = gm
        if len(paths) > self.__dict__["_cache"]:
            paths.popitem(last=False)
        return gm

    def extract(self, cand: Candidate) -> nn.Module:
        """The candidate compiled on its own (``skipdsl.create_model(cand.spec)``) with the
        supernet's weights: a concat node's first convolution keeps the input channels of the
        edges that are on. It computes what ``path(cand)`` computes."""
        from skipdsl.models import create_model

        net = create_model(cand.spec)
        shared = self.net.state_dict()
        state = {}
        for name, t in net.state_dict().items():
            src = shared[name]
            if src.shape != t.shape:
                v = name.split(".")[0]
                if not self.concat or v not in self._layout or src.shape[1:2] == t.shape[1:2]:
                    raise SpecError(f"{name}: {tuple(t.shape)} in the candidate, "
                                    f"{tuple(src.shape)} in the supernet", node=v)
                keep, at = [], 0
                for e, c in self._layout[v]:
                    if e in cand.edges:
                        keep.extend(range(at, at + c))
                    at += c
                src = src[:, keep]
            state[name] = src.detach().clone()
        net.load_state_dict(state)
        return net

    def use(self, cand: Candidate | None) -> "Supernet":
        self.active = cand
        return self

    def forward(self, x: torch.Tensor) -> Any:
        if self.training and self.sampler is not None:
            self.active = self.sampler()
        if self.active is None:
            return self.net(x)
        return self.path(self.active)(x)


class _MaskedPath(nn.Module):
    """A concat supernet's candidate: the whole superset, with the inputs the candidate leaves
    out zeroed at each decoder node (Supernet._mask_inputs); the modules are the supernet's."""

    def __init__(self, owner: Supernet, cand: Candidate) -> None:
        super().__init__()
        self.net = owner.net
        self.__dict__["owner"] = owner
        self.__dict__["edges"] = frozenset(cand.edges)

    def forward(self, x: torch.Tensor) -> Any:
        owner = self.__dict__["owner"]
        owner.__dict__["_mask"] = self.__dict__["edges"]
        try:
            return self.net(x)
        finally:
            owner.__dict__["_mask"] = None


# ---------------------------------------------------------------------------------------
# training and scoring


@dataclass
class SupernetRun:
    """A trained supernet with the data it trained on (for scoring) and its training curve."""

    net: Supernet
    data: Any  # skipdsl.train.common.TrialData
    cfg: dict[str, Any]
    plan: Any = None  # skipdsl.train.common.TrialPlan: what it trained with
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def train_supernet(space: "SearchSpace | str | None", config: dict[str, Any], *,
                   width_scale: float = 1.0, log: Callable[[str], None] = lambda s: None,
                   state: dict[str, torch.Tensor] | None = None) -> SupernetRun:
    """Train a space's supernet with uniform single-path sampling (SPOS) on ``config``'s
    dataset: trainer config keys (``dataset``, ``budget``, ``epochs``, ``n``, ``batch_size``,
    ``patch``, ``lr``, ``seed``, ``threads``, ``device``, ...; the ``model`` key is set here).
    Adam + cosine annealing and the augmentation of the trainer; one draw per step. ``state``:
    weights of an earlier run of the same supernet to start from (no training then when
    ``epochs`` is 0)."""
    from ..heads import init_heads
    from ..losses import build_loss
    from ..train.common import (load_data, pick_device, plan_trial, resolve_config,
                                seed_everything)
    from ..train.trainer import fast_path, recipe, train_epoch

    sp = load_space(space)
    cfg = resolve_config({**config, "model": f"<supernet of {sp.name}>"})
    plan = plan_trial(cfg)  # the budget for this dataset, 2D or 3D
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        gen = seed_everything(int(cfg["seed"]))
        device = pick_device(cfg["device"])
        data = load_data(cfg, plan)
        if data.is3d != (sp.fixed.get("dims", 2) == 3):
            raise SpecError(f"space '{sp.name}' is {sp.fixed.get('dims', 2)}D but dataset "
                            f"'{cfg['dataset']}' is {data.dims}D", file=sp.source)
        net = Supernet(sp, width_scale=width_scale, in_channels=int(data.ds.in_channels),
                       num_classes=int(data.ds.num_classes)).to(device)
        tr = torch.from_numpy(data.splits["train"])
        if state is not None:
            net.net.load_state_dict(state)
        else:
            init_heads(net.net, data.masks[tr].float().mean())
        run = SupernetRun(net=net, data=data, cfg=cfg, plan=plan)
        epochs = int(cfg["epochs"] if cfg["epochs"] is not None else plan.epochs)  # 0: none
        if epochs == 0:
            return run
        fast = fast_path({**cfg, "fast": "off"}, net.spec, device)
        bs = max(1, min(int(plan.batch_size), len(tr)))
        steps = max(1, len(tr) // bs)
        patch = int(plan.patch)
        loss_fn = build_loss(plan.loss or net.spec.loss or "bce_dice")
        opt, sched, aug = recipe(net, cfg, epochs * steps)
        rng = random.Random(int(cfg["seed"]))
        net.sampler = lambda: net.sample(rng)
        train_x = data.images[tr].to(device)
        train_y = data.masks[tr].to(device)
        t0 = time.perf_counter()
        try:
            for epoch in range(epochs):
                net.train()
                te = time.perf_counter()
                losses = train_epoch(net, opt, sched, loss_fn, train_x, train_y, epoch=epoch,
                                     batch_size=bs, steps=steps, patch=patch, aug=aug,
                                     generator=gen, fast=fast)
                run.curve.append({"epoch": epoch, "train_loss": float(losses.mean()),
                                  "seconds": time.perf_counter() - te,
                                  "paths": len(net.__dict__["_paths"])})
                log(f"supernet epoch {epoch + 1}/{epochs}: loss {float(losses.mean()):.4f} "
                    f"({time.perf_counter() - te:.0f} s)")
        finally:
            net.sampler = None
            net.active = None
            net.eval()
        run.seconds = time.perf_counter() - t0
        run.steps = epochs * steps
        return run
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batches: int, batch_size: int) -> int:
    """Re-estimate the BatchNorm statistics of ``model`` (a path) from ``batches`` batches of
    ``images`` (the first ones, whole images, no augmentation): the running statistics are reset
    and set to the plain average over the batches. Returns the number of images used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was = model.training
    model.train()
    n = min(images.shape[0], batches * batch_size)
    dev = next(model.parameters()).device
    try:
        for b in range(0, n, batch_size):
            model(images[b:b + batch_size].to(dev))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was)
    return n


def inherited_score(run: SupernetRun, cand: Candidate, *, calib_batches: int = 4,
                    threshold: float = 0.5) -> dict[str, Any]:
    """A candidate's validation scores with the supernet's weights (BN recalibrated on
    ``calib_batches`` training batches first): ``iou``, ``dice``, ``params`` (of the path =
    of the sub-network compiled alone), ``seconds``."""
    from ..train.metrics import aggregate, case_metrics, count_params
    from ..train.trainer import predict

    t0 = time.perf_counter()
    data = run.data
    path = run.net.path(cand)
    bs = int(run.plan.batch_size)
    tr = torch.from_numpy(data.splits["train"])
    recalibrate_bn(path, data.images[tr], calib_batches, max(bs, 8))
    val = torch.from_numpy(data.splits["val"])
    probs = predict(path, data.images[val], max(bs, 8))
    m = aggregate(case_metrics(probs, data.masks[val], threshold=threshold))
    iou = 0.0 if math.isnan(m["iou"]) else float(m["iou"])
    return {"iou": iou, "dice": float(m["dice"]), "params": int(count_params(path)),
            "seconds": time.perf_counter() - t0}


def zoo_topology(run_or_net: "Supernet | SupernetRun", name: str) -> dict[str, Any]:
    """The topology point of a zoo model's skip edges on the supernet's grid (its rules
    expanded at the supernet's depth, e.g. UNet# at depth 4); ``SpecError`` when the space
    cannot express them."""
    from skipdsl.spec import load

    net = run_or_net.net if isinstance(run_or_net, SupernetRun) else run_or_net
    zoo = load(name)
    depth = net.spec.depth
    data = zoo.to_dict()
    data["grid"] = {"depth": depth, "widths": list(net.spec.widths)}
    if not isinstance(zoo.nodes, str):
        data["nodes"] = [n for n in zoo.nodes if sum(parse_node(n)) < depth]
    data["heads"] = [{"node": node_id(0, depth - 1), "main": True}]
    data.update(deep_supervision=False, cgm=False)
    data.pop("node_overrides", None)
    g = build_graph(from_dict(data, source=f"zoo/{name}.yaml at depth {depth}"))
    return net.point_of_edges({(u, v) for u, v, d in g.edges(data=True)
                               if d["kind"] not in FIXED_KINDS},
                              nodes={n for n in g.nodes if n != INPUT})


def state_dict_cpu(net: Supernet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.net.state_dict().items()}


__all__ = ["Candidate", "Supernet", "SupernetRun", "superset_spec", "train_supernet",
           "inherited_score", "recalibrate_bn", "zoo_topology", "topology_dims", "pinned_point"]
