"""``skipdsl search proxy-check``: proxies scored on stand-alone networks, rank agreement."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import skipdsl
from skipdsl.search.proxy import PROXIES, naswot, rank_agreement, run_proxy_check, synflow

from test_search_fakes import fake_train


def test_rank_agreement_counts_what_it_says():
    truth = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    a = rank_agreement(truth, truth)
    assert a["tau"] == pytest.approx(1) and a["tau_top_half"] == pytest.approx(1)
    assert a["top5"] == 5
    b = rank_agreement([-x for x in truth], truth)
    assert b["tau"] == pytest.approx(-1) and b["top5"] == 2  # 8 networks: 2 of 5 shared
    assert math.isnan(rank_agreement([1, 2], [1, 2])["tau"])


def test_zero_cost_proxies_see_the_network():
    torch.manual_seed(0)
    small = skipdsl.compile(skipdsl.spec.scale_spec(skipdsl.load("unet"), 0.125))
    big = skipdsl.compile(skipdsl.spec.scale_spec(skipdsl.load("unet"), 0.25))
    shape = (3, 32, 32)
    assert synflow(big, shape) > synflow(small, shape) > 0
    batch = torch.randn(6, *shape)
    s = naswot(small, batch)
    assert math.isfinite(s)
    # identical inputs give identical codes: the kernel is singular
    assert naswot(small, batch[:1].repeat(6, 1, 1, 1)) == float("-inf")
    # the model is left as it was (no hooks, parameters untouched)
    w = next(small.parameters()).clone()
    synflow(small, shape)
    assert torch.equal(w, next(small.parameters())) and not any(
        m._forward_hooks for m in small.modules())


def test_proxy_check_on_a_small_study(tmp_path):
    res = run_proxy_check("skip5", dataset="nuclei2d", networks=8, out=tmp_path / "p",
                          budget="smoke", trainer=fake_train, workers=1,
                          overrides={"epochs": 4, "n": 24}, supernet_epochs=1,
                          latency_size=32, latency_iters=2, log=lambda s: None)
    table, ag = res["table"], res["agreement"]
    assert len(table) >= 7 and set(PROXIES) <= set(table.columns)
    # both supernets score the zoo's topologies (the concat one contains them)
    for form in ("sum", "concat"):
        inh = table.set_index("zoo")[f"inherited_iou_{form}"]
        assert inh.loc[["unet", "unetpp", "unetsharp"]].between(0, 1).all()
        assert f"| inherited_iou_{form} | iou |" in (tmp_path / "p" / "proxy-check.md").read_text()
    assert {"unet", "unetpp", "unet3p", "unetsharp"} <= set(table["zoo"].dropna())
    # the fake trainer's curve rises to its final value: the epoch-4 IoU ranks as the final
    e4 = ag[(ag["proxy"] == "val_iou_e4") & (ag["against"] == "iou")].iloc[0]
    assert e4["tau"] == pytest.approx(1)
    assert (table["params"] / table["params"].median() - 1).abs().max() <= 0.06
    md = (tmp_path / "p" / "proxy-check.md").read_text()
    assert "| synflow | iou |" in md and "tau_top_half" in md
    assert len(pd.read_csv(tmp_path / "p" / "proxies.csv")) == len(table)
