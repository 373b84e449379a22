"""The equal-size topology search: the skip5 space (per-column rules, trimming, the zoo as
points), ``--params`` in the search, successive halving / Hyperband, determinism, a SIGKILL."""
from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pandas as pd
import pytest

import skipdsl
from skipdsl.errors import SpecError
from skipdsl.graph import spec_hash
from skipdsl.search.cli import main as search_main
from skipdsl.search.objective import SearchConfig
from skipdsl.search.runner import run_search
from skipdsl.search.space import OFF, active_spec, load_space, loads_space
from skipdsl.search.study import make_storage, zoo_points
from skipdsl.sizing import count
from skipdsl.train.common import plan_trial

from test_search_fakes import fake_train, resume_and_check_died, run_until_a_trial_hangs

SKIP5_ZOO = ("unet", "unetpp", "unet3p", "unetsharp")
HALVING = dict(dataset="nuclei2d", budget="smoke", latency_size=32, latency_iters=2,
               sampler_seed=0, workers=1, space="skip5", objectives=("iou",), prune="halving",
               params="unetsharp", log=lambda s: None)


def _study(out: Path):
    settings = json.loads((out / "search.json").read_text())
    return optuna.load_study(study_name=settings["study_name"],
                             storage=make_storage(settings["storage_url"], heartbeat=False))


class _Random:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(choices)


@pytest.mark.parametrize("model", SKIP5_ZOO)
def test_the_zoo_is_in_skip5(model):
    """UNet, UNet++, UNet 3+ and UNet# (as the search trains them: main head) are points."""
    sp = load_space("skip5")
    zoo = active_spec(skipdsl.load(model).replace(deep_supervision=False))
    point = sp.point_of(zoo)
    assert spec_hash(sp.build(point)) == spec_hash(zoo)
    # a rule on in every column is written once, without 'to', as the zoo writes it
    assert all("to" not in e for e in sp.build(point).to_dict()["edges"])


def test_skip5_space_has_a_choice_per_rule_and_column():
    sp = load_space("skip5")
    keys = [e.key for e in sp.edges]
    assert "edge_dense_c1" in keys and "edge_fullscale_up_c2" in keys
    assert "edge_fullscale_up_c1" not in keys  # no source in column 1
    assert "edge_fullscale_down_c4" not in keys  # x_0_4 has none
    assert set(zoo_points(sp)) >= set(SKIP5_ZOO)
    # a rule in some columns only: 'to' names that column's nodes
    p = sp.point_of(active_spec(skipdsl.load("unetsharp").replace(deep_supervision=False)))
    p["edge_fullscale_up_c3"] = OFF
    edges = sp.build(p).to_dict()["edges"]
    fs = [e for e in edges if e["rule"] == "fullscale_up"]
    assert [sorted(e["to"]) for e in fs] == [["x_0_2", "x_1_2", "x_2_2"], ["x_0_4"]]


def test_trim_drops_dead_nodes_and_refuses_a_lost_head():
    sp = load_space("skip5")
    zoo = active_spec(skipdsl.load("unet3p").replace(deep_supervision=False))
    p = sp.point_of(zoo)
    p["nodes"] = "triangle"  # UNet 3+'s edges over the whole triangle: the nodes off the
    spec = sp.build(p)       # diagonal reach no head (no dense edge) and are trimmed
    assert isinstance(spec.nodes, list) and len(spec.nodes) == 9
    assert spec_hash(spec) == spec_hash(zoo)
    q = sp.point_of(active_spec(skipdsl.load("unet").replace(deep_supervision=False)))
    q["edge_skip_c4"] = q["edge_up_c4"] = OFF  # nothing reaches the main head
    with pytest.raises(SpecError, match="main head") as err:
        sp.build(q)
    assert "x_0_4" in str(err.value)
    q = sp.point_of(active_spec(skipdsl.load("unet").replace(deep_supervision=False)))
    q["edge_up_c1"] = OFF  # the bottom node feeds nothing
    with pytest.raises(SpecError, match="encoder node x_4_0 reaches no head"):
        sp.build(q)


def test_most_random_points_are_networks_and_distinct():
    sp = load_space("skip5")
    ok, hashes = 0, set()
    for i in range(60):
        try:
            spec = sp.build(sp.suggest(_Random(i)))
        except SpecError:
            continue
        ok += 1
        hashes.add(spec_hash(spec))
    assert ok >= 40 and len(hashes) == ok


def test_per_column_needs_a_rule_without_to(tmp_path):
    text = load_space("skip5").source
    bad = (Path(skipdsl.__file__).parent / "spaces" / "skip5.yaml").read_text().replace(
        "{rule: up, per_column: true", "{rule: up, to: [x_0_4], per_column: true")
    with pytest.raises(SpecError, match="per_column needs a rule without 'to'"):
        loads_space(bad, source=str(text))


