"""The outputs of a search, rebuilt from the study at any time (``skipdsl search report DIR``).

``OUT/trials.csv``   every trial: number, state, status, hash, objectives, costs, reason,
                     cached_from, curve, and its point (``p_<parameter>`` columns)
``OUT/pareto/*.yaml`` the non-dominated complete trials, one distinct network each, as specs
                     (``t<number>-<hash>.yaml``; each compiles and runs in ``bench run --models``)
``OUT/pareto/*.pt``  the checkpoint of the trial that evaluated each (same name; when the search
                     kept weights): ``skipdsl predict``, ``skipdsl export``,
                     ``skipdsl.load_checkpoint`` (checked against the .yaml when written)
``OUT/pareto.png``   IoU against each cost objective; the front, the other trials and the zoo
``OUT/report.md``    settings, counts, the front, the zoo reference points, the invalid reasons
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .objective import OBJECTIVES, SearchConfig

TRIAL_COLUMNS = ["number", "state", "status", "zoo", "hash", "iou", "test_iou", "dice",
                 "params", "params_m", "latency_ms", "gflops", "images_per_s", "epochs",
                 "best_epoch", "train_seconds", "seconds", "cached_from", "reason", "worker",
                 "key", "curve", "width_scale"]


def trials_frame(study, zoo_hashes: dict[str, str] | None = None):
    """One row per trial of the study (see :data:`TRIAL_COLUMNS`)."""
    import pandas as pd

    by_hash = {h: n for n, h in (zoo_hashes or {}).items()}
    rows = []
    params: list[str] = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row: dict[str, Any] = {c: a.get(c) for c in TRIAL_COLUMNS}
        row.update(number=t.number, state=t.state.name,
                   status=a.get("status") or t.state.name.lower())
        row["zoo"] = a.get("zoo") or by_hash.get(a.get("hash"))
        if row["reason"] is None and t.state.name == "FAIL":
            row["reason"] = t.system_attrs.get("fail_reason", "interrupted or worker lost")
        row["curve"] = json.dumps(a.get("curve")) if a.get("curve") is not None else None
        for k, v in t.params.items():
            row[f"p_{k}"] = v
            if f"p_{k}" not in params:
                params.append(f"p_{k}")
        rows.append(row)
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS + sorted(params))


#: With one objective, the written "front" is the best networks, this many (a search's top 3
#: are what a seed study retrains).
TOP_SINGLE = 3


def pareto_rows(df, cfg: SearchConfig):
    """The non-dominated complete trials, one per network (lowest trial number kept); with one
    objective, the :data:`TOP_SINGLE` best networks."""
    import pandas as pd

    keys = [(OBJECTIVES[o].key, OBJECTIVES[o].direction == "maximize") for o in cfg.objectives]
    ok = df[(df["state"] == "COMPLETE")].dropna(subset=[k for k, _ in keys])
    ok = ok.sort_values("number").drop_duplicates(subset="hash", keep="first")
    if len(keys) == 1:  # one objective: the front is one network; keep the runners-up too
        k, mx = keys[0]
        return ok.sort_values([k, "number"], ascending=[not mx, True]).head(TOP_SINGLE)
    pts = [[(r[k] if mx else -r[k]) for k, mx in keys] for _, r in ok.iterrows()]

    def dominated(i: int) -> bool:
        return any(all(b >= a for a, b in zip(pts[i], q)) and any(b > a for a, b in
                                                                   zip(pts[i], q))
                   for j, q in enumerate(pts) if j != i)

    keep = [not dominated(i) for i in range(len(pts))]
    return ok.loc[pd.Series(keep, index=ok.index, dtype=bool)].sort_values(
        keys[0][0], ascending=not keys[0][1])


def write_pareto(out: Path, front, study, cfg: SearchConfig, study_name: str) -> list[Path]:
    """One spec file per front member; the folder is rewritten (the front moves on resume)."""
    from skipdsl.models import create_model
    from skipdsl.spec import from_dict

    folder = out / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.yaml"), *folder.glob("*.pt")]:
        old.unlink()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    paths = []
    for _, r in front.iterrows():
        t = trials[int(r["number"])]
        data = dict(t.user_attrs["spec"])
        data["name"] = f"search_t{t.number:04d}"
        objs = ", ".join(f"{OBJECTIVES[o].key} {r[OBJECTIVES[o].key]:.4g}" for o in cfg.objectives)
        data["description"] = (f"Pareto trial {t.number} of study {study_name} ({cfg.dataset}, "
                               f"{cfg.budget}): {objs}")
        spec = from_dict(data)
        create_model(spec)  # every written spec compiles
        where = (f"on the Pareto front of {', '.join(cfg.objectives)}"
                 if len(cfg.objectives) > 1 else
                 f"among the {TOP_SINGLE} best by {cfg.objectives[0]}")
        header = [f"# skipdsl search: trial {t.number} of study '{study_name}', {where}",
                  f"# {objs}; hash {r['hash']}"
                  + (f"; zoo model {r['zoo']}" if isinstance(r["zoo"], str) else ""),
                  f"# dataset {cfg.dataset}, budget {cfg.budget}, seed {cfg.seed}, "
                  + (f"scaled to {cfg.size_label} = {cfg.size_target:.0f} parameters (factor "
                     f"{t.user_attrs.get('width_scale', float('nan')):.4g})" if cfg.size_target
                     else f"widths x{cfg.width_scale:g} of the space's")
                  + " (the widths below are the measured ones)",
                  "# point: " + json.dumps({k: v for k, v in t.params.items()}, sort_keys=True)]
        p = folder / f"t{t.number:04d}-{str(r['hash'])[:8]}.yaml"
        p.write_text("\n".join(header) + "\n" + spec.to_yaml())
        paths.append(p)
        # where the trial wrote it, else where it lies in this folder (OUT moved since)
        kept = [Path(t.user_attrs.get("checkpoint") or ""),
                out / "checkpoints" / f"{t.user_attrs.get('key')}.pt"]
        weights = next((w for w in kept if w.suffix == ".pt" and w.is_file()), None)
        if weights is not None:
            copy_weights(weights, p.with_suffix(".pt"), p)
    return paths


def copy_weights(src: Path, dst: Path, spec_path: Path) -> Path | None:
    """Copy a trial's checkpoint next to its Pareto spec (atomically) and load it back: the spec
    inside is validated again and must be the network of ``spec_path``. A checkpoint that fails
    is not kept (a warning says why)."""
    import warnings

    from skipdsl.fileio import atomic_write_bytes
    from skipdsl.checkpoint import load_checkpoint
    from skipdsl.errors import DataError, SpecError

    atomic_write_bytes(dst, src.read_bytes())
    try:
        load_checkpoint(dst, spec=spec_path)
    except (SpecError, DataError) as err:
        dst.unlink()
        warnings.warn(f"the weights of {spec_path.name} were not kept: {err}", stacklevel=2)
        return None
    return dst


def plot_front(path: Path, df, front, cfg: SearchConfig) -> Path:
    """IoU against each cost objective (or against the trial number for IoU alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    costs = [o for o in cfg.objectives if o != "iou"] or [None]
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    ok = df[df["state"] == "COMPLETE"]
    zoo = ok[ok["zoo"].notna()].drop_duplicates(subset="zoo")
    for ax, c in zip(axes[0], costs):
        x = OBJECTIVES[c].key if c else "number"
        ax.scatter(ok[x], ok["iou"], s=18, c="#b0b0b0", label="trials", zorder=1)
        fr = front.sort_values(x)
        ax.scatter(fr[x], fr["iou"], s=36, c="#d62728", label="Pareto front", zorder=3)
        if c:  # the 2D front of this projection (its points are members of the front)
            ax.step(fr[x], fr["iou"].cummax(), where="post", c="#d62728", lw=1, alpha=0.6)
        ax.scatter(zoo[x], zoo["iou"], s=90, marker="*", c="#1f77b4", edgecolors="k",
                   linewidths=0.5, label="zoo models", zorder=4)
        for _, r in zoo.iterrows():
            ax.annotate(str(r["zoo"]), (r[x], r["iou"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xlabel(OBJECTIVES[c].label if c else "trial")
        if c in ("params", "latency", "gflops") and len(ok) and (ok[x] > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel(OBJECTIVES["iou"].label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"search on {cfg.dataset} ({cfg.budget} budget, widths x{cfg.width_scale:g})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def throughput(df, cfg: SearchConfig) -> dict[str, float]:
    """Networks trained (complete, pruned or failed in training; cached ones cost nothing),
    the epochs they trained and the CPU hours they took: each trial's wall seconds times the
    torch threads it had."""
    import json as _json

    trained = df[df["status"].isin(["complete", "pruned", "failed"]) & df["cached_from"].isna()]
    threads = int(cfg.overrides.get("threads") or 1)
    cpu_h = float(trained["seconds"].fillna(0).sum()) * threads / 3600
    epochs = sum(len(_json.loads(c)) for c in trained["curve"].dropna())
    return {"networks": len(trained), "epochs": epochs, "cpu_hours": cpu_h,
            "networks_per_cpu_hour": len(trained) / cpu_h if cpu_h else float("nan"),
            "epochs_per_cpu_hour": epochs / cpu_h if cpu_h else float("nan")}


def throughput_line(df, cfg: SearchConfig) -> str:
    t = throughput(df, cfg)
    if not t["networks"]:
        return "no network trained yet"
    return (f"{t['networks']} networks trained ({t['epochs']} epochs) in {t['cpu_hours']:.2f} "
            f"CPU hours: {t['networks_per_cpu_hour']:.1f} networks and "
            f"{t['epochs_per_cpu_hour']:.0f} epochs per CPU hour (trial wall time x torch "
            "threads)")


def markdown_table(df, cols: list[str]) -> str:
    """A markdown table of ``df``'s columns ``cols``, one row per row."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_report(out: Path, df, front, paths: list[Path], cfg: SearchConfig,
                 settings: dict[str, Any]) -> Path:
    counts = df["status"].value_counts().to_dict()
    objs = ", ".join(f"{o} ({OBJECTIVES[o].direction[:3]})" for o in cfg.objectives)
    lines = [
        "# Architecture search report", "",
        f"- command: `{settings.get('command') or 'skipdsl.search.run_search(...)'}`",
        f"- study: `{settings['study_name']}` in `{settings['storage']}`",
        f"- space: `{settings['space']}` ({settings.get('space_size', '?')} points), "
        f"dataset `{cfg.dataset}`, budget `{cfg.budget}`, seed {cfg.seed}, " + (
            f"every network scaled to {cfg.size_label} = {cfg.size_target / 1e6:.3f}M "
            "parameters (+-3%; `width_scale` per trial)" if cfg.size_target else
            f"widths x{cfg.width_scale:g} of the space's"),
        f"- objectives: {objs}; sampler {settings.get('sampler', '?')}; backend "
        f"{settings.get('backend', '?')}",
        "- pruning: " + (
            "none" if cfg.prune == "none" else
            ("ASHA (Ray Tune) on the validation IoU" if settings.get("backend") == "ray" else
             f"Optuna's {'SuccessiveHalvingPruner' if cfg.prune == 'halving' else 'HyperbandPruner'}"
             f" on the validation IoU after each epoch (first rung after "
             f"{max(2, cfg.prune_warmup)} epochs, reduction factor {cfg.reduction_factor})"
             if cfg.prune in ("halving", "hyperband") else
             (f"Optuna MedianPruner on the validation IoU (warm-up {cfg.prune_warmup} epochs, "
              f"{cfg.prune_min_trials} finished trials first)" if cfg.objectives == ("iou",)
              else
              f"median rule on the validation IoU (Optuna's pruners work on one objective "
              f"only, and trial.report is refused in multi-objective studies): "
              f"after {cfg.prune_warmup} epochs and {cfg.prune_min_trials} finished trials, a "
              f"trial below the median of the finished trials at the same epoch is pruned"))),
        f"- trials: {len(df)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")",
        "- throughput: " + throughput_line(df, cfg),
        "", "Objective `iou` is the best validation IoU over the epochs; `test_iou` is the test "
        "IoU of that epoch's weights (reported, never optimised). `latency_ms`: median of one "
        "forward pass of one image, batch 1, on the trial's device (on CPU: the CPU time of "
        "one thread, which parallel workers do not inflate). `cached`: a network already "
        "measured (same canonical hash, dataset, budget, seed), whose result was reused.", "",
        "## Pareto front" if len(cfg.objectives) > 1 else
        f"## Best networks (one objective: the top {TOP_SINGLE}, written to pareto/)", "",
    ]
    if len(front):
        f = front.copy()
        f["file"] = [f"pareto/{p.name}" for p in paths]
        f["weights"] = [f"pareto/{p.with_suffix('.pt').name}" if p.with_suffix(".pt").is_file()
                        else "-" for p in paths]
        lines.append(markdown_table(f, ["number", "zoo", "iou", "test_iou", "params_m", "latency_ms",
                                "gflops", "hash", "file", "weights"]))
    else:
        lines.append("No complete trial yet.")
    zoo = df[df["zoo"].notna()].sort_values("number").drop_duplicates(subset="zoo")
    lines += ["", "## Zoo models (reference points)", ""]
    if len(zoo):
        lines.append(markdown_table(zoo, ["zoo", "number", "status", "iou", "test_iou", "params_m",
                                  "latency_ms", "hash"]))
    else:
        lines.append("None measured in this study (run without --no-zoo to measure them).")
    bad = df[df["status"].isin(["invalid", "too_costly", "failed", "died"])]
    lines += ["", "## Invalid, too costly and failed trials", ""]
    if len(bad):
        for _, r in bad.iterrows():
            first = str(r["reason"]).splitlines()[0] if r["reason"] else "-"
            lines.append(f"- trial {r['number']} ({r['status']}): {first}")
    else:
        lines.append("None.")
    lines += ["", "All trials, with their points and curves: `trials.csv`. Front: "
              "`pareto.png`. The weights of a front member (`pareto/<name>.pt`, when the search "
              "kept weights) work with `skipdsl predict`, `skipdsl export` and "
              "`skipdsl.load_checkpoint`. Re-run the same command to resume the study; "
              "`skipdsl search report DIR` rebuilds these files.", ""]
    p = out / "report.md"
    p.write_text("\n".join(lines))
    return p


def zoo_hashes(space, cfg: SearchConfig) -> dict[str, str]:
    """Canonical hashes of the zoo models as this search measures them (at its widths)."""
    from .objective import prepare
    from .study import zoo_points

    from skipdsl.errors import SpecError

    out = {}
    for name, point in zoo_points(space).items():
        try:
            out[name] = prepare(space, point, cfg, check_cost=False).hash
        except SpecError:  # a size target this model cannot reach: it is in no trial
            continue
    return out


def write_outputs(out: str | os.PathLike, study, space, cfg: SearchConfig,
                  settings: dict[str, Any]) -> dict[str, Path]:
    """Write trials.csv, pareto/*.yaml, pareto.png and report.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study, zoo_hashes(space, cfg))
    df.to_csv(out / "trials.csv", index=False)
    front = pareto_rows(df, cfg)
    paths = write_pareto(out, front, study, cfg, settings["study_name"])
    png = plot_front(out / "pareto.png", df, front, cfg)
    md = write_report(out, df, front, paths, cfg, settings)
    return {"trials": out / "trials.csv", "pareto": out / "pareto", "png": png, "report": md}
