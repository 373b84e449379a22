"""The GPU suite: every figure the project owes from a GPU, in one run that fits 8 minutes on
one H100/H200, offline; and its dry run, every stage at toy size on CPU.

    bash benchmarks/gpu_suite.sh                    # the GPU machine: wheel bundle, then this
    python benchmarks/gpu_suite.py                  # the same where the packages are installed
    python benchmarks/gpu_suite.py --dry-run --out runs/gpu-dry   # CPU, toy size, < 3 min (CI)
    python benchmarks/gpu_suite.py --only speed-2d-fast --limit speed-2d-fast=300  # one stage

The stages (:data:`STAGES`, in this order; benchmarks/gpu_suite.sh's header has the budget
arithmetic, and tests/test_gpu_suite.py checks that it matches these numbers):

- ``speed-2d``: ``benchmarks/speed.py``, the five zoo models, eager fp32, 96x96 batch 128, train and
  infer img/s, peak memory, compiled / hand-written ratios (UNet# first).
- ``table1``: ``bench run``, the five models x nuclei2d, liver2d x deep supervision off/on, one
  seed, a reduced short budget, on Ray Tune with 0.25 GPU a trial. Beside it, costing no wall
  time: ``compile-warm`` (``benchmarks/speed.py --compile-only --fast``: torch.compile fills its
  on-disk caches with the graphs the fast stages time next) and ``fast-path``
  (``benchmarks/fastcheck.py``: CUDA-graph capture and replay, bf16, compile, all parts, a
  training step and the trainer, each against eager fp32). Neither times anything, and
  Table 1's figures are test IoU, which sharing the GPU does not change.
- ``speed-2d-fast``: ``benchmarks/speed.py --fast`` (bf16, channels_last, torch.compile, CUDA-graph
  inference) on the five models, UNet# first.
- ``memory-2d``: ``benchmarks/memory.py``, UNet# and UNet 3+ at
  96x96 batch 128, bf16 + channels_last: the peak memory and time of a training step, hand-
  written, compiled and ``recompute="resample"`` and ``"split"`` (the <= 12 GB target).
- ``speed-3d``, ``speed-3d-fast``: UNet# (V-Net# widths) at 64^3 batch 4, eager and fast.
- ``trials-per-hour``: ``benchmarks/trials_per_hour.py``, 4 UNet# trials one at a time
  against 4 sharing the GPU (0.25 each), through Ray.
- ``summary``: ``summary.md``, every figure beside the public reference code's H100 figures
  and the targets
  (UNet# fast >= 1,000 train img/s, >= 8,000 infer img/s, <= 12 GB).

The dry run (toy sizes on CPU, where nothing is timed) runs the same stages in two groups
(:attr:`Stage.dry_beside`): the 2D speed stages, ``compile-warm`` and ``fast-path`` beside
``table1``, the 3D speed stages beside ``trials-per-hour``, so that both cores stay busy.

Each stage runs its commands as child processes in a process group of its own, under its time
limit: 5 s before the limit (a fifth of it for limits under 25 s) the group gets SIGINT, at the
limit SIGKILL (Ray's processes and the compiler's workers with it); stopping the suite ends the
running stages too. What a stage wrote stays: the speed tables and the checks are rewritten
after every model or check, and ``bench run`` stores each trial when it ends. A deadline (the
start, ``--started-at`` when the shell script counted its set-up, plus :data:`TOTAL_S`) caps
every limit, so the suite ends in time whatever a stage does. Each stage's status goes into the
summary: done, cut at its limit, failed (with the reason), or not run.

Output (OUT, default ``results/gpu/<device>/``, e.g. ``results/gpu/nvidia-h200/``): one file or
folder a stage (``speed_*.md``/``.json``, ``fastpath.*``, ``compile_warm_*.json``, ``table1/``,
``trials_per_hour.*``), ``commands.sh`` (every command as run), ``logs/<stage>.log``,
``suite.json`` (the stages' outcomes; a later ``--only`` run keeps the others') and
``summary.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: This folder (benchmarks/): the suite runs its sibling scripts by path.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout too

__all__ = ["Stage", "STAGES", "TOTAL_S", "DRY_TOTAL_S", "SETUP_S", "SUMMARY_S", "wall_budget",
           "plan", "main"]

#: The suite's wall-time budget on a GPU (8 minutes) and in the CPU dry run (3 minutes).
TOTAL_S = 480
DRY_TOTAL_S = 180
#: benchmarks/gpu_suite.sh's set-up (the wheel bundle into /tmp/site), before this module.
SETUP_S = {"gpu": 20, "dry": 0}
#: The summary, written by this process after the stages.
SUMMARY_S = {"gpu": 10, "dry": 5}
#: SIGINT this many seconds before a stage's limit, SIGKILL at the limit.
GRACE_S = 5

MODELS = ["unetsharp", "unet", "wunet", "unetpp", "unet3p"]  # UNet# first: the targets' model
TABLE1_DATASETS = ["nuclei2d", "liver2d"]
#: The dry run's smaller lists: the same code paths with less work for 2 CPU cores (a model
#: with one head and one with deep supervision; one dataset for table1).
DRY_MODELS = {"speed": ["unetsharp", "unet"], "table1": ["unet", "unetsharp"],
              "warm": ["unet"]}
DRY_DATASETS = ["nuclei2d"]


def table1_models(dry: bool) -> list[str]:
    return DRY_MODELS["table1"] if dry else sorted(MODELS)


def table1_datasets(dry: bool) -> list[str]:
    return DRY_DATASETS if dry else TABLE1_DATASETS


@dataclass(frozen=True)
class Stage:
    name: str
    gpu_s: float  # its limit on a GPU
    dry_s: float  # its limit in the CPU dry run
    what: str
    beside: str | None = None  # runs side by side with that stage, within its limit
    #: the dry run's grouping, where it differs: toy-size stages time nothing, so the dry run
    #: packs them into two groups that keep both CPU cores busy (each stage's own process
    #: spends most of its seconds importing torch and MONAI on one core)
    dry_beside: str | None = None

    def budget(self, dry: bool) -> float:
        return self.dry_s if dry else self.gpu_s

    def host(self, dry: bool) -> str | None:
        """The stage this one runs beside (None: it runs alone, or hosts others)."""
        return (self.dry_beside or self.beside) if dry else self.beside


STAGES: tuple[Stage, ...] = (
    Stage("speed-2d", 50, 40, "bench speed, 5 zoo models, eager fp32, 2D 96x96 batch 128",
          dry_beside="table1"),
    Stage("table1", 185, 85, "bench run: 5 models x nuclei2d, liver2d x DS off/on, 1 seed, "
          "Ray, 0.25 GPU a trial"),
    Stage("compile-warm", 185, 85, "bench speed --compile-only --fast: torch.compile's caches "
          "for the fast stages", beside="table1"),
    Stage("fast-path", 185, 85, "CUDA graphs, bf16, channels_last, compile, a train step and "
          "the trainer vs eager fp32", beside="table1"),
    Stage("speed-2d-fast", 75, 40, "bench speed --fast (bf16, channels_last, compile, CUDA "
          "graphs), 5 models, 2D", dry_beside="table1"),
    Stage("memory-2d", 35, 40, "benchmarks/memory.py: UNet#, UNet 3+ training-step peak GB and time, "
          "hand-written / compiled / recompute=resample / split, 96x96 batch 128, bf16 + channels_last",
          dry_beside="trials-per-hour"),
    Stage("speed-3d", 15, 45, "bench speed --dims 3, UNet# (V-Net# widths), 64^3 batch 4",
          dry_beside="trials-per-hour"),
    Stage("speed-3d-fast", 30, 45, "bench speed --dims 3 --fast, UNet#",
          dry_beside="trials-per-hour"),
    Stage("trials-per-hour", 55, 90, "4 UNet# trials one at a time vs 4 sharing the GPU, Ray"),
)


def wall_budget(dry: bool = False) -> dict[str, float]:
    """Wall seconds on paper: set-up, each stage that does not run beside another, summary,
    and their total."""
    key = "dry" if dry else "gpu"
    parts = {"setup": SETUP_S[key]}
    parts.update({s.name: s.budget(dry) for s in STAGES if s.host(dry) is None})
    parts["summary"] = SUMMARY_S[key]
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------------------
# the commands


@dataclass
class Config:
    out: Path
    dry: bool
    device: str  # cuda | cpu
    cache_dir: str | None
    python: str = sys.executable

    def module(self, name: str, *args: str) -> list[str]:
        return [self.python, "-m", name, *args]

    def bench(self, *args: str) -> list[str]:
        return self.module("skipdsl.bench.cli", *args)

    def script(self, name: str, *args: str) -> list[str]:
        """A script of this folder (benchmarks/), run by the same Python."""
        return [self.python, str(HERE / name), *args]

    def path(self, name: str) -> str:
        return str(self.out / name)


def _speed(cfg: Config, name: str, *, fast: bool, dims: int = 2,
           models: Sequence[str] | None = None, compile_only: bool = False) -> list[str]:
    models = models or (DRY_MODELS["speed"] if cfg.dry else MODELS)
    if cfg.dry:
        shape = ["--size", "16", "--batch", "2",
                 "--widths", "4,8,16,32,64" if dims == 2 else "2,4,8,16,32",
                 "--iters", "1", "--reps", "1", "--warmup", "1", "--threads", "1"]
        # bare --fast on CPU would compile (30-90 s a model there): the CUDA-only parts are
        # named, and skipped with their reason, so the fast path's bookkeeping runs
        fast_args = ["--fast", "bf16,channels_last,cuda_graphs"]
    else:
        shape = (["--size", "96", "--batch", "128"] if dims == 2 else []) + [
            "--iters", "2", "--reps", "3", "--warmup", "3" if fast else "1"]
        fast_args = ["--fast"]
    args = ["--device", cfg.device, "--dims", str(dims), "--models", ",".join(models),
            *shape, *(fast_args if fast else [])]
    if compile_only:
        return cfg.script("speed.py", *args, "--compile-only", "--json",
                          cfg.path(f"{name}.json"))
    return cfg.script("speed.py", *args, "--out", cfg.path(f"{name}.md"), "--json",
                      cfg.path(f"{name}.json"))


def _cache(cfg: Config) -> list[str]:
    return ["--cache-dir", cfg.cache_dir] if cfg.cache_dir else []


def table1_command(cfg: Config) -> list[str]:
    common = ["run", "--models", ",".join(table1_models(cfg.dry)),
              "--datasets", ",".join(table1_datasets(cfg.dry)),
              "--seeds", "0", "--ds", "both", "--device", cfg.device, "--no-hd95",
              "--no-progress", "--out", cfg.path("table1"), *_cache(cfg)]
    if cfg.dry:  # one process: Ray's start and a worker a trial would cost most of the stage
        return cfg.bench(*common, "--budget", "smoke", "--epochs", "1", "--n", "16",
                         "--widths", "4", "--batch-size", "4", "--backend", "local",
                         "--no-report")
    # 16 trials (unet and wunet have one head: DS off only), 4 at a time on the GPU; see
    # benchmarks/gpu_suite.sh for the arithmetic behind 10 epochs of the short budget
    return cfg.bench(*common, "--budget", "short", "--epochs", "10", "--gpus-per-trial", "0.25")


def memory_command(cfg: Config) -> list[str]:
    """``benchmarks/memory.py``: peak training-step memory of the hand-written, compiled and
    ``recompute="resample"`` and ``"split"`` UNet# (and UNet 3+), bf16 + channels_last (torch.compile's warm-up
    of the recompute graphs would not fit the stage's limit)."""
    if cfg.dry:
        shape = ["--models", "unetsharp", "--size", "16", "--batch", "2",
                 "--widths", "4,8,16,32,64", "--iters", "1", "--reps", "1", "--threads", "1"]
    else:
        shape = ["--models", "unetsharp,unet3p", "--size", "96", "--batch", "128",
                 "--iters", "2", "--reps", "3"]
    return cfg.script("memory.py", "--device", cfg.device, *shape, "--fast",
                      "bf16,channels_last", "--out", cfg.path("memory_2d.md"), "--json",
                      cfg.path("memory_2d.json"))


