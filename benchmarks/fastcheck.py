"""The fast path's parts checked against the plain eager fp32 forward, one part at a time and
all together, on a small zoo-derived model: CUDA-graph capture and replay, bf16 autocast,
channels_last, ``torch.compile``, a training step and the trainer with ``fast: on``.

    python benchmarks/fastcheck.py --device cuda --out fastpath.md --json fastpath.json

Each check is ok, failed (with what differed) or skipped (with why), and says the largest
relative output difference it saw (largest |fast - eager| / largest |eager|) against its
tolerance: 1e-3 for fp32 parts, 5e-2 where bf16 is on. The CUDA-graph check captures once,
then replays a second input, a partial batch (padded into the captured one), weights changed
in place, and a deep-supervision model's dict of outputs.

On CPU (the GPU suite's dry run) the checks run what exists there: the CUDA-graph check
replays through a CPU stand-in with the same contract (fixed buffers, recomputed in place,
:func:`skipdsl.fast.run_static` batching), bf16 autocast runs on the CPU, and ``torch.compile``
is left out unless ``--compile`` names it (the inductor's C++ build takes 30-90 s a model
there). ``--out`` and ``--json`` are rewritten after every check, so a run stopped part way
keeps the checks it finished. The exit status is 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from skipdsl.fast import FastInference, FastPath, run_static, tensor_leaves  # noqa: E402
from skipdsl.fileio import atomic_write_text  # noqa: E402

__all__ = ["Check", "CHECKS", "run_checks", "main"]

FP32_TOL = 1e-3
BF16_TOL = 5e-2
BATCH = 4


@dataclass
class Check:
    name: str
    status: str  # ok | failed | skipped
    detail: str = ""
    max_rel_diff: float | None = None
    tolerance: float | None = None
    seconds: float = 0.0


class Failed(AssertionError):
    """A check's comparison did not hold."""


@dataclass
class Context:
    device: str
    compile_on_cpu: bool
    cache_dir: str | None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def small_spec(depth: int = 3):
    """The zoo's UNet cut to ``depth`` levels of widths 8, 16, 32, ...: every kind of node and
    edge of the real model, compiled in seconds."""
    from skipdsl.spec import load
    from skipdsl.spec import from_dict

    data = load("unet").to_dict()
    widths = [8 * 2**i for i in range(depth)]
    data.update(name=f"unet{depth}", grid={"depth": depth, "widths": widths},
                heads=[{"node": f"x_0_{depth - 1}"}])
    return from_dict(data)


def _model(ctx: Context, seed: int = 0) -> nn.Module:
    from skipdsl.compiler import compile

    torch.manual_seed(seed)
    return compile(small_spec()).to(ctx.device).eval()


def _input(ctx: Context, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g).to(ctx.device)


def rel_diff(out: Any, ref: Any) -> float:
    """Largest |out - ref| / largest |ref| over every tensor of two outputs of one shape."""
    pairs = list(zip(tensor_leaves(out), tensor_leaves(ref)))
    if not pairs or any(a.shape != b.shape for a, b in pairs):
        raise Failed(f"outputs differ in structure: {[tuple(a.shape) for a, _ in pairs]} vs "
                     f"{[tuple(b.shape) for _, b in pairs]}")
    diff = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
    scale = max(b.float().abs().max().item() for _, b in pairs)
    return diff / max(scale, 1e-12)


def _eager(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x.contiguous())


def _path(ctx: Context, **parts: bool) -> FastPath:
    """A fast path with exactly ``parts`` on (bf16 also on CPU: autocast runs there)."""
    return FastPath(option=",".join(p for p, on in parts.items() if on) or "off",
                    device=ctx.device, **parts)


def _compare(name: str, out: Any, ref: Any, tol: float, worst: list[float]) -> None:
    d = rel_diff(out, ref)
    worst.append(d)
    if not d <= tol:  # also catches NaN
        raise Failed(f"{name}: max rel diff {d:.2e} > {tol:g}")


