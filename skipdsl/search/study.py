"""The study: storage, sampler, resuming, and the Optuna backend's trial loop.

- Storage: a real database. SQLite file ``OUT/study.db`` by default; ``storage="postgresql://
  user@host:port/db"`` for a server that workers on several machines share. SQLite serialises
  writers: the few local workers of one command (a write per epoch each, 60 s busy timeout) are
  fine, many writers get "database is locked" (Optuna #820, #4994): use PostgreSQL for those.
  Heartbeats (every 20 s; ``heartbeat``) tell a dead worker's trial from a long one: a trial
  with none for 60 s (``grace``) is failed by the next worker or resumed run that looks, with
  status ``died`` and the reason ``worker died: no heartbeat for N s``, and its point is queued
  again once (:mod:`.heartbeat`).
- Study: its name defaults to ``skipdsl-<space>-<dataset>-<budget>-s<seed>``; it records the
  search settings, and a worker (or a re-run) whose settings differ is refused, so results of
  different setups never mix. Re-running the same command loads the study and runs the trials
  still missing up to ``trials`` evaluated networks (those of every worker, running ones too;
  invalid and too costly samples, and trials of dead workers, are recorded but not counted;
  invalid ones up to :func:`max_skipped`). A worker whose count is reached only with other
  workers' running trials waits for them (:func:`missing_trials`), so a trial whose worker
  died is replaced.
- Sampler: NSGA-II for several objectives, TPE for one (``sampler="auto"``).
- Pruning: Optuna's ``MedianPruner`` through ``trial.report`` when IoU is the one objective; for
  several objectives (where Optuna's pruners and ``trial.report`` are not available), or one
  that is not IoU, the same median rule on the validation IoU, computed from the curves the
  trials store (:func:`objective.median_rule`).
"""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import SpecError
from .objective import (OBJECTIVES, RECORD_KEYS, RESULT_OVERRIDES, SearchConfig, TooCostly,
                        evaluate, find_cached, median_rule, objective_values, prepare, worker_id)
from .space import SearchSpace, load_space

HEARTBEAT_S = 20  # seconds between the heartbeats of a running trial
GRACE_S = 60  # seconds without one after which its worker is taken for dead
#: Settings a study is created with; a worker with other values is refused.
STUDY_KEYS = ("space", "space_fingerprint", "dataset", "budget", "seed", "objectives",
              "width_scale", "max_gflops", "trainer", "overrides", "size_target")


class SearchError(ValueError):
    """A search that cannot start as asked (settings, storage); the message says what to do."""


class TrialFailed(Exception):
    """An invalid spec or a failed training: the trial is recorded as FAIL with its reason."""


@dataclass
class SearchSummary:
    study_name: str
    storage: str
    ran: int = 0  # trials this call started (invalid and too costly samples included)
    finished: int = 0  # counted trials of the study after this call (see counted_trials)
    states: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def storage_url(out: str | Path, storage: str | None = None) -> str:
    if storage:
        return storage
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'study.db'}"


