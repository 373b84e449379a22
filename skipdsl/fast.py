"""The fast path: bf16 autocast, channels_last, ``torch.compile`` and CUDA-graph inference,
chosen by one option (the spec's ``fast:`` field, ``--fast`` on the command line, the trainer's
``fast`` config key).

Option values (:func:`normalize`):

- ``off`` (``false``, the default): none of it.
- ``on`` (``true``, ``auto``): the whole path where it pays off. On CUDA: all four parts. On
  CPU: none of them, each recorded in ``skipped`` with its reason (see :data:`CPU_REASONS`):
  bf16 autocast and CUDA graphs are CUDA-only, ``torch.compile`` is not worth it on CPU by
  default (the inductor's C++ build takes 30-90 s per model cold), and channels_last is left
  to the trainer, which turns it on for 2D data (``channels_last: auto``).
- a comma list of parts, e.g. ``channels_last,compile``: exactly those, on any device, except
  that the CUDA-only parts (``bf16``, ``cuda_graphs``) are skipped on CPU with the reason.

``cuda_graphs`` is also skipped (with the reason) when ``compile_mode`` already captures CUDA
graphs itself (``reduce-overhead``, ``max-autotune``). A command line value overrides the
spec's (:func:`choose`). Nothing is dropped silently: :attr:`FastPath.skipped` says what was
asked for and not applied, and why.

Inference runs through :class:`FastInference`: channels_last input, bf16 autocast, the
(compiled) eval forward and, with ``cuda_graphs``, a :class:`GraphedForward` per input shape
that replays the forward captured in a ``torch.cuda.CUDAGraph``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import did_you_mean

__all__ = ["PARTS", "CUDA_ONLY", "FastPath", "FastPathError", "FastInference", "GraphedForward",
           "normalize", "choose", "run_static"]

#: The parts of the fast path, in the order they are reported.
PARTS = ("bf16", "channels_last", "compile", "cuda_graphs")
#: Parts that need a CUDA device: skipped on CPU even when named.
CUDA_ONLY = ("bf16", "cuda_graphs")
#: Why ``on`` leaves each part out on CPU (recorded in ``FastPath.skipped``).
CPU_REASONS = {
    "bf16": "CUDA only: on CPU bf16 autocast gives no consistent gain and changes the numerics, "
            "the trainer's amp: true forces it",
    "channels_last": "left out on CPU by 'on' (the trainer's channels_last: auto adds it for 2D "
                     "data, where it gains 1.2-1.6x; in 3D it did not), name it to force it",
    "compile": "left out on CPU by 'on': the inductor's C++ build takes 30-90 s per model "
               "cold, name it to force it, e.g. fast: channels_last,compile",
    "cuda_graphs": "needs a CUDA device",
}
#: torch.compile modes that capture CUDA graphs themselves (cudagraph trees).
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")
_ON = ("on", "true", "yes", "1", "auto")
_OFF = ("off", "false", "no", "0", "none")


class FastPathError(ValueError):
    """A fast-path option that cannot be understood, or a part that cannot run here."""


def normalize(value: Any) -> str:
    """An option value -> ``'off'``, ``'on'`` or a comma list of parts in :data:`PARTS` order.

    Takes a bool, ``None`` (off), a string (``on``/``off``/``auto``/``true``/``false`` or a comma
    list of parts; ``-`` may stand for ``_``) or a list of parts. Unknown names raise
    :class:`FastPathError` with the valid ones.
    """
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _OFF:
            return "off"
        if word in _ON:
            return "on"
        items = word.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.lower() for v in value]
    else:
        raise FastPathError(f"fast must be on, off or a list of parts ({', '.join(PARTS)}), "
                            f"found {value!r}")
    items = [p.strip().replace("-", "_") for p in items if p.strip()]
    for p in items:
        if p not in PARTS:
            raise FastPathError(f"unknown fast-path part '{p}'; "
                                + did_you_mean(p, PARTS + ("on", "off")))
    return ",".join(p for p in PARTS if p in items) or "off"


def choose(cli: Any = None, spec: Any = None) -> str:
    """The option in force: the command line's when given (``None`` = not given), else the
    spec's, else ``off``."""
    return normalize(cli if cli is not None else spec)


def _device_type(device: Any) -> str:
    return torch.device(device).type if device is not None else "cpu"


