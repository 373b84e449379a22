"""The Ray backend: trials run on Ray Tune, sampled by ``OptunaSearch`` on the same study.

- The sampler (NSGA-II / TPE) and the study storage are the Optuna backend's, so both backends
  fill the same study, and a study can be resumed with either.
- Points are sampled, validated and looked up in the cache on the driver (in the define-by-run
  function ``OptunaSearch`` calls), so an invalid or already measured network costs no worker
  time beyond one empty report; only new networks are trained.
- Pruning is ASHA on the validation IoU reported every epoch (one metric, so it works for
  multi-objective studies; ``prune="none"`` runs FIFO). A trial ASHA stops is told to the study
  as PRUNED with its curve, not as complete with a partial IoU. Zoo models (reference points)
  are never stopped.
- ``gpus_per_trial`` may be fractional (0.25 packs four trials per GPU). Ray does not enforce
  the share; each trial caps its own CUDA memory to that fraction
  (``torch.cuda.set_per_process_memory_fraction``) so packed trials cannot starve each other.
- ``address`` joins a running cluster (``ray start --head`` on one machine, ``ray start
  --address`` on the others). Only the driver touches the study (sampling, cache, telling
  results), so its SQLite file works for a cluster too; several drivers on one study need a
  server (PostgreSQL).
- Re-running resumes: the study in the database is the searcher's state (Ray's own searcher
  checkpoint is not written), and only the trials still missing are started.
- The driver records a heartbeat for every trial it has asked and not yet told
  (:class:`.heartbeat.Pulse`). If it is killed, its trials stay RUNNING without heartbeats; a
  resumed run (or another driver) fails them with status ``died`` and the reason before asking
  new trials, and waits for trials that still look alive (:func:`.study.missing_trials`), so
  the study still reaches its trial count.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import SpecError
from .objective import (OBJECTIVES, RECORD_KEYS, Prepared, SearchConfig, TooCostly, evaluate,
                        find_cached, prepare, worker_id)
from .space import SearchSpace
from .study import missing_trials, open_study

_KEY = "skipdsl"  # the config entry the driver hands to the trainable
_EXTRA = ("seconds",)


def _trainable(config: dict[str, Any], cfg: dict[str, Any], trainer: Any,
               gpus_per_trial: float) -> None:
    """Runs on a Ray worker: report an invalid/cached outcome, or train with per-epoch reports."""
    from ray import tune

    from skipdsl.spec import from_dict

    info = config[_KEY]
    if info["kind"] != "train":  # decided on the driver: nothing to run
        tune.report({"search_status": info["kind"], "reason": info.get("reason", "")})
        return
    if gpus_per_trial and gpus_per_trial < 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(float(gpus_per_trial))
    c = SearchConfig.from_dict(cfg)
    prep = Prepared(point=info["point"], nominal=None, spec=from_dict(info["spec"]),
                    hash=info["hash"], key=info["key"])
    curve: list[float] = []
    # a zoo model is a reference point: measured in full, so ASHA (which only acts on results
    # with its metric) does not see its validation IoU under that name
    metric = "reference_val_iou" if info.get("reference") else "val_iou"

    def report(epoch: int, val_iou: float) -> None:
        v = float(val_iou) if val_iou == val_iou else 0.0
        curve.append(round(v, 6))
        tune.report({metric: v, "epoch": epoch, "curve": list(curve)})

    t0 = time.perf_counter()
    rec = evaluate(prep, c, report=report, trainer=trainer)
    rec["seconds"] = time.perf_counter() - t0
    rec.setdefault("curve", curve)
    status = "complete" if rec.pop("status") == "ok" else "failed"
    tune.report({"search_status": status, **rec})


class _Log:
    """``log`` for code that Ray pickles with the searcher (Tuner state): the function (e.g. a
    rich console's print, which holds locks) is dropped from the pickled copy."""

    def __init__(self, fn: Callable[[str], None]) -> None:
        self.fn = fn

    def __call__(self, text: str) -> None:
        self.fn(text)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.fn = lambda text: None


def _outcome(result: dict[str, Any] | None, error: bool, cfg: SearchConfig):
    """(state, values, user attrs) for the study from a Ray trial's last result."""
    from optuna.trial import TrialState

    result = result or {}
    status = result.get("search_status")
    keep = {k: result[k] for k in (*RECORD_KEYS, *_EXTRA) if k in result}
    if status == "complete":
        values = [float(result[OBJECTIVES[o].key]) for o in cfg.objectives]
        return TrialState.COMPLETE, values, {**keep, "status": "complete", "reason": ""}
    if status in ("invalid", "too_costly", "failed"):
        return TrialState.FAIL, None, {**keep, "status": status,
                                       "reason": result.get("reason", "")}
    if error:
        return TrialState.FAIL, None, {"status": "failed",
                                       "reason": "the Ray trial raised or its worker died"}
    epoch = result.get("epoch")
    v = result.get("val_iou", result.get("reference_val_iou", float("nan")))
    reason = (f"stopped by ASHA after epoch {epoch}: validation IoU {v:.4f}"
              if epoch is not None else "stopped by Ray before its first report")
    return TrialState.PRUNED, None, {"status": "pruned", "reason": reason,
                                     "curve": result.get("curve", [])}


def run_ray(storage, study_name: str, space: SearchSpace, cfg: SearchConfig, trials: int, *,
            sampler, trainer: "str | Callable", out: Path, address: str | None = None,
            cpus_per_trial: float = 1, gpus_per_trial: float = 0, num_cpus: int | None = None,
            log: Callable[[str], None] = print) -> int:
    """Run the trials the study still misses on Ray Tune; returns how many were started. A
    local Ray (no ``address``) runs with :data:`skipdsl.raytools.LOCAL_RAY_ENV`."""
    from ..raytools import local_ray_env

    with local_ray_env(address):  # before Ray's first import
        return _run_ray(storage, study_name, space, cfg, trials, sampler=sampler,
                        trainer=trainer, out=out, address=address,
                        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                        num_cpus=num_cpus, log=log)


def _run_ray(storage, study_name: str, space: SearchSpace, cfg: SearchConfig, trials: int, *,
             sampler, trainer: "str | Callable", out: Path, address: str | None,
             cpus_per_trial: float, gpus_per_trial: float, num_cpus: int | None,
             log: Callable[[str], None]) -> int:
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # invalid/cached reports
    import warnings

    # sampling validates the spec, checks its cost and looks up the cache: seconds, on purpose
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
    # the driver records the heartbeats of the trials it asks (Pulse below), not study.optimize
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ..raytools import ray_session
    from ..train.common import plan_trial
    from .heartbeat import Pulse

    log = _Log(log)
    study = open_study(storage, study_name, space, cfg, create=False)
    if not missing_trials(study, trials, log):
        return 0
    single = len(cfg.objectives) == 1
    metrics = [OBJECTIVES[o].key for o in cfg.objectives]
    modes = ["max" if OBJECTIVES[o].direction == "maximize" else "min" for o in cfg.objectives]
    cached: dict[int, Any] = {}
    interval = storage.get_heartbeat_interval()
    pulse = Pulse(storage, interval) if interval else None

    def define(ot_trial) -> dict[str, Any]:
        """Runs on the driver for every new trial (OptunaSearch's define-by-run space)."""
        if pulse is not None:
            pulse.add(ot_trial._trial_id)  # the study's id of the trial (Optuna's own use)
        point = space.suggest(ot_trial)
        number = ot_trial.number
        ot_trial.set_user_attr("worker", "ray")
        ot_trial.set_user_attr("driver", worker_id())
        try:
            prep = prepare(space, point, cfg, name=f"search_t{number:04d}")
        except (SpecError, TooCostly) as err:
            kind = "invalid" if isinstance(err, SpecError) else "too_costly"
            log(f"trial {number}: {kind} {str(err).splitlines()[0]}")
            return {_KEY: {"kind": kind, "reason": str(err)}}
        for k, v in (("hash", prep.hash), ("key", prep.key), ("spec", prep.spec.to_dict())):
            ot_trial.set_user_attr(k, v)
        hit = find_cached(study.get_trials(deepcopy=False), prep.key, number)
        if hit is not None:
            cached[number] = hit
            return {_KEY: {"kind": "cached"}}
        return {_KEY: {"kind": "train", "point": prep.point, "spec": prep.spec.to_dict(),
                       "hash": prep.hash, "key": prep.key,
                       "reference": "zoo" in ot_trial.user_attrs}}

    class Searcher(OptunaSearch):
        """Tells the study each trial's real state (invalid -> FAIL, ASHA-stopped -> PRUNED,
        cache hit -> the cached values) with its record as user attributes."""

        def save(self, checkpoint_path: str) -> None:
            return None  # the study database is the searcher's state: a re-run resumes from it

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            return None  # pruning is ASHA's; intermediate values live in the curve

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            hit = cached.pop(ot_trial.number, None)
            if hit is not None:
                src = hit.user_attrs.get("cached_from", hit.number)
                attrs = {k: hit.user_attrs[k] for k in RECORD_KEYS if k in hit.user_attrs}
                if hit.state == TrialState.COMPLETE:
                    state, values = TrialState.COMPLETE, list(hit.values)
                    attrs.update(status="cached", reason="")
                else:
                    state, values = TrialState.PRUNED, None
                    attrs.update(status="pruned",
                                 reason=f"same network as trial {src}, which was pruned")
                attrs["cached_from"] = src
            else:
                state, values, attrs = _outcome(result, error, cfg)
            for k, v in attrs.items():
                ot_trial.set_user_attr(k, v)
            try:
                self._ot_study.tell(ot_trial, values if not (single and values) else values[0],
                                    state=state)
            except Exception as err:  # never lose the run over one tell
                log(f"trial {ot_trial.number}: could not be recorded: {err}")
            if pulse is not None:  # still RUNNING if the tell failed: failed as died later
                pulse.discard(ot_trial._trial_id)
            self._completed_trials.add(trial_id)
            log(f"trial {ot_trial.number}: {attrs.get('status')}"
                + (f" {', '.join(f'{m} {v:.4g}' for m, v in zip(metrics, values))}"
                   if values else f" {str(attrs.get('reason', '')).splitlines()[0]}"))

    epochs = int(plan_trial({**cfg.overrides, "dataset": cfg.dataset,
                             "budget": cfg.budget}).epochs)

    def scheduler():
        if cfg.prune == "none":
            return FIFOScheduler()
        # asynchronous successive halving (Li et al., MLSys 2020); hyperband: three brackets
        return ASHAScheduler(time_attr="training_iteration", metric="val_iou", mode="max",
                             max_t=epochs + 1, grace_period=max(1, min(cfg.prune_warmup, epochs)),
                             reduction_factor=cfg.reduction_factor,
                             brackets=3 if cfg.prune == "hyperband" else 1)

    if "threads" not in cfg.overrides:
        cfg.overrides["threads"] = max(1, int(math.ceil(cpus_per_trial)))
    ran = 0
    with ray_session(address=address, num_cpus=num_cpus, gpus=bool(gpus_per_trial)):
        if pulse is not None:
            pulse.start()
        try:
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, cfg=cfg.to_dict(), trainer=trainer,
                                     gpus_per_trial=gpus_per_trial),
                {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
            # invalid and too costly samples do not count: run rounds until enough networks ran
            while remaining := missing_trials(study, trials, log):
                searcher = Searcher(space=define, metric=metrics if not single else metrics[0],
                                    mode=modes if not single else modes[0], sampler=sampler,
                                    study_name=study_name, storage=storage)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher, scheduler=scheduler(), num_samples=remaining,
                        reuse_actors=True,
                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
                    run_config=tune.RunConfig(name=time.strftime("search-%Y%m%d-%H%M%S"),
                                              storage_path=str(Path(out).resolve() / ".ray"),
                                              verbose=0,
                                              failure_config=tune.FailureConfig(max_failures=0)),
                )
                tuner.fit()
                ran += remaining
                if pulse is not None:  # every trial of the round was told (or is lost)
                    pulse.clear()
        finally:
            if pulse is not None:
                pulse.stop()
    return ran
