"""The committed results keep their trial keys: planning the committed commands again gives
exactly the keys stored under results/, so re-running a command into a copy of its folder
trains nothing. Covers Table 1 (results/cpu-zoo, 120 trials), the instance smoke runs and the
one-shot searches' retrained trials (their cache keys)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from skipdsl.bench import runner, store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

#: folder -> (the plan of its committed command, its number of trials)
COMMANDS = {
    # bench run --models unet,wunet,unetpp,unet3p,unetsharp --datasets nuclei2d,liver2d,
    #   brain_tumor2d,lung_nodule2d,lung_nodule3d --seeds 0,1,2 --ds both --budget cpu
    "cpu-zoo": (dict(models=["unet", "wunet", "unetpp", "unet3p", "unetsharp"],
                     datasets=["nuclei2d", "liver2d", "brain_tumor2d", "lung_nodule2d",
                               "lung_nodule3d"],
                     seeds=[0, 1, 2], deep_supervision="both", budget="cpu"), 120),
    # bench run --task instance --models maskrcnn_fpn,maskrcnn_sharp --datasets nuclei2d
    #   --budget smoke
    "instance-smoke": (dict(models=["maskrcnn_fpn", "maskrcnn_sharp"], datasets=["nuclei2d"],
                            budget="smoke", task="instance"), 2),
    "instance-smoke-pp3p": (dict(models=["maskrcnn_pp", "maskrcnn_3p"], datasets=["nuclei2d"],
                                 budget="smoke", task="instance"), 2),
}


@pytest.mark.parametrize("folder", sorted(COMMANDS))
def test_committed_commands_plan_the_stored_keys(folder):
    kwargs, n = COMMANDS[folder]
    trials = runner.plan(**kwargs)
    stored = store.finished(RESULTS / folder)
    assert len(trials) == n == len(stored)
    assert {t.key for t in trials} == set(stored)


def test_the_table1_command_into_a_copy_of_cpu_zoo_trains_nothing(tmp_path):
    """bench run's own path: run_sweep skips every planned trial found in the folder."""
    src, out = RESULTS / "cpu-zoo", tmp_path / "cpu-zoo"
    for p in (src / "trials").glob("*/result.json"):
        (out / "trials" / p.parent.name).mkdir(parents=True)
        shutil.copy(p, out / "trials" / p.parent.name / p.name)
    kwargs, n = COMMANDS["cpu-zoo"]
    summary = runner.run_sweep(runner.plan(**kwargs), out, backend="local", progress=False)
    assert summary.ran == [] and summary.failed == [] and len(summary.skipped) == n == 120


@pytest.mark.parametrize("folder", ["oneshot-nuclei2d", "oneshot-liver2d"])
def test_search_retrain_keys_are_unchanged(folder):
    """A one-shot search's retrained trials are cached under a key of the sub-network's hash,
    the dataset, the budget, the seed and the result-changing settings: recomputed from the
    committed trials.csv points, they are the stored keys."""
    from skipdsl.bench.store import trial_key
    from skipdsl.search.objective import RESULT_OVERRIDES, cgm_key
    from skipdsl.search.supernet import Supernet

    d = RESULTS / "search" / folder
    meta = json.loads((d / "search.json").read_text())
    sn = yaml.safe_load((d / "supernet.yaml").read_text())
    cfg = meta["config"]
    net = Supernet(meta["space"], width_scale=cfg["width_scale"],
                   in_channels=sn["in_channels"], num_classes=sn["num_classes"])
    rows = [r for r in csv.DictReader((d / "trials.csv").open()) if r["key"]]
    assert rows
    for r in rows:
        point = {k[2:]: v for k, v in r.items() if k.startswith("p_") and v}
        cand = net.candidate(point)
        extra = {"cgm": cgm_key(cand.spec), "loss": cand.spec.loss,
                 **{k: cfg["overrides"].get(k) for k in RESULT_OVERRIDES}}
        key = trial_key(cand.hash, cfg["dataset"], cfg["budget"], cfg["seed"], False, extra)
        assert key == r["key"], (r["number"], r["zoo"])
