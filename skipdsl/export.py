"""``skipdsl export``: a network, full or pruned, as ONNX, TorchScript or a torch.export
program, checked against eager PyTorch after writing.

Formats (:data:`FORMATS`):

- ``onnx`` (``.onnx``, one file, weights inside): ``torch.onnx.export(dynamo=True)``; runs in
  onnxruntime. Dynamic batch and spatial axes (each side a multiple of ``2^(depth-1)``).
- ``torchscript`` (``.pt``; ``torch.jit.load``): traced. Batch and sides are free; the input
  check of the compiled module (channels, multiples) is not kept by tracing. PyTorch deprecates
  TorchScript; it stays for runtimes that read nothing else (its deprecation warnings are
  silenced here).
- ``exported`` (``.pt2``; ``torch.export.load(f).module()``): ``torch.export.export`` with
  dynamic batch and spatial axes (multiples, as ONNX).

What is exported is :class:`skipdsl.checkpoint.Inference`: it takes images ``(B, C,
*spatial)`` as the dataset prepared them, applies the training split's normalisation (for a
checkpoint; a spec's network takes normalised images), and returns the logits of the main
head, or with ``prune=L`` of head ``x_0_L``, ``(B, K, *spatial)``; masks are
``sigmoid(logits) > threshold``. The file carries ``skipdsl.json`` (spec, prune level,
threshold, normalisation, input rule): ONNX ``metadata_props``, TorchScript and torch.export
extra files.

:func:`check` then runs the file on random inputs of two shapes (two batch sizes, two sizes) and
reports the largest absolute difference to eager, the file size, and the median latency of one
image on the CPU, eager against exported, as CPU time of one thread (``time.thread_time``;
torch and onnxruntime set to one thread, so concurrent work on the machine does not inflate
it) and as wall time. An operation a format cannot express raises a ``SpecError`` naming the
spec, the operation and what to do; the file is written atomically (whole or not at all).
"""
from __future__ import annotations

import io
import json
import logging
import re
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .checkpoint import Inference
from .errors import SpecError
from .fileio import atomic_write_bytes
from .version import __version__

__all__ = ["FORMATS", "ExportCheck", "export_network", "load_runner", "check", "metadata",
           "time_forward"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}
META_FILE = "skipdsl.json"


def metadata(net: Inference, *, prune: int | None = None, threshold: float = 0.5,
             input_normalisation: str | None = None, source: str | None = None) -> dict[str, Any]:
    """What the exported file says about itself (``skipdsl.json``)."""
    spec = net.spec
    return {
        "skipdsl": __version__, "source": source,
        "spec": spec.to_yaml(), "prune": prune, "head": spec.main_head.node if not prune
        else f"x_0_{prune}", "threshold": threshold,
        "input": f"(batch, {spec.in_channels}, *spatial), every side a multiple of "
                 f"{spec.input_multiple}" + (f"; prepared as the dataset did: "
                                               f"{input_normalisation}"
                                               if input_normalisation else ""),
        "normalisation": {"mean": net.mean.flatten().tolist(), "std": net.std.flatten().tolist()}
        if net.normalises else None,
        "output": f"logits (batch, {spec.num_classes}, *spatial); mask = sigmoid(logits) > "
                  f"threshold",
    }


def _dynamic_shapes(net: Inference) -> dict[str, Any]:
    from torch.export import Dim

    m = net.spec.input_multiple
    axes = {0: Dim("batch", min=1, max=4096)}
    for k, name in enumerate("dhw"[-net.spec.dims:]):
        axes[2 + k] = m * Dim(f"{name}_{m}", min=1, max=4096)
    return {"x": axes}


def _failed(fmt: str, net: Inference, err: BaseException, source: str | None) -> SpecError:
    """A SpecError for an export that failed: the operation named, what to do."""
    text = f"{err}\n{err.__cause__ or ''}"
    op = None
    for pattern in (r"No ONNX function found for <OpOverload\(op='([^']+)'",
                    r"target=torch\.ops\.([\w.]+)", r"(aten::\w+)", r"(aten\.\w+)"):
        m = re.search(pattern, text)
        if m:
            op = m.group(1)
            break
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    first = next((ln.strip() for ln in plain.splitlines() if ln.strip()), type(err).__name__)
    what = f"the operation {op}" if op else f"an operation ({type(err).__name__}: {first[:200]})"
    others = ", ".join(f for f in FORMATS if f != fmt)
    return SpecError(f"cannot export '{net.spec.name}' to {fmt}: {what} has no {fmt} form",
                     file=source, hint=f"replace the block or edge that uses it (a block is one "
                     f"function in skipdsl.layers.BLOCKS), or export to another format "
                     f"({others})")


