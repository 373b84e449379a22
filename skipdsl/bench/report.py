"""``OUT/report.md`` and plots, rebuilt from the result store alone (``bench report OUT``).

- Table 1 in the UNet# paper's layout: one row per model, its parameter count, and per dataset
  the test IoU (%) mean +- std without and with deep supervision. Per-case values of every seed
  are pooled and aggregated by the one empty-case rule of :mod:`skipdsl.train.metrics`.
- Dice, HD95 and false positives on empty images; costs (params, GFLOPs, images/s, training
  time); pruning levels when the sweep measured them; failed trials with their reasons.
- Plots in ``OUT/plots/``: IoU box plots per dataset, validation curves per dataset,
  image / ground truth / prediction overlays per model, pruning levels (params, images/s, IoU).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import stats, store
from .tables import fmt_params as _fmt_params
from .tables import group_metrics as _group_metrics
from .tables import pm as _pm
from .tables import table3

__all__ = ["build_report", "table1", "table2"]

STATS_INTRO = (
    "Per dataset and configuration (model, +DS = with deep supervision): the mean test IoU over "
    "seeds with a 95% t-interval over seeds and a 95% bootstrap interval over test cases; "
    "every pair of configurations compared on the same test cases (per-case values averaged "
    "over seeds; two-sided Wilcoxon signed-rank test, Holm-corrected within the dataset, alpha "
    "0.05) and across seeds: a difference is significant when the case test says so and every "
    "seed of the better configuration scores above every seed of the other (the case test "
    "alone holds the trained networks fixed and called UNet significantly different from an "
    "identical copy trained with other seeds); rank groups (a configuration joins the group above unless it is significantly "
    "worse than that group's best); Beats: how many configurations it is significantly better "
    "than (challengeR's test-based ranking); the ranking's stability under 1,000 bootstrap "
    "samples of the test cases (Kendall's tau against the full ranking). Not significant "
    "means the test could not tell the two apart on these cases, not that they are equal. "
    "See skipdsl/bench/stats.py.")



def _finite(values) -> list[float]:
    out = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _span(values, fmt: str) -> str:
    """``lo–hi`` of the finite values (one value when they agree), '-' when there are none."""
    v = _finite(values)
    if not v:
        return "-"
    lo, hi = fmt.format(min(v)), fmt.format(max(v))
    return lo if lo == hi else f"{lo}–{hi}"


def _mean(values, fmt: str) -> str:
    v = _finite(values)
    return fmt.format(sum(v) / len(v)) if v else "-"


def size_header(results: list[dict[str, Any]]) -> str:
    """One sentence on whether the trials were matched in size (``bench run --params``/
    ``--flops``), with the largest measured deviation from each dataset's target."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("task", "semantic") !=
          "instance"]
    if not ok:
        return ""
    targets = {str(r.get("size_target")) for r in ok}
    if targets == {"None"} or "None" in targets or len(targets) > 1:
        if targets == {"None"}:
            return ("Sizes are not matched: every model trains at the budget's width scale "
                    "of its own widths (see Params).")
        return ("Sizes are mixed: some trials were scaled to a size target "
                f"({', '.join(sorted(t for t in targets if t != 'None'))}), others not.")
    kind, _, what = next(iter(targets)).partition("=")
    key = "params" if kind == "params" else "gflops"
    parts, worst = [], 0.0
    for d in sorted({r["dataset"] for r in ok}):
        rows = [r for r in ok if r["dataset"] == d]
        target = _finite([r.get("size_value") for r in rows])
        if not target:
            continue
        t = target[0]
        dev = max(abs(float(r[key]) / t - 1) for r in rows if r.get(key))
        worst = max(worst, dev)
        parts.append(f"{d} {_fmt_params(t) if key == 'params' else f'{t:.3g} GFLOPs'}")
    unit = "parameters" if kind == "params" else "GFLOPs per image"
    src = f"{what}'s count at this budget" if not what[:1].isdigit() else "a fixed target"
    return (f"All models at matched size: {unit} scaled to {src} ±3% per dataset "
            f"({'; '.join(parts)}); largest deviation measured {worst:.1%}.")


