"""The Ray backend: trials on a local Ray Tune (2 CPUs) with OptunaSearch and ASHA, written to
the same study as the Optuna backend, then resumed on the Optuna backend."""
from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from rich.console import Console

import skipdsl
from skipdsl.search.runner import run_search
from skipdsl.search.space import load_space
from skipdsl.search.study import make_storage, trial_params

from test_search_fakes import fake_train, resume_and_check_died, run_until_a_trial_hangs

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ray_backend_fills_the_study_and_resumes_on_optuna(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # Ray workers import test_search_fakes
    out = tmp_path / "ray"
    console = Console(file=io.StringIO())  # holds locks: Ray must not need to pickle it
    common = dict(dataset="nuclei2d", budget="smoke", out=out, trainer=fake_train,
                  latency_size=32, latency_iters=2, sampler_seed=0, log=console.print)
    # queue an invalid point and a second copy of UNet before the run (cache on the driver)
    run_search(trials=1, backend="optuna", zoo=False, outputs=False, workers=1, **common)
    settings = json.loads((out / "search.json").read_text())
    study = optuna.load_study(study_name=settings["study_name"],
                              storage=make_storage(settings["storage_url"], heartbeat=False))
    first = len(study.get_trials())  # the trials of the Optuna run (an invalid one, maybe)
    space = load_space()
    unet = space.point_of("unet")
    study.enqueue_trial(trial_params(space, unet))
    bad = {k: "off" for k, _ in space.dimensions() if k.startswith("edge_")}
    study.enqueue_trial(trial_params(space, {**unet, **bad, "edge_up": "on", "nodes": "triangle"}))
    study.enqueue_trial(trial_params(space, unet))

    summary = run_search(trials=10, backend="ray", num_cpus=2, cpus_per_trial=1, zoo=True,
                         prune_warmup=1, prune_min_trials=2, **common)
    assert summary.finished == 10  # evaluated networks: the invalid sample is not counted
    df = pd.read_csv(out / "trials.csv")
    assert (~df["status"].isin(["invalid", "too_costly"])).sum() == 10
    assert (df["state"] != "RUNNING").all()
    inv = df[df["status"] == "invalid"]
    assert (inv["state"] == "FAIL").all()
    ours = inv[(inv["p_nodes"] == "triangle") & (inv["p_edge_dense"] == "off")
               & (inv["p_edge_skip"] == "off") & (inv["p_edge_up"] == "on")]
    assert len(ours) == 1 and "node x_0_1: node does not reach any head" in ours.iloc[0]["reason"]
    # the second UNet was not trained again: its values are the first one's
    cached = df[df["status"] == "cached"]
    assert len(cached) >= 1 and cached["cached_from"].notna().all()
    assert (cached["iou"].values == df.set_index("number").loc[
        cached["cached_from"].astype(int), "iou"].values).all()
    # pruned trials (ASHA) are PRUNED with a reason, never complete with a partial IoU
    pr = df[df["state"] == "PRUNED"]
    assert pr["reason"].str.contains("ASHA|pruned", regex=True).all()
    complete = df[df["state"] == "COMPLETE"]
    assert complete["iou"].notna().all() and complete["hash"].notna().all()
    assert list((out / "pareto").glob("*.yaml"))
    for p in (out / "pareto").glob("*.yaml"):
        skipdsl.compile(p)
    assert "backend ray" in (out / "report.md").read_text()
    # the same study resumed without Ray
    assert set(df["zoo"].dropna()) == set(skipdsl.spec.zoo_names())
    assert (df.iloc[first:]["worker"] == "ray").all() and len(df) > first
    more = run_search(trials=11, backend="optuna", zoo=True, workers=1, **common)
    assert more.ran >= 1 and more.finished == 11


@pytest.mark.slow
def test_a_killed_ray_driver_s_trial_is_failed_as_died_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    out, marker = tmp_path / "kill", tmp_path / "hanging"
    common = dict(dataset="nuclei2d", budget="smoke", latency_size=32, latency_iters=2,
                  sampler_seed=0, zoo=False, trials=1, backend="ray", num_cpus=1,
                  heartbeat=1, grace=4)
    pid = run_until_a_trial_hangs(out, marker, timeout=300, **common)
    settings = json.loads((out / "search.json").read_text())
    study = optuna.load_study(study_name=settings["study_name"],
                              storage=make_storage(settings["storage_url"], heartbeat=False))
    (hung,) = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert hung.user_attrs["driver"].endswith(f":{pid}")
    # resumed at once on Ray: the trial still looks alive and fills the study, so the driver
    # waits; then it is failed with the reason before Ray asks for a new trial, and its point
    # is run again
    resume_and_check_died(out, hung, rf"ray driver .+:{pid}", **common)
    again = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == hung.number]
    assert len(again) == 1 and again[0].params == hung.params
    assert again[0].state == optuna.trial.TrialState.COMPLETE
    assert again[0].user_attrs["driver"] != hung.user_attrs["driver"]


@pytest.mark.slow
def test_the_equal_size_halving_search_runs_on_ray(tmp_path, monkeypatch):
    """--strategy halving's settings on Ray Tune: ASHA on the one objective, every network at
    UNet#'s size, the zoo's points of skip5 first."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    out = tmp_path / "ray-halving"
    s = run_search(dataset="nuclei2d", budget="smoke", out=out, trainer=fake_train,
                   latency_size=32, latency_iters=2, sampler_seed=0, log=lambda s: None,
                   space="skip5", objectives=("iou",), prune="halving", params="unetsharp",
                   trials=6, backend="ray", num_cpus=2, cpus_per_trial=1)
    assert s.finished == 6
    df = pd.read_csv(out / "trials.csv")
    target = json.loads((out / "search.json").read_text())["config"]["size_target"]
    done = df[df["status"] == "complete"]
    assert len(done) >= 4 and ((done["params"] / target - 1).abs() <= 0.03).all()
    assert {"unet", "unetpp", "unet3p", "unetsharp"} <= set(df["zoo"].dropna())
    assert "ASHA (Ray Tune)" in (out / "report.md").read_text()
