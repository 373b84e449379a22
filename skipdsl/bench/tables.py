"""Cells and tables of the reports shared by ``bench report`` and the baselines' Table 3:
number formatting, per-(model, dataset, DS) aggregates of the pooled per-case rows, and the
UNet# paper's Table 3 (the zoo against library baselines)."""
from __future__ import annotations

import math
from typing import Any, Callable

from ..baselines import BASELINES
from . import stats

__all__ = ["fmt_params", "pm", "group_metrics", "span", "table3", "TABLE3_FIRST"]


def fmt_params(p: Any) -> str:
    """A parameter count as '1.23M' or '45.6K'; '-' when missing or not positive."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(p) or p <= 0:
        return "-"
    return f"{p / 1e6:.2f}M" if p >= 1e5 else f"{p / 1e3:.1f}K"


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' (x ``scale``, ``digits`` decimals); '-' for a missing mean."""
    if mean is None or not math.isfinite(mean):
        return "-"
    s = f"{mean * scale:.{digits}f}"
    if std is not None and math.isfinite(std):
        s += f" ± {std * scale:.{digits}f}"
    return s


def group_metrics(cases, results_ok) -> dict[tuple, dict[str, float]]:
    """(model, dataset, ds) -> aggregate over the pooled per-case rows of every seed."""
    from skipdsl.train.metrics import aggregate

    out: dict[tuple, dict[str, float]] = {}
    if len(cases):
        ok_keys = {r["trial_key"] for r in results_ok}
        cases = cases[cases["trial_key"].isin(ok_keys)]
        for (m, d, ds), df in cases.groupby(["model", "dataset", "deep_supervision"], sort=True):
            out[(m, d, bool(ds))] = aggregate(df)
    return out


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    """'-', one formatted value, or 'lowest–highest' (the datasets' channels differ)."""
    shown = list(dict.fromkeys(fmt(v) for v in values))
    return "-" if not shown else shown[0] if len(shown) == 1 else f"{shown[0]}–{shown[-1]}"


#: Table 3's datasets come first, in this order; any other dataset run follows.
TABLE3_FIRST = ("brain_tumor2d", "liver2d")


def table3(results: list[dict[str, Any]], cases, datasets: list[str] | None = None) -> str:
    """The UNet# paper's Table 3 layout: one row per model (baselines and DSL models, deep
    supervision off), params, GFLOPs, and per dataset the test IoU and Dice (%) as the mean
    over seeds ± the std over seeds (one seed: ± the std over cases). ``brain_tumor2d`` and
    ``liver2d`` first, then every other dataset in ``results``. Markdown, '' without results.
    """
    ok = [r for r in results if r.get("status") == "ok" and not r.get("deep_supervision")]
    present = {r["dataset"] for r in results if r.get("dataset")}
    if datasets is None:
        datasets = [d for d in TABLE3_FIRST if d in present] + sorted(present - set(TABLE3_FIRST))
    models = sorted({r["model"] for r in ok if r["dataset"] in datasets},
                    key=lambda m: (m in BASELINES, m))
    if not models:
        return ""
    agg = group_metrics(cases, ok)
    summ: dict[tuple, dict] = {}
    if len(cases):
        okc = cases[cases["trial_key"].isin({r["trial_key"] for r in ok})]
        for d in datasets:
            sub = okc[okc["dataset"] == d]
            if len(sub):
                summ.update({(d, r["config"]): r for r in stats.summarise(sub, d).to_dict("records")})
    head = ["Model", "Source", "Params", "GFLOPs"]
    for d in datasets:
        head += [f"{d} IoU", f"{d} Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        mine = [r for r in ok if r["model"] == m and r["dataset"] in datasets]
        params = sorted(float(r["params"]) for r in mine if r.get("params"))
        flops = sorted(float(r["gflops"]) for r in mine
                       if isinstance(r.get("gflops"), (int, float)) and math.isfinite(r["gflops"]))
        src = BASELINES.get(m).cls if m in BASELINES else "skipdsl zoo / spec"
        row = [m, src, span(params, fmt_params), span(flops, lambda v: f"{v:.3g}")]
        for d in datasets:
            s, a = summ.get((d, stats.config_label(m, False))), agg.get((m, d, False))
            for metric in ("iou", "dice"):
                if s and s["seeds"] > 1:
                    row.append(pm(s[metric], s[f"{metric}_seed_std"]))
                else:
                    row.append(pm(a[metric], a[f"{metric}_std"]) if a else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
