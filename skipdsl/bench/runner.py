"""The benchmark sweep: one trial per (model, dataset, seed, deep supervision), on Ray Tune.

- :func:`plan` turns models x datasets x seeds x DS modes into :class:`Trial` s, each keyed by a
  hash of its spec, dataset, budget, seed, DS flag and result-changing overrides.
- :func:`run_sweep` skips the trials already in the store, runs the others on Ray Tune (a local
  Ray by default, an existing cluster with ``address``) or one after the other in this process
  (``backend='local'``, for debugging), and stores each result the moment it arrives (atomic
  writes; ``results.csv`` is rebuilt after every trial), so killing a run loses no finished trial.
- A diverging trial (NaN loss) or one that raises is stored with ``status='failed'`` and its
  ``reason``; the sweep goes on. Re-running skips failed trials too (they are deterministic),
  unless ``retry_failed=True``.

Ray is imported only inside :func:`run_sweep` (``import skipdsl`` stays light).
"""
from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..train.common import DEFAULTS, TASKS, budgets_for
from . import store

__all__ = ["Trial", "SweepSummary", "plan", "run_sweep", "run_trial", "DS_MODES", "alias_notes",
           "record_aliases"]

DS_MODES = ("off", "on", "both")

#: Trainer config keys that change a result (part of the trial key); the rest (device,
#: threads, cache_dir, data_root...) only say where and how fast it runs.
RESULT_KEYS = ("task", "epochs", "n", "widths", "batch_size", "lr", "weight_decay", "eta_min",
               "loss", "loss_kwargs", "cgm", "augment", "data_seed", "hd95", "threshold",
               "head_init", "patch", "width_scale", "size_target")


@dataclass
class Trial:
    """One planned trial: its store ``key``, a readable ``label`` and the trainer ``config``."""

    key: str
    label: str
    config: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "config": self.config}


@dataclass
class SweepSummary:
    """What a sweep did: trial keys run, skipped (already stored) and failed."""

    planned: int = 0
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _model_ref(model: str) -> tuple[Any, Any]:
    """(value for the trainer config, Spec): zoo names stay names, files become spec dicts.

    A spec file is sent as its content, so Ray workers on other machines (or another working
    directory) need not see the file.
    """
    from skipdsl.train.trainer import load_spec

    spec = load_spec(model)
    p = Path(str(model))
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return spec.to_dict(), spec
    return str(model), spec