def plan(cfg: Config) -> dict[str, list[list[str]]]:
    """Each stage's commands, run one after another within its limit."""
    tph = ["--device", cfg.device, "--no-warmup", "--no-progress", *_cache(cfg),
           "--out", cfg.path("trials_per_hour.md"), "--json", cfg.path("trials_per_hour.json")]
    if cfg.dry:
        tph += ["--cpus", "2", "--concurrency", "2", "--trials", "2", "--budget", "smoke",
                "--models", "unet", "--epochs", "1", "--n", "16", "--widths", "4",
                "--batch-size", "4"]  # n 16: the dataset table1 and fast-path cached
    else:
        tph += ["--concurrency", "4", "--trials", "4", "--budget", "short", "--models",
                "unetsharp", "--epochs", "2", "--n", "64"]
    return {
        "speed-2d": [_speed(cfg, "speed_2d", fast=False)],
        "table1": [table1_command(cfg)],
        "compile-warm": [
            _speed(cfg, "compile_warm_2d_unetsharp", fast=True, models=["unetsharp"],
                   compile_only=True),
            _speed(cfg, "compile_warm_3d_unetsharp", fast=True, dims=3, models=["unetsharp"],
                   compile_only=True),
            _speed(cfg, "compile_warm_2d_others", fast=True,
                   models=DRY_MODELS["warm"] if cfg.dry else MODELS[1:], compile_only=True)],
        "fast-path": [cfg.script("fastcheck.py", "--device", cfg.device,
                                 *_cache(cfg), "--out", cfg.path("fastpath.md"),
                                 "--json", cfg.path("fastpath.json"))],
        "speed-2d-fast": [_speed(cfg, "speed_2d_fast", fast=True)],
        "memory-2d": [memory_command(cfg)],
        "speed-3d": [_speed(cfg, "speed_3d", fast=False, dims=3, models=["unetsharp"])],
        "speed-3d-fast": [_speed(cfg, "speed_3d_fast", fast=True, dims=3, models=["unetsharp"])],
        "trials-per-hour": [cfg.script("trials_per_hour.py", *tph)],
    }