def _dataset_dims(results: list[dict[str, Any]]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for r in results:
        d = r.get("dataset")
        if d and r.get("dims"):
            dims[d] = int(r["dims"])
    for r in results:
        d = r.get("dataset")
        if d and d not in dims:
            dims[d] = 3 if str(d).lower().endswith("3d") else 2
    return dims


def table1(results: list[dict[str, Any]], cases, datasets: list[str] | None = None) -> str:
    """Table 1 markdown: test IoU % per model x dataset, without / with DS, and params.

    Each cell is the mean over seeds of each seed's test IoU (its mean over the test cases, by
    the empty-case rule) ± the std over seeds (:func:`skipdsl.bench.stats.summarise`; with one
    seed, ± the std over cases). ``datasets``: the columns (default: every dataset in
    ``results``).
    """
    from . import stats

    ok = [r for r in results if r.get("status") == "ok"]
    datasets = sorted({r["dataset"] for r in results if r.get("dataset")}
                      if datasets is None else datasets)
    models = sorted({r["model"] for r in results if r.get("model") and r["dataset"] in datasets})
    show_ds = any(r.get("deep_supervision") for r in ok)
    agg = _group_metrics(cases, ok)
    ok_keys = {r["trial_key"] for r in ok}
    summ = {}
    if len(cases):
        okc = cases[cases["trial_key"].isin(ok_keys)]
        for d in datasets:
            sub = okc[okc["dataset"] == d]
            if len(sub):
                for r in stats.summarise(sub, d).to_dict("records"):
                    summ[(d, r["config"])] = r
    head = ["Architecture", "Params", "GFLOPs/img", "Train s/trial", "Peak train MB"]
    for d in datasets:
        head += [f"{d} (no DS)", f"{d} (DS)"] if show_ds else [d]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        params = sorted({int(r["params"]) for r in ok
                         if r["model"] == m and r["dataset"] in datasets and r.get("params")})
        shown = list(dict.fromkeys(_fmt_params(x) for x in params))
        p = "-" if not shown else shown[0] if len(shown) == 1 else f"{shown[0]}–{shown[-1]}"
        mine = [r for r in ok if r["model"] == m and r["dataset"] in datasets]
        row = [m, p, _span([r.get("gflops") for r in mine], "{:.3f}"),
               _mean([r.get("train_seconds") for r in mine], "{:.0f}"),
               _span([r.get("peak_train_mb") for r in mine], "{:.0f}")]
        for d in datasets:
            for ds in ((False, True) if show_ds else (False,)):
                s = summ.get((d, stats.config_label(m, ds)))
                a = agg.get((m, d, ds))
                if s and s["seeds"] > 1:
                    row.append(_pm(s["iou"], s["iou_seed_std"]))
                else:
                    row.append(_pm(a["iou"], a["iou_std"]) if a else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def table2(results: list[dict[str, Any]]) -> str:
    """Table 2 markdown (instance segmentation, ``bench run --task instance``): per model,
    backbone and dataset the test mask AP@[.5:.95] and AP50 (%), IoU and Dice (%) of the union
    mask, and the Mask R-CNN's parameters; mean over seeds (± std over seeds with several).
    Empty string when there is no instance trial."""
    import pandas as pd

    ok = [r for r in results if r.get("status") == "ok" and r.get("task") == "instance"]
    if not ok:
        return ""
    df = pd.DataFrame([{k: r.get(k) for k in ("model", "backbone", "dataset", "seed", "ap",
                                                "ap50", "iou", "dice", "params")} for r in ok])
    head = ["Model", "Backbone", "Dataset", "Seeds", "AP", "AP50", "IoU", "Dice", "Params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (m, bb, d), g in df.groupby(["model", "backbone", "dataset"], sort=True, dropna=False):
        cells = []
        for k in ("ap", "ap50", "iou", "dice"):
            v = pd.to_numeric(g[k], errors="coerce").astype(float)
            cells.append(_pm(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None))
        shown = list(dict.fromkeys(_fmt_params(p) for p in sorted(g["params"].dropna())))
        lines.append("| " + " | ".join([str(m), str(bb), str(d), str(len(g)), *cells,
                                         "–".join(shown[:1] + shown[1:][-1:]) or "-"]) + " |")
    return "\n".join(lines)


def _metric_table(agg: dict, models: list[str], datasets: list[str], key: str, scale: float,
                  digits: int, with_std: str | None = None) -> str:
    head = ["Architecture", "DS"] + datasets
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        for ds in (False, True):
            if not any((m, d, ds) in agg for d in datasets):
                continue
            row = [m, "on" if ds else "off"]
            for d in datasets:
                a = agg.get((m, d, ds))
                row.append(_pm(a[key], a[with_std] if with_std else None, scale, digits)
                           if a else "-")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cost_table(results: list[dict[str, Any]]) -> str:
    head = ["Architecture", "DS", "Dataset", "Params", "GFLOPs/img", "Images/s (infer)",
            "Train s", "Peak train MB", "Epochs", "Device"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.get("status") != "ok" or int(r.get("seed") or 0) != min(
                int(x.get("seed") or 0) for x in results
                if x.get("model") == r.get("model") and x.get("dataset") == r.get("dataset")):
            continue
        gf, ips, ts, pk = (r.get(k) for k in ("gflops", "images_per_s", "train_seconds",
                                              "peak_train_mb"))
        lines.append("| " + " | ".join([
            str(r["model"]), "on" if r.get("deep_supervision") else "off", str(r["dataset"]),
            _fmt_params(r.get("params")), f"{gf:.3f}" if gf is not None else "-",
            f"{ips:.1f}" if ips is not None else "-", f"{ts:.0f}" if ts is not None else "-",
            _span([pk], "{:.0f}"), str(r.get("epochs", "-")), str(r.get("device", "-"))]) + " |")
    return "\n".join(lines)


def _pruning_table(results: list[dict[str, Any]]) -> str:
    rows = [(r, p) for r in results if r.get("status") == "ok" for p in r.get("pruning") or []]
    if not rows:
        return ""
    head = ["Architecture", "Dataset", "Seed", "Level", "Params", "Images/s", "IoU %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, p in rows:
        iou = p.get("iou")
        lines.append("| " + " | ".join([
            str(r["model"]), str(r["dataset"]), str(r.get("seed")), f"L{p['level']}",
            _fmt_params(p.get("params")), f"{p.get('images_per_s') or 0:.1f}",
            f"{iou * 100:.2f}" if iou is not None else "-"]) + " |")
    return "\n".join(lines)


def _apply_aliases(out: Path, results: list[dict[str, Any]], cases):
    """Rename the rows of networks given under several names (``OUT/aliases.json``, written by
    ``bench run``) to ``first = second``, so that the report says they are one network."""
    import json

    path = out / "aliases.json"
    if not path.is_file():
        return results, cases
    aliases = json.loads(path.read_text())
    label = {}
    for r in results:
        names = aliases.get(str(r.get("spec_hash")))
        if names and r.get("model") in names[:1] + [names[0]]:
            label[r["trial_key"]] = " = ".join(names)
    if not label:
        return results, cases
    results = [{**r, "model": label.get(r["trial_key"], r["model"])} for r in results]
    if len(cases):
        cases = cases.copy()
        new = cases["trial_key"].map(label)
        cases["model"] = new.fillna(cases["model"])
    return results, cases


# -- plots ----------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(model: str, ds: bool) -> str:
    return f"{model}{' +DS' if ds else ''}"


def _box_plots(cases, plots: Path) -> list[Path]:
    plt = _plt()
    files = []
    for d, df in cases.groupby("dataset", sort=True):
        groups, labels = [], []
        for (m, ds), g in df.groupby(["model", "deep_supervision"], sort=True):
            v = g["iou"].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            if v.size:
                groups.append(v)
                labels.append(_label(m, bool(ds)))
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 3.6))
        ax.boxplot(groups, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
        ax.set_ylabel("test IoU per case")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{d}")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        files.append(plots / f"iou_box_{d}.png")
        _save(fig, files[-1])
    return files


def _curve_plots(curves, plots: Path) -> list[Path]:
    plt = _plt()
    files = []
    if not len(curves):
        return files
    for d, df in curves.groupby("dataset", sort=True):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for (m, ds), g in df.groupby(["model", "deep_supervision"], sort=True):
            mean = g.groupby("epoch")["val_iou"].mean()
            ax.plot(mean.index + 1, mean.to_numpy(), marker="o", ms=3, label=_label(m, bool(ds)))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation IoU (mean over seeds)")
        ax.set_title(d)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(plots / f"curves_{d}.png")
        _save(fig, files[-1])
    return files


def _show_image(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    img = img if img.shape[0] == 3 else img[:1]  # RGB, else the first channel in grey
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.moveaxis(img, 0, -1) if img.shape[0] == 3 else img[0]


def _mask_rgba(mask: np.ndarray) -> np.ndarray:
    """(K, H, W) binary -> RGBA overlay, one colour per channel."""
    colours = np.array([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.3, 0.5, 1], [1, 1, 0.2]], np.float32)
    rgba = np.zeros(mask.shape[1:] + (4,), np.float32)
    for k in range(mask.shape[0]):
        on = mask[k] > 0.5
        rgba[on, :3] = colours[k % len(colours)]
        rgba[on, 3] = 0.45
    return rgba


def _overlay_plots(out: Path, results: list[dict[str, Any]], plots: Path,
                   per_row: int = 2) -> list[Path]:
    plt = _plt()
    files = []
    ok = [r for r in results if r.get("status") == "ok"]
    for m in sorted({r["model"] for r in ok}):
        chosen = {}
        for r in sorted(ok, key=lambda r: (bool(r.get("deep_supervision")), r.get("seed") or 0)):
            if r["model"] == m and r["dataset"] not in chosen:
                s = store.load_samples(out, r["trial_key"])
                if s is not None and len(s.get("image", [])):
                    chosen[r["dataset"]] = (r, s)
        if not chosen:
            continue
        rows = len(chosen)
        fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row, 2.1 * rows),
                                 squeeze=False)
        for row, (d, (r, s)) in enumerate(sorted(chosen.items())):
            for j in range(per_row):
                cols = axes[row, 3 * j:3 * j + 3]
                for ax in cols:
                    ax.axis("off")
                if j >= len(s["image"]):
                    continue
                img = _show_image(s["image"][j])
                cmap = None if img.ndim == 3 else "gray"
                cols[0].imshow(img, cmap=cmap)
                cols[1].imshow(img, cmap=cmap)
                cols[1].imshow(_mask_rgba(s["target"][j]))
                cols[2].imshow(img, cmap=cmap)
                cols[2].imshow(_mask_rgba(s["prob"][j].astype(np.float32) > 0.5))
                if row == 0:
                    cols[0].set_title("image", fontsize=8)
                    cols[1].set_title("ground truth", fontsize=8)
                    cols[2].set_title("prediction", fontsize=8)
            axes[row, 0].text(-0.08, 0.5, f"{d}", transform=axes[row, 0].transAxes,
                              rotation=90, va="center", ha="right", fontsize=8)
        fig.suptitle(f"{m}: test images, ground truth and prediction", fontsize=10)
        fig.tight_layout()
        files.append(plots / f"overlay_{m}.png")
        _save(fig, files[-1])
    return files


def _pruning_plot(results: list[dict[str, Any]], plots: Path) -> list[Path]:
    rows = [(r, p) for r in results if r.get("status") == "ok" for p in r.get("pruning") or []]
    if not rows:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    series: dict[tuple, list] = {}
    for r, p in rows:
        series.setdefault((r["model"], r["dataset"]), []).append(p)
    for (m, d), ps in sorted(series.items()):
        ps = sorted(ps, key=lambda p: p["level"])
        lv = [p["level"] for p in ps]
        for ax, key in zip(axes, ("params", "images_per_s", "iou")):
            ax.plot(lv, [p.get(key) if p.get(key) is not None else np.nan for p in ps],
                    marker="o", label=f"{m} / {d}")
    for ax, title in zip(axes, ("parameters", "inference images/s", "test IoU")):
        ax.set_xlabel("pruning level (head x_0_L)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(sorted({p["level"] for _, p in rows}))
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path = plots / "pruning.png"
    _save(fig, path)
    return [path]


def _save(fig, path: Path) -> None:
    """Save a figure atomically (temporary file + os.replace)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    store.atomic_write_bytes(path, buf.getvalue())


# -- report ---------------------------------------------------------------------------------


def build_report(out: str | os.PathLike, *, plots: bool = True) -> Path:
    """Rebuild ``results.csv``, ``report.md`` and ``plots/`` in ``out`` from its trials."""
    from skipdsl.train.metrics import empty_rule

    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no benchmark output folder '{out}' (bench run --out {out} "
                                "writes one)")
    store.write_tables(out)
    results = store.load_results(out)
    cases = store.load_cases(out, results)
    results, cases = _apply_aliases(out, results, cases)
    curves = store.load_curves(results)
    ok = [r for r in results if r.get("status") == "ok"]
    failed = [r for r in results if r.get("status") != "ok"]
    dims = _dataset_dims(results)
    datasets = sorted(dims)
    models = sorted({r["model"] for r in results if r.get("model")})
    seeds = sorted({int(r.get("seed") or 0) for r in results})
    tables = []
    for nd in (2, 3):
        cols = [d for d in datasets if dims[d] == nd]
        if cols:
            spread = "std over seeds" if len(seeds) > 1 else "std over cases (one seed)"
            title = (f"## Table 1: test IoU (%), mean over seeds ± {spread}"
                     if nd == 2 else f"## 3D: test IoU (%), mean over seeds ± {spread}")
            tables += [title, "", table1(results, cases, cols), ""]
    agg = _group_metrics(cases, ok)
    budgets = sorted({str(r.get("budget")) for r in results})
    ok_cases = cases[cases["trial_key"].isin({r["trial_key"] for r in ok})] if len(cases) else cases
    stats_md, stats_files = stats.markdown(ok_cases, datasets,
                                           plots=(out / "plots") if plots else None)

    files: list[Path] = []
    if plots and results:
        pdir = out / "plots"
        files += _box_plots(cases[cases["trial_key"].isin({r["trial_key"] for r in ok})]
                            if len(cases) else cases, pdir)
        files += _curve_plots(curves, pdir)
        files += _overlay_plots(out, results, pdir)
        files += _pruning_plot(results, pdir)
        files += stats_files

    md = [
        "# skipdsl benchmark report",
        "",
        f"{len(results)} trials ({len(ok)} ok, {len(failed)} failed); budget "
        f"{', '.join(budgets) or '-'}; seeds {', '.join(map(str, seeds)) or '-'}. "
        "Rebuild with `bench report " + str(out) + "`.",
        "",
        size_header(results),
        "",
        "Tables in the UNet# paper's Table 1 layout. Params: the inference network (main head "
        "only) as trained on these datasets' channels and widths (a range when they differ); "
        "GFLOPs per image at the evaluation size (a range over datasets); Train s: mean "
        "training time of a trial (all epochs, validation included); Peak train MB: the "
        "measured peak memory of one training step (weights, gradients, optimiser state, "
        "activations; a range over datasets), on the machine that ran it (Device, below). "
        "No DS / DS: trained without / with deep supervision.",
        "",
        *tables,
        "## Statistics: which differences are significant",
        "",
        STATS_INTRO,
        "",
        stats_md,
        "## Dice (%), mean ± std",
        "",
        _metric_table(agg, models, datasets, "dice", 100, 2, "dice_std"),
        "",
        "## HD95 (voxels; when measured)",
        "",
        _metric_table(agg, models, datasets, "hd95", 1, 2),
        "",
        "## False positives on empty images (fraction of empty-ground-truth cases with any "
        "predicted foreground)",
        "",
        _metric_table(agg, models, datasets, "fp_empty", 1, 3),
        "",
        "## Costs (first seed)",
        "",
        _cost_table(results),
        "",
    ]
    t3 = table3(results, cases)
    if t3:
        spread = "std over seeds" if len(seeds) > 1 else "std over cases (one seed)"
        md += ["## Table 3: against library baselines (test IoU and Dice %, deep supervision "
               f"off, mean over seeds ± {spread})", "",
               "Baselines (skipdsl/baselines.py) train with the same recipe, budget, data and "
               "metrics as the zoo; Source names the library class. GFLOPs per image at the "
               "evaluation size (UNETR: every sliding window).", "", t3, ""]
    t2 = table2(results)
    if t2:
        md += ["## Table 2: instance segmentation (Mask R-CNN, feature pyramid as a skip graph)",
               "", "Mask AP@[.5:.95] and AP50 (%, torchmetrics MeanAveragePrecision, "
               "iou_type='segm'), IoU and Dice (%) of the union of the predicted masks (score "
               ">= 0.5) against the union of the true ones, per test image by the empty-case "
               "rule below (so they compare with the semantic rows above); Params: the whole "
               "Mask R-CNN as trained (backbone, pyramid at the budget's width, RPN, RoI "
               "heads). Recipe: skipdsl/train/instance.py.", "", t2, ""]
    prune = _pruning_table(results)
    if prune:
        md += ["## Pruning levels (deep-supervision models, sub-network feeding head x_0_L)", "",
               prune, ""]
    if failed:
        md += ["## Failed trials", "", "| Model | Dataset | Seed | DS | Reason |",
               "|---|---|---|---|---|"]
        for r in failed:
            reason = str(r.get("reason", "")).replace("|", "\\|").replace("\n", " ")
            md.append(f"| {r.get('model')} | {r.get('dataset')} | {r.get('seed')} | "
                      f"{'on' if r.get('deep_supervision') else 'off'} | {reason} |")
        md.append("")
    md += ["## Empty-case rule", "", empty_rule(), ""]
    if files:
        md += ["## Plots", ""]
        md += [f"![{p.stem}](plots/{p.name})" for p in files]
        md.append("")
    path = out / "report.md"
    store.atomic_write_text(path, "\n".join(md))
    return path
