"""How much the trial order of a sweep costs on a few CPUs: the plan's order vs longest first.

Reads a finished ``bench run`` folder, recovers each trial's wall time (from the order the
runner started the trials in and the times their results were written), then replays the
sweep on ``--slots`` parallel slots (list scheduling: the next trial starts as soon as a slot
is free) in two orders: the order :func:`skipdsl.bench.runner.plan` produces (models x
datasets x seeds x DS, what the runner used before) and
:func:`skipdsl.bench.runner.longest_first` (what it uses now). Prints the makespan and trials
per hour of each and their ratio, both replayed from the same measured durations.

    python benchmarks/cpu_packing.py results/cpu-zoo --models unet,wunet,unetpp,unet3p,unetsharp \\
        --datasets nuclei2d,liver2d,brain_tumor2d,lung_nodule2d,lung_nodule3d --seeds 0,1,2 \\
        --budget cpu --start 2026-12-02T00:43:57Z --report results/cpu-zoo/packing.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import heapq
import sys
from pathlib import Path


def replay(durations: list[float], slots: int) -> float:
    """Makespan of list scheduling ``durations`` in order on ``slots`` parallel slots."""
    free = [0.0] * slots
    heapq.heapify(free)
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        end = max(end, start + d)
        heapq.heappush(free, start + d)
    return end


def recover_durations(order: list[str], finished: dict[str, float], t0: float,
                      slots: int) -> dict[str, float]:
    """Each trial's wall time, from the start order and the end times: trial k (0-based) of
    the start order started at ``t0`` (k < slots) or at the (k - slots)-th end time."""
    ends = sorted(finished[k] for k in order if k in finished)
    out = {}
    for k, key in enumerate(order):
        if key not in finished:
            continue
        start = t0 if k < slots else ends[k - slots]
        out[key] = finished[key] - start
    return out


def main(argv: list[str] | None = None) -> int:
    from skipdsl.bench import runner

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--models", required=True)
    p.add_argument("--datasets", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--ds", default="both")
    p.add_argument("--budget", default="cpu")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--start", required=True, help="when the sweep's first trials started (ISO)")
    p.add_argument("--report", default=None, help="write the markdown table here")
    a = p.parse_args(argv)

    trials = runner.plan(a.models.split(","), a.datasets.split(","),
                         seeds=[int(s) for s in a.seeds.split(",")], deep_supervision=a.ds,
                         budget=a.budget)
    run_order = runner.longest_first(trials)
    out = Path(a.out)
    finished = {t.key: (out / "trials" / t.key / "result.json").stat().st_mtime
                for t in trials if (out / "trials" / t.key / "result.json").is_file()}
    t0 = dt.datetime.fromisoformat(a.start.replace("Z", "+00:00")).timestamp()
    dur = recover_durations([t.key for t in run_order], finished, t0, a.slots)
    if len(dur) < len(trials):
        print(f"{len(trials) - len(dur)} trials of {len(trials)} are not finished", file=sys.stderr)
    plan_s = replay([dur[t.key] for t in trials if t.key in dur], a.slots)
    lpt_s = replay([dur[t.key] for t in run_order if t.key in dur], a.slots)
    measured = max(finished.values()) - t0
    n = len(dur)
    lines = [
        f"# Trial order on {a.slots} slots: `python benchmarks/cpu_packing.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"{n} trials, durations recovered from the result files of `{out}` (sum "
        f"{sum(dur.values()) / 3600:.2f} slot-hours; longest {max(dur.values()):.0f} s).",
        "",
        "| order | makespan | trials/hour |",
        "|---|---|---|",
        f"| plan order (before) | {plan_s / 60:.1f} min | {n / plan_s * 3600:.1f} |",
        f"| longest first (now) | {lpt_s / 60:.1f} min | {n / lpt_s * 3600:.1f} |",
        f"| measured (longest first) | {measured / 60:.1f} min | {n / measured * 3600:.1f} |",
        "",
        f"Longest first / plan order: {plan_s / lpt_s:.3f}x the trials per hour "
        f"(lower bound for any order: {sum(dur.values()) / a.slots / 60:.1f} min).",
    ]
    text = "\n".join(lines)
    print(text)
    if a.report:
        Path(a.report).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