def redact(url: str) -> str:
    """The URL without its password (for files and logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def make_storage(url: str, *, heartbeat: bool = True, interval: int = HEARTBEAT_S,
                 grace: int = GRACE_S):
    """An Optuna RDB storage; retries table creation, which two workers starting at once on a
    fresh PostgreSQL database can race on. With ``heartbeat``, running trials record a heartbeat
    every ``interval`` seconds, and one with none for ``grace`` seconds is failed as ``died``
    with its reason and queued again once (:class:`.heartbeat.HeartbeatStorage`)."""
    import optuna
    from optuna.storages import RDBStorage

    if heartbeat and not 0 < interval < grace:
        raise SearchError(f"heartbeat interval {interval} s and grace period {grace} s: need "
                          "0 < interval < grace (a live worker beats several times per grace)")
    kw: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kw["engine_kwargs"] = {"pool_pre_ping": True}
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    from .heartbeat import HeartbeatStorage, requeue_once

                    return HeartbeatStorage(url, heartbeat_interval=int(interval),
                                            grace_period=int(grace),
                                            heartbeat_stale_trial_callback=requeue_once, **kw)
                return RDBStorage(url, **kw)
        except Exception as err:  # sqlalchemy errors: a race on table creation, a server down
            last = err
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise SearchError(f"cannot open the study storage {redact(url)}: "
                      f"{type(last).__name__}: {str(last).strip().splitlines()[0]}\n  hint: for "
                      "PostgreSQL check that the server runs and the database exists "
                      "(createdb NAME); the URL looks like postgresql://user:pass@host:5432/db")


def default_study_name(space: SearchSpace, cfg: SearchConfig) -> str:
    return f"skipdsl-{space.name}-{cfg.dataset}-{cfg.budget}-s{cfg.seed}"


def make_sampler(kind: str, n_objectives: int, *, population: int = 8, seed: int | None = None):
    import optuna

    if kind == "auto":
        kind = "nsga2" if n_objectives > 1 else "tpe"
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if kind == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              constant_liar=True, n_startup_trials=5)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"unknown sampler '{kind}'; valid: auto, nsga2, tpe, random")


def study_settings(space: SearchSpace, cfg: SearchConfig) -> dict[str, Any]:
    return {"space": space.name, "space_fingerprint": space.fingerprint(),
            "dataset": cfg.dataset, "budget": cfg.budget, "seed": cfg.seed,
            "objectives": list(cfg.objectives), "width_scale": cfg.width_scale,
            "max_gflops": cfg.max_gflops,
            "size_target": cfg.size_target,
            "trainer": cfg.trainer,
            "overrides": {k: cfg.overrides[k] for k in RESULT_OVERRIDES
                          if cfg.overrides.get(k) is not None},
            "search_config": cfg.to_dict()}


def open_study(storage, name: str, space: SearchSpace, cfg: SearchConfig, *, sampler=None,
               pruner=None, create: bool = True):
    """Create or load the study; refuse one created with other settings."""
    import optuna

    if create:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    pruner=pruner, directions=cfg.directions, load_if_exists=True)
    else:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler,
                                  pruner=pruner)
    want = study_settings(space, cfg)
    have = study.user_attrs.get("search_settings")
    if have is None:  # one write, so a worker starting at the same time sees all or nothing
        study.set_user_attr("search_settings", want)
        return study
    diff = [k for k in STUDY_KEYS if _as_json(have.get(k)) != _as_json(want[k])]
    if diff:
        detail = "; ".join(f"{k}: study has {have.get(k)!r}, this run {want[k]!r}" for k in diff)
        raise SearchError(f"study '{name}' was created with other settings ({detail})\n  hint: "
                          "use another --out (or --study NAME), or the settings it was made with")
    if [d.name.lower() for d in study.directions] != cfg.directions:
        raise SearchError(f"study '{name}' optimises other directions")
    return study


def _as_json(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, sort_keys=True, default=str))


PRUNER_WORDS = {"median": "Optuna's MedianPruner (below the median of finished trials at "
                          "that epoch)",
                "halving": "successive halving (not in the top 1/reduction_factor of its rung)",
                "hyperband": "Hyperband (not in the top 1/reduction_factor of its bracket's "
                             "rung)"}

#: Samples recorded but not counted towards ``trials``: they cost no training.
SKIPPED = ("invalid", "too_costly")


def counted_trials(study) -> list:
    """Trials that count towards ``trials``: the networks evaluated or being evaluated
    (complete, cached, pruned, failed in training, running). Invalid and too costly samples are
    recorded but not counted; nor are trials failed by an interrupt or a dead worker (status
    ``died``)."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            out.append(t)
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed":
            out.append(t)
    return out


def skipped_samples(study) -> int:
    return sum(t.user_attrs.get("status") in SKIPPED for t in study.get_trials(deepcopy=False))


def max_skipped(trials: int) -> int:
    """How many invalid or too costly samples a study may hold before the search gives up on
    reaching ``trials`` evaluated networks (the space is then mostly invalid)."""
    return max(50, 10 * trials)


def fail_dead_trials(study) -> None:
    """Fail the running trials whose worker stopped sending heartbeats (status ``died``, with
    the reason; see :mod:`.heartbeat`); nothing when the storage has no heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def missing_trials(study, trials: int, log: Callable[[str], None]) -> int:
    """How many trials to start now so that the study holds ``trials`` counted trials: 0 when
    it does, or when the space proved mostly invalid (:func:`max_skipped`).

    Dead workers' trials are failed first. When the count is reached only with trials that are
    still running (other workers', or a killed run's that still look alive), this waits,
    looking again every second: they finish, or their worker is found dead after the grace
    period and a replacement is due. Without heartbeats it does not wait.
    """
    from optuna.trial import TrialState

    interval = _heartbeat_interval(study)
    said = False
    while True:
        fail_dead_trials(study)
        counted = counted_trials(study)
        if len(counted) < trials:
            if skipped_samples(study) >= max_skipped(trials):
                log(f"[red]stopping[/]: {skipped_samples(study)} samples were invalid or too "
                    "costly (see trials.csv): check the space, or the budget's max_gflops")
                return 0
            return trials - len(counted)
        running = [t.number for t in counted if t.state == TrialState.RUNNING]
        if not running or interval is None:
            return 0
        if not said:
            log(f"{len(counted)} of {trials} trials done or running; waiting for running trial(s) "
                f"{', '.join(map(str, running))} (a trial without heartbeat for the grace period "
                "is failed as 'died' and run again)")
            said = True
        time.sleep(1.0)


def _heartbeat_interval(study) -> int | None:
    storage = getattr(study, "_storage", None)  # Optuna keeps the storage private
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def zoo_points(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The zoo models that are points of ``space`` (name -> point)."""
    from skipdsl.spec import zoo_names

    out = {}
    for name in zoo_names():
        try:
            out[name] = space.point_of(name)
        except SpecError:
            continue
    return out


