"""``run_search``: one call that opens (or resumes) a study, runs trials on a backend and writes
the outputs. ``skipdsl search run`` is a thin layer over it."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..raytools import cpu_count
from .objective import DEFAULT_TRAINER, SearchConfig
from .space import SearchSpace, load_space
from .study import (HEARTBEAT_S, SearchError, SearchSummary, check_dataset, counted_trials,
                    default_study_name, enqueue_zoo, make_pruner, make_sampler, make_storage,
                    open_study, redact, run_optuna, state_counts, storage_url)

BACKENDS = ("optuna", "ray")


def _trainer_name(trainer: "str | Callable") -> str:
    if callable(trainer):
        return f"{trainer.__module__}:{trainer.__qualname__}"
    return str(trainer)


@dataclass
class SearchRun:
    """Everything :func:`run_search` takes, checked once (``skipdsl search run``'s flags).

    What: ``dataset``, ``trials``, ``out``, ``space``, ``budget``, ``seed``. How:
    ``objectives``, ``sampler`` (+ ``population``, ``sampler_seed``), ``prune`` (+ warm-up, min
    trials, ``reduction_factor``), ``params`` (equal size) or ``width_scale``, ``max_gflops``,
    ``zoo``, ``trainer`` and its ``overrides``, latency settings. Where: ``backend``, ``storage``,
    ``study_name``, ``workers`` (Optuna), ``address`` / ``cpus_per_trial`` /
    ``gpus_per_trial`` / ``num_cpus`` (Ray), ``heartbeat``, ``grace``. Output: ``outputs``,
    ``weights``, ``command``, ``log``.
    """

    dataset: str
    trials: int
    out: str | Path
    space: "str | Path | SearchSpace | None" = None
    budget: str = "smoke"
    seed: int = 0
    objectives: Sequence[str] = ("iou", "params", "latency")
    backend: str = "optuna"
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "auto"
    population: int = 8
    sampler_seed: int | None = None
    prune: str = "median"
    prune_warmup: int = 2
    prune_min_trials: int = 4
    reduction_factor: int = 3
    params: "str | float | None" = None
    width_scale: float | None = None
    max_gflops: float | None = None
    zoo: bool = True
    trainer: "str | Callable" = DEFAULT_TRAINER
    overrides: dict[str, Any] | None = None
    latency_size: int | None = None
    latency_iters: int = 20
    workers: int | None = None
    address: str | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    num_cpus: int | None = None
    heartbeat: int = HEARTBEAT_S
    grace: int | None = None
    outputs: bool = True
    weights: bool = True
    command: str | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        from .objective import PRUNERS

        if self.backend not in BACKENDS:
            raise SearchError(f"unknown backend '{self.backend}'; valid: {', '.join(BACKENDS)}")
        if self.backend != "ray" and (self.address or self.gpus_per_trial or self.num_cpus):
            raise SearchError("--address, --gpus-per-trial and --num-cpus are Ray settings: add "
                              "--backend ray")
        if self.backend != "optuna" and self.workers:
            raise SearchError("--workers is for the optuna backend; with Ray use --num-cpus "
                              "and --cpus-per-trial")
        if self.workers is not None and self.workers < 1:
            raise SearchError(f"--workers must be >= 1, found {self.workers}")
        if self.trials < 1:
            raise SearchError(f"--trials must be >= 1, found {self.trials}")
        if self.prune not in PRUNERS:
            raise SearchError(f"unknown pruning '{self.prune}'; valid: {', '.join(PRUNERS)}")
        from skipdsl.train.trainer import BUDGETS

        if self.budget not in BUDGETS:
            raise SearchError(f"unknown budget '{self.budget}'; valid: {', '.join(BUDGETS)}")
        self.objectives = tuple(self.objectives)
        if self.grace is None:
            self.grace = 3 * self.heartbeat


def run_search(options: SearchRun | None = None, /, **kwargs: Any) -> SearchSummary:
    """Search ``space`` (default: the shipped ``default`` space) on ``dataset``.

    Opens the study ``study_name`` (default ``skipdsl-<space>-<dataset>-<budget>-s<seed>``) in
    ``storage`` (default SQLite ``OUT/study.db``; a ``postgresql://`` URL to share it between
    workers), creating it or resuming it, and runs trials until it holds ``trials`` evaluated
    networks (complete, cached, pruned or failed in training; running ones of other workers
    included). Invalid and too costly samples are recorded too, but not counted. ``trainer``
    is ``"module:function"`` or a function with ``train_and_evaluate``'s signature; ``overrides``
    are extra trainer config keys (epochs, n, data_root, threads, device, ...). Writes
    ``OUT/search.json`` and, with ``outputs``, trials.csv, pareto/, pareto.png and report.md.
    With ``weights`` (default) every trained trial keeps its checkpoint as
    ``OUT/checkpoints/<key>.pt`` and the Pareto front's come with their specs as
    ``OUT/pareto/<name>.pt``.

    ``workers`` (Optuna backend): processes on this machine that run trials in parallel on the
    study; default: one per CPU core up to 4 on a CPU-only machine (each with
    ``cores // workers`` torch threads, unless ``overrides`` sets ``threads``), 1 with a GPU.
    Small networks train faster as parallel single-threaded trials than as one multi-threaded
    trial, and much faster when other work shares the cores.

    ``params``: scale every candidate to this many parameters before it trains (``670k``,
    ``0.67M``, a number, or a model name: that model's count at ``budget`` on ``dataset``), with
    :func:`skipdsl.sizing.scale_to` as ``bench run --params`` does; the validation IoU is then
    compared at one size. ``prune``: ``median``, ``halving`` (Optuna's successive halving),
    ``hyperband`` or ``none``; the last two rank on the validation IoU alone, with
    ``reduction_factor``.

    ``heartbeat``: seconds between the heartbeats of a running trial (both backends); a trial
    with none for ``grace`` seconds (default 3 x ``heartbeat``) belongs to a worker that died
    (killed command, lost machine): the next worker or resumed run to look fails it with status
    ``died`` and its reason, runs its point again once, and still reaches ``trials``.

    ``options`` is a :class:`SearchRun`; keywords build one (or replace its fields).
    """
    import optuna

    o = replace(options, **kwargs) if options is not None else SearchRun(**kwargs)
    t0 = time.perf_counter()
    log = o.log
    if log is None:
        from rich.console import Console

        log = Console(stderr=True, highlight=False).print
    sp = load_space(o.space)
    space_budget = sp.budget(o.budget)  # the space's settings for this budget
    size = (resolve_size(o.params, o.dataset, o.budget, o.overrides or {})
            if o.params is not None else {})
    cfg = SearchConfig(dataset=o.dataset, budget=o.budget, seed=o.seed,
                       objectives=o.objectives,
                       width_scale=float(o.width_scale or space_budget.width_scale),
                       trainer=_trainer_name(o.trainer),
                       overrides={**space_budget.overrides(),
                                  **{k: v for k, v in (o.overrides or {}).items()
                                     if v is not None}},
                       prune=o.prune, prune_warmup=o.prune_warmup,
                       prune_min_trials=o.prune_min_trials,
                       reduction_factor=o.reduction_factor, **size,
                       latency_size=o.latency_size, latency_iters=o.latency_iters,
                       max_gflops=(space_budget.max_gflops if o.max_gflops is None
                                   else o.max_gflops) or None)
    check_dataset(o.dataset)
    workers = None
    if o.backend == "optuna":
        workers = o.workers or auto_workers()
        if "threads" not in cfg.overrides and not _has_cuda():
            cfg.overrides["threads"] = max(1, cpu_count() // workers)
    out = Path(o.out).resolve()
    cfg.checkpoint_dir = str(out / "checkpoints") if o.weights else None
    url = storage_url(out, o.storage)
    name = o.study_name or default_study_name(sp, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    kind = o.sampler if o.sampler != "auto" else ("nsga2" if len(cfg.objectives) > 1 else "tpe")
    samp = make_sampler(kind, len(cfg.objectives), population=o.population, seed=o.sampler_seed)
    store = make_storage(url, interval=o.heartbeat, grace=o.grace)
    study = open_study(store, name, sp, cfg, sampler=samp, pruner=make_pruner(cfg))
    settings = {
        "command": o.command, "study_name": name, "storage": redact(url),
        "storage_url": url if redact(url) == url else None,
        "space": sp.name, "space_file": str(Path(sp.source).resolve())
        if sp.source and Path(sp.source).is_file() else sp.name,
        "space_size": sp.size(), "sampler": kind, "population": o.population,
        "backend": o.backend, "config": cfg.to_dict(),
        "heartbeat": {"interval": o.heartbeat, "grace": o.grace},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(settings, indent=2))
    if o.zoo:
        queued = enqueue_zoo(study, sp)
        if queued:
            log(f"queued the zoo models as the first trials: {', '.join(queued)}")
    before = len(counted_trials(study))
    sizing = (f"every network at {size['size_label']} = {cfg.size_target / 1e6:.3f}M "
              f"parameters (+-3%)" if size else f"widths x{cfg.width_scale:g}")
    log(f"study '{name}' in {redact(url)}: {before} of {o.trials} trials done; space "
        f"'{sp.name}' ({sp.size()} points), {', '.join(cfg.objectives)}, {kind}, "
        f"pruning {cfg.prune}, {sizing}")
    if o.backend == "optuna" and workers > 1:
        ran = _run_workers(workers, sp, cfg, url, name, o.trials, o.trainer, kind, o.population,
                           o.sampler_seed, log, study, (o.heartbeat, o.grace))
    elif o.backend == "optuna":
        ran = run_optuna(study, sp, cfg, o.trials, trainer=o.trainer, log=log)
    else:
        from .ray_backend import run_ray

        ran = run_ray(store, name, sp, cfg, o.trials, sampler=samp, trainer=o.trainer,
                      out=out, address=o.address, cpus_per_trial=o.cpus_per_trial,
                      gpus_per_trial=o.gpus_per_trial, num_cpus=o.num_cpus, log=log)
    summary = SearchSummary(study_name=name, storage=redact(url), ran=ran,
                            finished=len(counted_trials(study)), states=state_counts(study))
    if o.outputs:
        from .report import write_outputs

        files = write_outputs(out, study, sp, cfg, settings)
        log(f"wrote {files['trials']}, {files['pareto']}/, {files['png']}, {files['report']}")
    summary.seconds = time.perf_counter() - t0
    return summary


def resolve_size(params: "str | float", dataset: str, budget: str,
                 overrides: dict[str, Any]) -> dict[str, Any]:
    """SearchConfig keys for ``--params``: the target count on ``dataset`` (a model name: its
    count at ``budget``, as ``bench run --params`` resolves it) and the dataset's channels."""
    from skipdsl.bench.runner import SizeSolver
    from skipdsl.sizing import parse_size
    from skipdsl.train.trainer import BUDGETS

    target = parse_size(params, "params")
    solver = SizeSolver(target, BUDGETS[budget], {k: v for k, v in overrides.items()
                                                   if v is not None})
    cin, k, _, _ = solver.dataset(dataset)
    return {"size_target": solver.value(dataset), "size_label": target.model or f"{target.value:g}",
            "size_io": (cin, k)}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def auto_workers() -> int:
    """Local worker processes by default: one per core (up to 4) on CPU, one with a GPU."""
    return 1 if _has_cuda() else max(1, min(4, cpu_count()))


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends (Linux prctl PR_SET_PDEATHSIG), so that a killed
    command leaves no worker behind; its running trial is then failed by the heartbeat check
    (status ``died``) and queued again."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it ended before prctl
        os._exit(1)


def _worker(index: int, space: SearchSpace, cfg: SearchConfig, url: str, name: str,
            trials: int, trainer: Any, kind: str, population: int, seed: int | None,
            parent: int, beat: tuple[int, int]) -> None:
    """A local worker process: its own storage connection and sampler on the shared study."""
    import optuna
    from rich.console import Console

    from .study import open_study, run_optuna

    _die_with(parent)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    con = Console(stderr=True, highlight=False)
    sampler = make_sampler(kind, len(cfg.objectives), population=population,
                           seed=None if seed is None else seed + index)
    study = open_study(make_storage(url, interval=beat[0], grace=beat[1]), name, space, cfg,
                       sampler=sampler, pruner=make_pruner(cfg), create=False)
    run_optuna(study, space, cfg, trials, trainer=trainer,
               log=lambda s: con.print(f"[dim]w{index}[/] {s}"))


def _run_workers(n: int, space: SearchSpace, cfg: SearchConfig, url: str, name: str,
                 trials: int, trainer: Any, kind: str, population: int, seed: int | None,
                 log: Callable[[str], None], study, beat: tuple[int, int]) -> int:
    """Run ``n`` workers on the study: this process and ``n - 1`` spawned ones."""
    import multiprocessing as mp

    before = _started(study)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, name=f"skipdsl-search-w{i}",
                         args=(i, space, cfg, url, name, trials, trainer, kind, population, seed,
                               os.getpid(), beat))
             for i in range(1, n)]
    for p in procs:
        p.start()
    log(f"{n} workers on this machine ({cfg.overrides.get('threads') or 'default'} torch "
        f"thread(s) each)")
    try:
        run_optuna(study, space, cfg, trials, trainer=trainer,
                   log=lambda s: log(f"w0 {s}"))
    finally:
        for p in procs:
            p.join()
    bad = [p.name for p in procs if p.exitcode != 0]
    if bad:
        raise SearchError(f"worker process(es) {', '.join(bad)} stopped with an error (see "
                          "above); re-run the same command to resume")
    return _started(study) - before


def _started(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def rebuild_outputs(out: str | Path, storage: str | None = None) -> dict[str, Path]:
    """Rebuild the outputs of a search folder from its study (either strategy)."""
    from .report import write_outputs
    from .study import load_for_report

    settings_file = Path(out) / "search.json"
    if settings_file.is_file() and \
            json.loads(settings_file.read_text()).get("strategy") == "oneshot":
        from .oneshot import rebuild_outputs as oneshot_outputs

        return oneshot_outputs(out, storage)

    study, space, cfg, settings = load_for_report(out, storage)
    return write_outputs(out, study, space, cfg, settings)
