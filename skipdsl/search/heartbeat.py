"""Heartbeats: how a study tells a dead worker's trial from a long one, and says why it failed it.

A process that runs a trial records a heartbeat for it every ``interval`` seconds: Optuna's own
heartbeat thread in ``study.optimize`` (the Optuna backend), :class:`Pulse` for the trials a
Ray driver has asked and not yet told (the Ray backend). A trial still RUNNING with no
heartbeat for ``grace`` seconds belongs to a worker that died (SIGKILL, OOM killer, a lost
machine): the next look at the study, by any live worker or by a resumed run
(``optuna.storages.fail_stale_trials``, called before each trial is asked), fails it with
status ``died`` and the reason ``worker died: no heartbeat for N s``, and queues its point again
once (:func:`requeue_once`). Died trials are not counted, so the study still reaches its trial
count.

Optuna's ``RDBStorage`` fails such trials but records no reason, and a finished trial's
attributes can no longer be written, so :class:`HeartbeatStorage` writes the reason just before
Optuna fails the trial. It also fails a RUNNING trial that has never had a heartbeat (left by
a process that recorded none, such as an earlier version of this code) once this process has
seen it so for ``grace`` seconds: a resumed run never waits forever on it. The queries follow
``RDBStorage._get_stale_trial_ids`` of the pinned Optuna (5.0.0).

This module imports Optuna at the top: :func:`skipdsl.search.study.make_storage` imports it
when a study is opened.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

#: The status of a trial failed because its worker stopped sending heartbeats.
DIED = "died"


def died_reason(seconds: float, attrs: dict[str, Any]) -> str:
    """The reason of a died trial; names its worker (Optuna backend) or driver (Ray)."""
    who = (f"ray driver {attrs['driver']}" if attrs.get("driver") else
           f"worker {attrs['worker']}" if attrs.get("worker") else "")
    return f"worker died: no heartbeat for {seconds:.0f} s" + (f" ({who})" if who else "")


class HeartbeatStorage(RDBStorage):
    """``RDBStorage`` whose stale-trial check records why: see the module doc."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._unbeaten: dict[int, float] = {}  # trial id -> when this process first saw it

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        silent: dict[int, float] = {}
        session = self.scoped_session()
        try:
            now = session.execute(sqlalchemy.func.now()).scalar()
            now = now.replace(tzinfo=None)  # PostgreSQL is tz-aware, heartbeats are not
            running = (session.query(models.TrialModel)
                       .options(orm.selectinload(models.TrialModel.heartbeats))
                       .filter(models.TrialModel.state == TrialState.RUNNING)
                       .filter(models.TrialModel.study_id == study_id).all())
            seen = time.monotonic()
            for t in running:
                if t.heartbeats:
                    age = (now - t.heartbeats[0].heartbeat).total_seconds()
                else:
                    age = seen - self._unbeaten.setdefault(t.trial_id, seen)
                if age > grace:
                    silent[t.trial_id] = age
            session.commit()
        except Exception:
            session.rollback()
            raise
        for trial_id, age in silent.items():
            try:
                attrs = self.get_trial(trial_id).user_attrs
                self.set_trial_user_attr(trial_id, "reason", died_reason(age, attrs))
                self.set_trial_user_attr(trial_id, "status", DIED)
            except UpdateFinishedTrialError:
                pass  # finished meanwhile, or failed by another worker (which said why)
        return list(silent)


def requeue_once(study: "optuna.Study", trial: FrozenTrial) -> None:
    """``heartbeat_stale_trial_callback``: queue a died trial's point again, once (a retry that
    dies too is not queued). A zoo reference keeps its name; ``retry_of`` names the trial."""
    if trial.user_attrs.get("retry_of") is not None or not trial.params:
        return
    attrs: dict[str, Any] = {"retry_of": trial.number}
    if trial.user_attrs.get("zoo"):
        attrs["zoo"] = trial.user_attrs["zoo"]
    study.enqueue_trial(trial.params, user_attrs=attrs)


class Pulse:
    """Heartbeats for trials run outside ``study.optimize`` (Ray: asked and told by the driver):
    :meth:`add` records one at once, then a thread records one for every added trial each
    ``interval`` seconds until :meth:`discard`, :meth:`clear` or :meth:`stop`. A pickled copy
    (Ray pickles the searcher that holds it) is inert."""

    def __init__(self, storage: RDBStorage, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Pulse":
        self._thread = threading.Thread(target=self._run, name="skipdsl-heartbeat", daemon=True)
        self._thread.start()
        return self

    def add(self, trial_id: int) -> None:
        if self._thread is None:
            return
        with self._lock:
            self._ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def clear(self) -> None:
        """Beat for no trial: one left RUNNING is then failed as died after the grace period."""
        with self._lock:
            self._ids.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a busy database: the next beat is in `interval` seconds
                    pass

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__(None, 0)  # type: ignore[arg-type]
