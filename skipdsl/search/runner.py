"""``run_search``: one call that opens (or resumes) a study, runs trials on a backend and writes
the outputs. ``skipdsl search run`` is a thin layer over it."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .objective import DEFAULT_TRAINER, SearchConfig
from .space import SearchSpace, load_space
from .study import (SearchError, SearchSummary, default_study_name, enqueue_zoo,
                    finished_trials, make_pruner, make_sampler, make_storage, open_study,
                    redact, run_optuna, state_counts, storage_url)

BACKENDS = ("optuna", "ray")


def _trainer_name(trainer: "str | Callable") -> str:
    if callable(trainer):
        return f"{trainer.__module__}:{trainer.__qualname__}"
    return str(trainer)


def run_search(
    *,
    dataset: str,
    trials: int,
    out: str | Path,
    space: "str | Path | SearchSpace | None" = None,
    budget: str = "smoke",
    seed: int = 0,
    objectives: Sequence[str] = ("iou", "params", "latency"),
    backend: str = "optuna",
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "auto",
    population: int = 8,
    sampler_seed: int | None = None,
    prune: str = "median",
    prune_warmup: int = 2,
    prune_min_trials: int = 4,
    width_scale: float | None = None,
    zoo: bool = True,
    trainer: "str | Callable" = DEFAULT_TRAINER,
    overrides: dict[str, Any] | None = None,
    latency_size: int | None = None,
    latency_iters: int = 20,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    num_cpus: int | None = None,
    outputs: bool = True,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchSummary:
    """Search ``space`` (default: the shipped ``default`` space) on ``dataset``.

    Opens the study ``study_name`` (default ``skipdsl-<space>-<dataset>-<budget>-s<seed>``) in
    ``storage`` (default SQLite ``OUT/study.db``; a ``postgresql://`` URL to share it between
    workers), creating it or resuming it, and runs trials until it holds ``trials`` of them
    (complete, pruned, invalid or failed; running ones of other workers included). ``trainer``
    is ``"module:function"`` or a function with ``train_and_evaluate``'s signature; ``overrides``
    are extra trainer config keys (epochs, n, data_root, threads, device, ...). Writes
    ``OUT/search.json`` and, with ``outputs``, trials.csv, pareto/, pareto.png and report.md.
    """
    import optuna

    t0 = time.perf_counter()
    if log is None:
        from rich.console import Console

        log = Console(stderr=True, highlight=False).print
    if backend not in BACKENDS:
        raise SearchError(f"unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if trials < 1:
        raise SearchError(f"--trials must be >= 1, found {trials}")
    from skipdsl.train.trainer import BUDGETS

    if budget not in BUDGETS:
        raise SearchError(f"unknown budget '{budget}'; valid: {', '.join(BUDGETS)}")
    sp = load_space(space)
    cfg = SearchConfig(dataset=dataset, budget=budget, seed=seed, objectives=tuple(objectives),
                       width_scale=float(width_scale if width_scale else sp.scale_for(budget)),
                       trainer=_trainer_name(trainer),
                       overrides={k: v for k, v in (overrides or {}).items() if v is not None},
                       prune=prune, prune_warmup=prune_warmup, prune_min_trials=prune_min_trials,
                       latency_size=latency_size, latency_iters=latency_iters)
    _check_dataset(dataset)
    out = Path(out).resolve()
    url = storage_url(out, storage)
    name = study_name or default_study_name(sp, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    kind = sampler if sampler != "auto" else ("nsga2" if len(cfg.objectives) > 1 else "tpe")
    samp = make_sampler(kind, len(cfg.objectives), population=population, seed=sampler_seed)
    store = make_storage(url)
    study = open_study(store, name, sp, cfg, sampler=samp, pruner=make_pruner(cfg))
    settings = {
        "command": command, "study_name": name, "storage": redact(url),
        "storage_url": url if redact(url) == url else None,
        "space": sp.name, "space_file": str(Path(sp.source).resolve())
        if sp.source and Path(sp.source).is_file() else sp.name,
        "space_size": sp.size(), "sampler": kind, "population": population,
        "backend": backend, "config": cfg.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(settings, indent=2))
    if zoo:
        queued = enqueue_zoo(study, sp)
        if queued:
            log(f"queued the zoo models as the first trials: {', '.join(queued)}")
    before = len(finished_trials(study))
    log(f"study '{name}' in {redact(url)}: {before} of {trials} trials done; space "
        f"'{sp.name}' ({sp.size()} points), {', '.join(cfg.objectives)}, {kind}, widths "
        f"x{cfg.width_scale:g}")
    if backend == "optuna":
        ran = run_optuna(study, sp, cfg, trials, trainer=trainer, log=log)
    else:
        from .ray_backend import run_ray

        ran = run_ray(store, name, sp, cfg, trials, sampler=samp, trainer=trainer,
                      out=out, address=address, cpus_per_trial=cpus_per_trial,
                      gpus_per_trial=gpus_per_trial, num_cpus=num_cpus, log=log)
    summary = SearchSummary(study_name=name, storage=redact(url), ran=ran,
                            finished=len(finished_trials(study)), states=state_counts(study))
    if outputs:
        from .report import write_outputs

        files = write_outputs(out, study, sp, cfg, settings)
        log(f"wrote {files['trials']}, {files['pareto']}/, {files['png']}, {files['report']}")
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_dataset(name: str) -> None:
    """Refuse a dataset name that is not registered before any trial runs (with the valid
    names); whether a real dataset's files are there is checked by the trial that loads it."""
    from skipdsl.data import DATASETS

    if name.split(":")[0] not in DATASETS:
        from ..errors import did_you_mean

        raise SearchError(f"unknown dataset '{name}'; {did_you_mean(name, DATASETS)}")


def report(out: str | Path, storage: str | None = None) -> dict[str, Path]:
    """Rebuild the outputs of a search folder from its study."""
    from .report import write_outputs
    from .study import load_for_report

    study, space, cfg, settings = load_for_report(out, storage)
    return write_outputs(out, study, space, cfg, settings)