def test_halving_needs_one_objective():
    with pytest.raises(ValueError, match="one objective"):
        SearchConfig(dataset="nuclei2d", objectives=("iou", "params"), prune="halving")
    assert search_main(["run", "--strategy", "halving", "--dataset", "nuclei2d", "--trials",
                        "2", "--out", "/nonexistent", "--objectives", "iou,latency"]) == 2


def test_halving_search_at_equal_size_is_deterministic_and_prunes(tmp_path):
    a = run_search(trials=14, out=tmp_path / "a", trainer=fake_train, **HALVING)
    assert a.finished == 14
    study = _study(tmp_path / "a")
    df = pd.read_csv(tmp_path / "a" / "trials.csv")
    settings = json.loads((tmp_path / "a" / "search.json").read_text())
    target = settings["config"]["size_target"]
    ws = plan_trial({"dataset": "nuclei2d", "budget": "smoke"}).width_scale
    ref = count(skipdsl.spec.scale_spec(skipdsl.load("unetsharp"), ws), in_channels=3,
                num_classes=1).params  # UNet# at the budget, as bench run --params has it
    assert target == ref
    done = df[df["status"] == "complete"]
    assert len(done) >= 4 and ((done["params"] / target - 1).abs() <= 0.03).all()
    assert set(SKIP5_ZOO) <= set(df["zoo"].dropna())
    assert (df["width_scale"].dropna() > 0).all()
    # successive halving stopped some, and their rungs are in the study (they survive a kill)
    assert (df["status"] == "pruned").sum() >= 1
    rungs = [k for t in study.get_trials() for k in t.system_attrs if k.startswith("completed_rung")]
    assert rungs
    md = (tmp_path / "a" / "report.md").read_text()
    assert "SuccessiveHalvingPruner" in md and "## Best networks" in md
    # one objective: the best three networks are written as specs (the seed study's input)
    top = sorted((tmp_path / "a" / "pareto").glob("*.yaml"))
    best = done.sort_values("iou", ascending=False).drop_duplicates("hash").head(3)
    assert sorted(skipdsl.spec_hash(skipdsl.load(p)) for p in top) == sorted(best["hash"])
    assert "per CPU hour" in md and "unetsharp = " in md
    # the same sampler seed gives the same trials
    run_search(trials=14, out=tmp_path / "b", trainer=fake_train, **HALVING)
    da = [t.params for t in _study(tmp_path / "a").get_trials()]
    db = [t.params for t in _study(tmp_path / "b").get_trials()]
    assert da == db


def test_hyperband_and_an_unreachable_size(tmp_path):
    s = run_search(trials=6, out=tmp_path / "h", trainer=fake_train,
                   **{**HALVING, "prune": "hyperband", "zoo": False})
    assert s.finished == 6
    assert "HyperbandPruner" in (tmp_path / "h" / "report.md").read_text()
    # 50 parameters: no candidate can be that small; every sample is refused with the range,
    # and the search stops after too many of them, keeping what it recorded
    s = run_search(trials=2, out=tmp_path / "u", trainer=fake_train,
                   **{**HALVING, "params": "50", "zoo": False})
    df = pd.read_csv(tmp_path / "u" / "trials.csv")
    assert s.finished == 0 and (df["status"] == "invalid").all()
    small = df["reason"].str.contains("cannot be made as small as 50 parameters") & \
        df["reason"].str.contains("reachable: ")
    assert small.mean() > 0.7  # the rest: points that are not networks at all
    assert (small | df["reason"].str.contains("not a network")).all()


def test_a_killed_halving_search_resumes_without_losing_trials(tmp_path):
    out, marker = tmp_path / "kill", tmp_path / "hanging"
    kw = {k: v for k, v in HALVING.items() if k != "log"}
    beat = dict(heartbeat=1, grace=4, zoo=False)
    first = run_search(trials=5, out=out, trainer=fake_train, **beat, **HALVING)
    before = {t.number: (t.state, t.values, dict(t.system_attrs))
              for t in _study(out).get_trials()}
    pid = run_until_a_trial_hangs(out, marker, trials=6, **beat, **kw)
    hung = next(t for t in _study(out).get_trials() if t.state.name == "RUNNING")
    df = resume_and_check_died(out, hung, rf"worker .+:{pid}", trials=6, **beat,
                               **{k: v for k, v in HALVING.items() if k != "log"})
    after = {t.number: t for t in _study(out).get_trials()}
    for n, (state, values, attrs) in before.items():  # finished trials and rungs untouched
        assert after[n].state == state and after[n].values == values
        assert {k: v for k, v in after[n].system_attrs.items()
                if k.startswith("completed_rung")} == \
            {k: v for k, v in attrs.items() if k.startswith("completed_rung")}
    assert first.finished == 5 and len(df) >= 7