#: What each stage must leave in OUT when it is done.
OUTPUTS = {
    "speed-2d": ["speed_2d.md", "speed_2d.json"],
    "table1": ["table1/results.csv"],
    "compile-warm": ["compile_warm_2d_unetsharp.json", "compile_warm_3d_unetsharp.json",
                     "compile_warm_2d_others.json"],
    "fast-path": ["fastpath.md", "fastpath.json"],
    "speed-2d-fast": ["speed_2d_fast.md", "speed_2d_fast.json"],
    "memory-2d": ["memory_2d.md", "memory_2d.json"],
    "speed-3d": ["speed_3d.md", "speed_3d.json"],
    "speed-3d-fast": ["speed_3d_fast.md", "speed_3d_fast.json"],
    "trials-per-hour": ["trials_per_hour.md", "trials_per_hour.json"],
}


def shown(argv: Sequence[str]) -> str:
    """A command as a person would type it (``python3`` for this interpreter)."""
    argv = list(argv)
    if argv and argv[0] == sys.executable:
        argv[0] = "python3"
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    name: str
    status: str = "not run"  # done | cut | failed | not run
    reason: str = ""
    limit_s: float = 0.0
    wall_s: float = 0.0
    commands: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    started: str = ""

    def label(self) -> str:
        if self.status == "cut":
            return f"cut at its {self.limit_s:.0f} s limit"
        return self.status + (f": {self.reason}" if self.reason else "")


