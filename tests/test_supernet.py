"""The one-shot supernet: a gated path on the shared weights is the sub-network compiled alone,
gated-off edges and nodes do not run, and ``search run --strategy oneshot`` end to end."""
from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

import skipdsl
from skipdsl.cli import run as skipdsl_cli
from skipdsl.compiler import subnetwork
from skipdsl.errors import SpecError
from skipdsl.search.cli import main as search_main
from skipdsl.search.space import loads_space
from skipdsl.search.supernet import Supernet, zoo_topology
from skipdsl.train.metrics import count_params


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = Supernet("oneshot4", width_scale=0.125)  # widths 4, 8, 16, 32
    with torch.no_grad():  # BN statistics that are not the identity, so eval mode uses them
        for m in n.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return n.eval()


def _alone(net, cand):
    """The candidate compiled on its own, given the supernet's weights."""
    sub = skipdsl.compile(cand.spec)
    missing, unexpected = sub.load_state_dict(net.net.state_dict(), strict=False)
    assert missing == []  # every weight of the sub-network exists in the supernet
    return sub.eval(), unexpected


def _edge_modules(gm) -> set[str]:
    return {n.target.split(".")[1] for n in gm.graph.nodes
            if n.op == "call_module" and n.target.startswith("edges.")}


def test_sampled_paths_equal_the_subnetworks_compiled_alone(net):
    rng = random.Random(3)
    x = torch.randn(2, 3, 32, 32)
    sizes = set()
    for _ in range(4):
        cand = net.sample(rng)
        path = net.path(cand)
        sub, unexpected = _alone(net, cand)
        assert unexpected  # the supernet holds more than this path
        with torch.no_grad():
            a, b = path(x), sub(x)
        assert a.shape == (2, 1, 32, 32)
        assert torch.equal(a, b)  # exactly: same modules, same operations, same order
        assert count_params(path) == count_params(sub) < count_params(net.net)
        # the path runs the candidate's edges only: one projection per open edge
        assert _edge_modules(path) == {f"{u}__{v}" for u, v in cand.edges}
        sizes.add(len(cand.edges))
    assert len(sizes) > 1  # different sub-networks were drawn
    # and the whole superset differs from a path
    with torch.no_grad():
        assert not torch.equal(net.net(x), net.path(cand)(x))