@dataclass(frozen=True)
class FastPath:
    """Which fast-path parts are applied on one device, and why the others are not.

    Build it with :meth:`resolve`; ``skipped`` maps each part that was asked for (by name or
    by ``on``) but is not applied to the reason.
    """

    option: str = "off"
    device: str = "cpu"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    compile_mode: str | None = None
    skipped: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(cls, option: Any, device: Any = "cpu", *, compile_mode: str | None = None
                ) -> "FastPath":
        """The parts of ``option`` (see :func:`normalize`) that apply on ``device``."""
        opt = normalize(option)
        dev = _device_type(device)
        cuda = dev == "cuda"
        want = () if opt == "off" else PARTS if opt == "on" else tuple(opt.split(","))
        on: dict[str, bool] = {p: False for p in PARTS}
        skipped: dict[str, str] = {}
        for p in want:
            if not cuda and (p in CUDA_ONLY or opt == "on"):
                skipped[p] = CPU_REASONS[p]
            else:
                on[p] = True
        if on["cuda_graphs"] and on["compile"] and compile_mode in GRAPHING_COMPILE_MODES:
            on["cuda_graphs"] = False
            skipped["cuda_graphs"] = (f"torch.compile mode {compile_mode} captures CUDA "
                                      "graphs itself")
        return cls(option=opt, device=dev, compile_mode=compile_mode, skipped=skipped, **on)

    # -- what it says ----------------------------------------------------------------------
    @property
    def applied(self) -> tuple[str, ...]:
        """The parts in force, in :data:`PARTS` order."""
        return tuple(p for p in PARTS if getattr(self, p))

    def summary(self) -> str:
        """``'bf16,channels_last,compile,cuda_graphs'``, ``'channels_last'`` or ``'off'``."""
        return ",".join(self.applied) or "off"

    def reasons(self) -> str:
        """``'part: reason; ...'`` for the skipped parts (empty when none)."""
        return "; ".join(f"{p}: {self.skipped[p]}" for p in PARTS if p in self.skipped)

    def describe(self) -> str:
        """One line: the applied parts, then the skipped ones with their reasons."""
        text = self.summary()
        if self.compile and self.compile_mode:
            text += f", compile mode {self.compile_mode}"
        return text + (f" (skipped: {self.reasons()})" if self.skipped else "")

    def with_part(self, part: str, on: bool, reason: str | None = None) -> "FastPath":
        """A copy with ``part`` turned on or off; turning off a part records ``reason``."""
        if part not in PARTS:
            raise FastPathError(f"unknown fast-path part '{part}'; " + did_you_mean(part, PARTS))
        skipped = dict(self.skipped)
        if on:
            if part == "cuda_graphs" and self.device != "cuda":
                raise FastPathError("cuda_graphs needs a CUDA device, this path is for "
                                    f"'{self.device}'")
            skipped.pop(part, None)
        elif getattr(self, part) or part in skipped:
            skipped[part] = reason or "turned off"
        return dataclasses.replace(self, skipped=skipped, **{part: bool(on)})

    # -- what it does ----------------------------------------------------------------------
    def memory_format(self, dims: int) -> torch.memory_format | None:
        """channels_last (2D) or channels_last_3d (3D) when that part is on, else ``None``."""
        if not self.channels_last:
            return None
        return torch.channels_last_3d if dims == 3 else torch.channels_last

    def autocast(self, device_type: str | None = None, *, cache_enabled: bool = True):
        """bf16 autocast on ``device_type`` (default: the path's device) when that part is on."""
        return torch.autocast(device_type or self.device, dtype=torch.bfloat16,
                              enabled=self.bf16, cache_enabled=cache_enabled)

    def compile_model(self, model: nn.Module) -> Callable:
        """``torch.compile(model, mode=compile_mode)`` when that part is on, else ``model``."""
        return torch.compile(model, mode=self.compile_mode) if self.compile else model

    def inference(self, model: nn.Module, fn: Callable | None = None) -> "FastInference":
        """:class:`FastInference` of ``model`` with this path (``fn``: a compiled forward to
        share, e.g. the training one)."""
        return FastInference(model, self, fn=fn)


# -----------------------------------------------------------------------------------------
# static-shape replay (the device-independent part of a CUDA-graph forward)


def _map(out: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return f(out)
    if isinstance(out, dict):
        return {k: _map(v, f) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_map(v, f) for v in out)
    raise FastPathError(f"a graphed forward must return tensors, dicts, lists or tuples of them, "
                        f"found {type(out).__name__}")


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map(out, lambda t: found.append(t) or t)
    return found


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))


def run_static(x: torch.Tensor, static_in: torch.Tensor, static_out: Any,
               replay: Callable[[], None]) -> Any:
    """Run a batch of any size through a fixed-shape forward.

    ``replay()`` recomputes ``static_out`` from ``static_in`` in place (a CUDA graph replay).
    ``x`` is fed in chunks of ``static_in``'s batch size; a last partial chunk is padded with
    zeros (in eval mode every sample is computed on its own, so the padding changes nothing)
    and its outputs are cut back. Returns copies of the outputs, with ``static_out``'s
    structure (tensor, dict, list or tuple).
    """
    if tuple(x.shape[1:]) != tuple(static_in.shape[1:]):
        raise FastPathError(f"input shape {tuple(x.shape)} does not match the captured shape "
                            f"(*, {', '.join(map(str, static_in.shape[1:]))})")
    size, n = static_in.shape[0], x.shape[0]
    chunks = []
    for start in range(0, n, size):
        part = x[start:start + size]
        m = part.shape[0]
        static_in[:m].copy_(part)
        if m < size:
            static_in[m:].zero_()
        replay()
        chunks.append(_map(static_out, lambda t, m=m: t[:m].clone()))
    if not chunks:
        return _map(static_out, lambda t: t[:0].clone())
    return chunks[0] if len(chunks) == 1 else _cat(chunks)


