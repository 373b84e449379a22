"""``skipdsl search proxy-check``: how well cheap proxies rank the networks of a space.

A search that prunes after a few epochs, ranks with a supernet or filters at initialisation is
only as good as its proxy's agreement with the stand-alone result. :func:`run_proxy_check`
trains ``networks`` points of a space stand-alone at the full budget (one seed; the zoo's
points first, then uniform random points), every one scaled to the same parameter count, as a
search study (resumable: re-run the same command), then scores each network with each proxy
and reports Kendall's tau against the validation and the test IoU, tau within the better half
(the part a search has to get right) and how many of the true top 5 the proxy's top 5 holds.

Proxies (:data:`PROXIES`):

- ``val_iou_e1``, ``val_iou_e2``, ``val_iou_e4``: the validation IoU after 1, 2, 4 epochs of
  the same run, which is exactly what successive halving sees at its rungs;
- ``nominal_params``: the parameters of the point at the space's own widths (before scaling
  to the target: a larger nominal network ends up narrower);
- ``edges``: the number of skip edges (every edge but the input and the encoder's down path);
- ``synflow``: SynFlow at initialisation (Tanaka et al., "Pruning neural networks without any
  data by iteratively conserving synaptic flow", NeurIPS 2020; as a NAS proxy: Abdelfattah et
  al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021): the sum over parameters of
  |theta * dR/dtheta| with every parameter made positive, R the sum of the output for an
  all-ones input, in float64, BatchNorm in eval mode;
- ``naswot``: Mellor et al., "Neural Architecture Search without Training" (ICML 2021): the
  log-determinant of the kernel of binary ReLU codes of a training batch at initialisation.

- ``inherited_iou_sum`` and ``inherited_iou_concat`` (with ``supernet_epochs``): the
  validation IoU of the network's topology with the weights of a one-shot supernet of the
  space (:mod:`.supernet`: SPOS training, BatchNorm recalibrated per candidate), in its two
  forms. ``sum`` (the first one-shot strategy's) projects every edge to a fixed width and sums,
  so it scores the summed form of each topology; ``concat`` concatenates every candidate input
  and zeroes the ones that are off, so the zoo's concat networks are its candidates, and it
  samples the number of open edges uniformly. Both have one set of widths (the budget's),
  while the networks train scaled to the target size: this measures how well each predicts the
  stand-alone result.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

PROXIES = ("val_iou_e1", "val_iou_e2", "val_iou_e4", "nominal_params", "edges", "synflow",
           "naswot", "inherited_iou_sum", "inherited_iou_concat")
TARGETS = ("iou", "test_iou")


def synflow(model, shape: tuple[int, ...]) -> float:
    """SynFlow score of ``model`` (float64 copy, all parameters made positive, eval mode)."""
    import copy

    import torch

    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    out = net(torch.ones((1, *shape), dtype=torch.float64))
    out = out[0] if isinstance(out, (list, tuple)) else out
    out.sum().backward()
    total = 0.0
    for p in net.parameters():
        if p.grad is not None:
            total += float((p.detach() * p.grad).abs().sum())
    return math.log(total) if total > 0 else float("-inf")


def naswot(model, batch) -> float:
    """NASWOT score: log det of K = C C^T + (1 - C)(1 - C)^T over the binary codes C of every
    ReLU's output for ``batch`` (train mode, as in the paper), accumulated layer by layer."""
    import torch

    n = batch.shape[0]
    k = torch.zeros((n, n), dtype=torch.float64)
    hooks = []

    def hook(_m, _inp, out):
        c = (out.detach().reshape(n, -1) > 0).double()
        k.add_(c @ c.T).add_((1 - c) @ (1 - c).T)

    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            hooks.append(m.register_forward_hook(hook))
    try:
        model.train()
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else float("-inf")


def skip_edges(spec) -> int:
    from skipdsl.graph import build_graph

    return sum(1 for _, _, d in build_graph(spec).edges(data=True)
               if d["kind"] not in ("input", "down"))


