"""Searched topologies against UNet#: the front of a one-shot search and the zoo's UNet#,
retrained with several seeds and compared with the Table-1 statistics.

Reads the Pareto specs of a ``skipdsl search run --strategy oneshot`` folder (``OUT/pareto``;
the zoo topologies among them are left out), trains each and the zoo's UNet# (its concat form,
at the budget's width scale) with every seed through the trainer, and compares them with
:mod:`skipdsl.bench.stats`: per-configuration means over seeds, and every searched network
against UNet# with the paired Wilcoxon test over test cases, Holm-corrected, plus the seed
rule of the Table-1 report (a difference is significant only when every seed agrees).
Per-trial results are kept under ``--work`` so an interrupted run resumes.

    nice -n 10 python benchmarks/searched_vs_unetsharp.py --search runs/oneshot-nuclei2d \\
        --dataset nuclei2d --seeds 0,1,2 --out results/search
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search", required=True, help="a one-shot search's --out folder")
    ap.add_argument("--dataset", default=None, help="default: the search's")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--reference", default="unetsharp", help="zoo model to compare against")
    ap.add_argument("--epochs", type=int, default=None, help="override the budget's")
    ap.add_argument("--n", type=int, default=None, help="override the budget's images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/search")
    ap.add_argument("--work", default=None, help="default: SEARCH/compare")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import skipdsl
    from skipdsl.bench.stats import pairwise, summarise
    from skipdsl.train.trainer import train_and_evaluate

    search = Path(args.search)
    settings = json.loads((search / "search.json").read_text())
    dataset = args.dataset or settings["config"]["dataset"]
    trials = pd.read_csv(search / "trials.csv")
    zoo_hashes = set(trials.loc[trials["zoo"].notna(), "hash"])
    models: dict[str, dict] = {}
    for f in sorted((search / "pareto").glob("*.yaml")):
        spec = skipdsl.load(f)
        if skipdsl.spec_hash(spec) in zoo_hashes:
            continue
        models[f.stem] = spec.to_dict()
    if not models:
        print(f"no searched network on the front of {search}", file=sys.stderr)
        return 1
    models[args.reference] = None  # the zoo model, scaled by the budget
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work or search / "compare")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, cases = [], []
    for name, spec in models.items():
        for seed in seeds:
            f = work / (f"{name}-{dataset}-{args.budget}-e{args.epochs or 'b'}-n{args.n or 'b'}"
                        f"-s{seed}")
            if not f.with_suffix(".json").is_file():
                cfg = {"model": spec if spec is not None else name, "dataset": dataset,
                       "budget": args.budget, "seed": seed, "threads": args.threads,
                       "hd95": False, "throughput_iters": 1, "samples": 0,
                       "epochs": args.epochs, "n": args.n}
                if spec is not None:  # measured widths: the budget does not scale them again
                    cfg["widths"] = list(spec["grid"]["widths"])
                r = train_and_evaluate(cfg)
                r["cases"].assign(model=name, dataset=dataset, seed=seed,
                                  deep_supervision=False).to_csv(f.with_suffix(".csv"),
                                                                 index=False)
                f.with_suffix(".json").write_text(json.dumps(
                    {k: r[k] for k in ("status", "iou", "dice", "params", "gflops",
                                       "train_seconds")} | {"model": name, "seed": seed}))
            rec = json.loads(f.with_suffix(".json").read_text())
            rows.append(rec)
            cases.append(pd.read_csv(f.with_suffix(".csv")))
            print(f"{name} seed {seed}: test IoU {rec['iou']:.4f}, {rec['params']} params")
    wall = time.perf_counter() - t0
    cases_df = pd.concat(cases, ignore_index=True)
    summary = summarise(cases_df, dataset)
    pairs = pairwise(cases_df, dataset)
    params = {r["model"]: r["params"] for r in rows}
    ref = args.reference
    lines = [
        f"# Searched topologies vs {ref} on {dataset}", "",
        f"- command: `nice -n 10 python benchmarks/searched_vs_unetsharp.py "
        f"{' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}`",
        f"- search: `{settings.get('command')}`",
        f"- budget `{args.budget}`, seeds {seeds}; the searched networks at their measured "
        f"widths, {ref} (concat, the zoo's) at the budget's width scale; machine: 2 CPU cores "
        f"shared with other jobs, {args.threads} torch thread(s); wall time of the trainings "
        f"run here: {wall / 60:.1f} min (cached trials not counted)",
        "", "## Test IoU (mean over seeds)", "",
        "| network | params | test IoU | 95% CI over seeds | seed std |", "|---|---|---|---|---|"]
    for _, r in summary.sort_values("iou", ascending=False).iterrows():
        lines.append(f"| {r['config']} | {params.get(r['config'], '-')} | {r['iou']:.4f} | "
                     f"{r['iou_ci_lo']:.4f} - {r['iou_ci_hi']:.4f} | {r['iou_seed_std']:.4f} |")
    lines += ["", f"## Each searched network against {ref}", "",
              "Paired Wilcoxon over test cases (per-case IoU averaged over seeds), Holm-"
              "corrected over all pairs; significant = p_holm < 0.05 and every seed of the "
              "better one above every seed of the other (skipdsl.bench.stats.pairwise).", "",
              "`test IoU diff`: difference of the means over seeds (the table above); `paired "
              "diff`: mean over the cases both score of the seed-averaged per-case IoU (cases "
              "empty in prediction and ground truth left out), what the test compares.", "",
              f"| network | params | vs {ref} params | test IoU diff (searched - {ref}) | "
              "paired diff | p_holm | significant |", "|---|---|---|---|---|---|---|"]
    better = []
    mean = dict(zip(summary["config"], summary["iou"]))
    for name in models:
        if name == ref:
            continue
        p = pairs[((pairs["a"] == name) & (pairs["b"] == ref))
                  | ((pairs["a"] == ref) & (pairs["b"] == name))].iloc[0]
        paired = p["mean_diff"] if p["a"] == name else -p["mean_diff"]
        diff = mean[name] - mean[ref]
        lines.append(f"| {name} | {params[name]} | {params[name] / params[ref]:.2f}x | "
                     f"{diff:+.4f} | {paired:+.4f} | {p['p_holm']:.3g} | "
                     f"{bool(p['significant'])} |")
        if diff > 0 and params[name] <= params[ref]:
            # significant in its favour only when the paired test and the seeds agree
            better.append((name, bool(p["significant"]) and p["a"] == name))
    lines += ["", f"Searched networks with a higher test IoU than {ref} at no more parameters: "
              f"{len(better)} of {len(models) - 1}"
              + (" (" + ", ".join(n + (" (significant)" if sig else " (not significant)")
                                  for n, sig in better) + ")" if better else "") + "."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"searched_vs_{ref}_{dataset}.md"
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
