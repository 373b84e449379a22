"""Trials per device-hour: the same K trials run one at a time on the device, then N at a time.

    python benchmarks/trials_per_hour.py --device cuda --concurrency 4 --trials 8 \
        --budget short --out results/trials_per_hour_cuda.md --json tph.json
    python benchmarks/trials_per_hour.py --device cpu --concurrency 2 --trials 4 --budget smoke \
        --models unet,unetpp --epochs 2 --out results/trials_per_hour_cpu.md

The K trials are the bench sweep's own (:func:`skipdsl.bench.runner.plan`: zoo models or spec
files on one dataset, round-robin over the models, further seeds when K exceeds them), run with
:func:`skipdsl.bench.runner.run_sweep` on Ray Tune, each setting into a folder of its own, on
one Ray started once for all settings (its start-up is in neither figure):

- one at a time: CUDA ``gpus_per_trial=1``; CPU ``cpus_per_trial`` = every CPU of the device
- N sharing: CUDA ``gpus_per_trial=1/N`` (the runner also caps each trial's share of the GPU
  memory at 1/N); CPU ``cpus_per_trial`` = CPUs / N (torch threads: that, rounded up)

On CUDA every trial gets ``--cpus-per-trial`` CPUs (default 1, as ``bench run``) in both
settings, and Ray sees one GPU. Trials / hour = trials finished ``ok`` / wall seconds x 3600;
the ratio is N sharing / one at a time. Repetition r runs the two settings in the order
(one at a time, N sharing) when r is odd and reversed when r is even, so a drift in clocks or
in the machine's other load reaches both. Before timing, the dataset is generated into its
cache and one tiny untimed trial warms Ray Tune up (``--no-warmup`` skips it).

Memory is sampled every ``--sample-interval`` seconds from outside the trials, on the Ray trial
processes of this run (``ray::ImplicitFunc`` descendants of this process, one per trial):
peak MiB / trial is the largest per-process peak (CUDA: ``nvidia-smi --query-compute-apps``
used memory, CUDA context and allocator cache included; CPU: the kernel's peak resident set,
``VmHWM``); peak MiB all is the largest total at one instant (CUDA: device memory in use,
``torch.cuda.mem_get_info``, minus what was in use before the sweep; CPU: the sum of the
trial processes' resident sets).

``--out`` (markdown) and ``--json`` are rewritten after every setting, so a run stopped part
way keeps the settings it finished.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

import skipdsl  # noqa: E402
from skipdsl.bench import runner, store  # noqa: E402
from skipdsl.fileio import atomic_write_text  # noqa: E402
from skipdsl.raytools import cpu_count as _cpu_count  # noqa: E402
from skipdsl.raytools import LOCAL_RAY_ENV  # noqa: E402

#: The folder holding the skipdsl package (a checkout, or site-packages): the Ray workers'
#: PYTHONPATH, as :func:`skipdsl.raytools.ray_session` gives them.
ROOT = Path(skipdsl.__file__).resolve().parents[1]
PROG = "python benchmarks/trials_per_hour.py"

__all__ = ["main", "parse_args", "settings", "build_trials", "measure", "markdown", "to_json",
           "Setting", "Row", "Measurement", "TrialMemory", "HEADER"]
TRIAL_PROCESS = "ray::ImplicitFunc"  # Ray's process title of a function trainable's actor


# ---------------------------------------------------------------------------------------------
# configuration

def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_args(argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    from skipdsl.train.trainer import BUDGETS

    p = argparse.ArgumentParser(
        prog=prog or PROG,
        description="Trials per device-hour of a bench sweep: one trial at a time on the "
                    "device, against N trials sharing it (Ray Tune fractional resources).")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default cuda when torch sees one, else cpu")
    p.add_argument("--concurrency", "-N", type=int, default=None,
                   help="trials sharing the device (default cuda 4, cpu 2)")
    p.add_argument("--trials", "-K", type=int, default=8, help="trials per setting (default 8)")
    p.add_argument("--budget", default="short", choices=list(BUDGETS),
                   help="trainer budget of every trial (default short)")
    p.add_argument("--dataset", default="nuclei2d")
    p.add_argument("--models", default="all",
                   help="comma-separated zoo names or YAML spec paths, or 'all' (default)")
    p.add_argument("--deep-supervision", "--ds", dest="ds", default="off", choices=["off", "on"])
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--n", type=int, default=None, help="override the budget's images per set")
    p.add_argument("--widths", default=None, help="override widths: a base (8) or a list")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cpus", type=int, default=None,
                   help="CPUs Ray may use (default: every core this process may run on); on "
                        "--device cpu they are the device the trials share")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CUDA only: CPUs of each trial in both settings (default 1)")
    p.add_argument("--reps", type=int, default=1,
                   help="repetitions of the pair; the order alternates (default 1)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one tiny untimed trial before timing (default on)")
    p.add_argument("--sample-interval", type=float, default=0.25,
                   help="seconds between memory samples (default 0.25)")
    p.add_argument("--data-root", default=None, help="folder of real datasets")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default skipdsl's)")
    p.add_argument("--workdir", default=None,
                   help="folder for the sweeps' stores (default: a temporary one, deleted)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    p.add_argument("--out", default=None,
                   help="write the markdown report here (rewritten after every setting)")
    p.add_argument("--json", default=None,
                   help="write the figures as JSON here (rewritten after every setting)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if _cuda_available() else "cpu"
    if a.device == "cuda" and not _cuda_available():
        p.error("--device cuda but torch sees no CUDA device")
    if a.concurrency is None:
        a.concurrency = 4 if a.device == "cuda" else 2
    if a.concurrency < 2:
        p.error(f"--concurrency must be at least 2 (trials sharing the device), got "
                f"{a.concurrency}")
    if a.trials < 1 or a.reps < 1:
        p.error("--trials and --reps must be at least 1")
    if a.cpus is not None and a.cpus < 1:
        p.error(f"--cpus must be at least 1, got {a.cpus}")
    a.cpus = a.cpus or _cpu_count()
    if a.device == "cuda" and a.cpus_per_trial * a.concurrency > a.cpus:
        p.error(f"{a.concurrency} trials x {a.cpus_per_trial:g} CPUs exceed the {a.cpus:g} CPUs "
                "Ray may use: lower --cpus-per-trial or raise --cpus")
    if a.widths is not None:
        parts = [int(w) for w in _csv(a.widths)]
        a.widths = parts[0] if len(parts) == 1 else parts
    a.models = None if a.models in ("all", "") else _csv(a.models)
    return a


@dataclass(frozen=True)
class Setting:
    """How the K trials share the device."""

    name: str
    concurrency: int
    cpus_per_trial: float
    gpus_per_trial: float

    @property
    def slug(self) -> str:
        return "one" if self.concurrency == 1 else f"shared{self.concurrency}"


def _share(total: float, n: int) -> float:
    """``total / n`` rounded down to Ray's resource precision (1e-4), so n of them fit."""
    return math.floor(total / n * 1e4) / 1e4


