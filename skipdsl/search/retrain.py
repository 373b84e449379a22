"""``skipdsl search retrain``: a search's best networks against the zoo, at equal size, seeds.

A search ranks networks on one seed's validation IoU; what a user needs to know is whether the
best of them beats the published networks when everything else is equal. :func:`retrain_top`
runs that comparison with the benchmark harness, so the answer carries Table 1's statistics:

1. **Selection** on the search's dataset: the search's ``top`` networks (``DIR/pareto/*.yaml``,
   best first) and the ``zoo`` models, each scaled to the same size (``params``, default UNet#'s
   at the budget), trained with every seed; the winner is the searched network with the highest
   mean *validation* IoU (best epoch) over the seeds: the test split never selects.
2. **Transfer**: the winner and the zoo on the ``transfer`` datasets, same seeds and size,
   without searching again.

Everything is one ``bench run`` output folder (``OUT``), so ``OUT/report.md`` holds the
per-dataset statistics (paired Wilcoxon over test cases, Holm, seeds); finished trials of
``reuse`` folders with the same keys (the zoo at the same size and recipe, e.g.
``results/cpu-zoo-matched``) are copied instead of trained again. ``OUT/winner.yaml`` and
``OUT/winner.pt`` are the winner's spec and its weights (the best-validation seed on the search
dataset); ``OUT/retrain.md`` says what was selected and why.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

ZOO = ("unet", "unetpp", "unet3p", "unetsharp")


def top_specs(search_dir: str | Path, top: int) -> list[Path]:
    """The search's ``top`` best networks as spec files, best first (``pareto/``, ordered by the
    search's objective value in ``trials.csv``)."""
    import pandas as pd

    from .study import SearchError

    d = Path(search_dir)
    files = sorted((d / "pareto").glob("*.yaml"))
    if not files:
        raise SearchError(f"{d}/pareto/ holds no spec: is {d} the --out of a finished "
                          "'skipdsl search run'? (`skipdsl search report DIR` rewrites it)")
    df = pd.read_csv(d / "trials.csv")
    rank = {f"t{int(r['number']):04d}": float(r["iou"]) for _, r in df.iterrows()
            if r["status"] == "complete"}
    files.sort(key=lambda p: -rank.get(p.name.split("-")[0], float("-inf")))
    return files[:top]


def best_val(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per trial key: the best validation IoU over its epochs (the curve in its result)."""
    out_map = {}
    for r in results:
        curve = r.get("curve") or []
        vals = [float(c["val_iou"]) for c in curve if c.get("val_iou") is not None]
        out_map[r["trial_key"]] = max(vals) if vals else float("nan")
    return out_map


def retrain_top(search_dir: str | Path, *, out: str | Path, dataset: str | None = None,
                top: int = 3, seeds: Sequence[int] = (0, 1, 2),
                zoo: Sequence[str] = ZOO, transfer: Sequence[str] = (),
                budget: str | None = None, params: str = "unetsharp",
                reuse: Sequence[str | Path] = (), backend: str = "ray",
                overrides: dict[str, Any] | None = None, num_cpus: int | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selection and the transfer (see the module doc); returns what was selected."""
    import pandas as pd

    from skipdsl.bench import report, runner, store
    from skipdsl.sizing import parse_size

    from .study import SearchError

    search_dir = Path(search_dir)
    settings = json.loads((search_dir / "search.json").read_text())
    cfg = settings["config"]
    dataset = dataset or cfg["dataset"]
    budget = budget or cfg["budget"]
    specs = top_specs(search_dir, top)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = parse_size(params, "params")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    names = [str(p) for p in specs]

    def sweep(models: list[str], datasets: list[str], weights: bool) -> None:
        trials = runner.plan(models, datasets, seeds=seeds, deep_supervision="off",
                             budget=budget, overrides={**over, "save_weights": weights},
                             size=size)
        if reuse:
            for src, n in store.reuse_trials(out, [t.key for t in trials], reuse).items():
                log(f"reused {n} finished trial(s) from {src}")
        s = runner.run_sweep(trials, out, backend=backend, num_cpus=num_cpus, progress=False)
        log(f"{len(s.ran)} trained ({len(s.failed)} failed), {len(s.skipped)} already there")

    log(f"selection on {dataset}: {len(specs)} searched network(s) and {', '.join(zoo)}, seeds "
        f"{list(seeds)}, every network at {params} (+-3%)")
    sweep(names + list(zoo), [dataset], weights=True)
    results = [r for r in store.load_results(out) if r.get("status") == "ok"]
    val = best_val(results)
    spec_names = {p: _spec_name(p) for p in specs}
    rows = []
    for p in specs:
        mine = [r for r in results if r.get("model") == spec_names[p] and
                r.get("dataset") == dataset]
        if not mine:
            continue
        rows.append({"spec": p.name, "model": spec_names[p],
                     "val_iou": sum(val[r["trial_key"]] for r in mine) / len(mine),
                     "test_iou": sum(float(r["iou"]) for r in mine) / len(mine),
                     "seeds": len(mine), "params": mine[0].get("params")})
    if not rows:
        raise SearchError(f"no searched network finished its selection trials in {out} (see "
                          "results.csv)")
    table = pd.DataFrame(rows).sort_values("val_iou", ascending=False)
    winner = table.iloc[0]
    win_spec = next(p for p in specs if p.name == winner["spec"])
    shutil.copyfile(win_spec, out / "winner.yaml")
    best = max((r for r in results if r.get("model") == winner["model"]
                and r.get("dataset") == dataset), key=lambda r: val[r["trial_key"]])
    pt = store.trial_dir(out, best["trial_key"]) / "model.pt"
    if pt.is_file():
        shutil.copyfile(pt, out / "winner.pt")
    log(f"winner: {winner['model']} ({winner['spec']}), mean validation IoU "
        f"{winner['val_iou']:.4f} over {winner['seeds']} seed(s)")
    if transfer:
        log(f"transfer to {', '.join(transfer)}: the winner and {', '.join(zoo)}")
        sweep([str(out / "winner.yaml"), *zoo], list(transfer), weights=False)
    md = report.build_report(out)
    _write_summary(out / "retrain.md", table, winner, best, dataset, transfer, seeds, params,
                   search_dir, reuse)
    return {"table": table, "winner": dict(winner), "report": md}


def _spec_name(path: Path) -> str:
    from skipdsl.spec import load

    return load(path).name


def _write_summary(path: Path, table, winner, best: dict, dataset: str, transfer, seeds,
                   params: str, search_dir: Path, reuse) -> None:
    from .report import markdown_table

    lines = ["# Retraining a search's best networks against the zoo", "",
             f"- search: `{search_dir}`; selection on `{dataset}` with seeds {list(seeds)}, "
             f"every network at `{params}` (+-3%), deep supervision off",
             f"- winner (highest mean validation IoU, best epoch; the test split does not "
             f"select): `{winner['model']}` (`{winner['spec']}` -> `winner.yaml`; weights of "
             f"its seed {best.get('seed')} -> `winner.pt`)",
             f"- transfer without searching again: {', '.join(transfer) or 'none'}",
             f"- trials reused from: {', '.join(str(r) for r in reuse) or 'none'}", "",
             markdown_table(table, ["spec", "model", "seeds", "params", "val_iou", "test_iou"]),
             "", "Statistics (per dataset, paired over test cases, Holm, seeds): `report.md`.",
             ""]
    path.write_text("\n".join(lines))
