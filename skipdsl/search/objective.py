"""One search trial: a point -> the spec it measures -> cache lookup or training -> objectives.

Shared by both backends (Optuna in this process, Ray Tune workers):

- :func:`prepare` builds and validates the point's spec, scales it to the budget's widths and
  computes its canonical hash and cache key (``SpecError`` for an invalid point);
- :func:`find_cached` finds a finished trial of the study with the same key (same network by
  canonical hash, same dataset, budget, seed, deep supervision, CGM, loss and trainer settings);
- :func:`evaluate` trains it with the trainer (``train_and_evaluate`` or any function of the
  same signature), forwarding each epoch's validation IoU to ``report``, then measures latency,
  and returns the trial's record (:data:`RECORD_KEYS`); with ``checkpoint_dir`` set it keeps the
  trained weights there as ``<key>.pt`` (:mod:`skipdsl.checkpoint`; a trial of the same key later
  reuses both the result and the file).

Objectives (:data:`OBJECTIVES`): ``iou`` = the best validation IoU over the epochs (the test IoU
is recorded as ``test_iou`` but never optimised: selecting on the test split would leak it),
``params`` = parameters of the inference network in millions, ``latency`` = median time of one
forward pass of one image (batch 1, eval mode, no grad) in ms on the trial's device (on CPU:
one thread's CPU time, see :func:`measure_latency`), ``gflops``.
"""
from __future__ import annotations

import importlib
import math
import os
import socket
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..spec import Spec
from .space import SearchSpace, scale_spec

DEFAULT_TRAINER = "skipdsl.train.trainer:train_and_evaluate"


#: Pruning rules: the median rule, Optuna's successive halving and Hyperband, or none.
PRUNERS = ("median", "halving", "hyperband", "none")


@dataclass(frozen=True)
class Objective:
    name: str
    key: str  # the record key holding its value
    direction: str  # "maximize" | "minimize"
    label: str


OBJECTIVES: dict[str, Objective] = {
    "iou": Objective("iou", "iou", "maximize", "validation IoU (best epoch)"),
    "params": Objective("params", "params_m", "minimize", "parameters (M)"),
    "latency": Objective("latency", "latency_ms", "minimize", "latency (ms / image, batch 1)"),
    "gflops": Objective("gflops", "gflops", "minimize", "GFLOPs / image"),
}

#: What a finished trial records (Optuna user attributes; columns of trials.csv).
RECORD_KEYS = ("iou", "test_iou", "dice", "params", "params_m", "latency_ms", "gflops",
               "images_per_s", "epochs", "best_epoch", "train_seconds", "curve", "checkpoint")

#: Trainer settings that change a result (they go into the cache key).
RESULT_OVERRIDES = ("epochs", "n", "batch_size", "lr", "weight_decay", "augment", "data_seed")


@dataclass
class SearchConfig:
    """How every trial of a study is evaluated (the same for all its workers)."""

    dataset: str
    budget: str = "smoke"
    seed: int = 0
    objectives: tuple[str, ...] = ("iou", "params", "latency")
    width_scale: float = 1.0
    trainer: str = DEFAULT_TRAINER
    overrides: dict[str, Any] = field(default_factory=dict)  # trainer config keys
    prune: str = "median"  # "median" | "halving" | "hyperband" | "none" (PRUNERS)
    prune_warmup: int = 2  # epochs before the first pruning decision (halving: first rung)
    reduction_factor: int = 3  # halving / hyperband: 1 in this many trials goes up a rung
    prune_min_trials: int = 4  # finished trials needed before pruning starts
    latency_size: int | None = None  # default: 96 (2D) / 64 (3D)
    latency_iters: int = 20
    max_gflops: float | None = None  # networks above it are not trained (status too_costly)
    # where each trained trial's weights go (<dir>/<key>.pt, skipdsl.checkpoint); None: nowhere
    checkpoint_dir: str | None = None
    # every candidate scaled to this many parameters (skipdsl.sizing.scale_to, +-3%) for
    # ``size_io`` = (in_channels, num_classes) instead of by ``width_scale``; ``size_label``
    # is how it was asked for (``unetsharp``, ``670k``)
    size_target: float | None = None
    size_label: str | None = None
    size_io: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives)
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ValueError(f"unknown objective(s) {unknown}; valid: {', '.join(OBJECTIVES)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat: {self.objectives}")
        if self.prune not in PRUNERS:
            raise ValueError(f"prune must be one of {', '.join(PRUNERS)}, found {self.prune!r}")
        if self.prune in ("halving", "hyperband") and self.objectives != ("iou",):
            raise ValueError(f"--prune {self.prune} ranks trials on one objective, the "
                             f"validation IoU (found {', '.join(self.objectives)}): use "
                             "--objectives iou and make size a constraint with --params")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction factor must be >= 2, found {self.reduction_factor}")
        if self.size_target is not None and not self.size_target > 0:
            raise ValueError(f"size target must be > 0 parameters, found {self.size_target}")
        if self.size_io is not None:
            self.size_io = (int(self.size_io[0]), int(self.size_io[1]))
        if not self.width_scale > 0:
            raise ValueError(f"width scale must be > 0, found {self.width_scale}")

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o].direction for o in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = list(self.objectives)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class TooCostly(ValueError):
    """A valid network above the budget's forward-cost cap: recorded, not trained."""