def settings(args: argparse.Namespace) -> tuple[Setting, Setting]:
    """(one at a time, N sharing) for the device."""
    n = args.concurrency
    if args.device == "cuda":
        c = args.cpus_per_trial
        return (Setting("one at a time", 1, c, 1.0),
                Setting(f"{n} sharing", n, c, _share(1.0, n)))
    return (Setting("one at a time", 1, args.cpus, 0.0),
            Setting(f"{n} sharing", n, _share(args.cpus, n), 0.0))


def overrides(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "n": args.n, "widths": args.widths,
            "batch_size": args.batch_size, "device": args.device,
            "data_root": args.data_root, "cache_dir": args.cache_dir}


def build_trials(args: argparse.Namespace) -> list[runner.Trial]:
    """The first K trials of models x seeds, taken round-robin over the models."""
    from skipdsl.spec import zoo_names

    models = args.models or zoo_names()
    trials: list[runner.Trial] = []
    seed = 0
    while len(trials) < args.trials:
        trials += runner.plan(models, [args.dataset], seeds=[seed], deep_supervision=args.ds,
                              budget=args.budget, overrides=overrides(args))
        seed += 1
    return trials[:args.trials]


def _fresh(trials: Sequence[runner.Trial]) -> list[runner.Trial]:
    """Copies: ``run_sweep`` writes each setting's threads / GPU share into the configs."""
    return [runner.Trial(t.key, t.label, copy.deepcopy(t.config)) for t in trials]