class GraphedForward:
    """An eval forward captured once in a ``torch.cuda.CUDAGraph`` and replayed.

    ``fn`` (a module in eval mode, or its compiled forward) is warmed up on a side stream
    (cuDNN autotuning, compilation), then captured on that stream for the shape of
    ``example``; calls copy their input into the static input buffer, replay the graph and
    return copies of the static outputs (see :func:`run_static`: any batch size, in chunks
    and with a padded last chunk). The graph reads the parameters in place: optimizer steps
    and ``load_state_dict`` are seen; moving or replacing parameter tensors needs a new
    capture. Inputs must be CUDA tensors (:class:`FastPathError` otherwise).
    """

    def __init__(self, fn: Callable, example: torch.Tensor, *, bf16: bool = False,
                 warmup: int = 3) -> None:
        if example.device.type != "cuda" or not torch.cuda.is_available():
            raise FastPathError(f"CUDA graphs need a CUDA device; the input is on "
                                f"'{example.device}' (use fast: on or a part list without "
                                "cuda_graphs on this machine)")
        device = example.device
        self.bf16 = bf16
        self.static_in = example.detach().clone()  # keeps the memory format
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad(), self._autocast():
            for _ in range(max(1, warmup)):
                fn(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            with torch.no_grad(), self._autocast():
                self.static_out = fn(self.static_in)
        batch = self.static_in.shape[0]
        bad = [tuple(t.shape) for t in tensor_leaves(self.static_out)
               if t.dim() == 0 or t.shape[0] != batch]
        if bad:
            raise FastPathError(f"a graphed forward needs outputs with the batch ({batch}) "
                                f"first; found shapes {bad}")

    def _autocast(self):
        # autocast's cast cache must be off while capturing (cached casts would be freed)
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=False)

    @property
    def batch(self) -> int:
        return int(self.static_in.shape[0])

    def __call__(self, x: torch.Tensor) -> Any:
        return run_static(x, self.static_in, self.static_out, self.graph.replay)


class FastInference(nn.Module):
    """A model's eval forward with a :class:`FastPath`: channels_last input, bf16 autocast,
    the compiled forward (``fn``, or ``torch.compile(model)`` when ``compile`` is on) and,
    with ``cuda_graphs``, one :class:`GraphedForward` per input shape.

    A batch no larger than a captured one with the same image shape is padded into the
    smallest that fits (the last partial batch of an evaluation); a larger batch is captured
    anew, up to ``max_graphs`` per image shape, after which it runs in chunks of the largest
    captured batch. Use one instance per batch size that matters for timing. Runs under
    ``torch.no_grad``; calling it in training mode raises. ``.to()`` drops the captured
    graphs. ``graphs`` counts the captures.
    """

    def __init__(self, model: nn.Module, fast: FastPath, fn: Callable | None = None,
                 max_graphs: int = 4) -> None:
        super().__init__()
        self.model = model
        self.fast = fast
        self.max_graphs = max_graphs
        object.__setattr__(self, "_fn", fn if fn is not None else fast.compile_model(model))
        self._graphs: dict[tuple, list[GraphedForward]] = {}
        if hasattr(model, "main_head"):  # skipdsl.main_logits reads it
            self.main_head = model.main_head

    @property
    def graphs(self) -> int:
        return sum(len(v) for v in self._graphs.values())

    def reset(self) -> None:
        """Drop the captured graphs (after replacing the model's parameter tensors)."""
        self._graphs.clear()

    def _apply(self, fn, *args, **kwargs):
        self.reset()  # moved or cast parameters: the graphs would read the old tensors
        return super()._apply(fn, *args, **kwargs)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        fmt = self.fast.memory_format(x.dim() - 2)
        return x.contiguous(memory_format=fmt) if fmt is not None and x.dim() in (4, 5) else x

    def forward(self, x: torch.Tensor) -> Any:
        if self.model.training:
            raise RuntimeError("FastInference runs eval forwards; call .eval() first")
        with torch.no_grad():
            if self.fast.cuda_graphs:
                return self._graph_for(x)(x)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.fast.bf16):
                return self._fn(self._prepare(x))

    def _graph_for(self, x: torch.Tensor) -> GraphedForward:
        if x.device.type != "cuda":
            raise FastPathError(f"cuda_graphs is on but the input is on '{x.device}'; CUDA "
                                "graphs need a CUDA device")
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        graphs = self._graphs.setdefault(key, [])
        n = x.shape[0]
        fits = [g for g in graphs if g.batch >= n]
        if fits:  # the same batch size, or the smallest one to pad into
            return min(fits, key=lambda g: g.batch)
        if len(graphs) >= self.max_graphs:
            return max(graphs, key=lambda g: g.batch)  # run in chunks
        g = GraphedForward(self._fn, self._prepare(x), bf16=self.fast.bf16)
        graphs.append(g)
        return g
