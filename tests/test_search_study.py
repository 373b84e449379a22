"""The search loop on the Optuna backend, with a fast fake trainer: study storage, resuming,
the cache by canonical hash, invalid and failed trials, pruning, and the outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState, create_trial

import skipdsl
from skipdsl.search.cli import main as search_main
from skipdsl.search.objective import SearchConfig, median_rule
from skipdsl.search.runner import rebuild_outputs, run_search
from skipdsl.search.space import load_space
from skipdsl.search.study import SearchError, counted_trials, make_storage, trial_params

from test_search_fakes import fake_train, resume_and_check_died, run_until_a_trial_hangs

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the fake trials' latency passes are tiny, and spin-waiting threads on a
    busy 2-core machine cost more than they give."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST_QUIET = dict(dataset="nuclei2d", budget="smoke", latency_size=32, latency_iters=2,
                  sampler_seed=0, workers=1)
FAST = dict(FAST_QUIET, log=lambda s: None)


def _study(out: Path):
    settings = json.loads((out / "search.json").read_text())
    return optuna.load_study(study_name=settings["study_name"],
                             storage=make_storage(settings["storage_url"], heartbeat=False))


def test_run_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "s"
    summary = run_search(trials=9, out=out, trainer=fake_train, **FAST)
    assert summary.finished == 9 and summary.ran >= 9
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == summary.ran and list(df["number"]) == list(range(len(df)))
    # invalid and too costly samples are recorded, but the 9 are evaluated networks
    assert (~df["status"].isin(["invalid", "too_costly"])).sum() == 9
    for col in ("hash", "state", "status", "reason", "iou", "params_m", "latency_ms", "curve",
                "p_edge_up"):
        assert col in df.columns
    # the zoo models come first (reference points), measured like any sample
    assert set(df["zoo"].dropna()) == set(skipdsl.spec.zoo_names())
    done = df[df["state"] == "COMPLETE"]
    assert done["hash"].notna().all() and (done["latency_ms"] > 0).all()
    # Pareto specs: each compiles, is valid, and is a network of the study
    paths = sorted((out / "pareto").glob("*.yaml"))
    assert paths
    for p in paths:
        spec = skipdsl.load(p)
        skipdsl.compile(spec)
        assert skipdsl.spec_hash(spec) in set(done["hash"])
    assert (out / "pareto.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Pareto front" in md and "## Zoo models" in md and "unetsharp" in md
    # resume: the same call with more trials runs only the missing ones
    again = run_search(trials=11, out=out, trainer=fake_train, **FAST)
    assert again.ran >= 2 and again.finished == 11
    df2 = pd.read_csv(out / "trials.csv")
    pd.testing.assert_frame_equal(df2.iloc[:len(df)][["number", "hash", "iou"]],
                                  df[["number", "hash", "iou"]])
    assert run_search(trials=11, out=out, trainer=fake_train, **FAST).ran == 0
    # the report command rebuilds the outputs from the study alone
    for f in ("trials.csv", "report.md", "pareto.png"):
        (out / f).unlink()
    rebuild_outputs(out)
    assert len(pd.read_csv(out / "trials.csv")) == len(df2) and (out / "report.md").is_file()


def test_local_workers_share_the_sqlite_study(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPDSL_FAKE_DELAY", "0.05")
    out = tmp_path / "w"
    summary = run_search(trials=8, out=out, trainer=fake_train, **{**FAST, "workers": 2})
    assert summary.finished == 8
    ts = _study(out).get_trials()
    assert all(t.state.is_finished() for t in ts)
    assert len(counted_trials(_study(out))) == 8
    surplus = [t for t in ts if t.user_attrs.get("status") == "surplus"]
    assert all(not t.params for t in surplus)  # stepped aside before sampling
    assert len({t.user_attrs.get("worker") for t in ts} - {None}) == 2
    settings = json.loads((out / "search.json").read_text())
    assert settings["config"]["overrides"]["threads"] >= 1


def test_a_killed_worker_s_trial_is_failed_as_died_and_run_again(tmp_path):
    out, marker = tmp_path / "kill", tmp_path / "hanging"
    beat = dict(heartbeat=1, grace=4, zoo=False, trials=1)
    pid = run_until_a_trial_hangs(out, marker, **beat, **FAST_QUIET)
    (hung,) = [t for t in _study(out).get_trials() if t.state == TrialState.RUNNING]
    assert hung.user_attrs["worker"].endswith(f":{pid}")
    assert marker.read_text() == f"search_t{hung.number:04d}"
    # resume at once: the dead worker's trial still looks alive and fills the one trial, so the
    # run waits; with no heartbeat for the grace period it is failed with the reason, and its
    # point is run again (and counts)
    df = resume_and_check_died(out, hung, rf"worker .+:{pid}", **beat, **FAST_QUIET)
    assert (~df["status"].isin(["invalid", "too_costly", "died"])).sum() == 1
    (again,) = [t for t in _study(out).get_trials() if t.user_attrs.get("retry_of") == hung.number]
    assert again.params == hung.params and again.state == TrialState.COMPLETE
    assert again.user_attrs["worker"] != hung.user_attrs["worker"]
    report_md = (out / "report.md").read_text()
    assert f"- trial {hung.number} (died): worker died: no heartbeat for" in report_md
    # the study is complete: a re-run starts nothing
    assert run_search(out=out, trainer=fake_train, **beat, **FAST).ran == 0


def test_a_running_trial_that_never_had_a_heartbeat_is_failed_too(tmp_path):
    out = tmp_path / "old"
    run_search(trials=1, out=out, trainer=fake_train, zoo=False, **FAST)
    orphan = _study(out).ask()  # RUNNING with no heartbeat ever (a process that recorded none)
    lines: list[str] = []
    summary = run_search(trials=2, out=out, trainer=fake_train, zoo=False, heartbeat=1, grace=2,
                         **{**FAST, "log": lines.append})
    assert any(f"waiting for running trial(s) {orphan.number} " in s for s in lines), lines
    assert summary.finished == 2
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert df.loc[orphan.number, "status"] == "died" and df.loc[orphan.number, "state"] == "FAIL"
    assert re.fullmatch(r"worker died: no heartbeat for \d+ s", df.loc[orphan.number, "reason"])
    assert (df["state"] != "RUNNING").all()


def test_heartbeat_settings_are_checked(tmp_path):
    with pytest.raises(SearchError, match="interval < grace"):
        run_search(trials=1, out=tmp_path, trainer=fake_train, heartbeat=5, grace=5, **FAST)


def test_settings_of_a_study_cannot_change_under_it(tmp_path):
    run_search(trials=1, out=tmp_path, trainer=fake_train, zoo=False, **FAST)
    with pytest.raises(SearchError, match="objectives"):
        run_search(trials=2, out=tmp_path, trainer=fake_train, zoo=False,
                   study_name="skipdsl-default-nuclei2d-smoke-s0", objectives=["iou", "params"],
                   **FAST)


def test_a_repeated_network_is_not_trained_again(tmp_path):
    calls = []

    def counting(config, report=None):
        calls.append(config["model"]["name"])
        return fake_train(config, report)

    space = load_space()
    out = tmp_path / "c"
    run_search(trials=1, out=out, trainer=counting, zoo=False, **FAST)
    study = _study(out)
    # the UNet point, twice: once as listed, once as the same graph by another rule (on the
    # diagonal node set, 'dense' gives the same edges as 'skip')
    point = space.point_of("unet")
    study.enqueue_trial(trial_params(space, point))
    study.enqueue_trial(trial_params(space, dict(point, edge_skip="off", edge_dense="on")))
    run_search(trials=3, out=out, trainer=counting, zoo=False, **FAST)
    df = pd.read_csv(out / "trials.csv")
    first, second = df.iloc[-2], df.iloc[-1]
    assert first["status"] == "complete" and second["status"] == "cached"
    assert second["cached_from"] == first["number"] and second["hash"] == first["hash"]
    assert second["iou"] == first["iou"] and second["p_edge_dense"] == "on"
    assert f"search_t{first['number']:04d}" in calls  # trained once,
    assert f"search_t{second['number']:04d}" not in calls  # not twice
    values = {t.number: t.values for t in study.get_trials()}
    assert values[first["number"]] == values[second["number"]]


def test_invalid_and_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    space = load_space()
    out = tmp_path / "f"
    run_search(trials=1, out=out, trainer=fake_train, zoo=False, **FAST)
    # every rule off but 'up', on the triangle: x_0_1 .. feed nothing -> invalid
    bad = {k: "off" for k, _ in space.dimensions() if k.startswith("edge_")}
    bad.update(edge_up="on", nodes="triangle")
    _study(out).enqueue_trial(trial_params(space, {**space.point_of("unet"), **bad}))
    run_search(trials=3, out=out, trainer=fake_train, zoo=False, **FAST)
    df = pd.read_csv(out / "trials.csv")
    inv = df[df["status"] == "invalid"]
    assert len(inv) >= 1 and (inv["state"] == "FAIL").all()
    ours = inv[(inv["p_nodes"] == "triangle") & (inv["p_edge_dense"] == "off")
               & (inv["p_edge_skip"] == "off") & (inv["p_edge_up"] == "on")].iloc[0]
    assert "node x_0_1: node does not reach any head" in ours["reason"]
    assert "hint:" in ours["reason"]
    # the study went on, and the invalid sample did not count
    assert (~df["status"].isin(["invalid", "too_costly"])).sum() == 3

    def broken(config, report=None):
        raise RuntimeError("CUDA out of memory (simulated)")

    out2 = tmp_path / "g"
    summary = run_search(trials=2, out=out2, trainer=broken, zoo=False, **FAST)
    assert summary.finished == 2
    df2 = pd.read_csv(out2 / "trials.csv")
    failed = df2[df2["status"] == "failed"]
    assert len(failed) >= 1 and failed["reason"].str.contains("out of memory").all()
    assert (df2["state"] == "FAIL").all()
    assert "Invalid, too costly and failed trials" in (out2 / "report.md").read_text()


def test_networks_over_the_budget_cost_cap_are_recorded_not_trained(tmp_path):
    calls = []

    def counting(config, report=None):
        calls.append(config["model"]["name"])
        return fake_train(config, report)

    out = tmp_path / "cap"
    # at 32 x 32 and the smoke widths: UNet 0.007 GFLOPs, UNet++ 0.017, UNet# 0.036, UNet3+ 0.1
    run_search(trials=3, out=out, trainer=counting, max_gflops=0.02, **FAST)
    df = pd.read_csv(out / "trials.csv").set_index("zoo")
    assert list(df["status"]) == ["complete", "too_costly", "complete", "too_costly",
                                  "complete"]
    assert df.loc["unet3p", "status"] == "too_costly" and df.loc["unet3p", "state"] == "FAIL"
    assert "GFLOPs cap of the 'smoke' budget" in df.loc["unet3p", "reason"]
    assert len(calls) == (df["status"] == "complete").sum()


def _done(number: int, curve: list[float], cached: bool = False):
    attrs = {"curve": curve, **({"cached_from": 0} if cached else {})}
    t = create_trial(values=[curve[-1], 1.0], params={}, distributions={}, user_attrs=attrs,
                     state=TrialState.COMPLETE)
    t.number = number
    return t


def test_median_rule_on_validation_iou():
    cfg = SearchConfig(dataset="nuclei2d", prune_warmup=1, prune_min_trials=3)
    trials = [_done(0, [0.2, 0.4, 0.6]), _done(1, [0.3, 0.5, 0.7]), _done(2, [0.1, 0.6, 0.8])]
    assert median_rule(trials, 0, 0.0, cfg) is None  # warm-up epoch
    assert median_rule(trials[:2], 1, 0.0, cfg) is None  # too few finished trials
    why = median_rule(trials, 1, 0.45, cfg)
    assert why and "median 0.5000 of 3" in why
    assert median_rule(trials, 1, 0.55, cfg) is None
    # a cached copy does not count twice
    assert median_rule(trials[:2] + [_done(3, [0.1, 0.6, 0.8], cached=True)], 1, 0.0, cfg) is None
    assert median_rule(trials, 1, 0.0, SearchConfig(dataset="nuclei2d", prune="none")) is None


def poor_samples(config, report=None):
    """The zoo trials (0-4) learn as usual; every later sample reports a poor curve."""
    number = int(config["model"]["name"].rsplit("t", 1)[1])
    if number >= 5 and report is not None:
        return fake_train(config, lambda e, v: report(e, 0.3 * v))
    return fake_train(config, report)


@pytest.mark.parametrize("objectives", [["iou", "params", "latency"], ["iou"]])
def test_poor_trials_are_pruned_in_multi_and_single_objective_studies(tmp_path, objectives):
    out = tmp_path / "p"
    run_search(trials=8, out=out, trainer=poor_samples, objectives=objectives,
               prune_warmup=1, prune_min_trials=3, max_gflops=0, **FAST)  # 0: no cost cap
    df = pd.read_csv(out / "trials.csv")
    assert (df.iloc[:5]["state"] == "COMPLETE").all()
    samples = df.iloc[5:]
    trained = samples[samples["status"] != "invalid"]
    assert len(trained) >= 1 and (trained["state"] == "PRUNED").all(), \
        df[["number", "status", "reason"]]
    assert trained["reason"].str.contains("pruned at epoch 1").all()
    settings = json.loads((out / "search.json").read_text())
    if len(objectives) == 1:
        assert trained["reason"].str.contains("MedianPruner").all()
        assert settings["sampler"] == "tpe"
    else:
        assert trained["reason"].str.contains("below|<", regex=True).all()
        assert settings["sampler"] == "nsga2"
    assert "pruning:" in (out / "report.md").read_text()


def test_cli_run_report_space_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    out = tmp_path / "cli"
    args = ["run", "--dataset", "nuclei2d", "--trials", "2", "--budget", "smoke", "--out",
            str(out), "--trainer", "test_search_fakes:fake_train", "--latency-size", "32",
            "--latency-iters", "2", "--no-zoo", "--sampler-seed", "1"]
    assert search_main(args) == 0
    df = pd.read_csv(out / "trials.csv")
    assert (~df["status"].isin(["invalid", "too_costly"])).sum() == 2
    assert search_main(["report", str(out)]) == 0
    assert search_main(["space"]) == 0
    assert "zoo models in it: unet, unet3p, unetpp, unetsharp, wunet" in capsys.readouterr().out
    assert search_main(["run", "--dataset", "nuclei", "--trials", "1", "--out",
                        str(tmp_path / "x")]) == 2
    assert "did you mean 'nuclei2d'" in capsys.readouterr().err
    assert search_main(["run", "--dataset", "nuclei2d", "--trials", "1", "--out",
                        str(tmp_path / "y"), "--space", "nope.yaml"]) == 2
    assert search_main(["report", str(tmp_path / "empty")]) == 2
    with pytest.raises(SystemExit):
        search_main(["run", "--dataset", "nuclei2d", "--trials", "0", "--out", str(out)])


def test_a_trial_started_past_the_count_steps_aside():
    """Two workers that both saw one trial missing: the higher-numbered trial is surplus."""
    import optuna

    from skipdsl.search.study import is_surplus

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    done = study.ask()
    study.tell(done, 0.5)
    a, b = study.ask(), study.ask()  # both running, asked by two workers at once
    assert not is_surplus(a, 2) and is_surplus(b, 2)
    assert not is_surplus(b, 3)
    invalid = study.ask()  # an invalid sample (failed, not counted) does not hold a place
    invalid.set_user_attr("status", "invalid")
    study.tell(invalid, state=optuna.trial.TrialState.FAIL)
    c = study.ask()
    assert is_surplus(c, 3) and not is_surplus(c, 4)
