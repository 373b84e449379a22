"""Network size without building it, and specs scaled to a parameter or FLOP budget.

- :func:`skipdsl.limits.estimate_params` bounds a graph's parameter count from its channels
  alone (no module built, microseconds); :func:`skipdsl.compile` uses it to refuse a spec that
  would allocate an absurd network (``MAX_PARAMS``), naming the node or edge responsible.
- :func:`count` is the exact parameter count and forward FLOPs of the network a spec compiles
  to, built on PyTorch's ``meta`` device: every module and tensor has its shape but no storage,
  so a count costs tens of milliseconds and no memory, whatever the widths.
- :func:`scale_to_params` / :func:`scale_to_flops` multiply a spec's widths (what
  :func:`skipdsl.spec.scale_spec` scales: level widths, projections, explicit node widths,
  pyramid channels) by one factor, found by bisection on that exact count, so that networks of
  different topologies can be compared at the same size. Comparing at matched compute is the
  first recommendation of Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in
  3D Medical Image Segmentation" (MICCAI 2024).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .compiler import compile as compile_spec
from .errors import SpecError
from .limits import MAX_PARAMS, estimate_params
from .spec import Spec, load, scale_spec

#: Relative tolerance of :func:`scale_to_params` / :func:`scale_to_flops`.
TOLERANCE = 0.03

__all__ = ["MAX_PARAMS", "SizeTarget", "Scaled", "Cost", "count", "estimate_params", "scale_to", "scale_to_params", "scale_to_flops", "parse_size"]

@dataclass(frozen=True)
class Cost:
    params: int
    gflops: float | None  # per image at ``size``; None when no size was given


def _prepare(spec: Spec, in_channels: int | None, num_classes: int | None,
             dims: int | None) -> Spec:
    return load(spec).replace(in_channels=in_channels, num_classes=num_classes, dims=dims,
                              deep_supervision=False)


def count(spec: "Spec | str", *, in_channels: int | None = None, num_classes: int | None = None,
          dims: int | None = None, size: "int | tuple[int, ...] | None" = None,
          max_params: int | None = None) -> Cost:
    """Exact parameters of the inference network (main head only, as the benchmark reports
    it) and, with ``size``, its forward GFLOPs per image at that size, built on the ``meta``
    device (no memory is allocated, the random number generators are not used)."""
    s = _prepare(spec, in_channels, num_classes, dims)
    with torch.device("meta"):
        net = compile_spec(s, max_params=max_params)
    params = sum(p.numel() for p in net.parameters())
    gflops = None
    if size is not None:
        shape = (size,) * s.dims if isinstance(size, int) else tuple(size)
        x = torch.empty(1, s.in_channels, *shape, device="meta")
        net.eval()
        with FlopCounterMode(display=False) as fc:
            net(x)
        gflops = fc.get_total_flops() / 1e9
    return Cost(int(params), gflops)


# -- size targets ---------------------------------------------------------------------------

_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kKmMgGbB]?)\s*$")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


@dataclass(frozen=True)
class SizeTarget:
    """What to scale to: ``kind`` 'params' or 'flops' (GFLOPs per image at the evaluation
    size), and either a ``value`` or a ``model`` whose size at the budget is the target."""

    kind: str
    value: float | None = None
    model: str | None = None

    def describe(self) -> str:
        what = "parameters" if self.kind == "params" else "GFLOPs per image"
        if self.model:
            return f"{what} of {self.model}"
        return f"{_fmt(self.value, self.kind)} {what}"

    def key(self) -> str:
        """The target as it enters a trial key."""
        return f"{self.kind}={self.model or repr(float(self.value))}"


def _fmt(v: float, kind: str) -> str:
    if kind == "flops":
        return f"{v:.3g}"
    if v < 1e3:
        return f"{v:.0f}"
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def parse_size(text: "str | float | int", kind: str = "params") -> SizeTarget:
    """``'670k'``, ``'0.67M'``, ``'670000'`` (or a number) -> a value target; a model name or
    spec path -> that model's size. ``kind``: 'params' or 'flops' (then numbers are GFLOPs)."""
    if kind not in ("params", "flops"):
        raise ValueError(f"kind must be 'params' or 'flops', found {kind!r}")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _NUMBER.match(str(text))
        if not m:
            load(str(text))  # a model name or spec path; an unknown one raises here
            return SizeTarget(kind, model=str(text))
        value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"a size target must be a positive number or a model name, found "
                        f"{text!r}", hint="e.g. --params 670k, --params 0.67M, --params "
                        "unetsharp, --flops 0.5")
    return SizeTarget(kind, value=value)


@dataclass(frozen=True)
class Scaled:
    """A spec scaled to a size: the ``spec`` (scaled widths), the ``factor`` applied to the
    input spec's widths, the ``value`` reached and the ``target``."""

    spec: Spec
    factor: float
    value: float
    target: float
    kind: str

    @property
    def error(self) -> float:
        return self.value / self.target - 1.0