@dataclass
class Prepared:
    """A valid point, ready to train: the nominal spec (the space's widths), the measured spec
    (at the budget's widths), its canonical hash and its cache key."""

    point: dict[str, Any]
    nominal: Spec | None
    spec: Spec
    hash: str
    key: str
    factor: float = 1.0  # the widths of ``spec`` over the nominal ones


def prepare(space: SearchSpace, point: dict[str, Any], cfg: SearchConfig,
            name: str = "search", *, check_cost: bool = True) -> Prepared:
    """Build, validate and scale a point; raises ``SpecError`` for an invalid one and
    :class:`TooCostly` for one above ``cfg.max_gflops``."""
    from skipdsl.graph import spec_hash
    from ..bench.store import trial_key

    nominal = space.build(point, name=name)
    if cfg.size_target:
        from skipdsl.sizing import scale_to

        cin, k = cfg.size_io or (nominal.in_channels, nominal.num_classes)
        scaled = scale_to(nominal, cfg.size_target, kind="params", in_channels=cin,
                          num_classes=k)  # SpecError (the reachable range) when it cannot
        spec, factor = scaled.spec, scaled.factor
    else:
        spec, factor = scale_spec(nominal, cfg.width_scale), cfg.width_scale
    h = spec_hash(spec)  # expands and validates the scaled graph too
    if cfg.max_gflops and check_cost:
        cost = forward_gflops(spec, cfg)
        if cost > cfg.max_gflops:
            raise TooCostly(f"one forward pass costs {cost:.3g} GFLOPs, above the "
                            f"{cfg.max_gflops:g} GFLOPs cap of the '{cfg.budget}' budget "
                            "(budgets.<budget>.max_gflops in the space, or --max-gflops)")
    extra = {"cgm": cgm_key(spec), "loss": spec.loss,
             **{k: cfg.overrides.get(k) for k in RESULT_OVERRIDES}}
    if cfg.trainer != DEFAULT_TRAINER:
        extra["trainer"] = cfg.trainer
    key = trial_key(h, cfg.dataset, cfg.budget, cfg.seed, spec.deep_supervision, extra)
    return Prepared(point=space.complete(point), nominal=nominal, spec=spec, hash=h, key=key,
                    factor=float(factor))


def forward_gflops(spec: Spec, cfg: SearchConfig) -> float:
    """GFLOPs of one forward pass of one image (main head) at the latency size."""
    from skipdsl.models import create_model
    from ..train.metrics import gflops

    size = cfg.latency_size or (96 if spec.dims == 2 else 64)
    model = create_model(spec, deep_supervision=False, cgm=False)
    return gflops(model, (spec.in_channels, *([size] * spec.dims)))


def cgm_key(spec: Spec) -> str | None:
    """The spec's CGM settings as a trial-key part (``None`` without CGM)."""
    if not spec.cgm:
        return None
    return ",".join(sorted({f"{h.cgm}@{h.cgm_from or h.node}" for h in spec.heads if h.cgm}))


