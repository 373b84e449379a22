"""Peak memory and time of one training step: hand-written reference, compiled, recompute.

    python benchmarks/memory.py --device cpu --out results/memory_cpu.md   # 96x96, batch 8
    python benchmarks/memory.py --device cuda --fast --out speed_memory.md  # 96x96, batch 128

(``python benchmarks/memory.py ...`` is the same program.) For every zoo model three modules
with the same weights (:func:`skipdsl.bench.speed.build_pair` checks parameter counts and
outputs): the hand-written eager reference (``hand``), ``skipdsl.compile(name)``
(``compiled``) and ``skipdsl.compile(name, recompute="resample")`` (``recompute``: the
backward pass recomputes resamplings and concatenations instead of storing them).

- peak MB: the peak of the live tensor bytes during one training step (forward, BCE loss,
  backward, Adam step) above those live before it (weights, Adam state). CPU: the allocation
  and free events of ``torch.profiler`` (``profile_memory=True``) summed in time order (the
  resident set does not show it: the allocator keeps freed pages). CUDA:
  ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the step.
- step ms: the three kinds timed INTERLEAVED, each repetition in a rotated order (hand,
  compiled, recompute; compiled, recompute, hand; ...), ``--iters`` steps each; the best and
  the median over repetitions, and the median of the per-repetition ratios against ``hand``.
- grads: ``recompute``'s parameter gradients against ``compiled``'s on one batch (before any
  optimiser step): ``exact`` or the largest absolute difference.

``--fast PARTS`` applies the same fast path to all three (:mod:`skipdsl.fast`; e.g.
``channels_last`` on CPU; bare ``--fast`` on CUDA: bf16, channels_last, torch.compile).
``--out``/``--json`` are rewritten after every model.
"""
from __future__ import annotations

import argparse
import gc
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from benchmarks.reference_models import REFERENCE_MODELS  # noqa: E402
from skipdsl.bench.speed import MODELS_2D, Runner, build_pair, device_name, sync  # noqa: E402
from skipdsl.fast import PARTS, FastPath, FastPathError  # noqa: E402

__all__ = ["main", "parse_args", "peak_live_mb", "measure", "markdown", "KINDS"]

KINDS = ("hand", "compiled", "resample", "split")
#: the kinds that are ``skipdsl.compile(name, recompute=kind)``
RECOMPUTED = ("resample", "split")
DEFAULT_BATCH = {"cpu": 8, "cuda": 128}


