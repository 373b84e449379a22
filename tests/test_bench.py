"""Benchmark store, planning, local sweeps, resume, failures, report and the ``bench`` CLI."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skipdsl.bench import cli, report, runner, store

TINY = "4,8,16,32,64"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def overrides(cache_dir, **kw):
    o = dict(epochs=1, n=16, widths=[4, 8, 16, 32, 64], batch_size=4, cache_dir=cache_dir,
             throughput_iters=1, prune=False)
    o.update(kw)
    return o


# -- store ----------------------------------------------------------------------------------


def test_trial_key_is_stable_and_sensitive():
    k = store.trial_key("abc", "nuclei2d", "smoke", 0, False, {"epochs": 1})
    assert k == store.trial_key("abc", "nuclei2d", "smoke", 0, False, {"epochs": 1, "n": None})
    others = {store.trial_key("abd", "nuclei2d", "smoke", 0, False, {"epochs": 1}),
              store.trial_key("abc", "liver2d", "smoke", 0, False, {"epochs": 1}),
              store.trial_key("abc", "nuclei2d", "short", 0, False, {"epochs": 1}),
              store.trial_key("abc", "nuclei2d", "smoke", 1, False, {"epochs": 1}),
              store.trial_key("abc", "nuclei2d", "smoke", 0, True, {"epochs": 1}),
              store.trial_key("abc", "nuclei2d", "smoke", 0, False, {"epochs": 2})}
    assert k not in others and len(others) == 6


def test_atomic_json_leaves_no_temporary_files(tmp_path):
    p = store.atomic_write_json(tmp_path / "a" / "r.json",
                                {"iou": float("nan"), "x": [1.5, float("inf")]})
    assert json.loads(p.read_text()) == {"iou": None, "x": [1.5, None]}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]


def test_save_and_load_trial_roundtrip(tmp_path):
    cases = pd.DataFrame({"case": [0, 1], "case_id": ["a", "b"], "channel": [0, 0],
                          "iou": [0.5, float("nan")], "dice": [0.6, float("nan")],
                          "hd95": [float("nan")] * 2, "gt_empty": [False, True],
                          "pred_empty": [False, True]})
    res = {"status": "ok", "model": "unet", "dataset": "d", "seed": 0, "deep_supervision": False,
           "iou": 0.5, "cases": cases, "curve": [{"epoch": 0, "val_iou": 0.4}],
           "samples": {"image": np.zeros((1, 3, 4, 4)), "target": np.zeros((1, 1, 4, 4)),
                       "prob": np.zeros((1, 1, 4, 4)), "case_id": ["a"]}}
    store.save_trial(tmp_path, "k1", res)
    assert store.finished(tmp_path) == {"k1": "ok"}
    assert store.read_trial(tmp_path, "k1")["iou"] == 0.5
    assert len(store.load_cases(tmp_path)) == 2
    assert store.load_samples(tmp_path, "k1")["image"].shape == (1, 3, 4, 4)
    df = store.write_tables(tmp_path)
    assert list(df.columns)[:16] == ["model", "dataset", "seed", "deep_supervision", "loss",
                                     "iou", "dice", "hd95", "fp_empty", "params", "gflops",
                                     "images_per_s", "train_seconds", "spec_hash", "status",
                                     "reason"]
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "cases.parquet").is_file()


# -- planning -------------------------------------------------------------------------------


def test_plan_ds_modes_dedup_and_spec_paths(tmp_path):
    import skipdsl

    trials = runner.plan(["unet", "unetpp", "unet"], ["nuclei2d"], seeds=[0, 1],
                         deep_supervision="both")
    labels = sorted(t.label for t in trials)
    assert labels == ["unet/nuclei2d/s0/nods", "unet/nuclei2d/s1/nods",
                      "unetpp/nuclei2d/s0/ds", "unetpp/nuclei2d/s0/nods",
                      "unetpp/nuclei2d/s1/ds", "unetpp/nuclei2d/s1/nods"]
    assert len({t.key for t in trials}) == 6
    # a YAML path travels as its content; same spec -> same key as the zoo name
    p = tmp_path / "mine.yaml"
    p.write_text(skipdsl.load("unet").to_yaml())
    (t,) = runner.plan([str(p)], ["nuclei2d"])
    assert isinstance(t.config["model"], dict)
    assert t.key == runner.plan(["unet"], ["nuclei2d"])[0].key
    # overrides that change results change the key
    assert runner.plan(["unet"], ["nuclei2d"], overrides={"epochs": 3})[0].key != t.key
    with pytest.raises(ValueError, match="unknown trainer setting"):
        runner.plan(["unet"], ["nuclei2d"], overrides={"epoks": 3})


# -- local sweeps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cache_dir):
    """One local sweep shared by several tests: unet + unetpp (DS on/off), a diverging trial."""
    out = tmp_path_factory.mktemp("sweep")
    trials = runner.plan(["unet", "unetpp"], ["nuclei2d"], deep_supervision="both",
                         overrides=overrides(cache_dir))
    bad = runner.plan(["unet"], ["nuclei2d"], seeds=[7],
                      overrides=overrides(cache_dir, lr=1e30, epochs=2))
    summary = runner.run_sweep(trials + bad, out, backend="local", progress=False)
    return out, trials, bad, summary


def test_local_sweep_records_results_and_failures(swept):
    out, trials, bad, summary = swept
    assert summary.planned == 4 and len(summary.ran) == 4 and summary.failed == [bad[0].key]
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4
    ok = df[df.status == "ok"]
    assert sorted(zip(ok.model, ok.deep_supervision)) == [("unet", False), ("unetpp", False),
                                                          ("unetpp", True)]
    failed = df[df.status == "failed"].iloc[0]
    assert failed.model == "unet" and failed.seed == 7 and "diverged" in failed.reason
    assert ok.params.gt(0).all() and ok.gflops.gt(0).all() and ok.images_per_s.gt(0).all()
    cases = pd.read_parquet(out / "cases.parquet")
    assert set(cases.trial_key) == set(ok.trial_key)
    for key in ok.trial_key:
        assert (out / "trials" / key / "cases.parquet").is_file()
        r = store.read_trial(out, key)
        assert r["splits"]["test"] and r["curve"]


def test_rerun_skips_finished_trials(swept, cache_dir):
    out, trials, bad, _ = swept
    stamp = {t.key: os.stat(out / "trials" / t.key / "result.json").st_mtime_ns
             for t in trials + bad}
    again = runner.plan(["unet", "unetpp"], ["nuclei2d"], deep_supervision="both",
                        overrides=overrides(cache_dir))
    summary = runner.run_sweep(again + bad, out, backend="local", progress=False)
    assert summary.ran == [] and len(summary.skipped) == 4
    assert stamp == {k: os.stat(out / "trials" / k / "result.json").st_mtime_ns for k in stamp}


def test_killed_run_resumes_only_unfinished(swept, tmp_path, cache_dir):
    import shutil

    out, trials, bad, _ = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lost = trials[0].key
    # a kill during a trial leaves no result.json, maybe a temporary file: never read back
    (copy / "trials" / lost / "result.json").unlink()
    (copy / "trials" / lost / ".result.json.x.tmp").write_text("{half")
    (copy / "results.csv").write_text("model\n")
    summary = runner.run_sweep(trials + bad, copy, backend="local", progress=False)
    assert summary.ran == [lost] and len(summary.skipped) == 3
    assert len(pd.read_csv(copy / "results.csv")) == 4
    # failed trials are re-run on request
    summary = runner.run_sweep(trials + bad, copy, backend="local", progress=False,
                               retry_failed=True)
    assert summary.ran == [bad[0].key]


def test_report_has_table1_and_plots(swept):
    out, *_ = swept
    path = report.build_report(out)
    md = path.read_text()
    assert "Table 1" in md and "| unet |" in md and "nuclei2d (no DS)" in md
    assert "nuclei2d (DS)" in md and "Failed trials" in md and "diverged" in md
    row = next(line for line in md.splitlines() if line.startswith("| unetpp |"))
    assert "±" in row
    plots = out / "plots"
    assert "## Statistics: which differences are significant" in md and "### nuclei2d" in md
    assert "| 1 | 1 |" in md  # the ranking table: rank 1, group 1
    for name in ("iou_box_nuclei2d.png", "curves_nuclei2d.png", "overlay_unet.png",
                 "overlay_unetpp.png", "significance_nuclei2d.png"):
        assert (plots / name).stat().st_size > 1000, name
        assert f"plots/{name}" in md


def test_pruning_levels_reach_the_report(tmp_path, cache_dir):
    trials = runner.plan(["unetpp"], ["nuclei2d"], deep_supervision="on",
                         overrides=overrides(cache_dir, prune=True))
    runner.run_sweep(trials, tmp_path, backend="local", progress=False)
    md = report.build_report(tmp_path).read_text()
    assert "Pruning levels" in md and "| L1 |" in md
    assert (tmp_path / "plots" / "pruning.png").is_file()


# -- CLI ------------------------------------------------------------------------------------


def test_cli_run_local_report_and_list(tmp_path, cache_dir, capsys):
    out = tmp_path / "o"
    rc = cli.main(["run", "--backend", "local", "--models", "unet", "--datasets", "nuclei2d",
                   "--epochs", "1", "--n", "16", "--widths", TINY, "--batch-size", "4",
                   "--cache-dir", cache_dir, "--out", str(out), "--no-progress"])
    assert rc == 0
    assert (out / "report.md").is_file() and len(pd.read_csv(out / "results.csv")) == 1
    (out / "report.md").unlink()
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    assert (out / "report.md").is_file()
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "unetsharp" in text and "nuclei2d" in text and "lung_nodule3d" in text


def test_cli_errors_are_messages(tmp_path, capsys):
    rc = cli.main(["run", "--backend", "local", "--models", "unett", "--datasets", "nuclei2d",
                   "--out", str(tmp_path)])
    assert rc == 2
    assert "unet" in capsys.readouterr().err  # did-you-mean from the spec loader
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no benchmark output folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", str(empty)]) == 0  # an empty store gives an empty report
    assert "0 trials" in (empty / "report.md").read_text()


def test_cli_datasets_show(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("SKIPDSL_CACHE", cache_dir)
    png = tmp_path / "n.png"
    assert cli.main(["datasets", "show", "nuclei2d", "-o", str(png), "-n", "2"]) == 0
    assert png.stat().st_size > 1000


def test_cli_speed_forwards_arguments(monkeypatch):
    from skipdsl.bench import speed

    seen = {}
    monkeypatch.setattr(speed, "main", lambda argv, prog: seen.update(argv=argv, prog=prog))
    assert cli.main(["speed", "--models", "unet", "--help"]) == 0
    assert seen == {"argv": ["--models", "unet", "--help"], "prog": "bench speed"}


def test_cli_speed_runs_from_the_package(tmp_path):
    """``bench speed`` on a zoo model and on a spec file of one's own, with tiny settings,
    needs nothing outside the package: ``benchmarks`` is made unimportable and the command
    runs in another folder. Without references it times the compiled models alone."""
    import subprocess

    import skipdsl

    (tmp_path / "mine.yaml").write_text(skipdsl.load("unetpp").to_yaml())
    code = ("import sys; sys.modules['benchmarks'] = None; "
            "from skipdsl.bench.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "speed", "--models", "unet,mine.yaml", "--device", "cpu",
         "--size",
         "16", "--batch", "2", "--widths", "4,8,16,32,64", "--iters", "1", "--reps", "1",
         "--warmup", "1", "--threads", "1", "--out", "speed.md", "--json", "speed.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "speed.md").read_text()
    assert "Command: `bench speed --models unet,mine.yaml --device cpu" in md
    assert "| model | params | train img/s | infer img/s |" in md and "hand" not in md
    data = json.loads((tmp_path / "speed.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["unet", "mine.yaml"] and not data["pending"]
    for row in data["rows"]:
        assert row["train"]["compiled"] > 0 and row["infer"]["compiled"] > 0
        assert set(row["train"]) == {"compiled"}  # no reference, no ratio
        assert row["train_mb"]["compiled"] is not None  # peak memory measured too


def test_import_skipdsl_does_not_import_ray():
    import subprocess

    code = ("import sys, skipdsl, skipdsl.bench.cli, skipdsl.bench.runner, "
            "skipdsl.train.trainer; print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert r.stdout.strip() == "False", r.stderr


def test_head_init_is_part_of_the_trial_key():
    def key(**ov):
        return runner.plan(["unet"], ["nuclei2d"], overrides=ov)[0].key

    assert key() == key(head_init="prior")  # the default is written into every key
    assert key(head_init="he") != key()
    assert runner.plan(["unet"], ["nuclei2d"], overrides={"head_init": "he"})[0] \
        .config["head_init"] == "he"


def test_budget_definition_is_part_of_the_trial_key(monkeypatch):
    import dataclasses

    from skipdsl.train import trainer

    key = runner.plan(["unet"], ["nuclei2d"], budget="cpu")[0].key
    changed = dataclasses.replace(trainer.BUDGETS["cpu"], epochs=99)
    monkeypatch.setitem(trainer.BUDGETS, "cpu", changed)
    assert runner.plan(["unet"], ["nuclei2d"], budget="cpu")[0].key != key


def test_per_dataset_budget_changes_rekey_that_dataset_alone(monkeypatch):
    """A budget's ``per_dataset`` entry changes the recipe (and the trial keys) of the dataset it
    names; every other dataset's trials keep their keys, so finished results stay valid."""
    import dataclasses

    from skipdsl.train import trainer

    def keys():
        return {t.config["dataset"]: t.key
                for t in runner.plan(["unet"], ["nuclei2d", "liver2d"], budget="cpu")}

    before = keys()
    cpu = trainer.BUDGETS["cpu"]
    changed = dataclasses.replace(cpu, per_dataset={**cpu.per_dataset, "liver2d": {"epochs": 3}})
    monkeypatch.setitem(trainer.BUDGETS, "cpu", changed)
    after = keys()
    assert after["nuclei2d"] == before["nuclei2d"] and after["liver2d"] != before["liver2d"]
    assert trainer.planned_epochs({"model": "unet", "dataset": "liver2d", "budget": "cpu"}) == 3
    assert trainer.planned_epochs({"model": "unet", "dataset": "nuclei2d", "budget": "cpu"}) \
        == cpu.epochs
    assert changed.for_dataset("liver2d").epochs == 3 and changed.for_dataset("x").epochs == 10