#: The process groups of the stages running now (killed if this process is stopped).
_ACTIVE: set[int] = set()


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_stages(signum: int, frame: Any) -> None:
    """SIGTERM / SIGINT / SIGHUP to the suite: end every running stage's group, then exit."""
    for pid in list(_ACTIVE):
        _kill_group(pid)
    raise SystemExit(128 + signum)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_stage(name: str, commands: list[list[str]], limit: float, out: Path, env: dict,
              cwd: Path) -> Outcome:
    """Run ``commands`` one after another, all within ``limit`` seconds (see the module doc)."""
    res = Outcome(name, limit_s=limit, commands=[shown(c) for c in commands],
                  started=_dt.datetime.now().isoformat(timespec="seconds"))
    log_path = out / "logs" / f"{name}.log"
    grace = min(GRACE_S, limit / 5)
    t0 = time.monotonic()
    deadline = t0 + limit
    with open(log_path, "w") as log:
        for argv in commands:
            left = deadline - time.monotonic()
            if left <= grace:
                res.status = "cut"
                break
            log.write(f"$ {shown(argv)}\n")
            log.flush()
            # a process group of its own (not a session: it stays this command's child)
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    process_group=0, stdin=subprocess.DEVNULL)
            _ACTIVE.add(proc.pid)
            try:
                rc = proc.wait(timeout=left - grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGINT)  # Python: KeyboardInterrupt, Ray shuts down
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
                rc = None
            finally:
                _kill_group(proc.pid)  # whatever is left of the group (Ray, compile workers)
                proc.wait()
                _ACTIVE.discard(proc.pid)
            if rc is None:
                res.status = "cut"
                break
            if rc != 0:
                res.status, res.reason = "failed", f"exit {rc}: {_last_line(log_path)}"
                break
        else:
            res.status = "done"
    res.wall_s = time.monotonic() - t0
    res.outputs = [p for p in OUTPUTS.get(name, []) if (out / p).exists()]
    missing = [p for p in OUTPUTS.get(name, []) if p not in res.outputs]
    if res.status == "done" and missing:
        res.status, res.reason = "failed", f"exit 0 but it wrote no {', '.join(missing)}"
    return res


