"""The GPU suite (benchmarks/gpu_suite.py, run by benchmarks/gpu_suite.sh): its budgets on
paper, its commands, its stage runner (limits, cuts, failures), the summary, and the CPU dry run
of every stage at toy size.

The dry run must finish within its 3 minutes on CI's 2 cores. On a machine that is busy with
other work, ``GPU_SUITE_LIMIT_SCALE=4`` multiplies every limit (and the deadline) by 4.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_suite as gs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.sh"


def test_budgets_fit_in_8_minutes_and_the_dry_run_in_3():
    gpu, dry = gs.wall_budget(), gs.wall_budget(dry=True)
    assert gpu["total"] <= 480 == gs.TOTAL_S and dry["total"] <= 180 == gs.DRY_TOTAL_S
    # a stage beside another costs no wall time, and has no longer limit than it
    for s in gs.STAGES:
        for is_dry, budget in ((False, gpu), (True, dry)):
            if s.host(is_dry):
                host = next(h for h in gs.STAGES if h.name == s.host(is_dry))
                assert host.host(is_dry) is None  # one level: a host runs alone
                assert s.name not in budget and s.budget(is_dry) <= host.budget(is_dry)
    assert set(gs.plan(gs.Config(Path("/o"), False, "cuda", None))) == {s.name for s in gs.STAGES}
    assert set(gs.OUTPUTS) == {s.name for s in gs.STAGES}


def test_the_scripts_header_says_the_same_budgets():
    rows = {}
    for line in SCRIPT.read_text().splitlines():
        m = re.match(r"#\s+([a-z0-9-]+)\s+\(?(\d+)\)?\s+\(?(\d+)\)?\s", line + " ")
        if m and m.group(1) in {"setup", "summary", "total", *(s.name for s in gs.STAGES)}:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    want = {s.name: (s.gpu_s, s.dry_s) for s in gs.STAGES}
    want.update(setup=(gs.SETUP_S["gpu"], gs.SETUP_S["dry"]),
                summary=(gs.SUMMARY_S["gpu"], gs.SUMMARY_S["dry"]),
                total=(gs.wall_budget()["total"], gs.wall_budget(dry=True)["total"]))
    assert rows == want


def test_gpu_commands_are_the_owed_figures():
    cfg = gs.Config(Path("/o"), dry=False, device="cuda", cache_dir=None, python="py")
    cmds = {k: [" ".join(c) for c in v] for k, v in gs.plan(cfg).items()}
    for stage in ("speed-2d", "speed-2d-fast"):
        (cmd,) = cmds[stage]
        assert "speed.py --device cuda --dims 2 --models unetsharp,unet,wunet,unetpp,unet3p " \
               "--size 96 --batch 128" in cmd
        assert ("--fast" in cmd) == stage.endswith("fast")
    assert "--dims 3 --models unetsharp" in cmds["speed-3d"][0]
    assert "--fast" in cmds["speed-3d-fast"][0] and "--fast" not in cmds["speed-3d"][0]
    (t1,) = cmds["table1"]
    for part in ("run --models unet,unet3p,unetpp,unetsharp,wunet --datasets nuclei2d,liver2d "
                 "--seeds 0 --ds both --device cuda", "--out /o/table1", "--budget short",
                 "--gpus-per-trial 0.25"):
        assert part in t1
    assert "--backend" not in t1  # Ray
    assert all("--compile-only --json" in c and "--fast" in c for c in cmds["compile-warm"])
    assert "--concurrency 4" in cmds["trials-per-hour"][0]
    assert "benchmarks/fastcheck.py --device cuda" in cmds["fast-path"][0]
    assert "benchmarks/trials_per_hour.py" in cmds["trials-per-hour"][0]
    (mem,) = cmds["memory-2d"]
    assert "memory.py --device cuda --models unetsharp,unet3p --size 96 --batch 128" in mem
    assert "--fast bf16,channels_last" in mem and "--out /o/memory_2d.md" in mem


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_stage_is_cut_at_its_limit_keeps_its_files_and_leaves_no_process(tmp_path):
    (tmp_path / "logs").mkdir()
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time, pathlib; open(sys.argv[1] + '/part.md', 'w')"
            ".write('done so far'); c = subprocess.Popen(['sleep', '60']); "
            "pathlib.Path(sys.argv[1], 'child.pid').write_text(str(c.pid)); time.sleep(60)")
    t0 = time.monotonic()
    res = gs.run_stage("speed-2d", [_py(code) + [str(tmp_path)], _py("print('never')")], 3.0,
                       tmp_path, dict(os.environ), tmp_path)
    assert res.status == "cut" and time.monotonic() - t0 < 5
    assert res.label() == "cut at its 3 s limit"
    assert (tmp_path / "part.md").read_text() == "done so far"
    assert "never" not in (tmp_path / "logs" / "speed-2d.log").read_text()
    time.sleep(0.2)
    assert _gone(int(pidfile.read_text()))  # the grandchild went with the stage's group


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def test_stopping_the_suite_ends_its_running_stage(tmp_path):
    code = ("import os, signal, sys; from pathlib import Path; "
            "sys.path.insert(0, sys.argv[2]); from benchmarks import gpu_suite as g; "
            "signal.signal(signal.SIGTERM, g._stop_stages); out = Path(sys.argv[1]); "
            "(out / 'logs').mkdir(); g.run_stage('speed-2d', [['sh', '-c', 'echo $$ > ' + "
            "str(out / 'pid') + '; exec sleep 60']], 60, out, dict(os.environ), out)")
    suite = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(ROOT)])
    pidfile = tmp_path / "pid"
    deadline = time.monotonic() + 120  # torch's import, on a busy machine
    while time.monotonic() < deadline and not (pidfile.exists() and pidfile.read_text().strip()):
        time.sleep(0.1)
    suite.terminate()
    assert suite.wait(30) == 128 + 15
    time.sleep(0.2)
    assert _gone(int(pidfile.read_text()))


def test_a_failing_stage_says_why_and_a_silent_one_is_not_done(tmp_path):
    (tmp_path / "logs").mkdir()
    bad = gs.run_stage("fast-path", [_py("raise SystemExit('no CUDA here')")], 30, tmp_path,
                       dict(os.environ), tmp_path)
    assert bad.status == "failed" and bad.reason == "exit 1: no CUDA here"
    quiet = gs.run_stage("fast-path", [_py("pass")], 30, tmp_path, dict(os.environ), tmp_path)
    assert quiet.status == "failed" and "wrote no fastpath.md, fastpath.json" in quiet.reason


def test_targets_are_read_from_the_fast_row(tmp_path):
    row = {"model": "unetsharp", "train": {"compiled": 1200.0, "hand": 700.0, "ratio": 1.7},
           "infer": {"compiled": 7000.0}, "train_mb": {"compiled": 11 * 1024.0}}
    lines = gs._targets([("2D", "eager", {**row, "train": {"compiled": 1.0}}),
                         ("2D", "fast", row)])
    cells = {ln.split("|")[1].strip(): ln.split("|")[3:6] for ln in lines[2:]}
    assert [c.strip() for c in cells["train img/s"]] == ["1,200", "716", "yes"]
    assert [c.strip() for c in cells["infer img/s"]] == ["7,000", "5,928", "no"]
    assert [c.strip() for c in cells["peak GB (train step)"]] == ["11.0", "13.2", "yes"]
    assert "still owed" in "\n".join(gs._targets([]))


SCALE = float(os.environ.get("GPU_SUITE_LIMIT_SCALE", "1"))


@pytest.mark.slow
@pytest.mark.timeout(int(180 * SCALE) + 120)
def test_dry_run_runs_every_stage_and_the_summary_lists_them(tmp_path):
    pytest.importorskip("ray")
    scale = SCALE
    out = tmp_path / "suite"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--cache-dir",
         str(tmp_path / "cache"), "--limit-scale", str(scale)],
        env={**os.environ, "PYTHON": sys.executable}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=180 * scale + 60)
    finally:
        if proc.poll() is None:  # the suite ends its stages' process groups on SIGTERM
            proc.terminate()
            proc.communicate(timeout=30)
    wall = time.monotonic() - t0
    suite = json.loads((out / "suite.json").read_text())
    status = {k: v["status"] + " " + v["reason"] for k, v in suite["stages"].items()}
    assert proc.returncode == 0, (status, stderr[-3000:])
    assert all(v["status"] == "done" for v in suite["stages"].values()), status
    assert wall < 180 * scale
    for stage, files in gs.OUTPUTS.items():
        for f in files:
            assert (out / f).is_file(), (stage, f)
        assert (out / "logs" / f"{stage}.log").stat().st_size > 0
    commands = (out / "commands.sh").read_text()
    summary = (out / "summary.md").read_text()
    for s in gs.STAGES:
        assert f"# {s.name} (limit" in commands
        assert re.search(rf"^\| {s.name} \| .* \| done \| ", summary, re.M), s.name
    for section in ("## Targets", "## Speed against REFERENCE.md section 3",
                    "## Fast path vs eager fp32", "## Table 1, reduced", "## Trials per GPU-hour",
                    "## Compile warm-up", "## Training-step memory: recompute",
                    "## Owed beyond this suite"):
        assert section in summary
    assert "benchmarks/nnunet_compare.py --device cuda --epochs 1000" in summary
    assert "3 of 3 trials ok" in summary  # the dry run's table1: unet, unetsharp x DS
    assert "| 2 sharing | 0 | 2/2 |" in summary
    speed = json.loads((out / "speed_2d.json").read_text())
    assert [r["model"] for r in speed["rows"]] == gs.DRY_MODELS["speed"]
    assert speed["pending"] == []
    memory = json.loads((out / "memory_2d.json").read_text())
    assert [r["model"] for r in memory["rows"]] == ["unetsharp"]
    assert memory["rows"][0]["error"] is None
    assert memory["rows"][0]["grad_diff"]["resample"] == 0.0
    assert 0 < memory["rows"][0]["grad_diff"]["split"] < 1e-4
    assert re.search(r"^\| unetsharp \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| ", summary, re.M)
    checks = json.loads((out / "fastpath.json").read_text())["checks"]
    assert {c["name"]: c["status"] for c in checks} == {
        "cuda_graphs": "ok", "bf16": "ok", "channels_last": "ok", "all_parts": "skipped",
        "compile": "skipped", "train_step": "ok", "trainer": "ok"}
    assert (out / "table1" / "report.md").is_file()  # rebuilt by the summary (--no-report)
