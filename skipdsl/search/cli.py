"""``skipdsl search run|report|space``: architecture search over a space of skip topologies.

    skipdsl search run [--space FILE] --dataset NAME --trials N --budget smoke|short|paper \\
        --out DIR [--backend optuna|ray] [--storage URL]
    skipdsl search run --strategy oneshot [--space oneshot4] --dataset NAME --trials N \\
        --top-k K --out DIR    (one supernet ranks N sub-networks; K retrained: .oneshot)
    skipdsl search run --strategy halving [--space skip5] --dataset NAME --trials N \
        --budget cpu --out DIR [--params unetsharp]   (TPE + successive halving, equal size)
    skipdsl search report DIR
    skipdsl search space [FILE]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from ..errors import DataError, SpecError


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, found {n}")
    return n


def add_subparsers(sub) -> None:
    """Add ``run``, ``report`` and ``space`` to an argparse subparsers object."""
    from .objective import DEFAULT_TRAINER, OBJECTIVES
    from .study import HEARTBEAT_S

    r = sub.add_parser("run", help="run (or resume) a search; writes trials.csv, pareto/, "
                       "pareto.png, report.md under --out",
                       description="Run or resume an architecture search. Re-running the same "
                       "command resumes the study until it holds --trials trials.")
    r.add_argument("--strategy", default="multitrial",
                   choices=("multitrial", "halving", "oneshot"),
                   help="multitrial (default): every trial trains its network; halving: "
                   "multitrial with the validation IoU as the one objective, every network at "
                   "one size (--params, default unetsharp), TPE and successive halving "
                   "(--prune hyperband for Hyperband), space skip5; oneshot: one "
                   "supernet over the space's edges ranks --trials sub-networks by inherited "
                   "weights, then the --top-k best are trained from scratch")
    r.add_argument("--space", default=None,
                   help="space file or shipped space name (default: 'default', the UNet# grid "
                   "superset)")
    r.add_argument("--dataset", required=True, help="dataset name (skipdsl.data.list_datasets)")
    r.add_argument("--trials", type=_positive_int, required=True,
                   help="networks the study should evaluate (all workers together; invalid and "
                   "too costly samples are recorded but not counted)")
    r.add_argument("--budget", default="smoke", choices=("smoke", "quick", "cpu", "short", "paper"),
                   help="the trainer's budget (skipdsl.train.trainer.BUDGETS) with the space's "
                   "settings for it (budgets: in the space file; cpu: the Table-1 comparison "
                   "recipe)")
    r.add_argument("--out", required=True, help="output folder (and SQLite study by default)")
    r.add_argument("--backend", default="optuna", choices=("optuna", "ray"))
    r.add_argument("--storage", default=None,
                   help="study database URL, e.g. postgresql://user:pass@host:5432/db, shared "
                   "by parallel workers (default: sqlite:///OUT/study.db)")
    r.add_argument("--study", default=None, help="study name (default: from space, dataset, "
                   "budget and seed)")
    r.add_argument("--objectives", default="iou,params,latency",
                   help=f"comma list from {', '.join(OBJECTIVES)} (default iou,params,latency); "
                   "one objective uses TPE, several NSGA-II")
    r.add_argument("--sampler", default="auto", choices=("auto", "nsga2", "tpe", "random"))
    r.add_argument("--population", type=_positive_int, default=8,
                   help="NSGA-II population size (default 8)")
    r.add_argument("--sampler-seed", type=int, default=None,
                   help="sampler seed (default: random, so parallel workers sample differently)")
    r.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    r.add_argument("--prune", default=None,
                   choices=("median", "halving", "hyperband", "none"),
                   help="prune poor trials on validation IoU: median rule (multitrial's "
                   "default), Optuna's successive halving (halving's default) or Hyperband; "
                   "ASHA with Ray")
    r.add_argument("--reduction-factor", type=int, default=3,
                   help="halving / hyperband: 1 in this many trials goes on to the next rung (3)")
    r.add_argument("--params", default=None, metavar="TARGET",
                   help="scale every candidate to this parameter count before it trains: 670k, "
                   "0.67M, 670000 or a model name (its count at --budget on --dataset); "
                   "default with --strategy halving: unetsharp")
    r.add_argument("--prune-warmup", type=int, default=2,
                   help="epochs before pruning; halving / hyperband: the epochs before the "
                   "first rung, at least 2 (2; skip5 on nuclei2d: 4, see proxy-check)")
    r.add_argument("--prune-min-trials", type=int, default=4,
                   help="finished trials before pruning starts (4)")
    r.add_argument("--width-scale", type=float, default=None,
                   help="train at the space's widths x this (default: the space's value for "
                   "the budget: smoke 0.125, short 0.5, paper 1)")
    r.add_argument("--max-gflops", type=float, default=None,
                   help="do not train networks whose forward pass costs more (status too_costly; "
                   "default: the space's value for the budget, smoke 2; 0 = no cap)")
    r.add_argument("--no-zoo", action="store_true",
                   help="do not queue the zoo models (the front's reference points) first")
    r.add_argument("--no-weights", action="store_true",
                   help="keep no checkpoints (default: OUT/checkpoints/<key>.pt per trained "
                   "trial, OUT/pareto/<name>.pt with each Pareto spec)")
    r.add_argument("--epochs", type=_positive_int, default=None,
                   help="override the budget's (default smoke search: 5; else the trainer's)")
    r.add_argument("--n", type=_positive_int, default=None,
                   help="images per dataset (override the budget's)")
    r.add_argument("--data-root", default=None, help="folder of the real datasets")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads per trial")
    r.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    r.add_argument("--fast", nargs="?", const="on", default=None, metavar="PARTS",
                   help="trainer fast path (bare --fast = on: bf16, channels_last, "
                   "torch.compile, CUDA-graph evaluation on CUDA, none on CPU); off, or parts: "
                   "bf16,channels_last,compile,cuda_graphs. Not part of a trial's cache key")
    r.add_argument("--latency-size", type=_positive_int, default=None,
                   help="image side for the latency objective (default 96 in 2D, 64 in 3D)")
    r.add_argument("--latency-iters", type=_positive_int, default=None,
                   help="timed forward passes per latency measurement (median; default 20, "
                   "oneshot 5)")
    r.add_argument("--workers", type=_positive_int, default=None,
                   help="optuna backend: trial processes on this machine (default: one per core "
                   "up to 4 on CPU, each single-threaded; 1 with a GPU)")
    r.add_argument("--trainer", default=DEFAULT_TRAINER,
                   help="module:function with train_and_evaluate's signature")
    r.add_argument("--heartbeat", type=_positive_int, default=HEARTBEAT_S, metavar="S",
                   help=f"seconds between a running trial's heartbeats ({HEARTBEAT_S})")
    r.add_argument("--grace", type=_positive_int, default=None, metavar="S",
                   help="a trial with no heartbeat for S seconds (default 3 x --heartbeat) "
                   "belongs to a dead worker: it is failed as 'died' with the reason, run "
                   "again once, and not counted")
    o = r.add_argument_group("oneshot strategy (default space: oneshot4; --trials = "
                             "sub-networks ranked with the supernet's weights)")
    o.add_argument("--top-k", type=int, default=4,
                   help="members of the inherited Pareto front (highest inherited IoU first) "
                   "retrained from scratch (default 4)")
    o.add_argument("--supernet-epochs", type=int, default=None,
                   help="supernet training epochs (default: 3 x the budget's epochs)")
    o.add_argument("--calib-batches", type=_positive_int, default=4,
                   help="training batches that recalibrate BatchNorm per candidate (4)")
    o.add_argument("--no-zoo-retrain", action="store_true",
                   help="do not retrain the zoo topologies (UNet#, UNet, ...) as references")
    g = r.add_argument_group("ray backend")
    g.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    g.add_argument("--num-cpus", type=_positive_int, default=None,
                   help="CPUs of the local Ray (default: all)")
    g.add_argument("--cpus-per-trial", type=float, default=1)
    g.add_argument("--gpus-per-trial", type=float, default=0,
                   help="fractional GPUs per trial, e.g. 0.25 (memory capped to that share)")
    r.set_defaults(search_func=_run)

    c = sub.add_parser("proxy-check", help="train N networks of a space stand-alone at one "
                       "size and measure how well cheap proxies rank them",
                       description="Train --networks points of SPACE stand-alone (the zoo's "
                       "first, then uniform random ones), all at one parameter count, and "
                       "report Kendall's tau, tau in the better half and top-5 overlap of each "
                       "proxy (early-epoch IoU, size, edges, SynFlow, NASWOT) against their "
                       "validation and test IoU. Resumable: re-run the same command.")
    c.add_argument("space", help="space file or shipped name (e.g. skip5)")
    c.add_argument("--dataset", required=True)
    c.add_argument("--networks", type=_positive_int, required=True)
    c.add_argument("--budget", default="cpu", choices=("smoke", "quick", "cpu", "short", "paper"))
    c.add_argument("--params", default="unetsharp", metavar="TARGET",
                   help="the one parameter count (default unetsharp: UNet#'s at the budget)")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0, help="training seed (0)")
    c.add_argument("--sampler-seed", type=int, default=0, help="which random points (0)")
    c.add_argument("--workers", type=_positive_int, default=None)
    c.add_argument("--epochs", type=_positive_int, default=None)
    c.add_argument("--n", type=_positive_int, default=None)
    c.add_argument("--data-root", default=None)
    c.add_argument("--trainer", default=DEFAULT_TRAINER)
    c.add_argument("--no-weights", action="store_true")
    c.add_argument("--supernet-epochs", type=int, default=0,
                   help="also train the space's one-shot supernet this many epochs and score "
                   "each network's inherited IoU (0: leave that proxy out)")
    c.set_defaults(search_func=_proxy_check)

    t = sub.add_parser("retrain", help="train a search's best networks and the zoo at equal "
                       "size with several seeds, select on validation IoU, transfer the winner",
                       description="Selection: the search's --top networks and the --zoo "
                       "models at one size (--params), every seed, on the search's dataset; the "
                       "winner has the best mean validation IoU. Transfer: the winner and the "
                       "zoo on --transfer datasets. One bench output folder (report.md with "
                       "the statistics), winner.yaml, winner.pt, retrain.md.")
    t.add_argument("dir", help="the --out folder of a finished search")
    t.add_argument("--out", required=True)
    t.add_argument("--top", type=_positive_int, default=3)
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--zoo", default="unet,unetpp,unet3p,unetsharp")
    t.add_argument("--transfer", default="", help="datasets for the winner, e.g. mni2d,liver2d")
    t.add_argument("--dataset", default=None, help="selection dataset (default: the search's)")
    t.add_argument("--budget", default=None, help="default: the search's")
    t.add_argument("--params", default="unetsharp", metavar="TARGET")
    t.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="bench output folder whose finished trials with the same keys are "
                   "copied, not trained again (e.g. results/cpu-zoo-matched)")
    t.add_argument("--backend", default="ray", choices=("ray", "local"))
    t.add_argument("--num-cpus", type=_positive_int, default=None)
    t.add_argument("--epochs", type=_positive_int, default=None)
    t.add_argument("--n", type=_positive_int, default=None)
    t.add_argument("--data-root", default=None)
    t.set_defaults(search_func=_retrain)

    p = sub.add_parser("report", help="rebuild trials.csv, pareto/, pareto.png, report.md of DIR")
    p.add_argument("dir")
    p.add_argument("--storage", default=None,
                   help="study URL when it holds a password (not stored in DIR/search.json)")
    p.set_defaults(search_func=_report)

    s = sub.add_parser("space", help="show a search space: its dimensions, size, zoo points")
    s.add_argument("space", nargs="?", default=None)
    s.set_defaults(search_func=_space)


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False,
                   width=None if sys.stderr.isatty() else 140)


def _run(args) -> int:
    from ..fast import normalize
    from .runner import run_search
    from .study import SearchError

    con = _console()
    overrides = {"epochs": args.epochs, "n": args.n, "data_root": args.data_root,
                 "threads": args.threads, "device": args.device,
                 "fast": None if args.fast is None else normalize(args.fast)}
    if args.strategy == "oneshot":
        return _run_oneshot(args, overrides, con)
    if args.strategy == "halving":
        if args.objectives != "iou,params,latency" and args.objectives != "iou":
            raise SearchError("--strategy halving optimises the validation IoU alone (size is "
                              "the --params constraint); leave out --objectives")
        args.objectives = "iou"
        args.prune = args.prune or "halving"
        args.params = args.params or "unetsharp"
        args.space = args.space or "skip5"
        args.sampler = "tpe" if args.sampler == "auto" else args.sampler
    summary = run_search(
        dataset=args.dataset, trials=args.trials, out=args.out, space=args.space,
        budget=args.budget, seed=args.seed,
        objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
        backend=args.backend, storage=args.storage, study_name=args.study,
        sampler=args.sampler, population=args.population, sampler_seed=args.sampler_seed,
        prune=args.prune or "median", prune_warmup=args.prune_warmup,
        prune_min_trials=args.prune_min_trials, reduction_factor=args.reduction_factor,
        params=args.params, width_scale=args.width_scale,
        max_gflops=args.max_gflops,
        zoo=not args.no_zoo, trainer=args.trainer, overrides=overrides,
        latency_size=args.latency_size,
        latency_iters=args.latency_iters or 20,
        workers=args.workers, address=args.address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        num_cpus=args.num_cpus, heartbeat=args.heartbeat, grace=args.grace,
        weights=not args.no_weights, command=_command(), log=con.print)
    states = ", ".join(f"{k} {v}" for k, v in sorted(summary.states.items()))
    con.print(f"[green]done[/]: {summary.ran} trial(s) run here; the study holds "
              f"{summary.finished} evaluated networks ({states}); {summary.seconds:.0f} s")
    return 0


def _run_oneshot(args, overrides: dict, con) -> int:
    from .oneshot import run_oneshot
    from .study import SearchError

    multi = [f for f, v in (("--backend ray", args.backend != "optuna"),
                            ("--workers", args.workers), ("--address", args.address)) if v]
    if multi:
        raise SearchError(f"{', '.join(multi)}: multi-trial settings; the oneshot strategy "
                          "runs in one process")
    s = run_oneshot(
        dataset=args.dataset, candidates=args.trials, out=args.out, space=args.space,
        budget=args.budget, seed=args.seed,
        objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
        top_k=args.top_k, retrain_zoo=not args.no_zoo_retrain,
        supernet_epochs=args.supernet_epochs, calib_batches=args.calib_batches,
        population=args.population, sampler_seed=args.sampler_seed,
        width_scale=args.width_scale, storage=args.storage, study_name=args.study,
        zoo=not args.no_zoo, overrides=overrides, latency_size=args.latency_size,
        latency_iters=args.latency_iters or 5, weights=not args.no_weights,
        command=_command(), log=con.print)
    times = ", ".join(f"{k} {v.get('wall_s', 0):.0f} s" for k, v in s.phases.items() if v)
    con.print(f"[green]done[/]: {s.ranked} sub-networks ranked with inherited weights, "
              f"{s.retrained} retrained from scratch ({times}); {s.seconds:.0f} s")
    return 0


def _proxy_check(args) -> int:
    from .proxy import run_proxy_check

    con = _console()
    res = run_proxy_check(args.space, dataset=args.dataset, networks=args.networks,
                          out=args.out, budget=args.budget, params=args.params,
                          seed=args.seed, sampler_seed=args.sampler_seed, workers=args.workers,
                          trainer=args.trainer,
                          overrides={"epochs": args.epochs, "n": args.n,
                                     "data_root": args.data_root},
                          supernet_epochs=args.supernet_epochs,
                          weights=not args.no_weights, log=con.print, command=_command())
    ag = res["agreement"]
    for _, r in ag[ag["against"] == "iou"].iterrows():
        con.print(f"{r['proxy']:>15}: tau {r['tau']:+.3f}, top half {r['tau_top_half']:+.3f}, "
                  f"top-5 {r['top5']:.0f} (n {r['n']})")
    con.print(f"wrote {args.out}/proxy-check.md and proxies.csv")
    return 0


def _retrain(args) -> int:
    from .retrain import retrain_top

    con = _console()
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # noqa: E731
    res = retrain_top(args.dir, out=args.out, dataset=args.dataset, top=args.top,
                      seeds=[int(x) for x in split(args.seeds)], zoo=split(args.zoo),
                      transfer=split(args.transfer), budget=args.budget, params=args.params,
                      reuse=args.reuse, backend=args.backend, num_cpus=args.num_cpus,
                      overrides={"epochs": args.epochs, "n": args.n,
                                 "data_root": args.data_root},
                      log=lambda s: con.print(s, highlight=False))
    con.print(f"wrote {args.out}/retrain.md, winner.yaml, report.md ({res['winner']['model']})")
    return 0


def _command() -> str:
    """The command line as typed, with any password in a URL hidden."""
    from .study import redact

    argv = ["skipdsl"] + sys.argv[1:] if sys.argv else ["skipdsl"]
    return " ".join(shlex.quote(redact(a) if "://" in a else a) for a in argv)


def _report(args) -> int:
    from .runner import rebuild_outputs

    files = rebuild_outputs(args.dir, storage=args.storage)
    _console().print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _space(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .space import load_space
    from .study import zoo_points

    sp = load_space(args.space)
    t = Table(title=f"search space '{sp.name}' ({sp.source}): {sp.size()} points")
    t.add_column("parameter")
    t.add_column("choices")
    for name, ch in sp.dimensions():
        t.add_row(name, ", ".join(str(c) for c in ch))
    con = Console()
    con.print(t)
    for name in ("smoke", "short", "paper"):
        b = sp.budget(name)
        extra = ", ".join(f"{k} {v}" for k, v in b.model_dump(exclude_none=True).items()
                          if k != "width_scale")
        con.print(f"budget {name}: widths x{b.width_scale:g}" + (f", {extra}" if extra else ""))
    zoo = zoo_points(sp)
    con.print(f"zoo models in it: {', '.join(zoo) or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skipdsl search",
                                description="Architecture search over skip topologies.")
    sub = p.add_subparsers(dest="command", required=True)
    add_subparsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``skipdsl search ...``; user errors print one message and return 2."""
    from .study import SearchError

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.search_func(args) or 0)
    except (SpecError, DataError, SearchError, ValueError) as e:
        _console().print(f"[red]error[/red] {e}")
        return 2
    except KeyboardInterrupt:
        _console().print("interrupted: re-run the same command to resume the study")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