# ---------------------------------------------------------------------------------------------
# the checks: each returns (detail, worst rel diff, tolerance) or raises Failed / SkipCheck


class SkipCheck(Exception):
    """The check cannot run on this device; the message says why."""


class _CPUStandIn:
    """:class:`skipdsl.fast.GraphedForward`'s contract on CPU: the forward runs once into fixed
    buffers, and each replay recomputes those buffers in place from the static input."""

    def __init__(self, fn: Callable, example: torch.Tensor) -> None:
        self.fn, self.static_in = fn, example.detach().clone()
        with torch.no_grad():
            self.static_out = fn(self.static_in)
        self.batch = int(self.static_in.shape[0])

    def replay(self) -> None:
        with torch.no_grad():
            fresh = self.fn(self.static_in)
        for dst, src in zip(tensor_leaves(self.static_out), tensor_leaves(fresh)):
            dst.copy_(src)

    def __call__(self, x: torch.Tensor) -> Any:
        return run_static(x, self.static_in, self.static_out, self.replay)


def _graphed(ctx: Context, model: nn.Module) -> tuple[Callable, Callable[[], int]]:
    """(forward, number of captures): CUDA graphs on CUDA, the stand-in on CPU."""
    if ctx.cuda:
        inf = FastInference(model, _path(ctx, cuda_graphs=True))
        return inf, lambda: inf.graphs
    box: dict[str, _CPUStandIn] = {}

    def forward(x: torch.Tensor) -> Any:
        if "g" not in box:
            box["g"] = _CPUStandIn(model, x)
        return box["g"](x)

    return forward, lambda: len(box)


def check_cuda_graphs(ctx: Context) -> tuple[str, float, float]:
    from skipdsl.compiler import compile

    worst: list[float] = []
    model = _model(ctx)
    fn, captures = _graphed(ctx, model)
    x, x2 = _input(ctx), _input(ctx, seed=2)
    _compare("captured batch", fn(x), _eager(model, x), FP32_TOL, worst)
    _compare("second input", fn(x2), _eager(model, x2), FP32_TOL, worst)
    part = x2[:BATCH - 1]
    _compare("partial batch (padded)", fn(part), _eager(model, part), FP32_TOL, worst)
    if captures() != 1:
        raise Failed(f"{captures()} captures for one input shape, expected 1")
    with torch.no_grad():  # an optimizer step changes the weights in place
        for p in model.parameters():
            p.mul_(0.9).add_(0.01)
    _compare("weights changed in place", fn(x), _eager(model, x), FP32_TOL, worst)
    torch.manual_seed(0)
    ds = compile("unetpp", widths=[4, 8, 16, 32, 64], deep_supervision=True)
    ds = ds.to(ctx.device).eval()
    fn_ds, _ = _graphed(ctx, ds)
    out = fn_ds(x)
    if not isinstance(out, dict) or len(out) < 2:
        raise Failed(f"deep supervision: expected a dict of head outputs, found {type(out)}")
    _compare("deep supervision dict", out, _eager(ds, x), FP32_TOL, worst)
    how = ("torch.cuda.CUDAGraph" if ctx.cuda else
           "CPU stand-in (no CUDA: fixed buffers recomputed in place, run_static batching)")
    return (f"{how}: captured batch, second input, partial batch, in-place weights, "
            f"dict outputs ({len(out)} heads); 1 capture", max(worst), FP32_TOL)


def check_bf16(ctx: Context) -> tuple[str, float, float]:
    worst: list[float] = []
    model, x = _model(ctx), _input(ctx)
    _compare("bf16", FastInference(model, _path(ctx, bf16=True))(x), _eager(model, x),
             BF16_TOL, worst)
    where = "CUDA" if ctx.cuda else "CPU (the trainer's fast: on leaves it out there)"
    return f"bf16 autocast eval forward on {where}", worst[0], BF16_TOL


