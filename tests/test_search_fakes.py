"""A fast stand-in for ``train_and_evaluate`` used by the search tests (no test functions here).

Deterministic: the validation curve rises to a ceiling derived from the spec's canonical hash and
size, so different networks get different IoUs and the same network the same one. It honours
``epochs``, calls ``report`` every epoch and returns the keys the search reads. Importable by
subprocess and Ray workers when ``tests/`` is on PYTHONPATH.

With ``SKIPDSL_FAKE_HANG=FILE`` in the environment it writes the trial's name to FILE and blocks:
:func:`run_until_a_trial_hangs` kills the search while a trial is there.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import skipdsl
from skipdsl.train.trainer import BUDGETS, load_spec


def fake_train(config, report=None):
    spec = load_spec(config["model"])
    spec = spec.replace(widths=config.get("widths"))
    hang = os.environ.get("SKIPDSL_FAKE_HANG")
    if hang:
        tmp = Path(hang).with_suffix(".tmp")
        tmp.write_text(spec.name)
        tmp.replace(hang)
        time.sleep(3600)
    h = skipdsl.spec_hash(spec)
    model = skipdsl.compile(spec, deep_supervision=False, cgm=False)
    params = sum(p.numel() for p in model.parameters())
    ceiling = 0.5 + 0.4 * (int(hashlib.sha256(h.encode()).hexdigest()[:6], 16) / 0xFFFFFF)
    epochs = int(config.get("epochs") or BUDGETS[config.get("budget", "smoke")].epochs)
    delay = float(os.environ.get("SKIPDSL_FAKE_DELAY", "0"))
    curve = []
    for e in range(epochs):
        v = ceiling * (1 - 0.5 ** (e + 1))
        curve.append({"epoch": e, "val_iou": v})
        if delay:
            time.sleep(delay)
        if report is not None:
            report(e, v)
    if spec.name.endswith("_fail"):
        return {"status": "failed", "reason": "fake failure"}
    return {"status": "ok", "reason": "", "iou": curve[-1]["val_iou"] - 0.01, "dice": 0.8,
            "params": params, "gflops": 0.1, "images_per_s": 100.0, "epochs": epochs,
            "best_epoch": epochs - 1, "train_seconds": 0.01, "curve": curve, "dims": spec.dims,
            "in_channels": spec.in_channels, "num_classes": spec.num_classes, "device": "cpu"}


def run_until_a_trial_hangs(out: Path, marker: Path, timeout: float = 120, **kw) -> int:
    """Run ``run_search(out=out, trainer=fake_train, **kw)`` in a child process whose trials
    block, and SIGKILL it once one trains: no clean-up runs, the trial stays RUNNING. Processes
    the child started (Ray's) are killed too, by their ids (those in the child's session). Its
    output goes to ``marker`` with the suffix ``.log``. Returns the child's pid."""
    here = str(Path(__file__).resolve().parent)
    script = (f"import sys; sys.path.insert(0, {here!r})\n"
              "from skipdsl.search.runner import run_search\n"
              "from test_search_fakes import fake_train\n"
              f"run_search(out={str(out)!r}, trainer=fake_train, log=print, **{kw!r})\n")
    env = {**os.environ, "SKIPDSL_FAKE_HANG": str(marker),
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    log = marker.with_suffix(".log")
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError("the search ended before a trial hung:\n"
                                     + log.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"no trial started in {timeout:.0f} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _session(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.pid


def resume_and_check_died(out: Path, hung, who: str, **kw):
    """Resume a killed search at once (``run_search(out=out, trainer=fake_train, **kw)``) and
    check what the dead worker's trial ``hung`` becomes: the run waits for it while it still
    looks alive, then fails it as ``died`` with a reason naming ``who`` (a regex), and reaches
    ``kw['trials']``. Returns trials.csv indexed by trial number."""
    import pandas as pd

    from skipdsl.search.runner import run_search

    lines: list[str] = []
    summary = run_search(out=out, trainer=fake_train, log=lines.append, **kw)
    assert any(f"waiting for running trial(s) {hung.number} " in s for s in lines), lines
    assert summary.finished == kw["trials"]
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert (df["state"] != "RUNNING").all()
    dead = df.loc[hung.number]
    assert dead["state"] == "FAIL" and dead["status"] == "died", dead
    assert re.fullmatch(rf"worker died: no heartbeat for \d+ s \({who}\)", dead["reason"]), \
        dead["reason"]
    assert int(re.search(r"for (\d+) s", dead["reason"]).group(1)) > kw["grace"]
    return df


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state, ppid, pgrp, session
            out.append(int(d.name))
    return out