def prepare_data(args: argparse.Namespace) -> None:
    """Generate (or read) the dataset into its cache, so no timed trial pays for it."""
    from skipdsl.data import load_dataset
    from skipdsl.train.common import plan_trial

    n = plan_trial({"dataset": args.dataset, "budget": args.budget, "n": args.n,
                    "data_root": args.data_root}).n
    load_dataset(args.dataset, root=args.data_root, seed=0, n=n, cache_dir=args.cache_dir)


# ---------------------------------------------------------------------------------------------
# memory of the trial processes

def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process; ``None`` once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in brackets may hold spaces
    return int(fields[1]), int(fields[19])


def _status_kib(pid: int, *keys: str) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(m.group(1)) for k in keys
            if (m := re.search(rf"^{k}:\s+(\d+) kB", text, re.M))}


class TrialMemory:
    """Samples the memory of this process's Ray trial processes on a background thread.

    ``peak_per_trial`` (MiB): the largest peak of one trial process; ``peak_total`` (MiB): the
    largest total at one sample. Either is ``None`` when it could not be measured.
    """

    def __init__(self, device: str, interval: float) -> None:
        self.device, self.interval = device, interval
        self.me = os.getpid()
        self.ours: dict[tuple[int, int], bool] = {}
        self.per_pid: dict[int, float] = {}
        self.total: float | None = None
        self.base_used = 0.0
        self.smi = shutil.which("nvidia-smi") if device == "cuda" else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TrialMemory":
        if self.device == "cuda":
            self.base_used = self._device_used()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_per_trial(self) -> float | None:
        return max(self.per_pid.values()) if self.per_pid else None

    @property
    def peak_total(self) -> float | None:
        return self.total

    def _descends(self, pid: int) -> bool:
        """Whether ``pid`` descends from this process (Ray's raylet starts the workers).

        Answers are cached by (pid, start time), so a reused process id is looked up anew.
        """
        chain, p, found = [], pid, False
        while p > 1:
            if p == self.me:
                found = True
                break
            st = _stat(p)
            if st is None:
                break
            key = (p, st[1])
            if key in self.ours:
                found = self.ours[key]
                break
            chain.append(key)
            p = st[0]
        for k in chain:
            self.ours[k] = found
        return found

    def trial_pids(self) -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                title = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(TRIAL_PROCESS.encode()) and self._descends(int(d.name)):
                pids.append(int(d.name))
        return pids

    @staticmethod
    def _device_used() -> float:
        import torch

        free, total = torch.cuda.mem_get_info(0)
        return (total - free) / 2**20

    def _gpu_per_pid(self) -> dict[int, float]:
        if not self.smi:
            return {}
        try:
            out = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        used = {}
        for line in out.splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                used[int(parts[0])] = float(parts[1])
        return used

    def sample(self) -> None:
        pids = self.trial_pids()
        if self.device == "cuda":
            total = self._device_used() - self.base_used
            used = self._gpu_per_pid()
            for pid in pids:
                if pid in used:
                    self.per_pid[pid] = max(self.per_pid.get(pid, 0.0), used[pid])
        else:
            total = 0.0
            for pid in pids:
                kib = _status_kib(pid, "VmHWM", "VmRSS")
                if "VmHWM" in kib:
                    self.per_pid[pid] = max(self.per_pid.get(pid, 0.0), kib["VmHWM"] / 1024)
                total += kib.get("VmRSS", 0) / 1024
        if pids:
            self.total = max(self.total or 0.0, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# ---------------------------------------------------------------------------------------------
# measuring

@dataclass
class Row:
    """One setting of one repetition."""

    rep: int
    setting: Setting
    trials: int
    ok: int
    failed: list[str]
    wall_s: float
    mean_train_s: float
    peak_trial_mib: float | None
    peak_total_mib: float | None
    load_before: float

    @property
    def trials_per_hour(self) -> float:
        return self.ok / self.wall_s * 3600 if self.wall_s > 0 else float("nan")


@dataclass
class Measurement:
    rows: list[Row]
    trials: list[runner.Trial]
    settings: tuple[Setting, Setting]
    ray_resources: dict[str, float]
    device: str
    versions: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    def rate(self, s: Setting, rep: int | None = None) -> float:
        """Trials per hour of a setting: ok trials / wall seconds, pooled over repetitions."""
        mine = [r for r in self.rows if r.setting == s and (rep is None or r.rep == rep)]
        wall = sum(r.wall_s for r in mine)
        return sum(r.ok for r in mine) / wall * 3600 if wall > 0 else float("nan")

    def ratio(self, rep: int | None = None) -> float:
        """N sharing / one at a time, in trials per hour (``rep=None``: pooled)."""
        one, shared = self.settings
        a = self.rate(one, rep)
        return self.rate(shared, rep) / a if a > 0 else float("nan")


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"{torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB "
                f"(CUDA {torch.version.cuda})")
    cpu = platform.processor() or platform.machine()
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return f"{cpu}, {_cpu_count()} cores available to this process ({os.cpu_count()} in all)"


