"""Deep supervision heads, pruning and the classification-guided module."""
import math

import pytest
import torch

import skipdsl
from skipdsl.heads import GATED_LOGIT

W = [4, 8, 16, 32, 64]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("level,count", [(1, 103_041), (2, 556_002), (3, 2_531_139)])
def test_unetsharp_pruned_counts(level, count):
    full = skipdsl.compile("unetsharp", deep_supervision=True)
    assert n_params(skipdsl.prune(full, level)) == count


@pytest.mark.parametrize("name", ["unetsharp", "unetpp"])
@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 32))])
def test_pruned_output_equals_full_head_bit_for_bit(name, dims, size):
    torch.manual_seed(0)
    full = skipdsl.compile(name, deep_supervision=True, widths=W, dims=dims).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = full(x)
        for level in (1, 2, 3):
            pruned = skipdsl.prune(full, level).eval()
            assert torch.equal(pruned(x), ref[f"x_0_{level}"])


def test_pruning_shares_weights_and_returns_its_heads():
    full = skipdsl.compile("unetsharp", deep_supervision=True, widths=W)
    pruned = skipdsl.prune(full, 2)
    assert pruned.x_0_0[0].conv.weight is full.x_0_0[0].conv.weight
    assert not hasattr(pruned, "x_0_3") and not hasattr(pruned, "x_2_2")
    iso = skipdsl.prune(full, 2, deep_supervision=True)
    out = iso(torch.randn(2, 3, 32, 32))
    assert list(out) == ["x_0_2", "x_0_1"]
    # isolated training of L2: every parameter of the sub-network gets a gradient
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in iso.parameters())


def test_deep_supervision_heads_of_the_zoo():
    assert skipdsl.compile("unetsharp", deep_supervision=True, widths=W).head_ids == [
        "x_0_4", "x_0_1", "x_0_2", "x_0_3", "x_1_3", "x_2_2", "x_3_1", "x_4_0"]
    assert skipdsl.compile("unetpp", deep_supervision=True, widths=W).head_ids == [
        "x_0_4", "x_0_1", "x_0_2", "x_0_3"]
    m = skipdsl.compile("unet3p", deep_supervision=True, widths=W)
    assert m.head_ids == ["x_0_4", "x_1_3", "x_2_2", "x_3_1", "x_4_0"]
    assert m.heads.x_4_0.kernel_size == (3, 3)


def test_pool_match_keeps_head_resolution():
    spec = skipdsl.load("unetsharp").to_dict()
    for h in spec["heads"]:
        if h["kernel"] == 3:
            h["match"] = "pool"
    model = skipdsl.compile(skipdsl.spec.from_dict(spec), deep_supervision=True, widths=W)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["x_0_1"].shape[-1] == 32
    assert out["x_2_2"].shape[-1] == 8 and out["x_4_0"].shape[-1] == 2


def _force_cgm(model, has_organ: bool):
    """Make every CGM answer one class, whatever the input."""
    for cgm in model.cgm.children():
        last = [m for m in cgm.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        torch.nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.0, 5.0] if has_organ else [5.0, 0.0]))


@pytest.mark.parametrize("name,variants", [("unet3p", {"x_4_0"}), ("unetsharp", None)])
def test_cgm_zeroes_images_classed_empty(name, variants):
    torch.manual_seed(0)
    model = skipdsl.compile(name, deep_supervision=True, cgm=True, widths=W)
    if variants:
        assert set(dict(model.cgm.named_children())) == variants
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x)  # training: gate open, class logits returned for the BCE term
    assert any(k.startswith("cgm:") for k in out)
    assert all(v.shape == (2, 2) for k, v in out.items() if k.startswith("cgm:"))
    model.eval()
    _force_cgm(model, has_organ=False)
    with torch.no_grad():
        out = model(x)
    for k in model.head_ids:
        assert torch.all(out[k] == GATED_LOGIT) and torch.all(torch.sigmoid(out[k]) == 0), k
    _force_cgm(model, has_organ=True)
    with torch.no_grad():
        out = model(x)
    assert all((out[k] != GATED_LOGIT).all() for k in model.head_ids)


def test_unetsharp_cgm_variants():
    model = skipdsl.compile("unetsharp", deep_supervision=True, cgm=True)
    kinds = {name: len(list(m.children())) for name, m in model.cgm.named_children()}
    assert kinds["x_4_0"] == kinds["x_3_1"] == 8  # full: pool, bn, drop, fc, relu, bn, drop, fc
    assert all(kinds[k] == 4 for k in ("x_0_1", "x_0_2", "x_0_3", "x_0_4", "x_1_3", "x_2_2"))


def test_loss_with_all_heads_and_cgm_2d_3d():
    from skipdsl.losses import build_loss

    for dims, size in ((2, (32, 32)), (3, (16, 16, 16))):
        model = skipdsl.compile("unetsharp", deep_supervision=True, cgm=True, widths=W, dims=dims)
        x = torch.randn(2, 3, *size)
        y = (torch.rand(2, 1, *size) > 0.7).float()
        y[1] = 0  # one empty image
        for name in ("unetsharp_hybrid", "unet3p_hybrid", "bce_dice"):
            model.zero_grad()
            loss = build_loss(name)(model(x), y)
            assert torch.isfinite(loss)
            loss.backward()
            assert all(p.grad is not None for p in model.parameters())


# -- prior initialisation of the heads (skipdsl.heads.init_heads) ------------------------------


def test_init_heads_prior_zero_mean_weights_log_odds_bias():
    from skipdsl.heads import init_heads

    m = skipdsl.compile("unetpp", widths=[4, 8, 16, 32, 64], deep_supervision=True,
                        num_classes=3)
    before = {n: h.weight.detach().clone() for n, h in m.heads.named_children()}
    init_heads(m, torch.tensor([0.1, 0.5, 0.0]))
    heads = dict(m.heads.named_children())
    assert sorted(heads) == ["x_0_1", "x_0_2", "x_0_3", "x_0_4"]
    expected = torch.tensor([math.log(0.1 / 0.9), 0.0, math.log(1e-3 / (1 - 1e-3))])
    for name, head in heads.items():
        w = head.weight.flatten(1)
        # the He draw minus its mean per class: both signs, same spread
        torch.testing.assert_close(w.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
        torch.testing.assert_close(w, before[name].flatten(1)
                                   - before[name].flatten(1).mean(dim=1, keepdim=True))
        assert bool((w > 0).any(dim=1).all()) and bool((w < 0).any(dim=1).all())
        torch.testing.assert_close(head.bias, expected)  # 0.0 is clamped to 1e-3
    # a constant feature map (any common offset) gives exactly the prior
    feats = torch.full((1, heads["x_0_4"].weight.shape[1], 4, 4), 2.5)
    torch.testing.assert_close(torch.sigmoid(heads["x_0_4"](feats))[0, 0],
                               torch.full((4, 4), 0.1))
    with pytest.raises(ValueError, match="2 prior values for 3 classes"):
        init_heads(m, torch.tensor([0.1, 0.2]))
