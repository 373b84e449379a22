"""CPU latency of UNet# pruned to L1..L4, eager PyTorch against each export format.

    python benchmarks/export_latency.py --out results/export_cpu.md

For every pruning level (the sub-network of head x_0_L; L4 = the whole UNet#) and every format
(ONNX in onnxruntime, TorchScript, torch.export), the network is exported with
``skipdsl.export.export_network`` and checked with ``skipdsl.export.check``: the largest
|exported - eager| on two input shapes, the file size, and the median latency of one image on
one CPU thread, eager against exported (CPU time of the calling thread, which other work on
the machine does not inflate, and wall time). Weights: the spec's He initialisation (latency
does not depend on them); widths: the spec's own (the paper's 32..512) unless ``--widths``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import skipdsl
from skipdsl.checkpoint import build_network
from skipdsl.export import FORMATS, check, export_network
from skipdsl.train.metrics import gflops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="unetsharp")
    p.add_argument("--levels", default="1,2,3,4")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--widths", default=None, help="e.g. 8,16,32,64,128 (default: the spec's)")
    p.add_argument("--size", type=int, default=96, help="image side (96)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="a line about the machine's state")
    p.add_argument("--out", default=None, help="write the markdown table here")
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")] if a.widths else None
    spec = skipdsl.load(a.spec).replace(widths=widths)
    size = [a.size] * spec.dims
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in [int(v) for v in a.levels.split(",")]:
            net = build_network(spec, prune=level)
            cost = gflops(net, (spec.in_channels, *size))
            for fmt in a.formats.split(","):
                path = Path(tmp) / f"L{level}{FORMATS[fmt]}"
                t0 = time.perf_counter()
                export_network(net, fmt, path, size=size)
                res = check(net, fmt, path, size=size, level=level, iters=a.iters,
                            threads=a.threads)
                rows.append((res, cost, time.perf_counter() - t0))
                print(f"L{level} {fmt}: {res.exported_ms:.1f} ms vs eager {res.eager_ms:.1f} ms, "
                      f"diff {res.max_diff:.1e}", file=sys.stderr)
    lines = [
        f"# {spec.name} pruned L1-L4: CPU latency, eager PyTorch against exported", "",
        "Command: `" + " ".join(["python", "benchmarks/export_latency.py",
                                 *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
        + "`", "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start"
        + (f"; {a.note}" if a.note else "") + f". torch {torch.__version__}, "
        f"onnxruntime {_version('onnxruntime')}, {a.threads} thread(s).", "",
        f"Network: `{a.spec}` at widths {spec.widths}, {spec.in_channels} -> "
        f"{spec.num_classes} channels, He-initialised (latency does not depend on the weights). "
        f"Input: one {'x'.join(map(str, size))} image. `ms`: median CPU time of the calling "
        f"thread over {a.iters} forwards after 2 warm-up ones (torch and onnxruntime on one "
        "thread run in the calling thread, so other processes on the machine do not inflate "
        "it); `wall`: the elapsed time of the same forwards. `max diff`: the largest "
        "|exported - eager| over two input shapes (two batch sizes, two widths: the axes are "
        "dynamic). Pruned levels hold the lower pruning heads, as in the papers' code "
        "(their parameters are counted).", "",
        "| level | params | GFLOPs | format | file MB | max diff | eager ms | exported ms | "
        "speed-up | eager wall ms | exported wall ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res, cost, _ in rows:
        lines.append(f"| L{res.level} | {res.params:,} | {cost:.2f} | {res.format} | "
                     f"{res.size_bytes / 1e6:.2f} | {res.max_diff:.1e} | {res.eager_ms:.1f} | "
                     f"{res.exported_ms:.1f} | {res.eager_ms / max(res.exported_ms, 1e-9):.2f}x | "
                     f"{res.eager_wall_ms:.1f} | {res.exported_wall_ms:.1f} |")
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(text)
    return 0


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
