"""Search spaces: files, sampling into checked specs, zoo models as points, canonical hashes."""
from __future__ import annotations

import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skipdsl
from conftest import RandomTrial
from skipdsl import SpecError
from skipdsl.search.objective import SearchConfig, prepare
from skipdsl.search.space import (SearchSpace, active_spec, list_spaces, load_space,
                                  loads_space, scale_spec)

NODE_KEYS = ("level", "column", "kind", "width", "in_channels", "block", "aggregate")
EDGE_KEYS = ("op", "factor", "project", "align_corners")




def isomorphic(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    return nx.is_isomorphic(
        a, b,
        node_match=lambda x, y: {k: x.get(k) for k in NODE_KEYS} == {k: y.get(k) for k in NODE_KEYS},
        edge_match=lambda x, y: {k: x.get(k) for k in EDGE_KEYS} == {k: y.get(k) for k in EDGE_KEYS})


@pytest.fixture(scope="module")
def space():
    return load_space()  # the default space, as `skipdsl search run` without --space


def test_shipped_spaces_load():
    assert {"default", "edges4"} <= set(list_spaces())
    for name in list_spaces():
        s = load_space(name)
        assert s.size() > 1
    assert load_space(None).name == "default"


def _variants(name: str):
    """The zoo model as trained by default, and with deep supervision / CGM where it has them."""
    z = skipdsl.load(name)
    yield z
    if len(z.heads) > 1:
        yield z.replace(deep_supervision=True)
    if any(h.cgm for h in z.heads):
        yield z.replace(cgm=True)
        if len(z.heads) > 1:
            yield z.replace(deep_supervision=True, cgm=True)


@pytest.mark.parametrize("model", skipdsl.spec.zoo_names())
def test_every_zoo_model_is_a_point_of_the_default_space(space, model):
    for zoo in _variants(model):
        point = space.point_of(zoo)
        sample = space.build(point, name=model)
        assert isomorphic(skipdsl.graph(zoo), skipdsl.graph(sample)), (model, point)
        # the same network by canonical hash (heads as trained), and the same parameter count
        assert skipdsl.spec_hash(sample) == skipdsl.spec_hash(active_spec(zoo))
        n = lambda s: sum(p.numel() for p in skipdsl.compile(s).parameters())  # noqa: E731
        assert n(sample) == n(zoo)


def test_wunet_and_unet3p_use_widths_and_projections(space):
    assert space.point_of("wunet")["width_base"] == 35
    p = space.point_of("unet3p")
    assert p["width_base"] == 64 and p["decoder_width"] == "concat" and p["dec_repeats"] == 1
    assert {p[k] for k in p if k.startswith("edge_") and p[k] != "off"} == {"p64"}


def test_samples_are_checked_specs_or_located_spec_errors(space):
    valid = invalid = 0
    for seed in range(120):
        point = space.suggest(RandomTrial(seed))
        try:
            spec = space.build(point, name=f"s{seed}")
        except SpecError as err:
            invalid += 1
            assert "node x_" in str(err) or "edge" in str(err), str(err)
            continue
        valid += 1
        assert isinstance(spec, skipdsl.Spec)
        # what a sample writes out is a spec the DSL loads back to the same network
        again = skipdsl.loads(spec.to_yaml())
        assert skipdsl.spec_hash(again) == skipdsl.spec_hash(spec)
    assert valid > 40 and invalid > 0


def test_depth_is_a_dimension_of_the_default_space(space):
    assert space.depth == [4, 5]
    depths = set()
    for seed in range(40):
        point = space.suggest(RandomTrial(seed))
        assert ("width_mult_4" in point) == (point["depth"] == 5)
        try:
            spec = space.build(point)
        except SpecError:
            continue
        depths.add(spec.depth)
        assert spec.main_head.node == f"x_0_{spec.depth - 1}"
        assert len(spec.widths) == spec.depth
    assert depths == {4, 5}


def test_a_depth_4_sample_trains_through_the_search_objective(space):
    """UNet# one level shallower, with all its deep-supervision heads: sampled from the default
    space, checked, compiled and trained for one epoch of two steps by the real trainer through
    the Optuna objective (suggest -> prepare -> evaluate -> record)."""
    import math

    import optuna

    from skipdsl.search.study import make_objective, trial_params

    point = {k: v for k, v in space.point_of("unetsharp").items() if k != "width_mult_4"}
    point.update(depth=4, deep_supervision=True, ds_heads="all")
    cfg = SearchConfig(dataset="nuclei2d", width_scale=0.125, prune="none", latency_size=32,
                       latency_iters=1,
                       overrides={"epochs": 1, "n": 8, "batch_size": 4, "threads": 1})
    study = optuna.create_study(directions=cfg.directions)
    study.enqueue_trial(trial_params(space, point))
    study.optimize(make_objective(space, cfg), n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("reason")
    assert t.params["depth"] == 4 and t.user_attrs["status"] == "complete"
    spec = skipdsl.spec.from_dict(t.user_attrs["spec"])
    assert spec.depth == 4 and spec.widths == [4, 8, 16, 32]  # 32 x 2^i x 1/8
    assert spec.main_head.node == "x_0_3" and len(spec.heads) == 6
    assert len(t.user_attrs["curve"]) == 1 and 0.0 <= t.values[0] <= 1.0
    assert all(math.isfinite(v) and v > 0 for v in t.values[1:])
    # the recorded network is the inference one (main head): the compiled depth-4 spec
    inference = skipdsl.compile(spec, deep_supervision=False, cgm=False)
    assert t.user_attrs["params"] == sum(p.numel() for p in inference.parameters())


def test_one_by_one_edges_record_invalid_reasons():
    s = load_space("edges4")
    reasons = []
    for seed in range(60):
        try:
            s.build(s.suggest(RandomTrial(seed)))
        except SpecError as err:
            reasons.append(str(err))
    assert any("no incoming edge" in r or "does not reach any head" in r for r in reasons)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6))