def score_proxies(space, point: dict[str, Any], spec, curve: list[float], batch,
                  seed: int = 0) -> dict[str, float]:
    """Every proxy of one trained network (``spec``: as trained; ``curve``: its validation IoU
    per epoch; ``batch``: training images for NASWOT)."""
    import torch

    from skipdsl.models import create_model
    from skipdsl.sizing import count

    out: dict[str, float] = {}
    for e in (1, 2, 4):
        out[f"val_iou_e{e}"] = float(curve[e - 1]) if len(curve) >= e else float("nan")
    nominal = space.build(point)
    out["nominal_params"] = float(count(nominal, in_channels=spec.in_channels,
                                        num_classes=spec.num_classes).params)
    out["edges"] = float(skip_edges(spec))
    torch.manual_seed(seed)
    net = create_model(spec, deep_supervision=False, cgm=False)
    out["synflow"] = synflow(net, tuple(batch.shape[1:]))
    out["naswot"] = naswot(net, batch)
    return out


def inherited_ious(space, points: list[dict[str, Any]], config: dict[str, Any], *,
                   epochs: int, width_scale: float, aggregate: str = "concat",
                   calib_batches: int = 4,
                   log: Callable[[str], None] = lambda s: None) -> list[float]:
    """Train a one-shot supernet of ``space`` in the form ``aggregate`` (``sum`` or
    ``concat``; the space's other supernet settings kept) for ``epochs`` (trainer ``config``:
    dataset, budget, seed, ...) and score each point's topology with its weights (NaN for a
    point that is no network of the supernet)."""
    from skipdsl.errors import SpecError

    from .space import OFF, ON, SupernetSettings
    from .supernet import NODES, inherited_score, train_supernet

    base = (space.supernet or SupernetSettings()).model_dump()
    base.update(aggregate=aggregate, sampling="edges" if aggregate == "concat" else "uniform")
    space = space.model_copy(update={"supernet": SupernetSettings(**base)})
    run = train_supernet(space, {**config, "epochs": epochs}, width_scale=width_scale, log=log)
    dims = run.net.choices()
    out = []
    for p in points:
        topo = {k: (p[k] if k == NODES else (OFF if p.get(k, OFF) == OFF else ON))
                for k in dims if k in p}
        try:
            out.append(float(inherited_score(run, run.net.candidate(topo),
                                             calib_batches=calib_batches)["iou"]))
        except SpecError:
            out.append(float("nan"))
    return out


def rank_agreement(proxy, truth, top: int = 5) -> dict[str, float]:
    """Kendall's tau of ``proxy`` against ``truth`` (tau-b, scipy), tau within the better half
    of ``truth``, and how many of the ``top`` best by truth the proxy's top holds."""
    import numpy as np
    from scipy.stats import kendalltau

    p, t = np.asarray(proxy, dtype=float), np.asarray(truth, dtype=float)
    ok = np.isfinite(p) & np.isfinite(t)
    p, t = p[ok], t[ok]
    res = {"n": int(ok.sum()), "tau": float("nan"), "tau_top_half": float("nan"),
           f"top{top}": float("nan")}
    if len(p) < 3:
        return res
    res["tau"] = float(kendalltau(p, t).statistic)
    half = t >= np.median(t)
    if half.sum() >= 3:
        res["tau_top_half"] = float(kendalltau(p[half], t[half]).statistic)
    k = min(top, len(p))
    res[f"top{top}"] = float(len(set(np.argsort(-t)[:k]) & set(np.argsort(-p)[:k])))
    return res


