"""benchmarks/trials_per_hour.py: both settings run under Ray and the report has their
figures.

Ray binds 127.0.0.1 (the suite runs in a loopback-only network namespace); token
authentication is off for the throw-away cluster (``RAY_AUTH_MODE=disabled``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import trials_per_hour as tph

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("device,total,n,cpu,gpu", [
    ("cpu", 2.0, 2, 1.0, 0.0), ("cpu", 2.0, 3, 0.6666, 0.0), ("cuda", 16.0, 3, 1.0, 0.3333)])
def test_settings_fit_the_device(device, total, n, cpu, gpu):
    args = argparse.Namespace(device=device, concurrency=n, cpus=total, cpus_per_trial=1.0)
    one, shared = tph.settings(args)
    assert one.concurrency == 1 and shared.concurrency == n
    assert (one.cpus_per_trial, one.gpus_per_trial) == ((total, 0.0) if device == "cpu"
                                                        else (1.0, 1.0))
    assert (shared.cpus_per_trial, shared.gpus_per_trial) == (cpu, gpu)
    # n of them fit in what Ray has (no trial left waiting by a rounding error)
    assert n * shared.cpus_per_trial <= total and n * shared.gpus_per_trial <= 1


def test_trials_round_robin_over_models_then_seeds(tmp_path):
    args = tph.parse_args(["--device", "cpu", "--trials", "3", "--models", "unet,unetpp",
                           "--budget", "smoke", "--epochs", "1"])
    labels = [t.label for t in tph.build_trials(args)]
    assert labels == ["unet/nuclei2d/s0/nods", "unetpp/nuclei2d/s0/nods",
                      "unet/nuclei2d/s1/nods"]


def _cells(md: str, setting: str) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(f"| 1 | {setting} |")]
    assert len(rows) == 1, md
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_one_at_a_time_and_shared_under_ray(tmp_path):
    """The script as a user runs it, in a process of its own (a fresh Ray: Ray Tune keeps
    state in a process across Ray sessions, which an earlier Ray test could leave behind)."""
    pytest.importorskip("ray")
    out = tmp_path / "tph.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/trials_per_hour.py", "--device", "cpu", "--cpus", "2",
         "--concurrency", "2", "--trials", "2", "--budget", "smoke", "--models", "unet",
         "--epochs", "1", "--n", "8", "--widths", "4", "--batch-size", "4", "--no-warmup",
         "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--workdir",
         str(tmp_path / "w"), "--out", str(out)],
        cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = out.read_text()
    assert md.splitlines()[0] in proc.stdout  # printed as well as written
    assert "| " + " | ".join(tph.HEADER) + " |" in md
    for setting, at_once, cpus in (("one at a time", "1", "2"), ("2 sharing", "2", "1")):
        row = dict(zip(tph.HEADER, _cells(md, setting)))
        assert (row["at once"], row["CPU / trial"], row["trials ok"]) == (at_once, cpus, "2/2")
        for col in ("wall s", "trials / hour", "mean train s / trial", "peak MiB / trial",
                    "peak MiB all"):
            assert float(row[col]) > 0, (col, row)
        # trials / hour is what the wall time says
        assert float(row["trials / hour"]) == pytest.approx(
            2 / float(row["wall s"]) * 3600, rel=0.01)
    ratio = re.search(r"ratio 2 sharing / one at a time = ([0-9.]+)", md)
    assert ratio and float(ratio.group(1)) > 0
    for text in ("Command: `python benchmarks/trials_per_hour.py --device cpu", "Date: ",
                 "- device: ", "load average (1 / 5 / 15 min): before ",
                 "order: rep 1: one at a time, then 2 sharing"):
        assert text in md
    # each setting ran into a store of its own
    assert (tmp_path / "w" / "rep1-one" / "results.csv").is_file()
    assert (tmp_path / "w" / "rep1-shared2" / "results.csv").is_file()
