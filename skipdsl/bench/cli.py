"""The ``bench`` command: run the zoo x datasets sweep, rebuild reports, list, show, speed.

    bench run --datasets all                     (the zoo, quick budget -> runs/bench-quick)
    bench run --budget cpu --seeds 0,1,2 --out results/cpu-zoo   (Table 1 on 2 CPU cores)
    bench report runs/bench-quick
    bench list
    bench datasets show nuclei2d -o nuclei.png
    bench speed --models unetsharp,my_spec.yaml   (train/infer img/s and peak memory)

The project's own benchmarks (the GPU suite, trials per hour, the races against hand-written
models: speed and training-step memory) are scripts in the repository's benchmarks/ folder, not commands of the package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _widths(text: str | None):
    if text is None:
        return None
    parts = _csv(text)
    return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


def build_parser() -> argparse.ArgumentParser:
    from skipdsl.train.trainer import BUDGETS

    p = argparse.ArgumentParser(prog="bench", description="Train and evaluate the skipdsl zoo "
                                "on segmentation datasets, in parallel on Ray Tune.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a sweep (finished trials in OUT are skipped)")
    r.add_argument("--task", default="semantic", choices=["semantic", "instance"],
                   help="semantic (default: the segmentation zoo) or instance (Mask R-CNN over "
                   "a feature-pyramid spec: --models maskrcnn_fpn,maskrcnn_pp,maskrcnn_3p,"
                   "maskrcnn_sharp; recipe: skipdsl.train.instance)")
    r.add_argument("--models", default="all",
                   help="comma-separated zoo names, library baselines (bench list) or YAML "
                   "spec paths; 'all' (default: the zoo), 'baselines' (every baseline)")
    r.add_argument("--datasets", default="all", help="comma-separated names, or 'all' (default)")
    r.add_argument("--budget", default="quick", choices=list(BUDGETS),
                   help="quick (default: the whole zoo on every built-in dataset in <= 20 min "
                   "on 2 CPU cores), cpu (the Table-1 comparison on 2 CPU cores: --seeds "
                   "0,1,2), smoke (tests), short, paper (see skipdsl.train.trainer.BUDGETS)")
    r.add_argument("--out", default=None, help="output folder (default runs/bench-BUDGET)")
    r.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    r.add_argument("--deep-supervision", "--ds", dest="deep_supervision", default="both",
                   choices=["off", "on", "both"],
                   help="deep supervision trials (default both; single-head models: off only)")
    r.add_argument("--backend", default="ray", choices=["ray", "local"],
                   help="ray (default: Ray Tune) or local (sequential, no Ray; debugging)")
    r.add_argument("--address", default=None,
                   help="join a running Ray cluster (host:port or 'auto') instead of a local one")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    r.add_argument("--cpus-per-trial", type=float, default=1.0)
    r.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; fractions pack trials (0.25: four per GPU)")
    r.add_argument("--data-root", default=None, help="folder of real datasets")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    r.add_argument("--n", type=int, default=None, help="override the budget's images per set")
    r.add_argument("--widths", default=None, help="override widths: a base (8) or a list")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--params", default=None, metavar="TARGET",
                      help="every model at the same size: its widths scaled by one factor "
                      "so that its inference network has TARGET parameters +-3%% for each "
                      "dataset's channels (670k, 0.67M, 670000, or a model name: that model's "
                      "count at this budget, e.g. --params unetsharp); replaces the budget's "
                      "width scale (skipdsl.sizing)")
    size.add_argument("--flops", default=None, metavar="TARGET",
                      help="as --params, for forward GFLOPs per image at the evaluation size "
                      "(0.5, or a model name)")
    r.add_argument("--backbone", default=None,
                   help="torchvision encoder under every model (2D): vgg16_bn, resnet34, "
                   "resnet50, resnet101; random init (weights only from a spec's local file)")
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--lr", type=float, default=None)
    r.add_argument("--loss", default=None, help="override the specs' losses")
    r.add_argument("--hd95", action=argparse.BooleanOptionalAction, default=None,
                   help="measure HD95 (default: short and paper budgets)")
    r.add_argument("--cgm", action=argparse.BooleanOptionalAction, default=None,
                   help="classification-guided module on the heads that name one")
    r.add_argument("--head-init", choices=("prior", "he"), default=None,
                   help="prior (default): zero-mean head weights, bias = log-odds of the "
                   "training foreground; he: the papers' exact init")
    r.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    r.add_argument("--fast", nargs="?", const="on", default=None, metavar="PARTS",
                   help="fast path, over the specs' fast: (bare --fast = on: bf16, "
                   "channels_last, torch.compile, CUDA-graph inference on CUDA, none on CPU); "
                   "off, or parts: bf16,channels_last,compile,cuda_graphs (skipdsl/fast.py)")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on CUDA, and on the CPU for 2D "
                   "data); --no-channels-last keeps a sweep's earlier contiguous runs' layout "
                   "(not part of the trial key)")
    r.add_argument("--recompute", default=None, choices=["none", "resample", "split"],
                   help="resample: the backward pass recomputes resampled tensors and "
                   "concatenations instead of storing them (less memory, the same gradients); "
                   "split: also splits the first convolution of each concatenating node per "
                   "input (least memory; gradients equal to float rounding); not part of the "
                   "trial key; default: the specs' recompute, else none")
    r.add_argument("--retry-failed", action="store_true", help="re-run failed trials")
    r.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="copy finished trials with the same keys from another output folder "
                   "(same network, data, budget, seed, size and settings) instead of training "
                   "them again; repeatable")
    r.add_argument("--no-weights", action="store_true",
                   help="keep no model.pt/spec.yaml per trial (saves disk)")
    r.add_argument("--no-report", action="store_true", help="skip report.md and plots")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--strict", action="store_true", help="exit 1 when a trial failed")
    r.add_argument("--verbose", "-v", action="store_true", help="show Ray/Tune output")

    rep = sub.add_parser("report", help="rebuild results.csv, report.md and plots of OUT")
    rep.add_argument("out")
    rep.add_argument("--no-plots", action="store_true")

    cp = sub.add_parser("compare", help="compare two sweeps' rankings per dataset (Kendall "
                        "tau, changed significant conclusions): e.g. unmatched vs --params")
    cp.add_argument("a", help="the first sweep's folder")
    cp.add_argument("b", help="the second sweep's folder")
    cp.add_argument("--names", default=None, help="two names for the table (default: folders)")
    cp.add_argument("-o", "--out", default=None, help="also write the markdown here")

    ls = sub.add_parser("list", help="list zoo models and datasets")
    ls.add_argument("--data-root", default=None)

    d = sub.add_parser("datasets", help="dataset tools")
    dsub = d.add_subparsers(dest="dcmd", required=True)
    show = dsub.add_parser("show", help="save a picture of a few samples")
    show.add_argument("name")
    show.add_argument("-o", "--out", required=True, help="output .png")
    show.add_argument("-n", type=int, default=4)
    show.add_argument("--data-root", default=None)
    exp = dsub.add_parser("export", help="write a dataset as an nnU-Net v2 raw dataset "
                          "(OUT/DatasetXXX_Name: dataset.json, imagesTr, labelsTr, imagesTs)")
    exp.add_argument("name")
    exp.add_argument("--format", default="nnunet", choices=["nnunet"])
    exp.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1..999)")
    exp.add_argument("--out", required=True, help="folder, e.g. $nnUNet_raw")
    exp.add_argument("--n", type=int, default=None, help="synthetic: train + val samples")
    exp.add_argument("--test-n", type=int, default=None, help="synthetic: test samples")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--data-root", default=None)
    exp.add_argument("--cache-dir", default=None)
    dls = dsub.add_parser("list", help="list datasets")
    dls.add_argument("--data-root", default=None)
    cmp = dsub.add_parser("compare", help="KID between image sets (realism / shift check): "
                          "NAME[:SPLIT][@SEED], e.g. nuclei2d dsb2018, nuclei2d:train "
                          "nuclei2d:test, nuclei2d liver2d,nuclei2d@1")
    cmp.add_argument("a", help="the reference set")
    cmp.add_argument("b", help="comma-separated sets compared with A")
    cmp.add_argument("--n", type=int, default=100, help="images per set (default 100)")
    cmp.add_argument("--extractor", default="random",
                     help="random (default: a fixed random-feature network), "
                     "checkpoint:PATH (a trained skipdsl model's encoder) or inception:PATH "
                     "(a local Inception weights file; nothing is downloaded)")
    cmp.add_argument("-o", "--out", default=None, help="folder (default runs/realism/A_vs_B)")
    cmp.add_argument("--data-root", default=None)
    cmp.add_argument("--cache-dir", default=None)

    for name, what in FORWARDED.items():
        sp = sub.add_parser(name, help=f"{what[1]} ({what[0]}); args forwarded", add_help=False)
        sp.add_argument("args", nargs=argparse.REMAINDER)
    return p


#: Subcommands that hand their whole argv to a module's ``main(argv, prog)``.
FORWARDED = {"speed": ("skipdsl.bench.speed", "train/inference speed and peak memory of specs")}


def _cmd_run(a: argparse.Namespace) -> int:
    from skipdsl.spec import zoo_names
    from skipdsl.bench import report, runner
    from skipdsl.data import expand_datasets
    from skipdsl.fast import normalize

    from skipdsl.baselines import list_baselines

    if a.task == "instance":
        from skipdsl.detection import MASKRCNN_MODELS

        models = list(MASKRCNN_MODELS) if a.models in ("all", "") else _csv(a.models)
    else:
        models = (zoo_names() if a.models in ("all", "") else list_baselines()
                  if a.models == "baselines" else _csv(a.models))
    datasets = expand_datasets(a.datasets, a.data_root)
    seeds = [int(s) for s in _csv(a.seeds)] or [0]
    out = Path(a.out or f"runs/bench-{a.budget}")
    overrides = {"epochs": a.epochs, "n": a.n, "widths": _widths(a.widths),
                 "batch_size": a.batch_size, "lr": a.lr, "loss": a.loss, "hd95": a.hd95,
                 "data_root": a.data_root, "cache_dir": a.cache_dir, "device": a.device,
                 "cgm": a.cgm, "head_init": a.head_init,
                 "save_weights": False if a.no_weights else None,
                 "fast": None if a.fast is None else normalize(a.fast),
                 "recompute": a.recompute, "channels_last": a.channels_last}
    size = None
    if a.params or a.flops:
        from skipdsl.sizing import parse_size

        size = parse_size(a.params or a.flops, "params" if a.params else "flops")
    aliases: dict[str, list[str]] = {}
    trials = runner.plan(models, datasets, seeds=seeds, deep_supervision=a.deep_supervision,
                         budget=a.budget, overrides=overrides, backbone=a.backbone, task=a.task,
                         size=size, aliases=aliases)
    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"{len(trials)} {a.task} trials: models {', '.join(models)}; datasets "
                  f"{', '.join(datasets)}; seeds {seeds}; "
                  + (f"DS {a.deep_supervision}; " if a.task == "semantic" else "") + f"budget {a.budget}; "
                  f"backend {a.backend}" + (f" at {a.address}" if a.address else "")
                  + (f"; fast {overrides['fast']}" if overrides["fast"] else "")
                  + (f"; every model at the {size.describe()} (+-3%)" if size else ""),
                  highlight=False)
    for line in runner.alias_notes(aliases):
        console.print(f"note: {line}", highlight=False)
    runner.record_aliases(out, aliases)
    if a.reuse:
        from skipdsl.bench import store

        Path(out).mkdir(parents=True, exist_ok=True)
        for src, n in store.reuse_trials(out, [t.key for t in trials], a.reuse).items():
            console.print(f"reused {n} finished trial(s) from {src} (same keys)", highlight=False)
    summary = runner.run_sweep(trials, out, backend=a.backend, address=a.address,
                               cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                               num_cpus=a.num_cpus, retry_failed=a.retry_failed,
                               progress=not a.no_progress, verbose=a.verbose, console=console)
    if not a.no_report:
        path = report.build_report(out)
        console.print(f"report: {path}", highlight=False)
    console.print(f"{len(summary.ran)} ran ({len(summary.failed)} failed), "
                  f"{len(summary.skipped)} skipped, {summary.seconds:.0f} s; results: "
                  f"{out / 'results.csv'}", highlight=False)
    return 1 if (a.strict and summary.failed) else 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from skipdsl.bench import stats, store

    frames = []
    for out in (a.a, a.b):
        if not Path(out).is_dir():
            raise FileNotFoundError(f"no benchmark output folder '{out}'")
        results = store.load_results(out)
        ok = {r["trial_key"] for r in results if r.get("status") == "ok"}
        cases = store.load_cases(out, results)
        frames.append(cases[cases["trial_key"].isin(ok)] if len(cases) else cases)
    names = tuple(_csv(a.names)) if a.names else (Path(a.a).name, Path(a.b).name)
    datasets = sorted(set(frames[0]["dataset"]) & set(frames[1]["dataset"])) if all(
        len(f) for f in frames) else []
    _, md = stats.compare_runs(frames[0], frames[1], datasets, names=names)
    print(md or "no dataset with finished trials in both")
    if a.out:
        Path(a.out).write_text(md + "\n")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    from skipdsl.spec import load, zoo_names
    from skipdsl.data import list_datasets

    print("models:")
    for m in zoo_names(dims=None):
        spec = load(m)
        print(f"  {m:<12} {spec.description}")
    from skipdsl.baselines import BASELINES

    print("baselines (library networks, --models NAME; skipdsl/baselines.py):")
    for m in BASELINES:
        b = BASELINES.get(m)
        print(f"  {m:<15} {b.cls} ({'/'.join(f'{d}D' for d in b.dims)}): {b.description}")
    print("datasets:")
    for d in list_datasets(a.data_root):
        print(f"  {d}")
    return 0


def _forward(name: str, args: list[str]) -> int:
    """``bench NAME ARGS``: the module's ``main(ARGS, prog="bench NAME")``."""
    import importlib

    mod = importlib.import_module(FORWARDED[name][0])
    return int(mod.main(args, prog=f"bench {name}") or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bench`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:  # forward everything, --help included
        return _forward(argv[0], argv[1:])
    a = build_parser().parse_args(argv)
    from skipdsl.errors import DataError, SpecError

    try:
        if a.cmd == "run":
            return _cmd_run(a)
        if a.cmd == "report":
            from skipdsl.bench.report import build_report

            print(build_report(a.out, plots=not a.no_plots))
            return 0
        if a.cmd == "compare":
            return _cmd_compare(a)
        if a.cmd == "list" or (a.cmd == "datasets" and a.dcmd == "list"):
            return _cmd_list(a) if a.cmd == "list" else _list_datasets(a)
        if a.cmd == "datasets" and a.dcmd == "compare":
            from skipdsl.data.realism import compare

            out = a.out or f"runs/realism/{a.a}_vs_{a.b}".replace(":", "-").replace(",", "+")
            r = compare(a.a, a.b, out, n=a.n, root=a.data_root, extractor=a.extractor,
                        cache_dir=a.cache_dir)
            print(r["markdown"].read_text())
            print(f"written: {r['markdown']}, {r['picture']}")
            return 0
        if a.cmd == "datasets" and a.dcmd == "export":
            from skipdsl.data import load_dataset
            from skipdsl.data.nnunet import export_nnunet

            ds = load_dataset(a.name, root=a.data_root, seed=a.seed, n=a.n, test_n=a.test_n,
                              cache_dir=a.cache_dir)
            folder = export_nnunet(ds, a.out, a.id)
            n_tr = len(list((folder / "labelsTr").iterdir()))
            n_ts = len(list((folder / "labelsTs").iterdir()))
            print(f"wrote {folder} ({n_tr} training cases, {n_ts} test cases)")
            print(f"next: nnUNetv2_plan_and_preprocess -d {a.id} --verify_dataset_integrity")
            return 0
        if a.cmd == "datasets" and a.dcmd == "show":
            from skipdsl.data import show

            print(show(a.name, a.out, n=a.n, root=a.data_root) or a.out)
            return 0
    except (SpecError, DataError, ValueError, FileNotFoundError) as err:
        print(f"bench {a.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 2


def _list_datasets(a: argparse.Namespace) -> int:
    from skipdsl.data import list_datasets

    for d in list_datasets(a.data_root):
        print(d)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