def find_cached(trials: list, key: str, number: int | None = None):
    """The finished trial (``optuna.trial.FrozenTrial``) with this cache key: a complete one
    first (its values are reused), else a pruned one; ``None`` when the key is new."""
    from optuna.trial import TrialState

    same = [t for t in trials if t.user_attrs.get("key") == key and t.number != number
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    same.sort(key=lambda t: (t.state != TrialState.COMPLETE, t.number))
    return same[0] if same else None


def resolve_trainer(trainer: "str | Callable") -> Callable:
    """``"module:function"`` (or a callable) -> the trainer function."""
    if callable(trainer):
        return trainer
    mod, _, fn = str(trainer).partition(":")
    if not fn:
        raise ValueError(f"trainer must be 'module:function', found {trainer!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import trainer {trainer!r}: {e}") from None


def trainer_config(prep: Prepared, cfg: SearchConfig) -> dict[str, Any]:
    """The trainer's config for a prepared trial: the measured spec (as a dict, so Ray workers
    need no file) and its widths (so the budget's default widths do not replace them)."""
    return {**cfg.overrides, "model": prep.spec.to_dict(), "dataset": cfg.dataset,
            "seed": int(cfg.seed), "budget": cfg.budget,
            "deep_supervision": bool(prep.spec.deep_supervision),
            "widths": list(prep.spec.widths),
            **({"save_weights": True} if cfg.checkpoint_dir else {})}


def reason_of(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(err).__name__}: {err}{where}".strip()


def evaluate(prep: Prepared, cfg: SearchConfig, report: Callable[[int, float], Any] | None = None,
             trainer: "str | Callable | None" = None) -> dict[str, Any]:
    """Train and measure one prepared trial; returns its record with ``status`` ('ok' or
    'failed') and ``reason``. A pruner's exception raised by ``report`` propagates."""
    from optuna import TrialPruned

    fn = resolve_trainer(trainer or cfg.trainer)
    try:
        result = fn(trainer_config(prep, cfg), report=report)
    except (TrialPruned, KeyboardInterrupt):
        raise
    except Exception as err:  # the study goes on; the reason is recorded
        return {"status": "failed", "reason": reason_of(err)}
    if result.get("status", "ok") != "ok":
        return {"status": "failed", "reason": str(result.get("reason") or "trainer failed")}
    rec = record(result)
    try:
        rec["latency_ms"] = measure_latency(prep.spec, result, cfg)
    except Exception as err:
        return {"status": "failed", "reason": "latency measurement: " + reason_of(err)}
    weights = result.get("checkpoint")
    if cfg.checkpoint_dir and weights is not None:  # written where the trial ran (Ray: a worker)
        from ..checkpoint import write_file

        rec["checkpoint"] = str(write_file(Path(cfg.checkpoint_dir) / f"{prep.key}.pt", weights))
    rec.update(status="ok", reason="")
    return rec


def record(result: dict[str, Any]) -> dict[str, Any]:
    """The search's record of a trainer result (:data:`RECORD_KEYS`)."""
    curve = [_num(c.get("val_iou")) if isinstance(c, dict) else _num(c)
             for c in result.get("curve") or []]
    val = max((c for c in curve if not math.isnan(c)), default=float("nan"))
    if math.isnan(val):
        val = _num(result.get("val_iou", result.get("iou")))
    params = int(result.get("params") or 0)
    return {
        "iou": 0.0 if math.isnan(val) else val,
        "test_iou": _num(result.get("iou")), "dice": _num(result.get("dice")),
        "params": params, "params_m": params / 1e6,
        "gflops": _num(result.get("gflops")), "images_per_s": _num(result.get("images_per_s")),
        "epochs": int(result.get("epochs") or len(curve)),
        "best_epoch": int(result.get("best_epoch", -1)),
        "train_seconds": _num(result.get("train_seconds")),
        "curve": [None if math.isnan(c) else round(c, 6) for c in curve],
    }


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def measure_latency(spec: Spec, result: dict[str, Any], cfg: SearchConfig) -> float:
    """Median ms of one forward pass of one image (batch 1, eval, no grad) on the trial's device.

    On CPU it is the CPU time of the pass on one thread (``time.thread_time``): one core's
    latency, which the other workers and processes sharing the machine do not inflate, as they
    would a wall-clock time. On CUDA it is the wall time between synchronisations. The network
    is compiled afresh from the measured spec with the dataset's channels (weights do not
    change the time); the image side is ``cfg.latency_size`` (default 96 in 2D, 64 in 3D, the
    sizes the datasets are resampled to); the median of ``latency_iters`` timed passes follows
    3 warm-up passes.
    """
    import torch

    from skipdsl.models import create_model

    dims = int(result.get("dims") or spec.dims)
    model = create_model(spec, dims=dims, deep_supervision=False, cgm=False,
                         in_channels=int(result.get("in_channels") or spec.in_channels),
                         num_classes=int(result.get("num_classes") or spec.num_classes))
    dev = torch.device(result.get("device") or "cpu")
    model = model.to(dev).eval()
    size = cfg.latency_size or (96 if dims == 2 else 64)
    x = torch.randn(1, model.spec.in_channels, *([size] * dims), device=dev)
    cuda = dev.type == "cuda"
    clock = time.perf_counter if cuda else time.thread_time
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    times = []
    try:
        with torch.no_grad():
            for i in range(3 + max(1, cfg.latency_iters)):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = clock()
                model(x)
                if cuda:
                    torch.cuda.synchronize(dev)
                if i >= 3:
                    times.append(clock() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) * 1e3


def objective_values(rec: dict[str, Any], cfg: SearchConfig) -> list[float]:
    return [float(rec[OBJECTIVES[o].key]) for o in cfg.objectives]


def median_rule(trials: list, epoch: int, value: float, cfg: SearchConfig) -> str | None:
    """The pruning decision for multi-objective studies (Optuna's pruners are single-objective).

    As Optuna's ``MedianPruner`` does for one objective: after ``prune_warmup`` epochs, and once
    ``prune_min_trials`` trials have finished, a trial whose validation IoU at this epoch is below
    the median of the finished trials' validation IoU at the same epoch is pruned. Finished =
    state COMPLETE and trained here (cached copies are left out, so a network counts once).
    Returns the reason, or ``None`` to go on.
    """
    from optuna.trial import TrialState

    if cfg.prune != "median" or epoch < cfg.prune_warmup:
        return None
    done = [t for t in trials if t.state == TrialState.COMPLETE
            and "cached_from" not in t.user_attrs]
    if len(done) < cfg.prune_min_trials:
        return None
    at = [c[epoch] for t in done if len(c := t.user_attrs.get("curve") or []) > epoch
          and c[epoch] is not None]
    if len(at) < cfg.prune_min_trials:
        return None
    med = statistics.median(at)
    value = 0.0 if math.isnan(value) else value
    if value < med:
        return (f"pruned at epoch {epoch}: validation IoU {value:.4f} < median {med:.4f} of "
                f"{len(at)} finished trials at that epoch")
    return None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
