"""``skipdsl search retrain``: a search's top networks and the zoo at equal size, selection on
validation IoU, transfer of the winner, reuse of finished zoo trials, the winner's weights."""
from __future__ import annotations

import json

import pandas as pd

import skipdsl
from skipdsl.checkpoint import load_checkpoint
from skipdsl.search.cli import main as search_main
from skipdsl.search.runner import run_search

from test_search_fakes import fake_train

TINY = {"epochs": 1, "n": 16, "batch_size": 4}


def test_retrain_selects_on_validation_and_transfers(tmp_path, capsys):
    search = tmp_path / "s"
    run_search(dataset="nuclei2d", trials=6, out=search, trainer=fake_train, space="skip5",
               objectives=("iou",), prune="halving", params="30k", budget="smoke",
               latency_size=32, latency_iters=2, sampler_seed=0, workers=1,
               log=lambda s: None)
    assert len(list((search / "pareto").glob("*.yaml"))) == 3
    # the zoo at the same size and recipe, trained once elsewhere, is reused
    zoo_dir = tmp_path / "zoo"
    args = ["--budget", "smoke", "--params", "30k", "--backend", "local", "--epochs", "1",
            "--n", "16", "--seeds", "0"]
    out = tmp_path / "r"
    from skipdsl.bench.cli import main as bench_main

    assert bench_main(["run", "--models", "unet", "--datasets", "nuclei2d", "--budget", "smoke",
                       "--params", "30k", "--backend", "local", "--epochs", "1", "--n", "16",
                       "--ds", "off", "--no-weights", "--no-progress", "--no-report",
                       "--out", str(zoo_dir)]) == 0
    capsys.readouterr()
    assert search_main(["retrain", str(search), "--out", str(out), "--top", "2", "--zoo",
                        "unet", "--transfer", "lung_nodule2d", "--reuse", str(zoo_dir),
                        *args]) == 0
    err = capsys.readouterr().err
    assert "reused 1 finished trial(s)" in err and "winner:" in err
    res = pd.read_csv(out / "results.csv")
    assert (res["status"] == "ok").all()
    from skipdsl.search.retrain import top_specs

    top2 = {skipdsl.load(p).name for p in top_specs(search, 2)}
    assert set(res[res["dataset"] == "nuclei2d"]["model"]) == {"unet", *top2}
    unet = res[(res["model"] == "unet") & (res["dataset"] == "nuclei2d")].iloc[0]
    assert "reused_from" in json.loads(
        (out / "trials" / unet["trial_key"] / "result.json").read_text())
    winner = skipdsl.load(out / "winner.yaml")
    assert set(res[res["dataset"] == "lung_nodule2d"]["model"]) == {"unet", winner.name}
    # every network at 30k parameters +-3%
    assert ((res["params"] / 30_000 - 1).abs() <= 0.03).all()
    # the winner has the best mean validation IoU of the searched networks, and its weights
    curves = pd.read_csv(out / "curves.csv")
    val = curves[curves["dataset"] == "nuclei2d"].groupby("model")["val_iou"].max()
    searched = [m for m in val.index if m != "unet"]
    assert val[searched].idxmax() == winner.name
    ck = load_checkpoint(out / "winner.pt", spec=out / "winner.yaml")
    assert ck is not None
    md = (out / "retrain.md").read_text()
    assert winner.name in md and "the test split does not select" in md
    assert "### lung_nodule2d" in (out / "report.md").read_text()