def run_proxy_check(space: str, *, dataset: str, networks: int, out: str | Path,
                    budget: str = "cpu", params: "str | float | None" = "unetsharp",
                    seed: int = 0, sampler_seed: int = 0, workers: int | None = None,
                    trainer: Any = None, overrides: dict[str, Any] | None = None,
                    supernet_epochs: int = 0, log: Callable[[str], None] | None = None,
                    command: str | None = None, **search: Any) -> dict[str, Any]:
    """Train ``networks`` points of ``space`` stand-alone (see the module doc) into ``out`` and
    write ``out/proxies.csv`` and ``out/proxy-check.md``; returns the agreement table.
    ``supernet_epochs`` > 0 also trains the space's one-shot supernet that long and scores
    ``inherited_iou`` (else that proxy is left out)."""
    import pandas as pd

    from skipdsl.data import load_dataset
    from skipdsl.spec import from_dict
    from skipdsl.train.common import plan_trial

    from .objective import DEFAULT_TRAINER
    from .runner import run_search
    from .space import load_space

    out = Path(out)
    summary = run_search(dataset=dataset, trials=networks, out=out, space=space, budget=budget,
                         seed=seed, objectives=("iou",), sampler="random",
                         sampler_seed=sampler_seed, prune="none", params=params,
                         workers=workers, trainer=trainer or DEFAULT_TRAINER,
                         overrides=overrides, log=log, command=command, **search)
    sp = load_space(space)
    df = pd.read_csv(out / "trials.csv")
    done = df[df["status"].isin(["complete", "cached"])].drop_duplicates(subset="hash")
    o = overrides or {}
    plan = plan_trial({**o, "dataset": dataset, "budget": budget})
    data = load_dataset(dataset, root=o.get("data_root"), seed=int(o.get("data_seed") or 0),
                        n=plan.n)
    import torch

    idx = data.splits["train"][:16]
    batch = torch.as_tensor(data.images[idx])
    from .study import load_for_report

    study, _, _, _ = load_for_report(out)
    by_number = {t.number: t for t in study.get_trials()}
    rows, points = [], []
    for _, r in done.iterrows():
        t = by_number[int(r["number"])]
        spec = from_dict(t.user_attrs["spec"])
        point = sp.complete(dict(t.params))  # the zoo's queued trials carry their points too
        points.append(point)
        curve = json.loads(r["curve"]) if isinstance(r["curve"], str) else []
        row = {"number": int(r["number"]), "zoo": r.get("zoo"), "hash": r["hash"],
               "iou": float(r["iou"]), "test_iou": float(r["test_iou"]),
               "params": r["params"]}
        row.update(score_proxies(sp, point, spec, curve, batch, seed=seed))
        rows.append(row)
    table = pd.DataFrame(rows)
    for form in ("sum", "concat") if supernet_epochs and len(table) else ():
        table[f"inherited_iou_{form}"] = inherited_ious(
            sp, points, {**{k: v for k, v in o.items() if v is not None}, "dataset": dataset,
                         "budget": budget, "seed": seed},
            epochs=supernet_epochs, width_scale=plan.width_scale, aggregate=form,
            log=log or (lambda s: None))
    table.to_csv(out / "proxies.csv", index=False)
    agree = []
    for proxy in [p for p in PROXIES if p in table.columns]:
        for target in TARGETS:
            if len(table):
                a = rank_agreement(table[proxy], table[target])
                agree.append({"proxy": proxy, "against": target, **a})
    ag = pd.DataFrame(agree)
    write_proxy_report(out / "proxy-check.md", table, ag, summary, space=sp.name,
                       dataset=dataset, budget=budget, params=params, command=command)
    return {"table": table, "agreement": ag}


def write_proxy_report(path: Path, table, ag, summary, *, space: str, dataset: str,
                       budget: str, params: Any, command: str | None) -> None:
    from .report import markdown_table

    lines = ["# Proxy check", "",
             f"- command: `{command or 'skipdsl.search.proxy.run_proxy_check(...)'}`",
             f"- space `{space}`, dataset `{dataset}`, budget `{budget}`, every network at "
             f"the parameters of `{params}` (+-3%), one training seed",
             f"- networks trained stand-alone and scored: {len(table)} (the zoo's points "
             f"first, then uniform random points); study: `{summary.study_name}`", "",
             "Kendall's tau (tau-b) between each proxy and the stand-alone validation IoU "
             "(`iou`, best epoch) and test IoU; `tau_top_half`: within the networks at or above "
             "the median of that IoU; `top5`: how many of the true top 5 the proxy's top 5 "
             "holds. Proxies are described in `skipdsl/search/proxy.py`.", ""]
    if len(ag):
        lines.append(markdown_table(ag, ["proxy", "against", "n", "tau", "tau_top_half", "top5"]))
    lines += ["", "## Networks", "",
              markdown_table(table.sort_values("iou", ascending=False),
                             ["number", "zoo", "iou", "test_iou", "params",
                              *[p for p in PROXIES if p in table.columns]]), ""]
    path.write_text("\n".join(lines))