def check_channels_last(ctx: Context) -> tuple[str, float, float]:
    worst: list[float] = []
    model, x = _model(ctx), _input(ctx)
    path = _path(ctx, channels_last=True)
    fast = FastInference(_model(ctx).to(memory_format=torch.channels_last), path)
    _compare("channels_last", fast(x), _eager(model, x), FP32_TOL, worst)
    return "channels_last weights and input", worst[0], FP32_TOL


def _needs_compile(ctx: Context) -> None:
    if not ctx.cuda and not ctx.compile_on_cpu:
        raise SkipCheck("torch.compile on CPU builds C++ for 30-90 s a model: left out of the "
                        "CPU run (--compile names it)")


def check_compile(ctx: Context) -> tuple[str, float, float]:
    _needs_compile(ctx)
    worst: list[float] = []
    model, x = _model(ctx), _input(ctx)
    _compare("compile", FastInference(model, _path(ctx, compile=True))(x), _eager(model, x),
             FP32_TOL, worst)
    return "torch.compile eval forward, fp32", worst[0], FP32_TOL


def check_all_parts(ctx: Context) -> tuple[str, float, float]:
    if not ctx.cuda:
        raise SkipCheck("fast: on applies no part on CPU (skipdsl.fast.CPU_REASONS)")
    worst: list[float] = []
    model, x = _model(ctx), _input(ctx)
    path = FastPath.resolve("on", ctx.device)
    fast = FastInference(_model(ctx).to(memory_format=torch.channels_last), path)
    _compare("on", fast(x), _eager(model, x), BF16_TOL, worst)
    part = x[:BATCH - 1]
    _compare("on, partial batch", fast(part), _eager(model, part), BF16_TOL, worst)
    return f"fast: on = {path.summary()}, full and partial batch", max(worst), BF16_TOL


def check_train_step(ctx: Context) -> tuple[str, float, float]:
    """A fast-path training step (compiled forward, bf16 autocast, channels_last) against the
    eager fp32 one: the loss, and the gradient's direction (cosine similarity >= 0.95: bf16
    moves a small model's gradient by a few degrees, a wrong backward by far more)."""
    parts = dict(bf16=True, channels_last=True, compile=ctx.cuda or ctx.compile_on_cpu)
    path = _path(ctx, **parts)
    x = _input(ctx)
    y = (_input(ctx, seed=3) > 0).float()[:, :1]
    grads, losses = [], []
    for fast in (None, path):
        model = _model(ctx).train()
        fn: Callable = model
        xin = x
        if fast is not None:
            model = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
            fn = fast.compile_model(model)
        with (fast.autocast() if fast is not None else torch.autocast(ctx.device, enabled=False)):
            out = fn(xin)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    d = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)
    cos = F.cosine_similarity(grads[0], grads[1], dim=0).item()
    if not d <= BF16_TOL:
        raise Failed(f"loss {losses[1]:.5f} vs eager {losses[0]:.5f} (rel diff {d:.2e})")
    if not cos >= 0.95:
        raise Failed(f"gradient cosine similarity {cos:.4f} < 0.95")
    return (f"train step with {path.summary()}: loss rel diff {d:.1e}, gradient cosine "
            f"{cos:.4f}", d, BF16_TOL)


def check_trainer(ctx: Context) -> tuple[str, float, float]:
    """The trainer end to end with the fast path (1 epoch, 16 images): it trains, evaluates
    through the fast inference (CUDA graphs on CUDA, the last batch padded) and records it."""
    from skipdsl.train.trainer import train_and_evaluate

    fast = "on" if ctx.cuda else "channels_last"
    cfg = {"model": small_spec().to_dict(), "dataset": "nuclei2d", "epochs": 1, "n": 16,
           "widths": [8, 16, 32], "batch_size": 4, "device": ctx.device, "fast": fast,
           "hd95": False, "throughput_iters": 1, "samples": 0, "prune": False,
           "cache_dir": ctx.cache_dir}
    r = train_and_evaluate(cfg)
    want = FastPath.resolve(fast, ctx.device).summary()
    if r["status"] != "ok":
        raise Failed(f"trial {r['status']}: {r['reason']}")
    if r["fast"] != want:
        raise Failed(f"trainer applied {r['fast']}, expected {want}")
    if not 0 <= r["iou"] <= 1 or not r["images_per_s"] > 0:
        raise Failed(f"iou {r['iou']}, images/s {r['images_per_s']}")
    return (f"train_and_evaluate, fast {fast} -> {r['fast']}: test IoU {r['iou']:.3f}, "
            f"{r['images_per_s']:.0f} img/s", None, None)


