"""Two search workers in parallel on one study in a real PostgreSQL server started here.

The server binaries are looked up on PATH, in /usr/lib/postgresql/*/bin (Debian's
``apt-get install postgresql``) and in /usr/local/bin. PostgreSQL refuses to run as root, so
under uid 0 the server runs as the ``postgres`` user (or ``nobody``) on a data folder it owns.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest

import skipdsl
from skipdsl.search.runner import run_search
from skipdsl.search.study import counted_trials

from test_search_fakes import fake_train, run_until_a_trial_hangs

TESTS = Path(__file__).resolve().parent


def _binary(name: str) -> str:
    for cand in [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                             reverse=True), f"/usr/local/bin/{name}"]:
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.fail(f"PostgreSQL server binary '{name}' not found (PATH, /usr/lib/postgresql/*/bin, "
                "/usr/local/bin): install it with 'apt-get install -y postgresql'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 with an empty database; yields its URL."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    root = tempfile.mkdtemp(prefix="skipdsl-pg-")
    user = None
    if os.getuid() == 0:
        name = "postgres" if _has_user("postgres") else "nobody"
        user = pwd.getpwnam(name)
        os.chown(root, user.pw_uid, user.pw_gid)

    def as_user():
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        env["HOME"] = root
    data, port = os.path.join(root, "data"), _free_port()

    def run(*cmd):
        r = subprocess.run(cmd, preexec_fn=as_user, env=env, capture_output=True, text=True,
                           timeout=120, cwd=root)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"

    run(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    run(pg_ctl, "-D", data, "-l", os.path.join(root, "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        f"-c max_connections=50", "start")
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE skipdsl_search")
        con.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/skipdsl_search"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], preexec_fn=as_user,
                       env=env, capture_output=True, timeout=60, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _worker(out: Path, url: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), "SKIPDSL_FAKE_DELAY": "0.1"}
    cmd = [sys.executable, "-m", "skipdsl.search.cli", "run", "--dataset", "nuclei2d",
           "--trials", str(trials), "--budget", "smoke", "--out", str(out), "--storage", url,
           "--trainer", "test_search_fakes:fake_train", "--latency-size", "32",
           "--latency-iters", "2", "--threads", "1", "--workers", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(postgres_url, tmp_path):
    trials = 10
    workers = [_worker(tmp_path / f"w{i}", postgres_url, trials) for i in range(2)]
    logs = []
    for w in workers:
        out, _ = w.communicate(timeout=300)
        logs.append(out)
        assert w.returncode == 0, out
    storage = optuna.storages.RDBStorage(postgres_url)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    ts = study.get_trials()
    # every worker stops once the study holds `trials` evaluated networks (invalid and too
    # costly samples are recorded, not counted); the other worker may have had one running
    assert trials <= len(counted_trials(study)) <= trials + 1
    assert len({t.number for t in ts}) == len(ts)
    assert all(t.state.is_finished() for t in ts)
    by_worker = {t.user_attrs.get("worker") for t in ts} - {None}
    assert len(by_worker) == 2, logs  # both workers ran trials of the one study
    done = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.user_attrs.get("zoo") for t in done} >= set(skipdsl.spec.zoo_names())
    # each worker's outputs are built from the shared study
    for i in range(2):
        df = pd.read_csv(tmp_path / f"w{i}" / "trials.csv")
        assert len(df) >= trials - 1
    # re-running the same command resumes: nothing is missing, so nothing runs
    again = _worker(tmp_path / "w0", postgres_url, trials)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 trial(s) run here" in out, out
    assert len(study.get_trials()) == len(ts)


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_as_died_on_postgresql(postgres_url, tmp_path):
    common = dict(dataset="nuclei2d", budget="smoke", latency_size=32, latency_iters=2,
                  storage=postgres_url, trials=1, zoo=False, workers=1, heartbeat=1, grace=4)
    pid = run_until_a_trial_hangs(tmp_path / "a", tmp_path / "hanging", **common)
    # another worker (its own output folder) on the same study finds the dead worker's trial
    summary = run_search(out=tmp_path / "b", trainer=fake_train, log=lambda s: None, **common)
    assert summary.finished == 1
    storage = optuna.storages.RDBStorage(postgres_url)
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    study = optuna.load_study(study_name=name, storage=storage)
    ts = study.get_trials()
    (dead,) = [t for t in ts if t.user_attrs.get("status") == "died"]
    assert dead.state == optuna.trial.TrialState.FAIL
    assert dead.user_attrs["reason"].startswith("worker died: no heartbeat for ")
    assert dead.user_attrs["reason"].endswith(f":{pid})")
    assert all(t.state.is_finished() for t in ts) and len(counted_trials(study)) == 1