def test_longest_first_groups_by_dataset_heaviest_first():
    trials = runner.plan(["unet", "unet3p", "unetpp"], ["liver2d", "nuclei2d"],
                         deep_supervision="both", budget="cpu")
    order = runner.longest_first(trials)
    assert sorted(t.key for t in order) == sorted(t.key for t in trials)
    datasets = [t.config["dataset"] for t in order]
    assert datasets == ["liver2d"] * 5 + ["nuclei2d"] * 5
    models = [t.config["model"] for t in order[:5]]
    assert models[:2] == ["unet3p", "unet3p"] and models[-1] == "unet"
    # one at a time (the local backend): grouped by dataset, the plan's order within it
    plain = runner.longest_first(trials, by_cost=False)
    assert [t.key for t in plain] == [t.key for t in trials if t.config["dataset"] == "liver2d"] \
        + [t.key for t in trials if t.config["dataset"] == "nuclei2d"]


def test_cli_reuse_copies_finished_trials_with_the_same_key(tmp_path, cache_dir, capsys):
    """--reuse DIR takes finished trials of another folder instead of training them again:
    only trials with the same key (network, data, recipe, seed) are taken."""
    common = ["run", "--backend", "local", "--datasets", "nuclei2d", "--epochs", "1", "--n",
              "16", "--widths", TINY, "--batch-size", "4", "--cache-dir", cache_dir,
              "--no-progress", "--no-report", "--ds", "off"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main([*common, "--models", "unet", "--out", str(a)]) == 0
    capsys.readouterr()
    assert cli.main([*common, "--models", "unet,unetpp", "--out", str(b), "--reuse", str(a)]) == 0
    err = capsys.readouterr().err
    assert "reused 1 finished trial(s)" in err and "1 ran" in err
    ra, rb = pd.read_csv(a / "results.csv"), pd.read_csv(b / "results.csv")
    assert sorted(rb["model"]) == ["unet", "unetpp"]
    ua, ub = ra.iloc[0], rb[rb["model"] == "unet"].iloc[0]
    assert ub["iou"] == ua["iou"] and ub["trial_key"] == ua["trial_key"]
    res = json.loads((b / "trials" / ub["trial_key"] / "result.json").read_text())
    assert res["reused_from"] == str(a.resolve())
    # another recipe (2 epochs): other keys, nothing reused
    c = tmp_path / "c"
    common2 = [x if x != "1" else "2" for x in common]
    assert cli.main([*common2, "--models", "unet", "--out", str(c), "--reuse", str(a)]) == 0
    assert "reused 0 finished trial(s)" in capsys.readouterr().err
    assert cli.main([*common, "--models", "unet", "--out", str(c), "--reuse",
                     str(tmp_path / "nope")]) == 2