def parse_args(argv: Sequence[str] | None, prog: str = "python benchmarks/memory.py") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="Peak training-step memory and step "
                                "time: hand-written, compiled, compiled with recompute.")
    p.add_argument("--models", default=",".join(MODELS_2D), help="comma list of zoo models")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=96, help="image side (multiple of 16)")
    p.add_argument("--batch", type=int, default=None, help="default: cpu 8, cuda 128")
    p.add_argument("--widths", default=None, help="comma list of 5 widths (default: each "
                   "model's own)")
    p.add_argument("--iters", type=int, default=None, help="steps per repetition "
                   "(default: cpu 1, cuda 10)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: cpu 5, "
                   "cuda 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each kind")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--fast", nargs="?", const=",".join(PARTS), default=None, metavar="PARTS",
                   help="the same fast path for all three kinds (skipdsl.fast)")
    p.add_argument("--out", default=None, help="markdown table (rewritten after every model)")
    p.add_argument("--json", default=None, help="rows as JSON (rewritten after every model)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    if args.size % 16:
        p.error(f"--size must be a multiple of 16 (4 poolings by 2), got {args.size}")
    try:
        args.fast_path = FastPath.resolve(args.fast, args.device)
    except FastPathError as e:
        p.error(str(e))
    args.batch = args.batch or DEFAULT_BATCH[args.device]
    args.iters = args.iters or (1 if args.device == "cpu" else 10)
    args.reps = args.reps or 5
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    args.dims = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.references = REFERENCE_MODELS  # the hand-written side of the race
    return args


# ---------------------------------------------------------------------------------------------
# measurement

def peak_live_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """The peak of the live tensor bytes while ``fn()`` runs, above those live before (MB)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:  # + allocation, - free; a free of a block from before is < 0
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def _grads(runner: Runner) -> dict[str, torch.Tensor]:
    runner.prepare("train_step")
    runner.opt.zero_grad(set_to_none=True)
    with runner.autocast():
        out = runner.fn(runner.x)
    F.binary_cross_entropy_with_logits(out.float(), runner.y).backward()
    grads = {k: p.grad.detach().clone() for k, p in runner.module.named_parameters()}
    runner.opt.zero_grad(set_to_none=True)
    return grads


def grad_difference(a: Runner, b: Runner) -> float:
    """The largest |gradient difference| between two runners' modules on their batch, over
    the largest |gradient| of ``a`` (0.0: bitwise equal). Their BatchNorm running statistics
    are put back afterwards."""
    states = [{k: v.clone() for k, v in r.module.state_dict().items()} for r in (a, b)]
    ga, gb = _grads(a), _grads(b)
    for r, s in zip((a, b), states):
        r.module.load_state_dict(s)
    diff = max((ga[k].float() - gb[k].float()).abs().max().item() for k in ga)
    return diff and diff / max(g.float().abs().max().item() for g in ga.values())


@dataclass
class Row:
    model: str
    params: int
    grad_diff: dict[str, float] = field(default_factory=dict)  # per recomputed kind
    peak_mb: dict[str, float] = field(default_factory=dict)
    step_ms: dict[str, float] = field(default_factory=dict)  # median
    best_ms: dict[str, float] = field(default_factory=dict)
    time_ratio: dict[str, float] = field(default_factory=dict)  # median of per-rep ratios
    error: str | None = None


def measure(name: str, args: argparse.Namespace) -> Row:
    """One model's kinds: peak memory, interleaved step times, gradient differences."""
    from skipdsl.compiler import compile

    pair, params, _ = build_pair(name, args)
    runners = {"hand": Runner(pair["hand"], args), "compiled": Runner(pair["compiled"], args)}
    for kind in RECOMPUTED:
        m = compile(name, in_channels=3, num_classes=1, dims=args.dims, widths=args.widths,
                    recompute=kind).to(args.device)
        m.load_state_dict(pair["compiled"].state_dict())
        runners[kind] = Runner(m, args)
    row = Row(name, params)
    for kind in RECOMPUTED:
        row.grad_diff[kind] = grad_difference(runners["compiled"], runners[kind])
    for r in runners.values():  # Adam state and workspaces exist before anything is measured
        r.prepare("train_step")
        for _ in range(args.warmup):
            r.train_step()
        sync(args.device)
    for kind, r in runners.items():
        row.peak_mb[kind] = peak_live_mb(r.train_step, args.device)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for rep in range(args.reps):
        order = KINDS[rep % len(KINDS):] + KINDS[:rep % len(KINDS)]
        for kind in order:
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                runners[kind].train_step()
            sync(args.device)
            times[kind].append((time.perf_counter() - t0) / args.iters * 1e3)
    for kind, ts in times.items():
        row.step_ms[kind] = statistics.median(ts)
        row.best_ms[kind] = min(ts)
        row.time_ratio[kind] = statistics.median(t / h for t, h in zip(ts, times["hand"]))
    del runners, pair
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------------------------------
# report

def _grad_cell(d: float | None) -> str:
    return "-" if d is None else ("exact" if d == 0.0 else f"{d:.1e}")


def _grads_cell(r: Row) -> str:
    return ", ".join(f"{k} {_grad_cell(d)}" for k, d in r.grad_diff.items())


def markdown(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    fast = args.fast_path.summary() if args.fast_path.applied else "off (eager fp32)"
    head = ["model", "params", "grads vs compiled"]
    for k in KINDS:
        head += [f"peak MB {k}"]
    head += [f"mem ratio {k}" for k in KINDS[1:]]
    for k in KINDS:
        head += [f"step ms {k} (best)"]
    head += [f"time ratio {k}" for k in KINDS[1:]]
    head += [f"train img/s {k}" for k in KINDS]
    lines = [f"# Training-step memory: hand-written vs compiled vs recompute ({args.device})", "",
             f"Command: `{command}`", "",
             f"- device: {device_name(args.device)}",
             f"- torch: {torch.__version__}",
             f"- input: batch {args.batch} x 3 x {args.size}x{args.size}, 1 class, BCE loss, "
             f"Adam", f"- widths: {args.widths or 'each model own'}",
             f"- timing: {args.reps} interleaved repetitions (rotated order) x {args.iters} "
             f"step(s), {args.warmup} warm-up step(s) each", f"- fast path: {fast}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error:
            lines.append(f"| {r.model} | error: {r.error} |")
            continue
        h = r.peak_mb["hand"]
        cells = [r.model, f"{r.params:,}", _grads_cell(r)]
        cells += [f"{r.peak_mb[k]:,.1f}" for k in KINDS]
        cells += [f"{r.peak_mb[k] / h:.2f}" for k in KINDS[1:]]
        cells += [f"{r.step_ms[k]:,.0f} ({r.best_ms[k]:,.0f})" for k in KINDS]
        cells += [f"{r.time_ratio[k]:.2f}" for k in KINDS[1:]]
        cells += [f"{args.batch * 1e3 / r.step_ms[k]:,.1f}" for k in KINDS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Peak MB: peak live tensor bytes during one training step above those live "
              "before it (" + ("torch.profiler memory events in time order" if args.device
                               == "cpu" else "torch.cuda.max_memory_allocated") + "); "
              "ratios are against the hand-written reference measured in the same run "
              "(memory: < 1 = less; time: step time / the reference's, < 1 = faster). "
              "grads: the largest |difference| of the parameter gradients of a recompute "
              "kind and compiled on one batch over the largest |gradient| ('exact': bitwise "
              "equal). Kinds: hand = the hand-written eager reference; compiled = "
              "skipdsl.compile(name); resample = recompute='resample' (the backward pass "
              "recomputes resamplings and concatenations); split = recompute='split' (also the "
              "first convolution of every concatenating node split per input, each input "
              "resampled again in the backward pass just before its share is used).", ""]
    return "\n".join(lines)


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/memory.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    command = " ".join([prog, *map(shlex.quote, argv)])
    rows: list[Row] = []
    for name in args.models:
        try:
            row = measure(name, args)
        except Exception as err:  # noqa: BLE001 - one model's failure is recorded, not fatal
            row = Row(name, 0, error=f"{type(err).__name__}: {err}")
        rows.append(row)
        print(f"{name}: peak MB " + ", ".join(f"{k} {v:,.1f}" for k, v in row.peak_mb.items())
              + "; step ms " + ", ".join(f"{k} {v:,.0f}" for k, v in row.step_ms.items())
              + (f"; grads {_grads_cell(row)}" if row.error is None
                 else f"; {row.error}"), flush=True)
        _write(args.out, markdown(rows, args, command))
        _write(args.json, json.dumps({"command": command, "device": device_name(args.device),
                                      "batch": args.batch, "size": args.size,
                                      "fast": args.fast_path.summary(),
                                      "rows": [asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