def enqueue_zoo(study, space: SearchSpace) -> list[str]:
    """Queue the zoo models (once per study) so they are measured the same way as the samples:
    reference points for the front, and a good first population."""
    if study.user_attrs.get("zoo_enqueued"):
        return []
    study.set_user_attr("zoo_enqueued", True)
    names = []
    for name, point in zoo_points(space).items():
        study.enqueue_trial(trial_params(space, point), user_attrs={"zoo": name},
                            skip_if_exists=True)
        names.append(name)
    return names


def trial_params(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A point as Optuna trial parameters (for ``study.enqueue_trial``): the dimensions with
    several choices only, as the sampler suggests them."""
    point = space.complete(point)
    dims = dict(space.dimensions(point["depth"]))
    return {k: v for k, v in point.items() if len(dims.get(k, [])) > 1}


# ---------------------------------------------------------------------------------------
# the Optuna backend


def _finish(trial, status: str, reason: str = "", **attrs: Any) -> None:
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("status", status)


#: The status of a trial that a worker started after other workers' trials had already made
#: up the requested count: it samples nothing, is not evaluated and is not counted.
SURPLUS = "surplus"


def is_surplus(trial, limit: int) -> bool:
    """Whether the trials numbered below ``trial`` already make up ``limit`` counted trials.

    Workers check the count before they start a trial, and two of them can both see one trial
    missing; trial numbers are handed out by the storage one at a time, so deciding by number
    lets exactly the first ones through and the study never overshoots ``trials``."""
    before = [t for t in counted_trials(trial.study) if t.number < trial.number]
    return len(before) >= limit


def make_objective(space: SearchSpace, cfg: SearchConfig, *, trainer=None,
                   log: Callable[[str], None] = lambda s: None, limit: int | None = None):
    """The Optuna objective: sample, validate, reuse a cached result, or train with pruning.

    With ``limit``, a trial started when the lower-numbered trials already make up ``limit``
    counted trials steps aside as :data:`SURPLUS` before it samples anything."""
    import optuna

    single = len(cfg.objectives) == 1
    optuna_pruner = cfg.objectives == ("iou",)  # its direction is the IoU's: Optuna can prune

    def objective(trial: "optuna.Trial"):
        t0 = time.perf_counter()
        if limit is not None and is_surplus(trial, limit):
            reason = f"{limit} trials were already started by other workers"
            _finish(trial, SURPLUS, reason)
            raise TrialFailed(reason)
        point = space.suggest(trial)
        trial.set_user_attr("worker", worker_id())
        try:
            prep = prepare(space, point, cfg, name=f"search_t{trial.number:04d}")
        except (SpecError, TooCostly) as err:
            reason, status = str(err), "invalid" if isinstance(err, SpecError) else "too_costly"
            _finish(trial, status, reason)
            log(f"trial {trial.number}: [yellow]{status}[/] {reason.splitlines()[0]}")
            raise TrialFailed(reason) from None
        trial.set_user_attr("hash", prep.hash)
        trial.set_user_attr("key", prep.key)
        trial.set_user_attr("spec", prep.spec.to_dict())
        hit = find_cached(trial.study.get_trials(deepcopy=False), prep.key, trial.number)
        if hit is not None:
            src = hit.user_attrs.get("cached_from", hit.number)
            if hit.state == optuna.trial.TrialState.COMPLETE:
                rec = {k: hit.user_attrs[k] for k in RECORD_KEYS if k in hit.user_attrs}
                _finish(trial, "cached", "", cached_from=src, seconds=time.perf_counter() - t0,
                        **rec)
                log(f"trial {trial.number}: same network as trial {src}: result reused")
                return hit.values if not single else hit.values[0]
            reason = f"same network as trial {src}, which was pruned"
            _finish(trial, "pruned", reason, cached_from=src)
            raise optuna.TrialPruned(reason)

        curve: list[float] = []
        reference = "zoo" in trial.user_attrs  # zoo models are measured in full: references

        def report(epoch: int, val_iou: float) -> None:
            v = float(val_iou) if val_iou == val_iou else 0.0
            curve.append(round(v, 6))
            trial.set_user_attr("curve", curve)
            if optuna_pruner:
                trial.report(v, epoch)
            if cfg.prune == "none" or reference:
                return
            if optuna_pruner:
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned at epoch {epoch} by {PRUNER_WORDS[cfg.prune]} (validation "
                        f"IoU {v:.4f})")
                return
            why = median_rule(trial.study.get_trials(deepcopy=False), epoch, v, cfg)
            if why:
                raise optuna.TrialPruned(why)

        trial.set_user_attr("width_scale", prep.factor)
        try:
            rec = evaluate(prep, cfg, report=report, trainer=trainer)
        except optuna.TrialPruned as err:
            _finish(trial, "pruned", str(err), curve=curve, seconds=time.perf_counter() - t0)
            log(f"trial {trial.number}: [cyan]pruned[/] {err}")
            raise
        rec["seconds"] = time.perf_counter() - t0
        if rec["status"] != "ok":
            _finish(trial, "failed", rec["reason"], curve=curve)
            log(f"trial {trial.number}: [red]failed[/] {rec['reason']}")
            raise TrialFailed(rec["reason"])
        _finish(trial, "complete", "", **{k: v for k, v in rec.items()
                                          if k not in ("status", "reason")})
        vals = objective_values(rec, cfg)
        log(f"trial {trial.number}: " + ", ".join(
            f"{OBJECTIVES[o].key} {v:.4g}" for o, v in zip(cfg.objectives, vals))
            + f" ({rec['seconds']:.0f} s)")
        return vals if not single else vals[0]

    return objective


def run_optuna(study, space: SearchSpace, cfg: SearchConfig, trials: int, *, trainer=None,
               log: Callable[[str], None] = lambda s: None) -> int:
    """Run trials in this process until the study holds ``trials`` counted trials
    (:func:`counted_trials`), none of them running elsewhere (:func:`missing_trials`); returns
    how many trials (of any outcome) it started."""
    import optuna

    objective = make_objective(space, cfg, trainer=trainer, log=log, limit=trials)
    ran = 0
    while True:
        if not missing_trials(study, trials, log):
            return ran
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # we log each trial's outcome
        try:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
        finally:
            optuna.logging.set_verbosity(level)
        ran += 1


def make_pruner(cfg: SearchConfig):
    import optuna

    if cfg.prune == "median" and cfg.objectives == ("iou",):
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_min_trials,
                                           n_warmup_steps=cfg.prune_warmup)
    # intermediate values are reported at step = epoch index (0-based), so the first rung
    # after W epochs is min_resource W - 1 (Optuna compares the last step with it)
    first = max(1, cfg.prune_warmup - 1)
    if cfg.prune == "halving":  # Jamieson & Talwalkar 2016; Li et al., ASHA (MLSys 2020)
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first, reduction_factor=cfg.reduction_factor)
    if cfg.prune == "hyperband":  # Li et al., "Hyperband" (JMLR 2018)
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=max(first, _max_epochs(cfg) - 1),
            reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def _max_epochs(cfg: SearchConfig) -> int:
    """The epochs a trial of ``cfg`` trains at most (Hyperband's maximum resource)."""
    from skipdsl.train.common import plan_trial

    return int(cfg.overrides.get("epochs") or plan_trial(
        {**cfg.overrides, "dataset": cfg.dataset, "budget": cfg.budget}).epochs)


def state_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        s = t.user_attrs.get("status") or t.state.name.lower()
        counts[s] = counts.get(s, 0) + 1
    return counts


def load_for_report(out: str | Path, storage: str | None = None):
    """(study, space, cfg, settings) of a search output folder (reads ``OUT/search.json``)."""
    import json

    out = Path(out)
    f = out / "search.json"
    if not f.is_file():
        raise SearchError(f"{f} not found: is {out} the --out folder of a 'skipdsl search run'?")
    settings = json.loads(f.read_text())
    url = storage or settings.get("storage_url")
    if not url:
        raise SearchError(f"the study lives in {settings.get('storage')}, whose password is not "
                          "stored: give it with --storage URL")
    space = load_space(settings["space_file"]) if Path(settings["space_file"]).is_file() else \
        load_space(settings["space"])
    cfg = SearchConfig.from_dict(settings["config"])
    import optuna

    study = optuna.load_study(storage=make_storage(url, heartbeat=False),
                              study_name=settings["study_name"])
    return study, space, cfg, settings


def check_dataset(name: str) -> None:
    """Refuse a dataset name that is not registered before any trial runs (with the valid
    names); whether a real dataset's files are there is checked by the trial that loads it."""
    from skipdsl.data import DATASETS

    if name.split(":")[0] not in DATASETS:
        from ..errors import did_you_mean

        raise SearchError(f"unknown dataset '{name}'; {did_you_mean(name, DATASETS)}")
