"""The speed and memory of compiled specs: train and inference images/s and the peak memory
of one step, for zoo models or your own spec files.

    bench speed --models unetsharp,my_spec.yaml --device cpu --out speed.md
    bench speed --device cuda --dims 3 --fast --models unetsharp --json speed.json

For every model, ``skipdsl.compile(name)`` is built at the given widths and size and timed
(median over repetitions):

- train img/s: forward, BCE-with-logits loss, backward, Adam step (lr 1e-3, wd 1e-4)
- infer img/s: ``eval()`` and ``torch.no_grad()`` forward
- peak MB: memory one step needs on top of what was allocated before it (weights, Adam
  state). CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the step.
  CPU: the kernel's peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the
  resident set before the step, measured after all timing with glibc's mmap threshold pinned
  to 64 KiB and the heap trimmed, so freed tensors return to the OS.

``--fast`` applies a fast path (:mod:`skipdsl.fast`: bf16 autocast on CUDA, channels_last,
``torch.compile``, and for inference CUDA graphs on CUDA; ``--fast PARTS`` picks parts); each
model's fast inference output is then checked against its plain eager fp32 forward
(``fast rel diff``, the first 8 images).

With ``references`` (``main(argv, references=...)``: zoo name -> a hand-written module of the
same architecture), each compiled model races its reference: both get the same weights (the
parameter count and the outputs are checked), they are timed INTERLEAVED (A B, then B A, ...)
and the table shows both and their ratio (compiled / hand-written: > 1 means the compiled
model is faster, or for memory needs more). ``benchmarks/speed.py`` is that race against the
project's hand-written UNet family.

``--out`` (markdown) and ``--json`` are rewritten after every model, so a run stopped part way
keeps the models it finished. ``--compile-only`` builds each model and runs one step of each
kind, untimed: with ``--fast`` that compiles every graph into torch.compile's on-disk caches
(FX graph and AOT autograd caches), which a later timed run in another process then reads.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fast import PARTS, FastPath, FastPathError
from ..fileio import atomic_write_text

__all__ = ["main", "parse_args", "benchmark", "build_pair", "Runner", "Row", "markdown",
           "to_json", "HEADER", "HEADER_ALONE", "MODELS_2D", "MODELS_3D"]

VNET_WIDTHS = [16, 32, 64, 128, 256]
MODELS_2D = ["unet", "wunet", "unetpp", "unet3p", "unetsharp"]
MODELS_3D = ["unet", "unetpp", "unet3p", "unetsharp"]  # V-Net, V-Net++, V-Net3+, V-Net#
# (device, dims) -> (size, batch); iters, reps and warmup per device
DEFAULT_SHAPE = {("cpu", 2): (64, 4), ("cpu", 3): (32, 1),
                 ("cuda", 2): (96, 128), ("cuda", 3): (64, 4)}
DEFAULT_LOOP = {"cpu": dict(iters=1, reps=3, warmup=1), "cuda": dict(iters=10, reps=5, warmup=3)}
KINDS = ("compiled", "hand")


# ---------------------------------------------------------------------------------------------
# configuration

def parse_args(argv: Sequence[str] | None, prog: str = "bench speed",
               references: dict[str, Callable[..., nn.Module]] | None = None
               ) -> argparse.Namespace:
    """The command line; ``references``: zoo name -> hand-written builder to race (None: the
    compiled models alone)."""
    p = argparse.ArgumentParser(
        prog=prog, description="Compiled skipdsl models vs hand-written eager PyTorch."
        if references else "Train/inference speed and peak memory of compiled specs.")
    p.add_argument("--models", default=None,
                   help=f"comma list of zoo names{'' if references else ' or spec files'}, "
                        f"or 'all' (2D default: {','.join(MODELS_2D)}; "
                        f"3D default: {','.join(MODELS_3D)})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--dims", type=int, default=2, choices=[2, 3])
    p.add_argument("--size", type=int, default=None,
                   help="spatial side (multiple of 16); default cpu 64 (2D) / 32 (3D), "
                        "cuda 96 (2D) / 64 (3D)")
    p.add_argument("--batch", type=int, default=None,
                   help="default cpu 4 (2D) / 1 (3D), cuda 128 (2D) / 4 (3D)")
    p.add_argument("--widths", default=None,
                   help="comma list of 5 widths for every model; default: each model's own "
                        "in 2D, V-Net [16,32,64,128,256] in 3D")
    p.add_argument("--iters", type=int, default=None, help="steps per timed repetition")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per model (median)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing")
    p.add_argument("--fast", nargs="?", const=",".join(PARTS), default=None, metavar="PARTS",
                   help="the same fast path for both: bare --fast names every part (bf16 "
                        "autocast and CUDA-graph inference on CUDA only; channels_last and "
                        "torch.compile everywhere); or a comma list of "
                        f"{','.join(PARTS)}")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode with --fast (e.g. max-autotune-no-cudagraphs; "
                        "reduce-overhead and max-autotune capture CUDA graphs themselves, so "
                        "the explicit CUDA graphs are left out)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--skip-memory", action="store_true", help="no peak-memory measurement")
    p.add_argument("--out", default=None,
                   help="write the markdown table here (rewritten after every model)")
    p.add_argument("--json", default=None,
                   help="write the rows as JSON here (rewritten after every model)")
    p.add_argument("--compile-only", action="store_true",
                   help="build each pair and run one train and one inference step of each "
                        "kind, untimed (with --fast: fills torch.compile's on-disk caches for "
                        "a later run); --json records the seconds per model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    try:
        args.fast_path = FastPath.resolve(args.fast, args.device, compile_mode=args.compile_mode)
    except FastPathError as e:
        p.error(str(e))
    args.fast = bool(args.fast_path.applied)
    size, batch = DEFAULT_SHAPE[(args.device, args.dims)]
    args.size = args.size or size
    args.batch = args.batch or batch
    for k, v in DEFAULT_LOOP[args.device].items():
        if getattr(args, k) is None:
            setattr(args, k, v + (2 if k == "warmup" and args.fast else 0))
    if args.size % 16:
        p.error(f"--size must be a multiple of 16 (4 poolings by 2), got {args.size}")
    default_models = MODELS_2D if args.dims == 2 else MODELS_3D
    if args.models in (None, "all"):
        args.models = default_models if args.models is None else MODELS_2D
    else:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.references = references
    unknown = [m for m in args.models if references is not None and m not in references]
    if unknown:
        p.error(f"unknown model(s) {unknown}; valid: {sorted(references)}")
    if args.widths:
        args.widths = [int(w) for w in args.widths.split(",")]
        if len(args.widths) != 5:
            p.error(f"--widths needs 5 values, got {args.widths}")
    elif args.dims == 3:
        args.widths = list(VNET_WIDTHS)
    return args


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if m:
            cpu = m.group(1).strip()
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# ---------------------------------------------------------------------------------------------
# the two models

def build_pair(name: str, args: argparse.Namespace) -> tuple[dict[str, nn.Module], int, float]:
    """(models by kind, parameter count, max |output difference| / max |output|); without
    ``args.references`` the compiled model alone (difference 0)."""
    from skipdsl.compiler import compile

    torch.manual_seed(args.seed)
    compiled = compile(name, in_channels=3, num_classes=1, dims=args.dims,
                       widths=args.widths, deep_supervision=False)
    if not args.references:
        return {"compiled": compiled.to(args.device)}, sum(
            p.numel() for p in compiled.parameters()), 0.0
    hand = args.references[name](in_channels=3, num_classes=1, widths=args.widths,
                                 dims=args.dims)
    n_a = sum(p.numel() for p in compiled.parameters())
    n_b = sum(p.numel() for p in hand.parameters())
    if n_a != n_b:
        raise AssertionError(f"{name}: compiled model has {n_a:,} parameters, "
                             f"hand-written {n_b:,}; they must be the same architecture")
    hand.load_state_dict(compiled.state_dict())  # strict: same names, same shapes
    compiled.to(args.device)
    hand.to(args.device)
    # the same function: compare once, eval mode, fp32, before any fast path
    x = torch.randn(min(args.batch, 2), 3, *(args.size,) * args.dims, device=args.device)
    compiled.eval()
    hand.eval()
    with torch.no_grad():
        a, b = compiled(x), hand(x)
    rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
    if rel > 1e-2:
        raise AssertionError(f"{name}: compiled and hand-written outputs differ "
                             f"(max relative difference {rel:.2e}) after copying the weights")
    return {"compiled": compiled, "hand": hand}, n_a, rel


class Runner:
    """One model's train and inference steps, with the chosen fast path (``args.fast_path``):
    training runs the (compiled) forward under autocast; inference goes through
    :class:`skipdsl.fast.FastInference` (CUDA graphs: captured in the first warm-up step,
    then replayed)."""

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        self.device = args.device
        self.fast: FastPath = args.fast_path
        self.memory_format = self.fast.memory_format(args.dims) or torch.contiguous_format
        if self.fast.channels_last:
            model = model.to(memory_format=self.memory_format)
        self.module = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.fn: Callable = self.fast.compile_model(model)
        self.infer = self.fast.inference(model, fn=self.fn)
        shape = (args.batch, 3, *(args.size,) * args.dims)
        g = torch.Generator().manual_seed(args.seed)
        self.x = torch.randn(shape, generator=g).to(args.device, memory_format=self.memory_format)
        self.y = (torch.rand((args.batch, 1, *shape[2:]), generator=g) > 0.5).float().to(
            args.device, memory_format=self.memory_format)

    def autocast(self):
        return self.fast.autocast(self.device)

    def prepare(self, step: str) -> None:
        """Train or eval mode, set once before a phase (not inside the timed steps)."""
        self.module.train(step == "train_step")

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.fn(self.x)
        loss = F.binary_cross_entropy_with_logits(out.float(), self.y)
        loss.backward()
        self.opt.step()

    def infer_step(self) -> None:
        self.infer(self.x)  # no_grad, autocast, channels_last, CUDA graph replay


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# measurement

def interleaved_rates(runners: dict[str, Runner], step: str, args: argparse.Namespace
                      ) -> dict[str, float]:
    """Median images/s of each kind; repetitions alternate A B, B A, ... to cancel drift."""
    for r in runners.values():
        r.prepare(step)
        for _ in range(args.warmup):
            getattr(r, step)()
        sync(args.device)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    kinds = [k for k in KINDS if k in runners]
    for rep in range(args.reps):
        for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
            fn = getattr(runners[kind], step)
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn()
            sync(args.device)
            rates[kind].append(args.iters * args.batch / (time.perf_counter() - t0))
    # the ratio is the median of per-repetition ratios: A and B of one repetition ran back to
    # back, so slow drift in the machine's load cancels within each pair
    out = {k: statistics.median(v) for k, v in rates.items()}
    if "hand" in rates:
        paired = [a / b for a, b in zip(rates["compiled"], rates["hand"])]
        out.update(ratio=statistics.median(paired), ratio_min=min(paired),
                   ratio_max=max(paired))
    return out


def _status_kb(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if not m:
        raise OSError(f"/proc/self/status has no {key}")
    return int(m.group(1))


@contextlib.contextmanager
def _cpu_memory_accounting():
    """glibc: pin the mmap threshold to 64 KiB (freed tensors go back to the OS at once)."""
    libc = None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also stops its dynamic growth)
    try:
        yield libc
    finally:
        if libc is not None:
            libc.mallopt(-3, 32 * 1024 * 1024)  # near glibc's dynamic maximum again


def peak_step_mb(runner: Runner, step: str, libc) -> float | None:
    """Memory one step needs beyond what was allocated before it (see module docstring)."""
    runner.prepare(step)
    fn = getattr(runner, step)
    fn()  # Adam state, compiled graphs, workspaces exist before we measure
    gc.collect()
    if runner.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        if libc is not None:
            libc.malloc_trim(0)
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        return None


@dataclass
class Row:
    model: str
    params: int
    max_rel_diff: float
    train: dict[str, float] = field(default_factory=dict)
    infer: dict[str, float] = field(default_factory=dict)
    train_mb: dict[str, float | None] = field(default_factory=dict)
    infer_mb: dict[str, float | None] = field(default_factory=dict)
    fast_diff: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def fast_vs_eager(runner: Runner, n: int = 8) -> float:
    """Max |fast-path output - plain eager fp32 output| / max |eager output| on the first
    ``n`` images in eval mode: bf16, channels_last, the compiled forward and the CUDA-graph
    replay (the captured batch, padded) checked against the module itself."""
    runner.prepare("infer_step")
    x = runner.x[:n]
    with torch.no_grad():
        ref = runner.module(x.contiguous()).float()
        out = runner.infer(x).float()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def warm_steps(runners: dict[str, Runner], device: str) -> dict[str, float]:
    """One train and one inference step of each kind, untimed (``--compile-only``): seconds
    per kind, compilation and CUDA-graph capture included."""
    seconds = {}
    for kind, r in runners.items():
        t0 = time.perf_counter()
        for step in ("train_step", "infer_step"):
            r.prepare(step)
            getattr(r, step)()
        sync(device)
        seconds[kind] = time.perf_counter() - t0
    return seconds


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print,
              on_row: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Time every model pair (interleaved), then measure memory; returns one row a model.

    ``on_row(rows)`` is called whenever a row is complete (and once at the end), e.g. to save
    what finished so far."""
    done = on_row or (lambda rows: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows: list[Row] = []
    kept: dict[str, dict[str, Runner]] = {}
    for name in args.models:
        log(f"[{name}] building" + (" and checking the pair" if args.references else ""))
        models, n, rel = build_pair(name, args)
        row = Row(name, n, rel)
        rows.append(row)
        runners = {k: Runner(m, args) for k, m in models.items()}
        try:
            if args.compile_only:
                log(f"[{name}] one untimed step of each kind")
                row.compile_s = warm_steps(runners, args.device)
            else:
                log(f"[{name}] timing train steps")
                row.train = interleaved_rates(runners, "train_step", args)
                log(f"[{name}] timing inference")
                row.infer = interleaved_rates(runners, "infer_step", args)
                if args.fast:
                    row.fast_diff = {k: fast_vs_eager(r) for k, r in runners.items()}
        except torch.OutOfMemoryError as e:
            row.error = f"out of memory: {str(e).splitlines()[0]}"
        if args.device == "cuda" or args.compile_only:  # measure now, free for the next pair
            if not args.skip_memory and not args.compile_only and row.error is None:
                log(f"[{name}] peak memory")
                _measure_memory(row, runners, None)
            for r in runners.values():
                r.opt.state.clear()
                r.module.cpu()
            del runners, models
            if args.fast:
                torch._dynamo.reset()  # drop this pair's compiled graphs
            _free(args.device)
        else:
            kept[name] = runners
        done(rows)
    if args.device == "cpu" and not args.skip_memory and not args.compile_only:
        # after all timing: the malloc settings that make RSS track live tensors slow it down
        with _cpu_memory_accounting() as libc:
            for row in rows:
                if row.error is None:
                    log(f"[{row.model}] peak memory")
                    _measure_memory(row, kept[row.model], libc)
    done(rows)
    return rows


def _measure_memory(row: Row, runners: dict[str, Runner], libc) -> None:
    try:
        for kind in runners:
            row.train_mb[kind] = peak_step_mb(runners[kind], "train_step", libc)
            row.infer_mb[kind] = peak_step_mb(runners[kind], "infer_step", libc)
    except torch.OutOfMemoryError as e:
        row.error = f"out of memory: {str(e).splitlines()[0]}"


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# report

def _ratio(d: dict[str, float | None], spread: bool = False) -> str:
    """Paired median ratio (with its min-max over repetitions) or a plain ratio."""
    if d.get("ratio") is not None:
        r = f"{d['ratio']:.2f}"
        return r + (f" ({d['ratio_min']:.2f}-{d['ratio_max']:.2f})" if spread else "")
    a, b = d.get("compiled"), d.get("hand")
    return f"{a / b:.2f}" if a and b else "-"


def _num(v: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


HEADER = ["model", "params", "max rel diff",
          "train img/s compiled", "train img/s hand", "train ratio",
          "infer img/s compiled", "infer img/s hand", "infer ratio",
          "train peak MB compiled", "train peak MB hand", "train mem ratio",
          "infer peak MB compiled", "infer peak MB hand", "infer mem ratio"]


#: The table's columns without references: the compiled models alone.
HEADER_ALONE = ["model", "params", "train img/s", "infer img/s", "train peak MB",
                "infer peak MB"]


def table_rows(rows: list[Row], spread: bool = True, race: bool = True) -> list[list[str]]:
    """Cells of :data:`HEADER` (``race``) or :data:`HEADER_ALONE`, one list a row."""
    out = []
    for r in rows:
        if not race:
            cells = [r.model, f"{r.params:,}"] + [
                _num(d.get("compiled")) for d in (r.train, r.infer, r.train_mb, r.infer_mb)]
            if r.error:
                cells[2] = r.error
            out.append(cells)
            continue
        cells = [r.model, f"{r.params:,}", f"{r.max_rel_diff:.1e}"]
        for d in (r.train, r.infer):
            cells += [_num(d.get("compiled")), _num(d.get("hand")), _ratio(d, spread)]
        for d in (r.train_mb, r.infer_mb):
            cells += [_num(d.get("compiled")), _num(d.get("hand")), _ratio(d)]
        if r.error:
            cells[3] = r.error
        out.append(cells)
    return out


def settings(args: argparse.Namespace) -> dict[str, str]:
    fast = "off (eager fp32)"
    if args.fast or args.fast_path.skipped:
        fast = args.fast_path.describe()
    return {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "input": f"batch {args.batch} x 3 x {'x'.join([str(args.size)] * args.dims)} "
                 f"({args.dims}D), 1 class",
        "widths": "each model's own" if not args.widths else str(args.widths),
        "timing": f"{args.reps} interleaved repetitions x {args.iters} steps (median), "
                  f"{args.warmup} warm-up steps",
        "fast path": fast,
    }


def _pending(rows: list[Row], args: argparse.Namespace) -> list[str]:
    return [m for m in args.models if m not in {r.model for r in rows}]


def markdown(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    race = bool(args.references)
    title = ("compiled skipdsl vs hand-written PyTorch" if race
             else "compiled skipdsl models")
    lines = [f"# Speed: {title} ({args.device}, {args.dims}D)",
             "", f"Command: `{command}`", "",
             f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}", ""]
    lines += [f"- {k}: {v}" for k, v in settings(args).items()]
    head = HEADER if race else HEADER_ALONE
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in table_rows(rows, race=race)]
    mem = ("CUDA max_memory_allocated during one step minus memory_allocated before it"
           if args.device == "cuda" else
           "peak resident set (VmHWM after /proc/self/clear_refs) during one step minus the "
           "resident set before it, glibc mmap threshold 64 KiB")
    if not race:
        lines += ["", f"Peak MB: {mem}; weights, gradients kept from before and Adam state "
                  "are not counted.", ""]
    else:
        lines += ["", "Ratios are compiled / hand-written (img/s: > 1 = compiled faster; "
                  "memory: > 1 = compiled needs more). An img/s ratio is the median of the "
                  "per-repetition ratios (A and B of a repetition ran back to back), with their "
                  "min-max in brackets. Peak MB: " + mem + "; weights, gradients "
                  "kept from before and Adam state are not counted (identical for both). "
                  "max rel diff: largest |output difference| / largest |output| after copying the "
                  "compiled model's weights into the hand-written one (eval, fp32).", ""]
    diffs = [f"{r.model} " + ", ".join(f"{k} {v:.1e}" for k, v in r.fast_diff.items())
             for r in rows if r.fast_diff]
    if diffs:
        lines += ["fast rel diff (fast-path inference vs the plain eager fp32 forward of the "
                  "same module, first 8 images, largest |difference| / largest |output|): "
                  + "; ".join(diffs) + ".", ""]
    if _pending(rows, args):
        lines += [f"Not measured (yet): {', '.join(_pending(rows, args))}.", ""]
    return "\n".join(lines)


def to_json(rows: list[Row], args: argparse.Namespace, command: str) -> dict:
    """The run as plain data: settings, one dict a row, the models still to measure."""
    return {"command": command, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": args.device, "dims": args.dims, "size": args.size, "batch": args.batch,
            "fast": args.fast_path.summary(), "fast_skipped": dict(args.fast_path.skipped),
            "compile_only": args.compile_only, "settings": settings(args),
            "models": list(args.models), "pending": _pending(rows, args),
            "rows": [dataclasses.asdict(r) for r in rows]}


def print_rich(rows: list[Row], args: argparse.Namespace, command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    race = bool(args.references)
    table = Table(title=f"{'compiled / hand-written' if race else 'compiled'}, "
                        f"{args.device} {args.dims}D",
                  caption="; ".join(f"{k}: {v}" for k, v in settings(args).items()))
    short = (["model", "params", "rel diff", "train c", "train h", "train x",
              "infer c", "infer h", "infer x", "trainMB c", "trainMB h", "mem x",
              "inferMB c", "inferMB h", "mem x"] if race else
             ["model", "params", "train img/s", "infer img/s", "train MB", "infer MB"])
    for i, h in enumerate(short):
        table.add_column(h, justify="left" if i == 0 else "right",
                         style="bold" if h.endswith(" x") else None)
    for cells in table_rows(rows, spread=False, race=race):
        table.add_row(*cells)
    console = Console(width=max(160, Console().width))
    console.print(f"[dim]{command}[/dim]")
    console.print(table)


def _write(path: str | None, text: str) -> None:
    if path:
        atomic_write_text(path, text)


def main(argv: Sequence[str] | None = None, prog: str = "bench speed",
         references: dict[str, Callable[..., nn.Module]] | None = None) -> int:
    """CLI entry (``bench speed``; ``benchmarks/speed.py`` calls it with its prog and the
    hand-written references)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([*shlex.split(prog), *argv])
    args = parse_args(argv, prog=prog, references=references)

    def save(rows: list[Row]) -> None:
        if not args.compile_only:
            _write(args.out, markdown(rows, args, command))
        _write(args.json, json.dumps(to_json(rows, args, command), indent=1))

    rows = benchmark(args, log=lambda s: print(s, file=sys.stderr, flush=True), on_row=save)
    if not args.compile_only:
        print_rich(rows, args, command)
    for path in (args.out if not args.compile_only else None, args.json):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