def plan(
    models: Sequence[str],
    datasets: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    deep_supervision: str = "off",
    budget: str = "smoke",
    overrides: dict[str, Any] | None = None,
    backbone: str | None = None,
    task: str = "semantic",
    size: Any = None,
    aliases: dict[str, list[str]] | None = None,
) -> list[Trial]:
    """The trials of a sweep, in a stable order, without duplicates.

    ``size`` (a :class:`skipdsl.sizing.SizeTarget`, e.g. ``parse_size("670k")`` or
    ``parse_size("unetsharp")``): every model's widths are multiplied by the one factor that
    brings its inference network to the target (+-3%) for each dataset's channels and classes,
    instead of the budget's ``width_scale``; the factor and the target are part of the trial
    key. A model that cannot reach it gets a trial that fails with the reason (the sweep goes
    on). A model name as target means that model's size at this budget, per dataset.

    Two names for one network (the same spec hash) share their trials: ``aliases`` (when given)
    gets ``{spec hash: [first name, other names...]}`` (:func:`alias_notes` says it in words,
    :func:`record_aliases` keeps it for the report).

    ``backbone`` puts a torchvision encoder under every model (``unet`` becomes the spec
    ``unet_resnet34``, sent as its content; see :mod:`skipdsl.backbones`).

    ``deep_supervision``: 'off', 'on' or 'both'. Models with a single head (UNet) have no deep
    supervision: they get only the DS-off trial. ``overrides`` are trainer config keys (see
    :data:`skipdsl.train.trainer.DEFAULTS`) applied to every trial.

    ``task='instance'``: Mask R-CNN trials (:mod:`skipdsl.train.instance`); ``models`` are
    Mask R-CNN names (``maskrcnn_fpn``, ``maskrcnn_pp``, ``maskrcnn_3p``, ``maskrcnn_sharp``)
    or pyramid specs, ``budget`` an :data:`~skipdsl.train.common.INSTANCE_BUDGETS` entry.
    """
    from skipdsl.graph import spec_hash

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, found {task!r}")
    BUDGETS = budgets_for(task)  # noqa: N806

    if deep_supervision not in DS_MODES:
        raise ValueError(f"deep_supervision must be one of {DS_MODES}, found {deep_supervision!r}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget '{budget}'; valid: {', '.join(BUDGETS)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trainer setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
    for k in ("data_root", "cache_dir"):
        if overrides.get(k):
            overrides[k] = str(Path(overrides[k]).expanduser().resolve())
    extra = {k: overrides.get(k) for k in RESULT_KEYS}
    if task == "instance":
        extra["task"] = task
    # the default head init is part of every key: trials stored before it existed (He heads)
    # are not taken for prior-initialised ones
    extra["head_init"] = extra["head_init"] or DEFAULTS["head_init"]
    modes = {"off": [False], "on": [True], "both": [False, True]}[deep_supervision]
    if size is not None and (task != "semantic" or extra.get("widths")):
        raise ValueError("--params/--flops scale semantic models' widths; they do not combine "
                         "with --task instance or an explicit widths override")
    sizer = SizeSolver(size, BUDGETS[budget], overrides) if size is not None else None
    trials: dict[str, Trial] = {}
    seen: dict[str, str] = {}  # spec hash -> the first name given for it
    aliases = {} if aliases is None else aliases
    for m in models:
        ref, spec = _model_ref(m) if task == "semantic" else _pyramid_ref(m)
        if backbone:
            if getattr(spec, "is_baseline", False):
                raise ValueError(f"--backbone applies to DSL specs, not the baseline '{m}'")
            spec = spec.with_backbone(backbone, rename=True)
            ref = spec.to_dict()
        h = spec_hash(spec)
        if h in seen:
            aliases.setdefault(h, [seen[h]]).append(_display(m))
            continue
        seen[h] = _display(m)
        deep_modes = [d for d in modes if not d or len(spec.heads) > 1]
        if task == "instance":
            from skipdsl.train.instance import model_label

            name = model_label(m if ref == m else ref, spec)
        for dataset in datasets:
            # the budget's definition as this dataset gets it (not only its name): trials
            # stored under an older definition of a budget are not taken for the current one
            extra["budget_def"] = budget_fingerprint(BUDGETS[budget], dataset)
            sized = sizer.solve(m, spec, dataset) if sizer is not None else {}
            extra.update({k: sized.get(k) for k in ("width_scale", "size_target")})
            for seed in seeds:
                for deep in deep_modes:
                    key = store.trial_key(h, dataset, budget, seed, deep, extra)
                    label = f"{spec.name}/{dataset}/s{seed}/{'ds' if deep else 'nods'}"
                    config = {**overrides, "model": ref, "dataset": dataset, "seed": int(seed),
                              "deep_supervision": deep, "budget": budget, **sized}
                    if task == "instance":
                        label = f"{name}/{dataset}/s{seed}"
                        config["task"] = task
                    trials.setdefault(key, Trial(key, label, config))
    return list(trials.values())


def alias_notes(aliases: dict[str, list[str]]) -> list[str]:
    """One line per network given under several names (from :func:`plan`'s ``aliases``)."""
    return [f"{name} is the same network as {names[0]}: hash {h[:8]}..., reported once as "
            f"{' = '.join(names)}" for h, names in aliases.items() for name in names[1:]]


def record_aliases(out: str | os.PathLike, aliases: dict[str, list[str]]) -> None:
    """Keep the plan's ``aliases`` (spec hash -> the names given for it, first = the one
    trained and stored) in ``OUT/aliases.json``, merged with earlier runs', for the report."""
    import json

    if not aliases:
        return
    path = Path(out) / "aliases.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    for h, names in aliases.items():
        old[h] = list(dict.fromkeys([*old.get(h, []), *names]))
    Path(out).mkdir(parents=True, exist_ok=True)
    store.atomic_write_text(path, json.dumps(old, indent=1, sort_keys=True))


def _display(model: Any) -> str:
    """A model as the user named it: a zoo name, or a spec file's stem."""
    p = Path(str(model))
    return p.stem if p.suffix in (".yaml", ".yml") else str(model)


class SizeSolver:
    """Solves each (model, dataset)'s width factor for a size target (``bench run --params``)."""

    def __init__(self, target: Any, budget: Any, overrides: dict[str, Any]) -> None:
        self.target, self.budget, self.overrides = target, budget, overrides
        self._data: dict[str, tuple[int, int, int, tuple[int, ...]]] = {}
        self._values: dict[str, float] = {}

    def plan(self, dataset: str, dims: int | None = None) -> Any:
        """The budget resolved for ``dataset`` (:func:`skipdsl.train.common.plan_trial`)."""
        from skipdsl.train.common import plan_trial

        return plan_trial({**self.overrides, "dataset": dataset, "budget": self.budget.name},
                          dims=dims)

    def dataset(self, name: str) -> tuple[int, int, int, tuple[int, ...]]:
        """(in_channels, num_classes, dims, image size) of a dataset as its trials load it."""
        if name not in self._data:
            from skipdsl.data import load_dataset

            o = self.overrides
            n = self.plan(name).n
            ds = load_dataset(name, root=o.get("data_root"), seed=int(o.get("data_seed") or 0),
                              n=n, cache_dir=o.get("cache_dir"))
            self._data[name] = (int(ds.in_channels), int(ds.num_classes), int(ds.dims),
                                tuple(int(x) for x in ds.images.shape[2:]))
        return self._data[name]

    def value(self, dataset: str) -> float:
        """The target's value on ``dataset`` (a model target: its size at the budget)."""
        t = self.target
        if t.model is None:
            return float(t.value)
        if dataset not in self._values:
            from skipdsl.sizing import count
            from skipdsl.spec import load, scale_spec

            cin, k, dims, shape = self.dataset(dataset)
            ref = scale_spec(load(t.model), self.plan(dataset, dims).width_scale)
            c = count(ref, in_channels=cin, num_classes=k, dims=dims,
                      size=shape if t.kind == "flops" else None)
            self._values[dataset] = float(c.params if t.kind == "params" else c.gflops)
        return self._values[dataset]

    def solve(self, model: str, spec: Any, dataset: str) -> dict[str, Any]:
        """Trainer config keys: ``width_scale`` and ``size_target``, or ``size_error``."""
        from skipdsl.errors import SpecError
        from skipdsl.sizing import scale_to

        target = self.target.key()
        if getattr(spec, "is_baseline", False):
            return {"size_target": target, "size_error": (
                f"{_display(model)} is a library baseline: --params/--flops scale DSL specs "
                "(leave it out of a matched-size sweep, or compare it at its own size)")}
        cin, k, dims, shape = self.dataset(dataset)
        try:
            value = self.value(dataset)
            r = scale_to(spec, value, kind=self.target.kind, in_channels=cin, num_classes=k,
                         dims=dims, size=shape)
        except SpecError as err:
            return {"size_target": target, "size_error": f"{dataset}: {err}",
                    "size_value": self._values.get(dataset, self.target.value)}
        return {"width_scale": round(r.factor, 6), "size_target": target,
                "size_value": value}


def _pyramid_ref(model: str) -> tuple[Any, Any]:
    """(value for the config, Spec) of a Mask R-CNN name or pyramid spec: names stay names,
    files become spec dicts (as :func:`_model_ref`)."""
    from skipdsl.detection import MASKRCNN_MODELS, pyramid_spec

    spec = pyramid_spec(model)
    if model in MASKRCNN_MODELS or Path(str(model)).suffix not in (".yaml", ".yml"):
        return str(model), spec
    return spec.to_dict(), spec


def _cost(config: dict[str, Any], cache: dict) -> float:
    """A trial's relative cost: forward GFLOPs of its budget-scaled model on a small input
    (64x64 in 2D, 24^3 in 3D) x epochs x training images; 0 when it cannot be estimated."""
    from skipdsl.models import create_model
    from skipdsl.spec import Spec
    from skipdsl.train.common import load_spec, plan_trial, resolve_config
    from skipdsl.train.metrics import gflops

    try:
        plan = plan_trial(resolve_config(config))
    except Exception:  # a bad config fails in its trial, with its reason
        return 0.0
    model = config["model"]
    ref = model if isinstance(model, str) else repr(sorted(model.items()))
    key = (ref, plan.dims, bool(config.get("deep_supervision")), config.get("budget"),
           config.get("width_scale"))
    if key not in cache:
        size = (24,) * 3 if plan.is3d else (64, 64)
        try:
            spec = load_spec(model)
            scale = plan.width_scale
            if config.get("width_scale") is not None:  # --params/--flops: the solved factor
                scale = float(config["width_scale"])
            net = create_model(spec if isinstance(spec, Spec) else spec.name, in_channels=1,
                               num_classes=1, dims=plan.dims, width_scale=scale,
                               deep_supervision=key[2], image_size=size)
            cache[key] = gflops(net, (1,) + size)
        except Exception:  # an invalid spec fails in its trial, with its reason
            cache[key] = 0.0
    return cache[key] * plan.epochs * (plan.n or 100) * (8.0 if plan.is3d else 1.0)


def longest_first(trials: Sequence[Trial], *, by_cost: bool = True) -> list[Trial]:
    """``trials`` grouped by dataset (in the order the datasets first appear, so that each
    dataset's comparison completes as early as it can), the most costly first within a dataset:
    the longest-processing-time rule, which keeps every CPU busy until the end of the group
    instead of leaving one long trial running alone. ``by_cost=False`` keeps the plan's order
    within a dataset (trials run one at a time: the order does not change the wall time, and
    the cost estimate, a FLOP count of every model, is not worth its seconds)."""
    cache: dict = {}
    first = {}
    for i, t in enumerate(trials):
        first.setdefault(t.config["dataset"], i)
    cost = {t.key: _cost(t.config, cache) if by_cost else 0.0 for t in trials}
    return sorted(trials, key=lambda t: (first[t.config["dataset"]], -cost[t.key]))


def budget_fingerprint(budget: Any, dataset: str | None = None) -> str:
    """A short hash of a :class:`~skipdsl.train.common.Budget` as a trial on ``dataset`` gets
    it (:meth:`~skipdsl.train.common.Budget.key_fields`: its task's fields, its per-dataset
    changes for that dataset only, so that changing one dataset's recipe re-keys that
    dataset's trials alone)."""
    import hashlib
    import json

    blob = json.dumps(budget.key_fields(dataset), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _failure(trial: Trial, reason: str) -> dict[str, Any]:
    c = trial.config
    model = c["model"] if isinstance(c["model"], str) else c["model"].get("name")
    return {"status": "failed", "reason": reason, "model": Path(str(model)).stem
            if isinstance(model, str) and model.endswith((".yaml", ".yml")) else model,
            "dataset": c["dataset"], "seed": c["seed"], "deep_supervision": c["deep_supervision"],
            "budget": c["budget"], "config": c}


def _reason(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(err).__name__}: {err}{where}".strip()


def run_trial(trial: Trial | dict[str, Any],
              report: Callable[[int, float], Any] | None = None) -> dict[str, Any]:
    """Run one trial; exceptions become a ``status='failed'`` result with the reason."""
    from skipdsl.train.trainer import train_and_evaluate

    if isinstance(trial, dict):
        trial = Trial(**trial)
    try:
        result = train_and_evaluate(trial.config, report=report)  # semantic or instance
    except Exception as err:  # the sweep goes on; the reason is recorded
        result = _failure(trial, _reason(err))
    result["node"] = socket.gethostname()
    return result


# -- progress -------------------------------------------------------------------------------


class _Progress:
    """Rich progress: one bar for the sweep, one per running trial (epochs)."""

    def __init__(self, total: int, done: int, enabled: bool, console=None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=self.console,
                                 disable=not enabled, transient=False)
        self.sweep = self.progress.add_task("sweep", total=total, completed=done, info="")
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "_Progress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def start(self, trial: Trial) -> None:
        if trial.key not in self.tasks:
            epochs = _planned_epochs(trial.config)
            self.tasks[trial.key] = self.progress.add_task(f"  {trial.label}", total=epochs,
                                                           info="")

    def epoch(self, trial: Trial, epoch: int, val_iou: float) -> None:
        self.start(trial)
        self.progress.update(self.tasks[trial.key], completed=epoch + 1,
                             info=f"val IoU {val_iou:.3f}" if val_iou == val_iou else "")

    def finish(self, trial: Trial, result: dict[str, Any]) -> None:
        task = self.tasks.pop(trial.key, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.sweep)
        if result.get("status") == "ok":
            line = (f"[green]done[/] {trial.label}: IoU {result.get('iou', float('nan')):.3f}, "
                    f"{result.get('train_seconds', 0):.0f} s")
        else:
            line = f"[red]failed[/] {trial.label}: {result.get('reason', '')}"
        self.progress.console.print(line, highlight=False)


def _planned_epochs(config: dict[str, Any]) -> int:
    from skipdsl.train.trainer import planned_epochs

    try:
        return planned_epochs(config)
    except Exception:  # a bad config fails in the trial, with its reason
        return 1


# -- sweep ----------------------------------------------------------------------------------


def _store(out: Path, trial: Trial, result: dict[str, Any], summary: SweepSummary,
           progress: _Progress) -> None:
    store.save_trial(out, trial.key, result)
    store.write_tables(out)
    summary.ran.append(trial.key)
    if result.get("status") != "ok":
        summary.failed.append(trial.key)
    progress.finish(trial, result)


def run_sweep(
    trials: Sequence[Trial],
    out: str | os.PathLike,
    *,
    backend: str = "ray",
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    num_cpus: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    verbose: bool = False,
    console=None,
) -> SweepSummary:
    """Run the trials not yet in ``out``'s store; store each result as soon as it arrives.

    ``backend``: 'ray' (Ray Tune; a new local Ray with ``num_cpus`` CPUs, default all cores,
    unless ``address`` names a running cluster to join) or 'local' (sequential, no Ray).
    ``gpus_per_trial`` may be fractional (0.25 packs four trials on one GPU);
    ``cpus_per_trial`` also sets the torch threads of a trial.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', found {backend!r}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = store.finished(out)
    skip = {k for k, s in done.items() if s == "ok" or not retry_failed}
    pending = longest_first([t for t in trials if t.key not in skip],
                            by_cost=backend == "ray")  # one at a time: order is free
    summary = SweepSummary(planned=len(trials), skipped=[t.key for t in trials if t.key in skip])
    threads = max(1, int(math.ceil(cpus_per_trial)))
    for t in pending:
        t.config.setdefault("threads", threads)
        t.config.setdefault("save_weights", True)  # model.pt + spec.yaml (--no-weights: off)
        if 0 < gpus_per_trial < 1:
            t.config.setdefault("gpu_memory_fraction", gpus_per_trial)
    with _Progress(len(trials), len(summary.skipped), progress, console) as prog:
        if summary.skipped:
            prog.console.print(f"{len(summary.skipped)} of {len(trials)} trials already in "
                               f"{out}: skipped", highlight=False)
        if pending and backend == "local":
            for t in pending:
                prog.start(t)
                result = run_trial(t, report=lambda e, v, t=t: prog.epoch(t, e, v))
                _store(out, t, result, summary, prog)
        elif pending:
            _run_ray(pending, out, summary, prog, address=address, cpus_per_trial=cpus_per_trial,
                     gpus_per_trial=gpus_per_trial, num_cpus=num_cpus, verbose=verbose)
    store.write_tables(out)
    summary.seconds = time.perf_counter() - t0
    return summary


def _ray_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: intermediate (epoch, val_iou), then the whole result."""
    from ray import tune

    trial = Trial(**config["trial"])

    def report(epoch: int, val_iou: float) -> None:
        tune.report({"epoch": epoch, "val_iou": val_iou})

    result = run_trial(trial, report=report)
    try:
        import ray

        result["node"] = ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    tune.report({"epoch": result.get("epochs", 0), "val_iou": float("nan"),
                 "trial_payload": _pack(result)})


def _pack(result: dict[str, Any]) -> dict[str, Any]:
    """Tune refuses tensors in reported metrics: the checkpoint travels as ``torch.save``
    bytes (:func:`_unpack` restores it in the driver, which writes ``model.pt``)."""
    if result.get("checkpoint") is None:
        return result
    import io

    import torch

    buf = io.BytesIO()
    torch.save(result["checkpoint"], buf)
    return {**result, "checkpoint": {"torch_bytes": buf.getvalue()}}


def _unpack(result: dict[str, Any]) -> dict[str, Any]:
    ckpt = result.get("checkpoint")
    if not (isinstance(ckpt, dict) and "torch_bytes" in ckpt):
        return result
    import io

    import torch

    return {**result, "checkpoint": torch.load(io.BytesIO(ckpt["torch_bytes"]),
                                               weights_only=True)}


def _store_callback_class(tune):
    """A Tune callback that stores each trial's result in the driver as it arrives."""

    class StoreCallback(tune.Callback):
        def __init__(self, out: Path, by_key: dict[str, Trial], summary: SweepSummary,
                     prog: _Progress) -> None:
            self.out, self.by_key, self.summary, self.prog = out, by_key, summary, prog
            self.stored: set[str] = set()

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its run config: drop state
            return {}

        def _trial(self, trial) -> Trial:
            return self.by_key[trial.config["trial"]["key"]]

        def on_trial_start(self, iteration, trials, trial, **info):
            self.prog.start(self._trial(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            t = self._trial(trial)
            payload = result.get("trial_payload")
            if payload is None:
                self.prog.epoch(t, int(result.get("epoch", 0)),
                                float(result.get("val_iou", float("nan"))))
            elif t.key not in self.stored:
                self.stored.add(t.key)
                _store(self.out, t, _unpack(payload), self.summary, self.prog)

        def on_trial_error(self, iteration, trials, trial, **info):
            t = self._trial(trial)
            if t.key in self.stored:
                return
            self.stored.add(t.key)
            reason = "trial process died"
            try:
                err = trial.get_error()
                if err is not None:
                    reason = str(err).strip().splitlines()[-1][:500]
            except Exception:
                pass
            _store(self.out, t, _failure(t, reason), self.summary, self.prog)

    return StoreCallback


def _run_ray(pending: list[Trial], out: Path, summary: SweepSummary, prog: _Progress, *,
             address: str | None, cpus_per_trial: float, gpus_per_trial: float,
             num_cpus: int | None, verbose: bool) -> None:
    from ..raytools import local_ray_env

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with local_ray_env(address):  # before Ray's first import
        _run_tune(pending, out, summary, prog, address=address, cpus_per_trial=cpus_per_trial,
                  gpus_per_trial=gpus_per_trial, num_cpus=num_cpus, verbose=verbose)


def _run_tune(pending: list[Trial], out: Path, summary: SweepSummary, prog: _Progress, *,
              address: str | None, cpus_per_trial: float, gpus_per_trial: float,
              num_cpus: int | None, verbose: bool) -> None:
    import logging

    from ray import tune

    from ..raytools import ray_session

    # the store holds the results: Tune's own loggers are off, so its end-of-run analysis
    # has no metrics files to read and would warn about each trial
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    callback = _store_callback_class(tune)(out, {t.key: t for t in pending}, summary, prog)

    with ray_session(address=address, num_cpus=num_cpus, gpus=bool(gpus_per_trial),
                     verbose=verbose, env={"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}) as ray:
        have = ray.cluster_resources()
        if gpus_per_trial > have.get("GPU", 0) or cpus_per_trial > have.get("CPU", 0):
            raise ValueError(
                f"a trial asks for {cpus_per_trial} CPU and {gpus_per_trial} GPU but the Ray "
                f"cluster has {have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU in all; "
                "lower --cpus-per-trial/--gpus-per-trial (no GPU visible: leave "
                "--gpus-per-trial at 0)")
        trainable = tune.with_resources(_ray_trainable,
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.as_dict() for t in pending])},
            tune_config=tune.TuneConfig(
                num_samples=1, reuse_actors=False,
                trial_name_creator=lambda tr: tr.config["trial"]["label"],
                trial_dirname_creator=lambda tr: tr.config["trial"]["key"]),
            run_config=tune.RunConfig(
                name=time.strftime("sweep-%Y%m%d-%H%M%S"),
                storage_path=str(out / ".tune"),
                verbose=1 if verbose else 0,
                callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=0),
                log_to_file=True,
            ),
        )
        tuner.fit()
