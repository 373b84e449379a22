"""Sweeps on Ray Tune: a local Ray, and a two-node cluster joined through ``--address``.

Ray binds 127.0.0.1 (the suite runs in a loopback-only network namespace). Token
authentication is turned off for these throw-away clusters (``RAY_AUTH_MODE=disabled``) so no
token file is needed or written.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from skipdsl.bench import runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = [4, 8, 16, 32, 64]


def overrides(cache_dir, **kw):
    o = dict(epochs=1, n=16, widths=TINY, batch_size=4, cache_dir=cache_dir,
             throughput_iters=1, prune=False)
    o.update(kw)
    return o


def test_ray_sweep_local(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cache = str(tmp_path / "cache")
    ok = runner.plan(["unet", "unetpp"], ["nuclei2d"], deep_supervision="off",
                     overrides=overrides(cache))
    bad = runner.plan(["unet"], ["nuclei2d"], seeds=[5],
                      overrides=overrides(cache, lr=1e30, epochs=2))
    out = tmp_path / "out"
    summary = runner.run_sweep(ok + bad, out, backend="ray", num_cpus=2, progress=False)
    assert len(summary.ran) == 3 and summary.failed == [bad[0].key]
    df = pd.read_csv(out / "results.csv")
    assert sorted(df.status) == ["failed", "ok", "ok"]
    assert "diverged" in df[df.status == "failed"].reason.iloc[0]
    assert df[df.status == "ok"].iou.between(0, 1).all()
    for key in df[df.status == "ok"].trial_key:
        assert (out / "trials" / key / "cases.parquet").is_file()
    # the same sweep again: everything is skipped, Ray is not even started
    again = runner.run_sweep(ok + bad, out, backend="ray", num_cpus=2, progress=False)
    assert again.ran == [] and len(again.skipped) == 3
    # asking for GPUs the cluster does not have is an error, not a sweep that waits forever
    with pytest.raises(ValueError, match="GPU"):
        runner.run_sweep(ok, tmp_path / "gpu", backend="ray", num_cpus=2, gpus_per_trial=0.5,
                         progress=False)


@pytest.mark.slow
def test_an_offline_bench_run_prints_no_ray_warnings(tmp_path):
    """``bench run`` on a local Ray, offline (the suite's loopback-only namespace), with none
    of Ray's variables set: no token-authentication warning and no probe of an outside
    address for this machine's IP (skipdsl.raytools.LOCAL_RAY_ENV)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run(
        [sys.executable, "-m", "skipdsl.bench.cli", "run", "--models", "unet", "--datasets",
         "nuclei2d", "--budget", "smoke", "--epochs", "1", "--n", "16", "--widths", "4",
         "--ds", "off", "--cache-dir", str(tmp_path / "cache"), "--no-report",
         "--out", str(tmp_path / "out")],
        env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, capture_output=True, text=True,
        timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "1 ran (0 failed)" in out
    for noise in ("Token authentication", "external connectivity", "8.8.8.8", "WARNING"):
        assert noise not in out, out[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop one ``ray start --block`` we started (it stops its own Ray processes)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test created for it
            proc.wait(10)


@pytest.mark.slow
def test_ray_sweep_on_two_node_cluster(tmp_path):
    """``ray start --head`` + a second ``ray start --address`` (1 CPU each), then
    ``bench run --address``: both trials run, one on each node."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    temp = tempfile.mkdtemp(prefix="rsk", dir="/tmp")  # short: Ray's socket paths are limited
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
              "--disable-usage-stats", "--block"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={temp}", *common], env=env, start_new_session=True,
            stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT))
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env)
        procs.append(subprocess.Popen(
            [ray_bin, "start", f"--address={address}", *common], env=env,
            start_new_session=True, stdout=open(tmp_path / "worker.log", "w"),
            stderr=subprocess.STDOUT))
        _wait_nodes(address, 2, env)
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "skipdsl.bench.cli", "run", "--address", address,
               "--models", "unet,unetpp", "--datasets", "nuclei2d", "--ds", "off",
               "--epochs", "1", "--n", "16", "--widths", "4", "--batch-size", "4",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
               "--strict"]
        r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=400)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        df = pd.read_csv(out / "results.csv")
        assert list(df.status) == ["ok", "ok"]
        assert df.node.nunique() == 2, df.node.tolist()  # one trial on each node
        assert (out / "report.md").is_file()
    finally:
        for p in reversed(procs):  # the worker node first, then the head
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_nodes(address: str, n: int, env: dict, timeout: float = 90) -> None:
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(x['Alive'] for x in ray.nodes()))")
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        r = subprocess.run([sys.executable, "-c", code, address], env=env,
                           capture_output=True, text=True)
        last = r.stdout.strip() + r.stderr[-500:]
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    raise AssertionError(f"Ray cluster at {address} did not reach {n} nodes: {last}")
