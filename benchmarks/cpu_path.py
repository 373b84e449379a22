"""The CPU path on the `cpu` budget's real training step: what channels_last, torch.compile,
recompute and thread settings do to train images/s, against the hand-written eager reference.

    python benchmarks/cpu_path.py --out results/speed_cpu_path.md

The step is the trainer's own (:func:`skipdsl.train.trainer.train_epoch`): the cpu budget's
widths (x0.25, UNet 3+'s projections too), 64x64 random crops of 96x96 images, batch 4,
rot90/flip/intensity augmentation, the bce_dice loss, Adam and the cosine schedule, on 1 torch
thread (the runner gives each of the two side-by-side trials one CPU; ``--threads``). Variants
per configuration (model x deep supervision), timed INTERLEAVED (each repetition in a rotated
order, ``--steps`` steps each), best and median images/s:

- ``hand``: the hand-written reference (``benchmarks/reference_models.py``, the same weights)
  in eager mode, contiguous memory (DS off only: the references have one head);
- ``compiled``: ``skipdsl.compile``, contiguous (the trainer's CPU default before issue 24);
- ``compiled+cl``: channels_last model and batches (the trainer's ``channels_last: true``);
- ``compiled+cl+resample``: with ``recompute="resample"`` as well;
- ``compiled+split`` / ``compiled+cl+split``: ``recompute="split"`` (no concatenation: the
  first convolution of a concatenating node split per input), contiguous / channels_last;
- with ``--compile``: ``compiled+cl+compile``, torch.compile (inductor) of the training model;
  its warm-up (first steps, compilation included) is reported apart.

``data ms``: the step's data path alone (index, crop, augmentation). The Table-1 estimate:
per (dataset, seed) block of the 8 configurations, the training images a 2D trial gets
(1,090: 109 images x 10 epochs) over each configuration's median rate, plus ``--eval-s``
seconds a trial of evaluation (unchanged), gives 2D trials per CPU hour.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ and a checkout

import torch

import skipdsl
from benchmarks import reference_models as refs
from skipdsl.fast import FastPath
from skipdsl.losses import build_loss
from skipdsl.spec import scale_spec
from skipdsl.train.augment import AugmentConfig, augment_batch, random_crop
from skipdsl.train.trainer import CPU_BUDGET, train_epoch

CONFIGS = [("unet", False), ("wunet", False), ("unetpp", False), ("unetpp", True),
           ("unet3p", False), ("unet3p", True), ("unetsharp", False), ("unetsharp", True)]
TRAIN_IMAGES = 1090  # a 2D trial of the cpu budget: 109 training images x 10 epochs
#: train images/s a configuration gets at the cpu budget on this project's 2 cores when they are
#: quiet (skipdsl.train.trainer.CPU_BUDGET's arithmetic: UNet 81, WUNet 66, UNet++ 35, UNet#
#: 15-16, UNet 3+ 10), the base the Table-1 estimate scales by the measured speed-ups
QUIET_RATES = {"unet": 81.0, "wunet": 66.0, "unetpp": 35.0, "unetsharp": 15.5, "unet3p": 10.0}


def reference(name: str, spec) -> torch.nn.Module:
    if name == "unet3p":
        proj = spec.edges[0].project.channels
        return refs.UNet3Plus(3, 1, spec.widths, 2, cat_channels=proj)
    return refs.REFERENCE_MODELS[name](in_channels=3, num_classes=1, widths=spec.widths, dims=2)


class Variant:
    def __init__(self, model: torch.nn.Module, cl: bool, compile_: bool, args) -> None:
        self.cl = torch.channels_last if cl else None
        self.model = model.to(memory_format=self.cl) if cl else model
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=10_000)
        self.loss = build_loss("bce_dice")
        self.gen = torch.Generator().manual_seed(0)
        g = torch.Generator().manual_seed(1)
        n = args.steps * CPU_BUDGET.batch_size
        self.x = torch.randn(n, 3, 96, 96, generator=g)
        self.y = (torch.rand(n, 1, 96, 96, generator=g) > 0.8).to(torch.uint8)
        self.fast = FastPath.resolve("off", "cpu")
        self.args = args

    def run(self, steps: int) -> float:
        self.model.train()
        t0 = time.perf_counter()
        train_epoch(self.forward, self.opt, self.sched, self.loss, self.x, self.y, epoch=0,
                    batch_size=CPU_BUDGET.batch_size, steps=steps, patch=CPU_BUDGET.patch,
                    aug=AugmentConfig(), generator=self.gen, fast=self.fast,
                    memory_format=self.cl)
        return time.perf_counter() - t0


def data_ms(args, reps: int = 20) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CPU_BUDGET.batch_size * 4, 3, 96, 96)
    y = (torch.rand(x.shape[0], 1, 96, 96) > 0.8).to(torch.uint8)
    t0 = time.perf_counter()
    for _ in range(reps):
        idx = torch.randperm(x.shape[0], generator=g)[:CPU_BUDGET.batch_size]
        a, b = random_crop(x.index_select(0, idx), y.index_select(0, idx), CPU_BUDGET.patch,
                           generator=g)
        a, b = augment_batch(a, b, config=AugmentConfig(), generator=g)
        a.contiguous(memory_format=torch.channels_last)
    return (time.perf_counter() - t0) / reps * 1e3


def measure(name: str, ds: bool, args) -> dict:
    spec = scale_spec(skipdsl.load(name), CPU_BUDGET.width_scale)
    torch.manual_seed(0)
    base = skipdsl.compile(spec, deep_supervision=ds)
    state = base.state_dict()
    kinds = {}

    def fresh(recompute: str = "none"):
        m = skipdsl.compile(spec, deep_supervision=ds, recompute=recompute)
        m.load_state_dict(state)
        return m

    if not ds:
        hand = reference(name, spec)
        n_a = sum(p.numel() for p in base.parameters())
        n_b = sum(p.numel() for p in hand.parameters())
        assert n_a == n_b, f"{name}: {n_a} vs {n_b} parameters"
        hand.load_state_dict(state)
        kinds["hand"] = Variant(hand, False, False, args)
    kinds["compiled"] = Variant(fresh(), False, False, args)
    kinds["compiled+cl"] = Variant(fresh(), True, False, args)
    kinds["compiled+cl+resample"] = Variant(fresh("resample"), True, False, args)
    kinds["compiled+split"] = Variant(fresh("split"), False, False, args)
    kinds["compiled+cl+split"] = Variant(fresh("split"), True, False, args)
    warm = {}
    if args.compile:
        kinds["compiled+cl+compile"] = Variant(fresh(), True, True, args)
    for k, v in kinds.items():  # warm-up (torch.compile compiles here)
        t0 = time.perf_counter()
        v.run(2)
        warm[k] = time.perf_counter() - t0
    names = list(kinds)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for k in order:
            rates[k].append(args.steps * CPU_BUDGET.batch_size / kinds[k].run(args.steps))
    ref = "hand" if "hand" in rates else "compiled"
    out = {"model": name, "ds": ds, "warmup_s": warm, "ref": ref,
           "median": {k: statistics.median(v) for k, v in rates.items()},
           "best": {k: max(v) for k, v in rates.items()},
           "ratio": {k: statistics.median(a / b for a, b in zip(v, rates[ref]))
                     for k, v in rates.items()}}
    return out


def table1(rows: list[dict], kind: str, eval_s: float) -> float:
    """2D trials per CPU hour of the 8-configuration grid: each configuration's quiet-machine
    rate (:data:`QUIET_RATES`) times ``kind``'s speed-up over ``compiled`` measured here (the
    median of the per-repetition ratios), plus ``eval_s`` of evaluation a trial."""
    core_s = 0.0
    for r in rows:
        speedup = r["ratio"][kind] / r["ratio"]["compiled"]
        core_s += TRAIN_IMAGES / (QUIET_RATES[r["model"]] * speedup) + eval_s
    return len(rows) / core_s * 3600


def markdown(rows: list[dict], args, command: str, data: float) -> str:
    kinds = ["hand", "compiled", "compiled+cl", "compiled+cl+resample", "compiled+split",
             "compiled+cl+split"]
    if args.compile:
        kinds.append("compiled+cl+compile")
    head = ["model", "DS"] + [f"{k} img/s median (best)" for k in kinds] + \
        [f"{k} / ref" for k in kinds[1:]]
    lines = ["# The CPU path on the cpu budget's training step", "",
             f"Command: `{command}`", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
             f"cores, load average {args.load[0]:.2f} before and {args.load[1]:.2f} after "
             f"(1 min; measured interleaved), torch {torch.__version__}, "
             f"{args.threads} torch thread(s)",
             f"- step: trainer.train_epoch, cpu budget widths x{CPU_BUDGET.width_scale}, "
             f"batch {CPU_BUDGET.batch_size}, {CPU_BUDGET.patch}x{CPU_BUDGET.patch} crops of "
             f"96x96, augmentation, bce_dice, Adam + cosine",
             f"- timing: {args.reps} interleaved repetitions (rotated order) x {args.steps} "
             f"steps; ref: hand-written (DS off) or compiled (DS on: the references have one "
             f"head)", f"- data path alone (index, crop, augment, channels_last): "
             f"{data:.1f} ms a step", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], "on" if r["ds"] else "off"]
        cells += [f"{r['median'][k]:.1f} ({r['best'][k]:.1f})" if k in r["median"] else "-"
                  for k in kinds]
        cells += [f"{r['ratio'][k]:.2f}" if k in r["ratio"] else "-" for k in kinds[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    if args.compile:
        lines += ["", "torch.compile warm-up (2 steps, compilation included), s: "
                  + ", ".join(f"{r['model']}{'+DS' if r['ds'] else ''} "
                              f"{r['warmup_s']['compiled+cl+compile']:.0f}" for r in rows)]
    if len(rows) == len(CONFIGS):
        before = table1(rows, "compiled", args.eval_s)
        after = {k: table1(rows, k, args.eval_s) for k in kinds[2:]}
        lines += ["", f"Table-1 grid (2D, 8 configurations, {TRAIN_IMAGES} training images a "
                  f"trial at the cpu budget's quiet-machine rates {QUIET_RATES} img/s times the "
                  f"speed-ups measured here, + {args.eval_s:.0f} s evaluation a trial, "
                  f"unchanged): {before:.1f} trials per CPU hour with `compiled`; "
                  + ", ".join(f"{v:.1f} with `{k}` ({v / before:.2f}x)" for k, v in after.items())
                  + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/cpu_path.py", description=__doc__)
    p.add_argument("--models", default=None, help="comma list of model[:ds] (default: the 8 "
                   "Table-1 configurations)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    p.add_argument("--eval-s", type=float, default=30.0)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite --out from an earlier run's --json (its settings)")
    args = p.parse_args(argv)
    args.load = [float("nan")] * 2
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        for k, v in saved["args"].items():
            setattr(args, k, v)
        text = markdown(saved["rows"], args, saved["command"], saved["data_ms"])
        if args.out:
            Path(args.out).write_text(text)
        print(text)
        return 0
    torch.set_num_threads(args.threads)
    configs = CONFIGS if not args.models else [
        (m.split(":")[0], m.endswith(":ds")) for m in args.models.split(",")]
    command = " ".join(["python benchmarks/cpu_path.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    data = data_ms(args)
    args.load = [os.getloadavg()[0], os.getloadavg()[0]]
    rows = []
    for name, ds in configs:
        r = measure(name, ds, args)
        rows.append(r)
        args.load[1] = os.getloadavg()[0]
        print(json.dumps({k: r[k] for k in ("model", "ds", "median", "ratio")}), flush=True)
        if args.out:
            Path(args.out).write_text(markdown(rows, args, command, data))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "command": command, "data_ms": data, "rows": rows,
                "args": {k: getattr(args, k) for k in ("steps", "reps", "threads", "compile",
                                                       "eval_s", "load")}}, indent=1))
    print(markdown(rows, args, command, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