def _onnx_bytes(net: Inference, x: torch.Tensor, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(net, (x,), None, dynamo=True, external_data=False,
                                        dynamic_shapes=_dynamic_shapes(net), verbose=False,
                                        input_names=["x"], output_names=["logits"])
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_FILE, json.dumps(meta)
    return proto.SerializeToString()


def _torchscript_bytes(net: Inference, x: torch.Tensor, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        # TracerWarnings from the input check; PyTorch deprecates TorchScript (the format
        # is kept for runtimes that only read it)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={META_FILE: json.dumps(meta)})
    return buf.getvalue()


def _exported_bytes(net: Inference, x: torch.Tensor, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (x,), dynamic_shapes=_dynamic_shapes(net))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={META_FILE: json.dumps(meta)})
    return buf.getvalue()


_WRITERS: dict[str, Callable[[Inference, torch.Tensor, dict[str, Any]], bytes]] = {
    "onnx": _onnx_bytes, "torchscript": _torchscript_bytes, "exported": _exported_bytes}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from .errors import did_you_mean

        raise SpecError(f"unknown export format '{fmt}'", hint=did_you_mean(fmt, FORMATS))


def export_network(net: Inference, fmt: str, path: str | Path, *, size: Sequence[int],
                   meta: dict[str, Any] | None = None, source: str | None = None) -> Path:
    """Write ``net`` (eval mode) as ``fmt`` to ``path`` atomically; ``size``: the spatial size
    of the example input it is traced with (sides multiples of ``2^(depth-1)``)."""
    _check_format(fmt)
    net = net.eval()
    x = torch.randn(2, net.spec.in_channels, *size)
    try:
        data = _WRITERS[fmt](net, x, meta or {})
    except SpecError:
        raise
    except Exception as err:  # the exporters raise many kinds; each becomes one message
        raise _failed(fmt, net, err, source) from None
    return atomic_write_bytes(path, data)


def load_runner(fmt: str, path: str | Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the exported file on a float32 array: onnxruntime (CPU, ``threads``
    intra-op threads) for ONNX, ``torch.jit.load`` / ``torch.export.load`` otherwise."""
    _check_format(fmt)
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda a: session.run(None, {name: a})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        module = torch.export.load(str(path)).module()

    def run(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(a)).numpy()

    return run


def time_forward(fn: Callable[[], Any], iters: int = 10, warmup: int = 2) -> tuple[float, float]:
    """Median (CPU ms of this thread, wall ms) of ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(max(1, iters)):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


@dataclass
class ExportCheck:
    """The outcome of :func:`check` for one exported file."""

    format: str
    path: str
    level: int | None
    params: int
    size_bytes: int
    max_diff: float
    shapes: list[list[int]]
    eager_ms: float
    exported_ms: float
    eager_wall_ms: float
    exported_wall_ms: float
    latency_shape: list[int]
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(net: Inference, fmt: str, path: str | Path, *, size: Sequence[int],
          level: int | None = None, iters: int = 10, threads: int = 1,
          seed: int = 0) -> ExportCheck:
    """Compare the exported file with eager ``net`` (see the module docstring)."""
    from .train.metrics import count_params

    net = net.eval()
    m = net.spec.input_multiple
    gen = torch.Generator().manual_seed(seed)
    base = [int(s) for s in size]
    other = [s + m if k == len(base) - 1 else s for k, s in enumerate(base)]
    shapes = [[2, net.spec.in_channels, *base], [1, net.spec.in_channels, *other]]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = load_runner(fmt, path, threads)
        diff = 0.0
        for shape in shapes:
            x = torch.randn(*shape, generator=gen)
            with torch.no_grad():
                want = net(x).numpy()
            got = run(x.numpy())
            if got.shape != want.shape:
                raise SpecError(f"the exported {fmt} file returns shape {got.shape} for input "
                                f"{tuple(shape)}, eager returns {want.shape}", file=str(path),
                                hint="export again; if it persists, report it")
            diff = max(diff, float(np.abs(got - want).max()))
        x1 = torch.randn(1, net.spec.in_channels, *base, generator=gen)
        with torch.no_grad():
            eager = time_forward(lambda: net(x1), iters)
        a1 = x1.numpy()
        exported = time_forward(lambda: run(a1), iters)
    finally:
        torch.set_num_threads(before)
    return ExportCheck(format=fmt, path=str(path), level=level, params=count_params(net.net),
                       size_bytes=Path(path).stat().st_size, max_diff=diff, shapes=shapes,
                       eager_ms=eager[0], exported_ms=exported[0], eager_wall_ms=eager[1],
                       exported_wall_ms=exported[1], latency_shape=[1, net.spec.in_channels,
                                                                    *base], threads=threads)