def test_point_round_trip(seed):
    space = load_space()
    point = space.suggest(RandomTrial(seed))
    try:
        spec = space.build(point)
    except SpecError:
        return
    again = space.build(space.point_of(spec))
    assert skipdsl.spec_hash(again) == skipdsl.spec_hash(spec)


def test_same_topology_same_hash_whatever_the_node_order(space):
    point = space.point_of("unet")
    a = space.build(point)
    ids = ["x_0_4", "x_1_3", "x_2_2", "x_3_1", "x_4_0", "x_3_0", "x_2_0", "x_1_0", "x_0_0"]
    listed = a.to_dict()
    listed["nodes"] = ids
    b = skipdsl.spec.from_dict(listed)
    random.Random(0).shuffle(ids)
    listed["nodes"] = ids
    c = skipdsl.spec.from_dict(listed)
    assert skipdsl.spec_hash(a) == skipdsl.spec_hash(b) == skipdsl.spec_hash(c)
    cfg = SearchConfig(dataset="nuclei2d", width_scale=0.125)
    data = space.model_dump(mode="json", by_alias=True)
    data["nodes"] = ["triangle", ids]  # the same node set, given one by one in another order
    explicit = SearchSpace.model_validate(data)
    p2 = dict(point, nodes=",".join(ids))
    assert prepare(space, point, cfg).key == prepare(explicit, p2, cfg).key


def test_scale_spec_scales_widths_and_projections(space):
    s = space.build(space.point_of("unet3p"))
    small = scale_spec(s, 0.125)
    assert small.widths == [8, 16, 32, 64, 128]
    g = skipdsl.graph(small)
    assert {d["project"]["channels"] for _, _, d in g.edges(data=True) if d["project"]} == {8}
    assert g.nodes["x_0_4"]["width"] == 5 * 8  # width: concat follows the projections


def test_point_of_names_the_missing_choice(space):
    spec = skipdsl.load("unet").replace(widths=[24, 48, 96, 192, 384])
    with pytest.raises(SpecError, match="widths"):
        space.point_of(spec)
    data = skipdsl.load("unet").to_dict()
    data["grid"] = {"depth": 3, "widths": [32, 64, 128]}
    data["heads"] = [{"node": "x_0_2", "main": True}]
    with pytest.raises(SpecError, match="depth 3 is not a choice"):
        space.point_of(skipdsl.spec.from_dict(data))


@pytest.mark.parametrize("text, match", [
    ("name: x\nwidths: {base: 32}\nedges: [{rule: skipp}]\n", "did you mean 'skip'"),
    ("name: x\nwidths: {base: 32}\nedges: [{rule: up}]\ndepht: 4\n", "did you mean 'depth'"),
    ("name: x\nwidths: {base: 32}\nedges: [{rule: up}, {rule: up}]\n", "share the parameter"),
    ("name: x\nwidths: {base: 32}\nedges: [{rule: up}]\nfixed: {edges: []}\n", "searches them"),
    ("name: x\nwidths: {base: 32}\nedges: [{from: x_1_0}]\n", "one node in 'to'"),
    ("name: x\nwidths: {base: 32}\nedges: [{rule: up}]\ncgm: [none, fancy]\n", "unknown variant"),
    ("- a list\n", "must be a YAML mapping"),
])
def test_bad_space_files_say_what_is_wrong(text, match):
    with pytest.raises(SpecError, match=match):
        loads_space(text, source="bad.yaml")


def test_unknown_space_lists_the_shipped_ones():
    with pytest.raises(SpecError, match="valid: default, edges4"):
        load_space("defualt")