def _env(cfg: Config) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the package
    env = dict(os.environ)
    paths = [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    env.setdefault("RAY_AUTH_MODE", "disabled")  # a throw-away local cluster
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    env["PYTHONUNBUFFERED"] = "1"
    if cfg.cache_dir:
        env["SKIPDSL_CACHE"] = cfg.cache_dir
    if cfg.dry:  # stages share 2 cores: one thread each waits on no descheduled sibling
        env["OMP_NUM_THREADS"] = "1"
    return env


def _device_info(dry: bool) -> dict[str, str]:
    """The machine, read without touching the GPU (this process holds no CUDA context: the
    stages have the whole device); on a GPU machine ``gpu`` is missing when none is seen."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    info = {"torch": torch_version, "python": platform.python_version(),
            "host cores": str(os.cpu_count())}
    smi = None if dry else shutil.which("nvidia-smi")
    if smi:
        try:
            lines = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                                    "--format=csv,noheader"], capture_output=True, text=True,
                                   timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            lines = []
        if lines and len(lines[0].split(",")) == 3:
            name, memory, driver = (x.strip() for x in lines[0].split(","))
            info.update(gpu=name, memory=memory, driver=driver, gpus=str(len(lines)))
    return info


def device_slug(name: str) -> str:
    """``'NVIDIA H200'`` -> ``'nvidia-h200'`` (the results folder's name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def run_suite(cfg: Config, *, only: Sequence[str] | None, limits: dict[str, float],
              started_at: float, command: str, total: float | None = None,
              scale: float = 1.0) -> dict[str, Any]:
    """Run the stages (``only``: those), each within its limit (``limits`` overrides, else its
    budget) x ``scale``, all within ``total`` x ``scale`` seconds of ``started_at``."""
    out = cfg.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    total = (total or (DRY_TOTAL_S if cfg.dry else TOTAL_S)) * scale
    limits = {s.name: limits.get(s.name, s.budget(cfg.dry)) * scale for s in STAGES}
    key = "dry" if cfg.dry else "gpu"
    deadline = started_at + total - SUMMARY_S[key]  # wall clock (time.time())
    commands = plan(cfg)
    env = _env(cfg)
    cwd = Path.cwd()
    previous = _load_suite(out)
    outcomes: dict[str, Outcome] = {}
    selected = [s for s in STAGES if not only or s.name in only]

    warm_env = {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 8) - 6))}
    set_vars = [f"{k}={env[k]}" for k in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED",
                                            "PYTHONUNBUFFERED", "SKIPDSL_CACHE",
                                            "OMP_NUM_THREADS") if k in env]
    lines = [f"# {command}", f"# in {cwd}, with {' '.join(set_vars)}"]
    for s in selected:
        limit = limits[s.name]
        where = f", beside {s.host(cfg.dry)}" if s.host(cfg.dry) else ""
        if s.name == "compile-warm" and not cfg.dry:
            # leave cores to the trials beside it: the compiler's workers take every core
            where += ", " + " ".join(f"{k}={v}" for k, v in warm_env.items())
        lines.append(f"\n# {s.name} (limit {limit:.0f} s{where})")
        lines += [shown(c) for c in commands[s.name]]
    (out / "commands.sh").write_text("\n".join(lines) + "\n")

    for s in selected:
        if s.host(cfg.dry) and any(p.name == s.host(cfg.dry) for p in selected):
            continue  # started with the stage it sits beside
        group = [s] + [b for b in selected if b.host(cfg.dry) == s.name]
        left = deadline - time.time()
        threads = []
        for st in group:
            limit = min(limits[st.name], left)
            if limit < 2:
                outcomes[st.name] = Outcome(st.name, "not run", "the suite's deadline had come")
                continue
            stage_env = {**env, **warm_env} if st.name == "compile-warm" and not cfg.dry else env

            def go(st: Stage = st, limit: float = limit, stage_env: dict = stage_env) -> None:
                outcomes[st.name] = run_stage(st.name, commands[st.name], limit, out,
                                              stage_env, cwd)

            threads.append(threading.Thread(target=go))
            threads[-1].start()
            print(f"[gpu-suite] {st.name}: started, limit {limit:.0f} s", file=sys.stderr,
                  flush=True)
        for t in threads:
            t.join()
        for st in group:
            print(f"[gpu-suite] {st.name}: {outcomes[st.name].label()} "
                  f"({outcomes[st.name].wall_s:.0f} s)", file=sys.stderr, flush=True)

    merged = {}
    for s in STAGES:
        o = outcomes.get(s.name) or previous.get(s.name) or Outcome(s.name, reason="not in --only")
        if s.name not in outcomes and o.status != "not run" and "earlier run" not in o.reason:
            o.reason = (o.reason + "; " if o.reason else "") + "from an earlier run"
        merged[s.name] = o
    return {"command": command, "dry_run": cfg.dry, "device": cfg.device,
            "started": _dt.datetime.fromtimestamp(started_at).isoformat(timespec="seconds"),
            "budget_s": total, "ran": list(outcomes),
            "stages": {k: asdict(v) for k, v in merged.items()}}


def _load_suite(out: Path) -> dict[str, Outcome]:
    try:
        data = json.loads((out / "suite.json").read_text())
        return {k: Outcome(**v) for k, v in data.get("stages", {}).items()}
    except (OSError, ValueError, TypeError):
        return {}


# ---------------------------------------------------------------------------------------------
# the summary

