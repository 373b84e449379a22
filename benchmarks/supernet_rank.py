"""Is the one-shot proxy any good? Inherited vs stand-alone IoU over a spread of the space.

Trains the space's supernet (SPOS, :mod:`skipdsl.search.supernet`) once, picks N sub-networks
spread over the space (a pool of uniform draws sorted by their number of open edges, taken at
evenly spaced ranks, plus the zoo topologies the space expresses: UNet#, UNet, UNet++, UNet 3+),
scores each with the supernet's weights (BN recalibrated), trains each from scratch with the
trainer (the ``cpu`` comparison recipe at the given epochs), and reports Kendall's tau and
Spearman's rho (scipy.stats) between inherited and stand-alone validation IoU, with a scatter
plot. Stand-alone results are appended to ``--work``/standalone.jsonl as they finish, so an
interrupted run resumes where it stopped.

    nice -n 10 python benchmarks/supernet_rank.py --out results/search
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch


def pick(net, n_random: int, pool: int, seed: int) -> list:
    """``n_random`` distinct candidates at evenly spaced ranks of ``pool`` uniform draws sorted
    by their open-edge count (so sparse and dense networks are both in), plus the zoo ones."""
    from skipdsl.errors import SpecError
    from skipdsl.search.oneshot import ZOO_REFERENCES
    from skipdsl.search.supernet import zoo_topology

    rng = random.Random(seed)
    out, seen = [], set()
    for z in ZOO_REFERENCES:
        try:
            c = net.candidate(zoo_topology(net, z), name=f"zoo_{z}")
        except SpecError:
            continue
        out.append((z, c))
        seen.add(c.hash)
    draws = {}
    for _ in range(pool):
        c = net.sample(rng)
        if c.hash not in seen:
            draws.setdefault(c.hash, c)
    ordered = sorted(draws.values(), key=lambda c: (len(c.edges), c.hash))
    step = len(ordered) / n_random
    for k in range(n_random):
        c = ordered[int((k + 0.5) * step)]
        out.append(("", c))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="oneshot4")
    ap.add_argument("--dataset", default="nuclei2d")
    ap.add_argument("--n", type=int, default=128, help="images (the cpu budget's 128)")
    ap.add_argument("--epochs", type=int, default=6, help="stand-alone epochs per candidate")
    ap.add_argument("--supernet-epochs", type=int, default=40)
    ap.add_argument("--width-scale", type=float, default=0.25)
    ap.add_argument("--random", type=int, default=20, help="candidates drawn from the space "
                    "(besides the zoo topologies)")
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/search")
    ap.add_argument("--work", default="runs/supernet_rank")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from scipy.stats import kendalltau, spearmanr

    from skipdsl.search.objective import record
    from skipdsl.search.supernet import inherited_score, train_supernet
    from skipdsl.train.trainer import train_and_evaluate

    t0, c0 = time.perf_counter(), time.process_time()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    base = {"dataset": args.dataset, "budget": "cpu", "n": args.n, "seed": args.seed,
            "threads": args.threads}
    run = train_supernet(args.space, {**base, "epochs": args.supernet_epochs},
                         width_scale=args.width_scale, log=print)
    sn_wall, sn_cpu = run.seconds, time.process_time() - c0
    print(f"supernet: {run.steps} steps in {sn_wall:.0f} s")
    cands = pick(run.net, args.random, args.pool, args.seed)
    rows = []
    ts, cs = time.perf_counter(), time.process_time()
    for zoo, c in cands:
        s = inherited_score(run, c, calib_batches=args.calib_batches)
        rows.append({"zoo": zoo, "hash": c.hash, "n_edges": len(c.edges),
                     "gated_off": ",".join(c.gated_off), "params": s["params"],
                     "inherited_iou": s["iou"], "spec": c.spec.to_dict()})
    score_wall, score_cpu = time.perf_counter() - ts, time.process_time() - cs
    print(f"scored {len(rows)} candidates with inherited weights in {score_wall:.0f} s")

    done = {}
    cache = work / "standalone.jsonl"
    if cache.is_file():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[(r["hash"], r["epochs"], args.n)] = r
    ts, cs = time.perf_counter(), time.process_time()
    for i, r in enumerate(rows):
        key = (r["hash"], args.epochs, args.n)
        if key not in done:
            tt, ct = time.perf_counter(), time.process_time()
            res = train_and_evaluate({**base, "model": r["spec"], "epochs": args.epochs,
                                      "widths": list(r["spec"]["grid"]["widths"]),
                                      "hd95": False, "throughput_iters": 1, "samples": 0})
            rec = record(res)
            done[key] = {"hash": r["hash"], "epochs": args.epochs, "status": res["status"],
                         "val_iou": rec["iou"], "test_iou": rec["test_iou"],
                         "wall_s": time.perf_counter() - tt, "cpu_s": time.process_time() - ct}
            with cache.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
        r.update({k: done[key][k] for k in ("val_iou", "test_iou", "wall_s", "cpu_s")})
        print(f"[{i + 1}/{len(rows)}] {r['zoo'] or r['hash']}: inherited {r['inherited_iou']:.4f}"
              f" stand-alone val {r['val_iou']:.4f} test {r['test_iou']:.4f}")
    sa_wall = time.perf_counter() - ts
    sa_cpu = sum(r["cpu_s"] for r in rows)
    total_wall = time.perf_counter() - t0

    inh = [r["inherited_iou"] for r in rows]
    val = [r["val_iou"] for r in rows]
    test = [r["test_iou"] for r in rows]
    kt, st = kendalltau(inh, val), spearmanr(inh, val)
    kt_t, st_t = kendalltau(inh, test), spearmanr(inh, test)
    kt_vt = kendalltau(val, test)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.scatter(inh, val, s=28, c=[r["n_edges"] for r in rows], cmap="viridis")
    for r in rows:
        if r["zoo"]:
            ax.annotate(r["zoo"], (r["inherited_iou"], r["val_iou"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 3))
    ax.set_xlabel("inherited validation IoU (supernet weights, BN recalibrated)")
    ax.set_ylabel(f"stand-alone validation IoU ({args.epochs} epochs)")
    ax.set_title(f"{args.space} on {args.dataset}: Kendall tau {kt.statistic:.2f}, "
                 f"Spearman rho {st.statistic:.2f} (N={len(rows)})", fontsize=9)
    ax.grid(alpha=0.3)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(min(r["n_edges"] for r in rows),
                                                                  max(r["n_edges"] for r in rows)))
    fig.colorbar(sm, ax=ax, label="open edges")
    fig.tight_layout()
    fig.savefig(out / "supernet_rank.png", dpi=120)
    plt.close(fig)

    cmd = "nice -n 10 python benchmarks/supernet_rank.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    cpu_h = (sn_cpu + score_cpu + sa_cpu) / 3600
    lines = [
        "# Is the one-shot proxy any good? Inherited vs stand-alone IoU", "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, 2 CPU cores shared with other jobs (run under "
        f"`nice -n 10`, one process, {args.threads} torch thread(s)); torch {torch.__version__}",
        f"- space `{args.space}` ({len(run.net.space.edges)} edge candidates), dataset "
        f"`{args.dataset}` (n={args.n}: {len(run.data.splits['train'])} train / "
        f"{len(run.data.splits['val'])} val / {len(run.data.splits['test'])} test images), "
        f"widths x{args.width_scale:g} ({run.net.spec.widths}), the `cpu` budget's recipe "
        "(64 px patches, batch 4, bce_dice, Adam + cosine)",
        f"- supernet: SPOS, {args.supernet_epochs} epochs = {run.steps} sampled-path steps, "
        f"{sn_wall:.0f} s wall; BN recalibrated on {args.calib_batches} training batches per "
        f"candidate; scoring {len(rows)} candidates took {score_wall:.0f} s",
        f"- stand-alone: each candidate trained from scratch for {args.epochs} epochs (seed "
        f"{args.seed}), best validation IoU; {sa_wall:.0f} s wall for the "
        f"{len(rows)} trainings",
        "- candidates: the zoo topologies the space expresses ("
        + ", ".join(r["zoo"] for r in rows if r["zoo"]) + "; "
        f"their edge sets at depth {run.net.spec.depth}, in the supernet's sum-of-projections "
        f"form) and {args.random} uniform draws at evenly spaced ranks of open-edge count among "
        f"{args.pool} draws",
        f"- wall time {total_wall / 60:.1f} min; CPU time {cpu_h:.2f} CPU hours (supernet "
        f"{sn_cpu / 3600:.2f}, scoring {score_cpu / 3600:.3f}, stand-alone {sa_cpu / 3600:.2f})",
        "", "## Result", "",
        "| pair | Kendall tau (p) | Spearman rho (p) |", "|---|---|---|",
        f"| inherited vs stand-alone validation IoU | {kt.statistic:.3f} ({kt.pvalue:.2g}) | "
        f"{st.statistic:.3f} ({st.pvalue:.2g}) |",
        f"| inherited vs stand-alone test IoU | {kt_t.statistic:.3f} ({kt_t.pvalue:.2g}) | "
        f"{st_t.statistic:.3f} ({st_t.pvalue:.2g}) |",
        f"| stand-alone validation vs test IoU (the noise floor) | {kt_vt.statistic:.3f} "
        f"({kt_vt.pvalue:.2g}) | - |",
        "", f"Goal: tau >= 0.6. Measured: tau = {kt.statistic:.3f} over N = {len(rows)}.", "",
        "![inherited vs stand-alone](supernet_rank.png)", "",
        "## Candidates", "",
        "| zoo | hash | open edges | gated-off nodes | params | inherited IoU | stand-alone "
        "val IoU | test IoU | train s |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["inherited_iou"]):
        lines.append(f"| {r['zoo'] or '-'} | {r['hash']} | {r['n_edges']} | "
                     f"{r['gated_off'] or '-'} | {r['params']} | {r['inherited_iou']:.4f} | "
                     f"{r['val_iou']:.4f} | {r['test_iou']:.4f} | {r['wall_s']:.0f} |")
    (out / "supernet_rank.md").write_text("\n".join(lines) + "\n")
    with (out / "supernet_rank.csv").open("w") as f:
        f.write("zoo,hash,n_edges,gated_off,params,inherited_iou,val_iou,test_iou,wall_s\n")
        for r in rows:
            f.write(f"{r['zoo']},{r['hash']},{r['n_edges']},\"{r['gated_off']}\",{r['params']},"
                    f"{r['inherited_iou']:.6f},{r['val_iou']:.6f},{r['test_iou']:.6f},"
                    f"{r['wall_s']:.1f}\n")
    print(f"tau {kt.statistic:.3f} rho {st.statistic:.3f}; wrote {out / 'supernet_rank.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