def scale_to(spec: "Spec | str", target: float, *, kind: str = "params",
             in_channels: int | None = None, num_classes: int | None = None,
             dims: int | None = None, size: "int | tuple[int, ...] | None" = None,
             tol: float = TOLERANCE, max_params: int | None = None) -> Scaled:
    """``spec`` with its widths multiplied by the one factor that brings its ``kind``
    ('params', or 'flops' per image at ``size``) within ``tol`` of ``target``.

    Bisection on the factor (the count grows with it; integer channels make it a staircase):
    up to 60 exact counts on the meta device. A target below the smallest network (every
    width 1 channel), above ``max_params``, or between two steps of the staircase farther apart
    than ``tol`` raises a :class:`SpecError` that names the model and the reachable range.
    """
    s = load(spec)
    name = s.name
    if s.encoder.backbone:
        raise SpecError(f"{name}: a backbone ({s.encoder.backbone}) fixes the encoder's "
                        "channels, so its size cannot be scaled to a target",
                        file=s.source, hint="compare backbone models at their own size "
                        "(leave out --params/--flops)")
    if kind == "flops" and size is None:
        raise ValueError("scale_to(kind='flops') needs the evaluation size")
    if not math.isfinite(target) or target <= 0:
        raise SpecError(f"size target must be positive, found {target!r}")

    def measure(f: float) -> tuple[Spec, float]:
        t = scale_spec(s, f)
        c = count(t, in_channels=in_channels, num_classes=num_classes, dims=dims,
                  size=size if kind == "flops" else None, max_params=max_params)
        return t, float(c.params if kind == "params" else c.gflops)

    def unit(v: float) -> str:
        return _fmt(v, kind) + (" parameters" if kind == "params" else " GFLOPs/image")

    lo = 1e-7  # every width (below 5e6 channels) rounds to its floor of 1 channel
    lo_spec, lo_val = measure(lo)
    floor = lo_val
    if target < lo_val * (1 - tol):
        raise SpecError(f"{name} cannot be made as small as {unit(target)}: with every width "
                        f"at 1 channel it has {unit(lo_val)}",
                        file=s.source, hint=f"reachable: {unit(lo_val)} and up")
    hi = 1.0
    hi_spec, hi_val = measure(hi)
    while hi_val < target:
        if hi > 4096:
            break
        try:
            hi_spec, hi_val = measure(hi * 2)
        except SpecError as err:  # above max_params
            raise SpecError(f"{name} cannot reach {unit(target)} under the parameter limit "
                            f"({err.message})", file=s.source,
                            hint=f"reachable: {unit(lo_val)} to about {unit(hi_val)}") from None
        hi *= 2
    best = min(((lo_spec, lo, lo_val), (hi_spec, hi, hi_val)), key=lambda t: abs(t[2] - target))
    for _ in range(60):
        if abs(best[2] / target - 1) <= tol:
            break
        mid = math.sqrt(lo * hi)
        mid_spec, mid_val = measure(mid)
        if abs(mid_val - target) < abs(best[2] - target):
            best = (mid_spec, mid, mid_val)
        if mid_val < target:
            lo, lo_val = mid, mid_val
        else:
            hi, hi_val = mid, mid_val
        if hi / lo < 1 + 1e-9:
            break
    t_spec, f, v = best
    if abs(v / target - 1) > tol:
        raise SpecError(f"{name} has no integer widths within {tol:.0%} of {unit(target)}: the "
                        f"nearest is {unit(v)} (factor {f:.4g})", file=s.source,
                        hint=f"reachable: {unit(floor)} and up, in steps (integer channels); "
                        "try a larger target")
    return Scaled(t_spec, f, v, float(target), kind)


def scale_to_params(spec: "Spec | str", target: float, in_channels: int | None = None,
                    num_classes: int | None = None, *, dims: int | None = None,
                    tol: float = TOLERANCE) -> Spec:
    """``spec`` scaled (one factor on every width) to ``target`` parameters +- ``tol`` for
    ``in_channels`` -> ``num_classes``; see :func:`scale_to`."""
    return scale_to(spec, target, kind="params", in_channels=in_channels,
                    num_classes=num_classes, dims=dims, tol=tol).spec


def scale_to_flops(spec: "Spec | str", target: float, size: "int | tuple[int, ...]",
                   in_channels: int | None = None, num_classes: int | None = None, *,
                   dims: int | None = None, tol: float = TOLERANCE) -> Spec:
    """``spec`` scaled to ``target`` forward GFLOPs per image of ``size``; see :func:`scale_to`."""
    return scale_to(spec, target, kind="flops", size=size, in_channels=in_channels,
                    num_classes=num_classes, dims=dims, tol=tol).spec


def describe(value: Any, kind: str) -> str:
    return _fmt(float(value), kind)