def test_gated_off_edges_do_not_run_and_get_no_gradient(net):
    cand = net.candidate(zoo_topology(net, "unet"))
    edges = dict(net.net.edges.named_children())
    off = [k for k in edges if tuple(k.split("__")) not in cand.edges]
    called = []
    hooks = [m.project.register_forward_hook(lambda *a, k=k: called.append(k))
             for k, m in edges.items()]
    try:
        net.zero_grad(set_to_none=True)
        net.train()
        net.sampler = lambda: cand  # as SPOS training draws a path per forward call
        net(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        net.sampler = None
        net.eval()
        for h in hooks:
            h.remove()
    assert off and set(called) == {f"{u}__{v}" for u, v in cand.edges}
    for k in off:
        assert all(p.grad is None for p in edges[k].parameters())
    for u, v in cand.edges:
        assert all(p.grad is not None for p in edges[f"{u}__{v}"].parameters())
    net.zero_grad(set_to_none=True)


def test_a_candidate_with_gated_off_nodes(net):
    # x_1_1 gets no open edge (gated off); x_0_1 gets one but feeds nothing open (gated off)
    point = {k: "off" for k in net.choices()}
    for e in ("x_3_0-x_2_1", "x_2_0-x_2_1", "x_2_1-x_1_2", "x_1_0-x_1_2", "x_1_2-x_0_3",
              "x_0_0-x_0_3", "x_0_0-x_0_1", "x_0_1-x_0_2", "x_0_0-x_0_2"):
        point[f"edge_{e}"] = "on"
    cand = net.candidate(point)
    assert set(cand.gated_off) == {"x_1_1", "x_0_1", "x_0_2"}
    assert "x_1_1" not in cand.nodes and ("x_0_0", "x_0_1") not in cand.edges
    assert cand.spec.nodes == ["x_0_0", "x_1_0", "x_2_0", "x_3_0", "x_2_1", "x_1_2", "x_0_3"]
    path = net.path(cand)
    assert "x_1_1" not in {n.target for n in path.graph.nodes if n.op == "call_module"}
    sub, _ = _alone(net, cand)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(path(x), sub(x))
    # UNet's topology is the same network: the same canonical hash
    assert net.candidate(zoo_topology(net, "unet")).hash == cand.hash


def test_points_that_lose_an_encoder_level_or_the_head_are_not_networks(net):
    point = {k: "on" for k in net.choices()}
    for k in list(point):
        if k.startswith("edge_x_3_0-"):
            point[k] = "off"  # the bottom level feeds nothing
    with pytest.raises(SpecError, match="x_3_0 reaches the head through no open edge"):
        net.candidate(point)
    with pytest.raises(SpecError, match="no open path from the input reaches the head"):
        net.candidate({k: "off" for k in net.choices()})
    with pytest.raises(SpecError, match="not a topology parameter"):
        net.candidate({"edge_x_9_9-x_0_3": "on"})


def test_subnetwork_refuses_a_spec_built_differently(net):
    cand = net.candidate(zoo_topology(net, "unetsharp"))
    data = cand.spec.to_dict()
    data["decoder"]["aggregate"] = "concat"  # the block would see other input channels
    with pytest.raises(SpecError, match="built differently in the superset") as err:
        subnetwork(net.net, skipdsl.spec.from_dict(data))
    assert err.value.node  # names the node


def test_rule_space_supernet_and_fix_errors():
    # the rule-based default space: depth, widths and blocks pinned (first choices), rules gated
    net = Supernet("default", width_scale=0.125)
    assert net.spec.depth == 4 and "nodes" in net.choices()
    cand = net.candidate(zoo_topology(net, "unetsharp"))
    sub = skipdsl.compile(cand.spec)
    assert sub.load_state_dict(net.net.state_dict(), strict=False).missing_keys == []
    text = (skipdsl.search.space.spaces_dir() / "oneshot4.yaml").read_text()
    bad = loads_space(text.replace("  kernel: 1\n", "  kernel: 1\n  fix: {depht: 4}\n"),
                      source="bad.yaml")
    with pytest.raises(SpecError, match="'depht' is not a dimension"):
        Supernet(bad)


def test_oneshot_cli_end_to_end(tmp_path):
    out = tmp_path / "oneshot"
    threads = torch.get_num_threads()
    try:
        rc = search_main(["run", "--strategy", "oneshot", "--dataset", "nuclei2d", "--trials",
                          "8", "--top-k", "1", "--no-zoo-retrain", "--out", str(out),
                          "--epochs", "1", "--n", "32", "--supernet-epochs", "1",
                          "--threads", "1", "--width-scale", "0.125", "--sampler-seed", "0",
                          "--latency-iters", "1"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    df = pd.read_csv(out / "trials.csv")
    rank = df[(df["phase"] == "rank") & (df["state"] == "COMPLETE")]
    assert len(rank) == 8 and set(rank["zoo"].dropna()) >= {"unetsharp", "unet"}
    assert rank["inherited_iou"].between(0, 1).all() and (rank["latency_ms"] > 0).all()
    re = df[(df["phase"] == "retrain") & (df["state"] == "COMPLETE")]
    assert len(re) == 1  # both scores recorded for the retrained candidate
    r = re.iloc[0]
    src = rank[rank["number"] == r["of_trial"]].iloc[0]
    assert r["inherited_iou"] == src["inherited_iou"] and 0 <= r["iou"] <= 1
    assert r["hash"] == src["hash"] and r["params"] == src["params"]
    (spec_file,) = sorted((out / "pareto").glob("*.yaml"))
    spec = skipdsl.load(spec_file)
    assert skipdsl.spec_hash(spec) == r["hash"]
    assert spec_file.with_suffix(".pt").is_file()
    assert skipdsl_cli(["compile", str(spec_file)]) == 0
    report = (out / "report.md").read_text()
    assert "Networks scored per CPU hour" in report
    assert (out / "supernet.pt").is_file() and (out / "pareto.png").is_file()
    (out / "report.md").unlink()
    assert search_main(["report", str(out)]) == 0 and (out / "report.md").is_file()


def _skip5(supernet: str):
    from pathlib import Path

    text = (Path(skipdsl.__file__).parent / "spaces" / "skip5.yaml").read_text()
    return loads_space(text + f"\nsupernet: {supernet}\n", source="skip5+supernet")


@pytest.mark.parametrize("model", ["unetsharp", "unetpp", "unet"])
def test_the_concat_supernet_contains_the_zoo_s_concat_networks(model):
    """aggregate: concat: an input that is off contributes zeros, so UNet#, UNet++ and UNet (at
    the supernet's widths) are its candidates, and the path over shared weights computes what the
    candidate compiled alone with the first convolutions' kept channels computes."""
    from skipdsl.search.space import active_spec

    sp = _skip5("{aggregate: concat, fix: {dec_repeats: 2}}")
    sn = Supernet(sp, width_scale=0.125, in_channels=3, num_classes=1).eval()
    cand = sn.candidate(zoo_topology(sn, model))
    zoo = active_spec(skipdsl.load(model).replace(deep_supervision=False))
    zoo = skipdsl.spec.scale_spec(zoo, 0.125)
    assert cand.hash == skipdsl.spec_hash(zoo)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for m in sn.net.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        a, b = sn.path(cand)(x), sn.extract(cand).eval()(x)
        full = sn.net(x)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, full, atol=1e-3)
    # a sparser candidate differs: the masks change what the blocks see
    assert count_params(sn.extract(cand)) < count_params(sn.net)


def test_edge_count_sampling_covers_sparse_and_dense_paths():
    uni = Supernet(_skip5("{aggregate: concat}"), width_scale=0.125)
    cnt = Supernet(_skip5("{aggregate: concat, sampling: edges}"), width_scale=0.125)
    rng_a, rng_b = random.Random(0), random.Random(0)
    a = [len(uni.sample(rng_a).edges) for _ in range(60)]
    b = [len(cnt.sample(rng_b).edges) for _ in range(60)]
    spread = lambda v: max(v) - min(v)  # noqa: E731
    assert spread(b) > spread(a) and min(b) < min(a) and max(b) >= max(a)