#: REFERENCE.md section 3: the public reference code on one H100, 96x96, batch 128, a train
#: step = forward + backward + Adam. (train img/s, infer img/s, peak GB) per (model, mode).
REFERENCE_SPEED = {
    ("unet", "eager"): (1748, 2922, 5.8),
    ("unetpp", "eager"): (766, 1418, 13.5),
    ("unetsharp", "eager"): (232, 500, 47.8),
    ("unetsharp", "fast"): (716, 5928, 13.2),  # bf16 + channels_last + compile, CUDA graphs
    ("unet3p", "eager"): (160, 389, 45.6),
}
#: The targets for UNet# on the fast path (2D, 96x96, batch 128).
TARGETS = {"train": 1000.0, "infer": 8000.0, "peak_gb": 12.0}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def _n(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None or v != v else fmt.format(v)


def _ratio(d: dict) -> str:
    return _n(d.get("ratio"), "{:.2f}")


def _gb(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def _speed_rows(out: Path) -> list[tuple[str, str, dict]]:
    """(table label, mode, row) of every measured speed row."""
    rows = []
    for stem, label, mode in (("speed_2d", "2D", "eager"), ("speed_2d_fast", "2D", "fast"),
                              ("speed_3d", "3D", "eager"), ("speed_3d_fast", "3D", "fast")):
        data = _read_json(out / f"{stem}.json") or {}
        for r in data.get("rows", []):
            rows.append((label, mode, r))
    return rows


def _targets(rows: list[tuple[str, str, dict]]) -> list[str]:
    fast = next((r for label, mode, r in rows
                 if label == "2D" and mode == "fast" and r["model"] == "unetsharp"), None)
    ref = REFERENCE_SPEED[("unetsharp", "fast")]
    got = {"train": (fast or {}).get("train", {}).get("compiled"),
           "infer": (fast or {}).get("infer", {}).get("compiled"),
           "peak_gb": _gb((fast or {}).get("train_mb", {}).get("compiled"))}
    names = {"train": ("train img/s", ">= 1,000", "{:,.0f}"),
             "infer": ("infer img/s", ">= 8,000", "{:,.0f}"),
             "peak_gb": ("peak GB (train step)", "<= 12", "{:.1f}")}
    cells = []
    for i, (k, (label, target, fmt)) in enumerate(names.items()):
        v = got[k]
        met = "-" if v is None else (
            "yes" if (v <= TARGETS[k] if k == "peak_gb" else v >= TARGETS[k]) else "no")
        cells.append([label, target, _n(v, fmt), fmt.format(ref[i]), met])
    lines = md_table(["figure", "target", "measured (compiled, fast)", "REFERENCE.md §3 (public "
                      "code, H100, bf16 + channels_last + compile)", "met"], cells)
    if fast is None:
        lines += ["", "No UNet# fast row yet (speed-2d-fast did not reach it): the targets are "
                  "still owed."]
    return lines


def _speed_table(rows: list[tuple[str, str, dict]]) -> list[str]:
    head = ["dims", "model", "mode", "train img/s", "hand", "ratio", "infer img/s", "hand",
            "ratio", "peak GB train", "hand", "REFERENCE §3 train / infer / GB", "fast rel diff"]
    table = []
    for label, mode, r in rows:
        tr, inf, mb = r.get("train", {}), r.get("infer", {}), r.get("train_mb", {})
        ref = REFERENCE_SPEED.get((r["model"], mode)) if label == "2D" else None
        refs = f"{ref[0]:,} / {ref[1]:,} / {ref[2]}" if ref else "-"
        diff = r.get("fast_diff") or {}
        fd = _n(diff.get("compiled"), "{:.1e}") if diff else "-"
        cells = [label, r["model"], mode, _n(tr.get("compiled")), _n(tr.get("hand")), _ratio(tr),
                 _n(inf.get("compiled")), _n(inf.get("hand")), _ratio(inf),
                 _n(_gb(mb.get("compiled")), "{:.1f}"), _n(_gb(mb.get("hand")), "{:.1f}"),
                 refs, fd]
        if r.get("error"):
            cells[3] = r["error"]
        table.append(cells)
    return md_table(head, table)


def _table1(out: Path, dry: bool) -> list[str]:
    store_dir = out / "table1"
    if not (store_dir / "trials").is_dir():
        return ["No trial finished."]
    from skipdsl.bench import report, store

    try:
        if not (store_dir / "report.md").exists():  # a cut or --no-report run
            report.build_report(store_dir, plots=False)
        results = store.load_results(store_dir)
        cases = store.load_cases(store_dir, results)
        table = report.table1(results, cases, table1_datasets(dry))
    except Exception as e:  # noqa: BLE001 - the summary must be written whatever happened
        return [f"Could not read the trials: {type(e).__name__}: {e}"]
    ok = sum(r.get("status") == "ok" for r in results)
    planned = _planned_table1(dry)
    budgets = sorted({str(r.get("budget")) for r in results})
    return [f"{ok} of {planned} trials ok ({len(results) - ok} failed); budget "
            f"{', '.join(budgets)}; test IoU (%) ± std over test cases (one seed). Full report: "
            "`table1/report.md`.", "", table]


def _planned_table1(dry: bool) -> int:
    from skipdsl.bench import runner

    return len(runner.plan(table1_models(dry), table1_datasets(dry), seeds=[0],
                           deep_supervision="both"))


def _fastpath(out: Path) -> list[str]:
    data = _read_json(out / "fastpath.json")
    if not data:
        return ["No check finished."]
    return md_table(["check", "status", "max rel diff", "tolerance", "detail"],
                    [[c["name"], c["status"], _n(c["max_rel_diff"], "{:.1e}"),
                      _n(c["tolerance"], "{:g}"), c["detail"]] for c in data["checks"]])


def _trials_per_hour(out: Path) -> list[str]:
    data = _read_json(out / "trials_per_hour.json")
    if not data:
        return ["No setting finished."]
    lines = md_table(["setting", "GPU / trial", "trials ok", "wall s", "trials / hour"],
                     [[r["setting"], f"{r['gpus_per_trial']:g}", f"{r['ok']}/{r['trials']}",
                       f"{r['wall_s']:.1f}", _n(r["trials_per_hour"], "{:.1f}")]
                      for r in data["rows"]])
    lines += ["", f"Ratio {data['concurrency']} sharing / one at a time: "
              f"{_n(data.get('ratio'), '{:.2f}')} ({', '.join(data['trials'])}; budget "
              f"{data['budget']}). See `trials_per_hour.md`."]
    return lines


def _compile_warm(out: Path) -> list[str]:
    parts = []
    for stem in ("compile_warm_2d_unetsharp", "compile_warm_3d_unetsharp",
                 "compile_warm_2d_others"):
        data = _read_json(out / f"{stem}.json") or {}
        for r in data.get("rows", []):
            s = r.get("compile_s") or {}
            parts.append(f"{r['model']} {data.get('dims')}D {_n(s.get('compiled'), '{:.0f}')} / "
                         f"{_n(s.get('hand'), '{:.0f}')} s")
    if not parts:
        return ["No model compiled."]
    return ["Cold first step (compile, CUDA-graph capture) per model, compiled / hand-written: "
            + "; ".join(parts) + "."]


def _memory(out: Path) -> list[str]:
    data = _read_json(out / "memory_2d.json")
    if not data or not data.get("rows"):
        return ["No model measured."]
    kinds = ("hand", "compiled", "resample", "split")
    table = []
    for r in data["rows"]:
        if r.get("error"):
            table.append([r["model"], r["error"]] + ["-"] * 12)
            continue
        mb, ms = r["peak_mb"], r["step_ms"]
        grads = r["grad_diff"]
        table.append([r["model"]] + [_n(_gb(mb[k]), "{:.2f}") for k in kinds]
                     + [f"{mb[k] / mb['hand']:.2f}" for k in kinds[2:]]
                     + [_n(data["batch"] * 1e3 / ms[k]) for k in kinds]
                     + [f"{r['time_ratio'][k]:.2f}" for k in kinds[2:]]
                     + [", ".join(f"{k} " + ("exact" if grads[k] == 0 else _n(grads[k], "{:.1e}"))
                                  for k in kinds[2:])])
    lines = [f"`benchmarks/memory.py`, batch {data['batch']}, {data['size']}x{data['size']}, fast path "
             f"{data['fast']}: peak GB of one training step above what was allocated before "
             "it, train img/s, step time / the hand-written one's, and the gradients against "
             "compiled's (largest difference / largest gradient). resample: "
             "recompute='resample'; split: recompute='split'. Target (UNet#, the fast path with "
             "recompute): <= 12 GB at >= 1,000 train img/s.", ""]
    return lines + md_table(["model", "peak GB hand", "compiled", "resample", "split",
                             "resample / hand", "split / hand", "img/s hand", "compiled",
                             "resample", "split", "time ratio resample", "time ratio split",
                             "grads"], table)


#: GPU figures owed beyond the suite's 8 minutes: (what, command). The summary lists them so
#: that whoever holds a GPU for longer knows what to run next.
LONG_RUNS: tuple[tuple[str, str], ...] = (
    ("nnU-Net's full recipe: PlainConvUNet against the UNet++, UNet 3+ and UNet# skip schemes "
     "inside nnU-Net v2, 2D, 1000 epochs x 250 iterations, 5 folds (the CPU run: "
     "results/nnunet-cpu/)",
     "python benchmarks/nnunet_compare.py --device cuda --epochs 1000 --iterations 250 "
     "--folds 0,1,2,3,4 --n 400 --out results/nnunet-gpu"),
    ("Table 1 at the short budget, every dataset, 3 seeds, at equal size",
     "bench run --models unet,wunet,unetpp,unet3p,unetsharp --datasets all --seeds 0,1,2 "
     "--ds both --budget short --params unetsharp --gpus-per-trial 0.25 "
     "--out results/gpu-zoo-matched"),
    ("The equal-size topology search on a GPU (TPE + successive halving, skip5)",
     "skipdsl search run --strategy halving --dataset nuclei2d --budget short --trials 400 "
     "--backend ray --gpus-per-trial 0.25 --out results/search/halving-gpu"),
)


def summary_markdown(out: Path, suite: dict, info: dict[str, str]) -> str:
    dry = suite["dry_run"]
    stages = suite["stages"]
    wall = time.time() - _dt.datetime.fromisoformat(suite["started"]).timestamp()
    budget = wall_budget(dry)
    title = ("GPU suite, CPU dry run (toy sizes: no figure here means anything)" if dry
             else f"GPU suite: {info.get('gpu', '?')}")
    lines = [f"# {title}", "",
             f"Date: {suite['started']}; wall {wall:.0f} s of the {suite['budget_s']} s budget.",
             f"Command: `{suite['command']}` (every stage's commands: `commands.sh`; output "
             "of each: `logs/<stage>.log`).", "",
             "- " + "; ".join(f"{k} {v}" for k, v in info.items()), "",
             "## Stages", ""]
    lines += md_table(["stage", "what", "limit s", "wall s", "status", "outputs"], [
        [s.name, s.what + (f" (beside {s.host(dry)})" if s.host(dry) else ""),
         f"{stages[s.name]['limit_s']:.0f}", f"{stages[s.name]['wall_s']:.0f}",
         Outcome(**stages[s.name]).label(), ", ".join(stages[s.name]["outputs"]) or "-"]
        for s in STAGES])
    lines += ["", "Budget on paper (s): " + " + ".join(f"{k} {v:g}" for k, v in budget.items()
                                                      if k != "total")
              + f" = {budget['total']:g} <= {suite['budget_s']:g}.", ""]
    rows = _speed_rows(out)
    lines += ["## Targets: UNet# on the fast path, 2D 96x96 batch 128", "", *_targets(rows), "",
              "## Speed against REFERENCE.md section 3", "",
              "img/s of the compiled skipdsl model, then the hand-written one "
              "(benchmarks/reference_models.py) and their ratio (> 1: compiled faster); peak "
              "GB: memory one train step needs beyond what was allocated before it "
              "(torch.cuda.max_memory_allocated; weights, gradients kept and Adam state not "
              "counted: 0.2 GB for UNet#). REFERENCE.md §3 is the public reference code on an "
              "H100 (fast: bf16 + channels_last + compile, mode reduce-overhead). fast rel "
              "diff: the compiled model's fast-path inference vs its eager fp32 forward.", "",
              *_speed_table(rows), "",
              "## Training-step memory: recompute", "", *_memory(out), "",
              "## Fast path vs eager fp32", "", *_fastpath(out), "",
              "## Table 1, reduced", "", *_table1(out, dry), "",
              "Table 1 ran beside compile-warm and fast-path on the same GPU: its IoU is "
              "unaffected, its images/s and train seconds are not speed figures.", "",
              "## Trials per GPU-hour", "", *_trials_per_hour(out), "",
              "## Compile warm-up", "", *_compile_warm(out), "",
              "## Owed beyond this suite (longer GPU runs)", "",
              *md_table(["what", "command"], [[w, f"`{c}`"] for w, c in LONG_RUNS]), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="Every owed GPU figure in one run of at "
                                "most 8 minutes on one GPU (--dry-run: toy sizes on CPU).")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage at toy size on CPU, under 3 minutes (CI)")
    p.add_argument("--out", default=None,
                   help="output folder (default results/gpu/<device>; dry run: "
                        "runs/gpu-suite-dry-run)")
    p.add_argument("--only", default=None, help="comma list of stages to run (the summary "
                   "keeps the other stages' outcomes from OUT/suite.json)")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                   help="another time limit for a stage (repeatable)")
    p.add_argument("--total", type=float, default=None,
                   help=f"the suite's deadline in seconds after its start (default {TOTAL_S}; "
                        f"dry run {DRY_TOTAL_S})")
    p.add_argument("--limit-scale", type=float, default=1.0,
                   help="multiply every limit and the deadline (a slow or loaded machine)")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default skipdsl's)")
    p.add_argument("--started-at", type=float, default=None,
                   help="epoch seconds the suite's wall time counts from (the shell script's "
                        "start, so its set-up counts); default now")
    a = p.parse_args(argv)
    names = [s.name for s in STAGES]
    a.only = [x.strip() for x in (a.only or "").split(",") if x.strip()] or None
    for x in a.only or []:
        if x not in names:
            p.error(f"unknown stage '{x}'; valid: {', '.join(names)}")
    limits = {}
    for item in a.limit:
        stage, _, sec = item.partition("=")
        if stage not in names or not re.fullmatch(r"\d+(\.\d+)?", sec):
            p.error(f"--limit takes STAGE=SECONDS with a stage of {', '.join(names)}; "
                    f"found {item!r}")
        limits[stage] = float(sec)
    a.limits = limits
    return a


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/gpu_suite.py") -> int:
    """CLI entry (``python benchmarks/gpu_suite.py``; benchmarks/gpu_suite.sh runs it). Exit
    status 0 when every stage that ran is done."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv, prog)
    started = a.started_at or time.time()
    device = "cpu" if a.dry_run else "cuda"
    info = _device_info(a.dry_run)
    if device == "cuda" and "gpu" not in info:
        print(f"{prog}: nvidia-smi shows no GPU here; --dry-run runs the suite on CPU at toy "
              "size", file=sys.stderr)
        return 2
    default = ("runs/gpu-suite-dry-run" if a.dry_run
               else f"results/gpu/{device_slug(info['gpu'])}")
    out = Path(a.out or default).resolve()
    cfg = Config(out=out, dry=a.dry_run, device=device, cache_dir=a.cache_dir)
    command = shlex.join([*shlex.split(prog), *argv])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_stages)
    suite = run_suite(cfg, only=a.only, limits=a.limits, started_at=started, command=command,
                      total=a.total, scale=a.limit_scale)
    from skipdsl.fileio import atomic_write_text

    atomic_write_text(out / "suite.json", json.dumps(suite, indent=1))
    atomic_write_text(out / "summary.md", summary_markdown(out, suite, info))
    print(f"[gpu-suite] wrote {out / 'summary.md'}", file=sys.stderr)
    return 0 if all(suite["stages"][n]["status"] == "done" for n in suite["ran"]) else 1


if __name__ == "__main__":
    sys.exit(main())