#: In order of what matters most if the stage is cut.
CHECKS: dict[str, Callable[[Context], tuple[str, float | None, float | None]]] = {
    "cuda_graphs": check_cuda_graphs,
    "bf16": check_bf16,
    "channels_last": check_channels_last,
    "all_parts": check_all_parts,
    "compile": check_compile,
    "train_step": check_train_step,
    "trainer": check_trainer,
}


def run_checks(ctx: Context, names: Sequence[str] | None = None,
               on_check: Callable[[list[Check]], None] | None = None) -> list[Check]:
    results: list[Check] = []
    for name in names or CHECKS:
        t0 = time.perf_counter()
        try:
            detail, diff, tol = CHECKS[name](ctx)
            c = Check(name, "ok", detail, diff, tol)
        except SkipCheck as e:
            c = Check(name, "skipped", str(e))
        except Failed as e:
            c = Check(name, "failed", str(e))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, with its cause
            last = traceback.format_exc().strip().splitlines()[-1]
            c = Check(name, "failed", f"{type(e).__name__}: {last}")
        if ctx.cuda:
            torch.cuda.synchronize()
        torch._dynamo.reset()  # drop this check's compiled graphs
        c.seconds = time.perf_counter() - t0
        results.append(c)
        print(f"[fastcheck] {c.name}: {c.status} {c.detail}", file=sys.stderr, flush=True)
        if on_check:
            on_check(results)
    return results


def markdown(checks: list[Check], ctx: Context, command: str) -> str:
    dev = torch.cuda.get_device_name() if ctx.cuda else "CPU"
    lines = ["# Fast path vs eager fp32", "", f"Command: `{command}`", "",
             f"- device: {dev}; torch {torch.__version__}", "",
             "| check | status | max rel diff | tolerance | s | detail |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        d = "-" if c.max_rel_diff is None else f"{c.max_rel_diff:.1e}"
        t = "-" if c.tolerance is None else f"{c.tolerance:g}"
        lines.append(f"| {c.name} | {c.status} | {d} | {t} | {c.seconds:.1f} | {c.detail} |")
    pending = [n for n in CHECKS if n not in {c.name for c in checks}]
    if pending:
        lines += ["", f"Not run (yet): {', '.join(pending)}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/fastcheck.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--checks", default=None, help=f"comma list (default all: {','.join(CHECKS)})")
    p.add_argument("--compile", action="store_true", help="run torch.compile on CPU too")
    p.add_argument("--cache-dir", default=None, help="dataset cache of the trainer check")
    p.add_argument("--out", default=None, help="markdown table (rewritten after every check)")
    p.add_argument("--json", default=None, help="JSON (rewritten after every check)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    names = [n.strip() for n in (a.checks or "").split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {unknown}; valid: {', '.join(CHECKS)}")
    ctx = Context(a.device, a.compile, a.cache_dir)
    command = shlex.join([*shlex.split(prog), *argv])

    def save(checks: list[Check]) -> None:
        if a.out:
            atomic_write_text(a.out, markdown(checks, ctx, command))
        if a.json:
            atomic_write_text(a.json, json.dumps({"command": command, "device": a.device,
                                                  "checks": [asdict(c) for c in checks]},
                                                 indent=1))

    checks = run_checks(ctx, names, on_check=save)
    save(checks)
    return 1 if any(c.status == "failed" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
