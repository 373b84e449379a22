"""One short real trial: the search with the real trainer on the smoke budget (2 epochs, 32
images), and its Pareto spec through ``skipdsl compile`` and ``bench run --models PATH``."""
from __future__ import annotations

import json

import pandas as pd
import torch

import skipdsl
from skipdsl.bench.cli import main as bench_main
from skipdsl.cli import run as skipdsl_cli
from skipdsl.search.runner import run_search


def test_one_real_smoke_trial_and_its_pareto_spec_runs_in_bench(tmp_path):
    out = tmp_path / "search"
    threads = torch.get_num_threads()
    try:
        summary = run_search(dataset="nuclei2d", trials=1, out=out, budget="smoke",
                             overrides={"epochs": 2, "n": 32, "threads": 1}, latency_iters=3,
                             log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert summary.finished == 1
    row = pd.read_csv(out / "trials.csv").iloc[0]
    assert row["state"] == "COMPLETE" and row["zoo"] == "unet"  # the zoo models come first
    assert 0.0 <= row["iou"] <= 1.0 and row["latency_ms"] > 0 and len(json.loads(row["curve"])) == 2
    (path,) = sorted((out / "pareto").glob("*.yaml"))
    spec = skipdsl.load(path)
    assert spec.widths == [4, 8, 16, 32, 64]  # the smoke budget trains at 1/8 of UNet's widths
    assert row["params"] == sum(p.numel() for p in skipdsl.compile(spec).parameters())
    assert skipdsl.spec_hash(spec) == row["hash"]
    assert skipdsl_cli(["compile", str(path)]) == 0
    bench = tmp_path / "bench"
    assert bench_main(["run", "--models", str(path), "--datasets", "nuclei2d", "--budget",
                       "smoke", "--out", str(bench), "--backend", "local", "--epochs", "1",
                       "--n", "32", "--ds", "off", "--no-progress", "--no-report"]) == 0
    res = pd.read_csv(bench / "results.csv")
    assert list(res["status"]) == ["ok"] and list(res["model"]) == [spec.name]