def _versions() -> dict[str, str]:
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__}


def start_ray(args: argparse.Namespace, verbose: bool = False) -> bool:
    """A local Ray shared by every sweep of the run (so its start-up is timed in neither).

    ``run_sweep`` uses a Ray that is already initialised; its workers get this checkout on
    ``PYTHONPATH``, as the runner's own Ray gives them. Returns whether this call started it.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p),
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1 if args.device == "cuda" else 0,
             include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING,
             runtime_env={"env_vars": env})
    return True


def _loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def run_setting(trials: Sequence[runner.Trial], setting: Setting, rep: int, out: Path,
                args: argparse.Namespace, console=None) -> Row:
    load = _loadavg()[0]
    with TrialMemory(args.device, args.sample_interval) as mem:
        t0 = time.perf_counter()
        runner.run_sweep(_fresh(trials), out, backend="ray",
                         cpus_per_trial=setting.cpus_per_trial,
                         gpus_per_trial=setting.gpus_per_trial,
                         progress=not args.no_progress, console=console)
        wall = time.perf_counter() - t0
    results = store.load_results(out)
    ok = [r for r in results if r.get("status") == "ok"]
    train_s = [float(r.get("train_seconds") or 0.0) for r in ok]
    return Row(rep=rep, setting=setting, trials=len(trials), ok=len(ok),
               failed=[f"{r.get('model')}: {r.get('reason', '')}" for r in results
                       if r.get("status") != "ok"],
               wall_s=wall, mean_train_s=sum(train_s) / len(train_s) if train_s else float("nan"),
               peak_trial_mib=mem.peak_per_trial, peak_total_mib=mem.peak_total,
               load_before=load)


def warmup(trials: Sequence[runner.Trial], args: argparse.Namespace, out: Path,
           one: Setting) -> None:
    """One tiny trial of the first model through Ray Tune (imports, Tune set-up), untimed."""
    t = trials[0]
    config = {**copy.deepcopy(t.config), "epochs": 1, "widths": 4, "hd95": False,
              "throughput_iters": 1, "samples": 0}
    warm = runner.Trial(t.key + "-warmup", t.label + " (warm-up)", config)
    runner.run_sweep([warm], out, backend="ray", cpus_per_trial=one.cpus_per_trial,
                     gpus_per_trial=one.gpus_per_trial, progress=False)


def measure(args: argparse.Namespace, log: Callable[[str], None] = lambda s: None,
            console=None, on_row: Callable[[Measurement], None] | None = None) -> Measurement:
    """Run the K trials in both settings (``args.reps`` times, alternating the order);
    ``on_row(m)`` is called after each setting (to save what finished so far)."""
    trials = build_trials(args)
    one, shared = settings(args)
    log(f"{len(trials)} trials: {', '.join(t.label for t in trials)}")
    log(f"settings: {one.name} (CPU {one.cpus_per_trial:g}, GPU {one.gpus_per_trial:g} per "
        f"trial); {shared.name} (CPU {shared.cpus_per_trial:g}, GPU {shared.gpus_per_trial:g})")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tph-"))
    if work.is_dir() and any(work.iterdir()) and args.workdir:
        # run_sweep skips trials already in a store: a reused folder would time nothing
        raise ValueError(f"--workdir {work} is not empty; give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    prepare_data(args)
    m = Measurement(rows=[], trials=trials, settings=(one, shared), ray_resources={},
                    device=device_name(args.device), versions=_versions(),
                    load_before=_loadavg())
    started = start_ray(args)
    try:
        import ray

        m.ray_resources = {k: v for k, v in ray.cluster_resources().items()
                           if k in ("CPU", "GPU")}
        if args.warmup:
            log("warm-up: one tiny untimed trial")
            warmup(trials, args, work / "warmup", one)
        for rep in range(1, args.reps + 1):
            order = (one, shared) if rep % 2 else (shared, one)
            for s in order:
                log(f"rep {rep}: {s.name}")
                row = run_setting(trials, s, rep, work / f"rep{rep}-{s.slug}", args, console)
                log(f"rep {rep}: {s.name}: {row.ok}/{row.trials} ok in {row.wall_s:.1f} s = "
                    f"{row.trials_per_hour:.1f} trials/hour")
                m.rows.append(row)
                if on_row:
                    m.load_after = _loadavg()
                    on_row(m)
    finally:
        if started:
            import ray

            ray.shutdown()
        if not args.workdir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.workdir:
            log(f"kept the sweeps' stores in {work}")
    m.load_after = _loadavg()
    if args.device == "cuda" and not any(r.peak_trial_mib for r in m.rows):
        m.notes.append("per-trial GPU memory: nvidia-smi listed none of the trial processes "
                       "(no nvidia-smi, or a container with its own process ids)")
    return m


# ---------------------------------------------------------------------------------------------
# report

def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _load(t: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in t)


HEADER = ["rep", "setting", "at once", "CPU / trial", "GPU / trial", "trials ok", "wall s",
          "trials / hour", "mean train s / trial", "peak MiB / trial", "peak MiB all",
          "load (1 min) at start"]


def table_rows(m: Measurement) -> list[list[str]]:
    return [[str(r.rep), r.setting.name, str(r.setting.concurrency),
             f"{r.setting.cpus_per_trial:g}", f"{r.setting.gpus_per_trial:g}",
             f"{r.ok}/{r.trials}", _fmt(r.wall_s), _fmt(r.trials_per_hour),
             _fmt(r.mean_train_s), _fmt(r.peak_trial_mib, 0), _fmt(r.peak_total_mib, 0),
             f"{r.load_before:.2f}"] for r in m.rows]


def observations(m: Measurement, args: argparse.Namespace) -> list[str]:
    """What the figures say about their own reliability."""
    notes = []
    one, shared = m.settings
    cores = _cpu_count()
    busy = max([m.load_before[0], m.load_after[0], *(r.load_before for r in m.rows)])
    if busy > cores:
        notes.append(f"the machine was loaded (1-minute load average up to {busy:.1f} on "
                     f"{cores} cores): the timings include other processes' work")

    def train_s(s: Setting) -> float:
        v = [r.mean_train_s for r in m.rows if r.setting == s and r.mean_train_s == r.mean_train_s]
        return sum(v) / len(v) if v else float("nan")

    a, b = train_s(one), train_s(shared)
    if a > b:
        what = ("its extra CPU threads (a multi-threaded trial on busy cores waits for its "
                "slowest thread)" if args.device == "cpu" else "the whole GPU")
        notes.append(f"a trial trained faster while sharing the device than alone (mean train "
                     f"s {b:.1f} vs {a:.1f}): one trial at a time does not profit from {what}, "
                     "so the ratio measures that as much as sharing")
    return notes


def markdown(m: Measurement, args: argparse.Namespace, command: str) -> str:
    one, shared = m.settings
    per = "GPU" if args.device == "cuda" else "CPU device"
    reps = sorted({r.rep for r in m.rows})
    orders = []
    for rep in reps:
        names = [r.setting.name for r in m.rows if r.rep == rep]
        orders.append(f"rep {rep}: {', then '.join(names)}")
    ov = {k: v for k, v in overrides(args).items()
          if v is not None and k not in ("device", "data_root", "cache_dir")}
    mem = ("peak MiB / trial: largest `nvidia-smi` used memory of one trial process (CUDA "
           "context and allocator cache included); peak MiB all: device memory in use "
           "(`torch.cuda.mem_get_info`) above what was in use before the sweep"
           if args.device == "cuda" else
           "peak MiB / trial: largest peak resident set (`VmHWM`) of one trial process "
           "(Python, torch and Ray included); peak MiB all: largest sum of the trial "
           "processes' resident sets at one sample")
    lines = [f"# Trials per {per}-hour: one at a time vs {shared.concurrency} sharing "
             f"({args.device})", "",
             f"Command: `{command}`", "",
             f"Date: {_dt.datetime.now().isoformat(timespec='seconds')}", "",
             f"- device: {m.device}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
             f"- trials (K = {len(m.trials)}, dataset {args.dataset}, budget {args.budget}"
             + (f", overrides {ov}" if ov else "") + "): "
             + ", ".join(t.label for t in m.trials),
             "- Ray: one local Ray for every setting, "
             + ", ".join(f"{v:g} {k}" for k, v in m.ray_resources.items())
             + f"; warm-up trial: {'yes' if args.warmup else 'no'}",
             f"- {one.name}: {one.cpus_per_trial:g} CPU, {one.gpus_per_trial:g} GPU per "
             f"trial; {shared.name}: {shared.cpus_per_trial:g} CPU, "
             f"{shared.gpus_per_trial:g} GPU per trial (torch threads: CPUs rounded up)",
             "- order: " + "; ".join(orders),
             f"- load average (1 / 5 / 15 min): before {_load(m.load_before)}, "
             f"after {_load(m.load_after)}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c) + " |" for c in table_rows(m)]
    lines += ["", f"**Trials / hour: {one.name} {_fmt(m.rate(one))}, {shared.name} "
                  f"{_fmt(m.rate(shared))}; ratio {shared.name} / {one.name} = "
                  f"{_fmt(m.ratio(), 2)}**"
              + (" (per repetition: " + ", ".join(f"{_fmt(m.ratio(r), 2)}" for r in reps) + ")"
                 if len(reps) > 1 else ""), ""]
    failed = [(r, f) for r in m.rows for f in r.failed]
    if failed:
        lines += ["Failed trials (not counted in trials / hour):", ""]
        lines += [f"- rep {r.rep}, {r.setting.name}: {f}" for r, f in failed]
        lines += [""]
    lines += [f"wall s: `run_sweep` of the K trials, from submitting them to the last result "
              f"stored (Ray start-up excluded, Tune set-up and each trial's process start "
              f"included). trials / hour: trials finished ok / wall s x 3600, per {per}. mean "
              f"train s / trial: the trainer's own training time (epochs only); between the "
              f"settings it shows how much sharing slows one trial. {mem}; memory sampled "
              f"every {args.sample_interval:g} s."]
    lines += ["", *[f"Note: {n}" for n in m.notes + observations(m, args)]]
    return "\n".join(lines) + "\n"


def to_json(m: Measurement, args: argparse.Namespace, command: str) -> dict:
    """The figures as plain data: one dict a row, the pooled rates and their ratio."""
    one, shared = m.settings

    def num(v: float | None) -> float | None:
        return None if v is None or v != v else v

    return {"command": command, "device": m.device, "versions": m.versions,
            "trials": [t.label for t in m.trials], "dataset": args.dataset,
            "budget": args.budget, "concurrency": shared.concurrency,
            "rows": [{**dataclasses.asdict(r), "setting": r.setting.name,
                      "concurrency": r.setting.concurrency,
                      "cpus_per_trial": r.setting.cpus_per_trial,
                      "gpus_per_trial": r.setting.gpus_per_trial,
                      "trials_per_hour": num(r.trials_per_hour)} for r in m.rows],
            "rate_one": num(m.rate(one)), "rate_shared": num(m.rate(shared)),
            "ratio": num(m.ratio()), "notes": m.notes + observations(m, args)}


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """CLI entry. Exit status 1 when a trial failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([*shlex.split(prog), *argv])
    # this process starts a local Ray on the loopback address (Ray reads these at import)
    os.environ.update({k: v for k, v in LOCAL_RAY_ENV.items() if k not in os.environ})
    args = parse_args(argv, prog=prog)
    from rich.console import Console

    console = Console(stderr=True)

    def save(m: Measurement) -> None:
        if args.out:
            atomic_write_text(args.out, markdown(m, args, command))
        if args.json:
            atomic_write_text(args.json, json.dumps(to_json(m, args, command), indent=1))

    try:
        m = measure(args, log=lambda s: console.print(s, highlight=False, markup=False),
                    console=console, on_row=save)
    except (ValueError, FileNotFoundError) as err:  # SpecError, DataError among them
        console.print(f"{prog}: error: {err}", highlight=False, markup=False)
        return 2
    print(markdown(m, args, command))
    save(m)
    for path in (args.out, args.json):
        if path:
            console.print(f"wrote {path}", highlight=False)
    return 1 if any(r.failed for r in m.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
