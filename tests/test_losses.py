"""Losses against hand-written formulas on tiny tensors (2D and 3D), deep supervision and CGM.

Reference values are computed here from the textbook definitions (Python loops or plain tensor
arithmetic in float64), never by calling the library piece the loss itself uses.
"""
from __future__ import annotations

import math
import warnings
from itertools import product

import pytest
import torch
import torch.nn.functional as F

from skipdsl.errors import SpecError
from skipdsl.losses import (
    LOSSES,
    MS_SSIM_WEIGHTS,
    FocalTerm,
    LovaszHingeTerm,
    MSSSIMTerm,
    SoftOverlapTerm,
    adaptive_ms_ssim,
    build_loss,
    cgm_labels,
    lovasz_hinge,
    ms_ssim_plan,
    pool_target,
)

BIG = 20.0  # |logit| giving probabilities 1 - 2e-9 / 2e-9
C1 = 0.01**2  # SSIM luminance constant for data range 1 (K1 = 0.01)


# ---------------------------------------------------------------------------- references


def sigmoid64(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-x.double()))


def focal_ref(x: torch.Tensor, t: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Mean of -alpha_t (1 - p_t)^gamma log p_t over all elements (Lin et al. 2017)."""
    total = 0.0
    xs, ts = x.double().flatten().tolist(), t.flatten().tolist()
    for xi, ti in zip(xs, ts):
        # log p_t computed stably: log sigmoid(+-x)
        z = xi if ti == 1 else -xi
        log_pt = -math.log1p(math.exp(-z)) if z > 0 else z - math.log1p(math.exp(z))
        pt = math.exp(log_pt)
        at = alpha if ti == 1 else 1 - alpha
        total += -at * (1 - pt) ** gamma * log_pt
    return total / len(xs)


def bce_ref(x: torch.Tensor, t: torch.Tensor) -> float:
    return focal_ref(x, t, alpha=0.5, gamma=0.0) * 2  # alpha 1/2 halves BCE


def overlap_ref(x: torch.Tensor, t: torch.Tensor, smooth: float, jaccard: bool) -> float:
    """Soft Dice (or IoU) loss per (sample, channel), averaged.

    Dice: 1 - (2I + s) / (|P| + |T| + s); IoU: 1 - (2I + s) / (2(|P| + |T| - I) + s),
    i.e. (I + s/2) / (U + s/2) -- MONAI's smoothing of the Jaccard index.
    """
    p = sigmoid64(x).flatten(2)
    tt = t.double().flatten(2)
    inter = (p * tt).sum(-1)
    if jaccard:
        val = 1 - (2 * inter + smooth) / (2 * (p.sum(-1) + tt.sum(-1) - inter) + smooth)
    else:
        val = 1 - (2 * inter + smooth) / (p.sum(-1) + tt.sum(-1) + smooth)
    return float(val.mean())


def lovasz_ref_row(x: list[float], t: list[int]) -> float:
    """Lovasz extension of the Jaccard loss on hinge errors, from its definition.

    Sort pixels by decreasing error m_i = max(0, 1 - x_i s_i); with M_i the first i pixels,
    Delta(M) = |M| / |G u M| (G = foreground); loss = sum_i m_i (Delta(M_i) - Delta(M_{i-1})).
    """
    errors = [1 - xi * (2 * ti - 1) for xi, ti in zip(x, t)]
    order = sorted(range(len(x)), key=lambda i: -errors[i])
    fg = {i for i, ti in enumerate(t) if ti == 1}
    loss, prev, mistakes = 0.0, 0.0, set()
    for i in order:
        mistakes.add(i)
        delta = len(mistakes) / len(fg | mistakes)
        loss += max(errors[i], 0.0) * (delta - prev)
        prev = delta
    return loss


def lovasz_ref(x: torch.Tensor, t: torch.Tensor) -> float:
    rows_x = x.double().flatten(2).flatten(0, 1).tolist()
    rows_t = t.long().flatten(2).flatten(0, 1).tolist()
    return sum(lovasz_ref_row(a, b) for a, b in zip(rows_x, rows_t)) / len(rows_x)


def constant_msssim_loss(weight_last: float) -> float:
    """1 - MS-SSIM for constant images 0 vs 1: every cs = 1 (no variance) and the luminance
    term of the last scale is (2*0*1 + C1) / (0 + 1 + C1)."""
    return 1 - (C1 / (1 + C1)) ** weight_last


def maxpool_ref(t: torch.Tensor, f: int) -> torch.Tensor:
    """Non-overlapping f x f (x f) max pooling by reshaping."""
    b, k, *sp = t.shape
    shape = [b, k]
    for s in sp:
        shape += [s // f, f]
    return t.reshape(shape).amax(dim=tuple(range(3, 2 + 2 * len(sp), 2)))


def rand_case(shape, seed=0, p=0.4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    t = (torch.rand(shape, generator=g) < p).float()
    return x, t


# ---------------------------------------------------------------------------- terms


@pytest.mark.parametrize("shape", [(2, 2, 4, 4), (1, 2, 3, 4, 2)])
def test_focal_matches_formula(shape):
    x, t = rand_case(shape)
    x.view(-1)[:3] = torch.tensor([BIG, -BIG, 0.0])
    got = FocalTerm(alpha=0.25, gamma=2.0)(x, t).item()
    assert got == pytest.approx(focal_ref(x, t), rel=1e-5)
    # alpha=None, gamma=0 is plain BCE
    assert FocalTerm(alpha=None, gamma=0.0)(x, t).item() == pytest.approx(bce_ref(x, t), rel=1e-5)


def test_focal_hand_values():
    # logit 0 -> p = 0.5: 0.25 * 0.5^2 * ln 2 for a foreground pixel, 0.75 * ... for background
    x = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[1.0, 0.0]]]])
    expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert FocalTerm()(x, t).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("jaccard", [False, True])
@pytest.mark.parametrize("smooth", [1.0, 1e-5])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 1, 3, 3, 3)])
def test_dice_iou_match_formula(shape, smooth, jaccard):
    x, t = rand_case(shape, seed=1)
    t[0, 0] = 0  # one empty target
    got = SoftOverlapTerm(smooth, smooth, jaccard=jaccard)(x, t).item()
    assert got == pytest.approx(overlap_ref(x, t, smooth, jaccard), rel=1e-5, abs=1e-6)


def test_dice_empty_cases_by_hand():
    n = 16
    empty = torch.zeros(1, 1, 4, 4)
    dice1 = SoftOverlapTerm(1.0, 1.0)
    # empty target, empty prediction: Laplace smoothing gives 1 - 1/(~0 + 1) = 0
    assert dice1(torch.full_like(empty, -BIG), empty).item() == pytest.approx(0.0, abs=1e-6)
    # empty target, p = 0.5 everywhere: 1 - 1 / (n/2 + 1)
    assert dice1(torch.zeros_like(empty), empty).item() == pytest.approx(1 - 1 / (n / 2 + 1))
    # full target, empty prediction: 1 - 1 / (n + 1)
    assert dice1(torch.full_like(empty, -BIG), torch.ones_like(empty)).item() == pytest.approx(
        1 - 1 / (n + 1), rel=1e-6)
    # IoU, half-overlap with hard probabilities: I = 4, U = 12 -> 1 - (8 + s) / (24 + s)
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :] = 1  # 8 pixels
    x = torch.full_like(t, -BIG)
    x[..., 1:3, :] = BIG  # 8 pixels, 4 overlapping
    s = 1e-5
    assert SoftOverlapTerm(s, s, jaccard=True)(x, t).item() == pytest.approx(
        1 - (8 + s) / (24 + s), rel=1e-5)


def test_lovasz_hand_example():
    # errors 1 - x*s: [-1, 0, 1.5, 4]; sorted labels [1, 0, 0, 1]; Jaccard steps
    # [1/2, 2/3, 3/4, 1] -> gradient [1/2, 1/6, 1/12, 1/4]; loss = 4/2 + 1.5/6 = 2.25
    x = torch.tensor([2.0, -1.0, 0.5, -3.0]).view(1, 1, 2, 2)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert lovasz_hinge(x, t).item() == pytest.approx(2.25, rel=1e-6)
    assert lovasz_ref(x, t) == pytest.approx(2.25)


@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (2, 2, 2, 3, 2)])
def test_lovasz_matches_definition(shape):
    x, t = rand_case(shape, seed=2)
    t[0, 0] = 0  # empty target row
    t[1, 1] = 1  # full target row
    assert LovaszHingeTerm()(x, t).item() == pytest.approx(lovasz_ref(x, t), rel=1e-5)


def test_lovasz_special_cases():
    t = (torch.arange(16).view(1, 1, 4, 4) % 3 == 0).float()
    # perfect with margin >= 1: every hinge error <= 0
    assert lovasz_hinge(BIG * (2 * t - 1), t).item() == 0.0
    # inverted: every error is 1 + BIG; the Jaccard steps telescope to 1
    assert lovasz_hinge(-BIG * (2 * t - 1), t).item() == pytest.approx(1 + BIG)
    # empty target: relu(largest error) = 1 + max logit
    x = torch.linspace(-3, 0.5, 16).view(1, 1, 4, 4)
    assert lovasz_hinge(x, torch.zeros_like(x)).item() == pytest.approx(1.5)
    # empty prediction on full target (all logits -2): every error 3 -> 3
    assert lovasz_hinge(torch.full_like(x, -2.0), torch.ones_like(x)).item() == pytest.approx(3.0)


# ---------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_plan():
    assert ms_ssim_plan((256, 256)) == (5, 11)  # 256 / 16 = 16 >= 11
    assert ms_ssim_plan((96, 96)) == (5, 5)  # REFERENCE: 96x96 needs win_size <= 5
    assert ms_ssim_plan((16, 16)) == (3, 3)  # ceil(16 / 4) = 4 >= 3, ceil(16 / 8) = 2 < 3
    assert ms_ssim_plan((4, 4)) == (1, 3)
    assert ms_ssim_plan((2, 2)) == (1, 1)
    assert ms_ssim_plan((40, 12, 40)) == (3, 3)  # the smallest dim decides, 3D too


def test_ms_ssim_constant_images_by_hand():
    zeros = torch.full((1, 1, 48, 48), -BIG)
    ones = torch.ones(1, 1, 48, 48)
    term = MSSSIMTerm(win_size=3)  # 48 fits 5 scales with win 3: library path, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = term(zeros, ones).item()
    assert got == pytest.approx(constant_msssim_loss(MS_SSIM_WEIGHTS[-1]), rel=1e-4)
    # perfect prediction of a non-constant mask
    _, t = rand_case((2, 2, 48, 48), seed=3, p=0.3)
    assert term(BIG * (2 * t - 1), t).item() == pytest.approx(0.0, abs=1e-4)


def test_ms_ssim_16x16_adapts_warns_once_and_renormalises():
    term = MSSSIMTerm()
    zeros = torch.full((2, 1, 16, 16), -BIG)
    ones = torch.ones(2, 1, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = term(zeros, ones)
        second = term(zeros, ones)
    msgs = [str(w.message) for w in caught if "MS-SSIM" in str(w.message)]
    assert len(msgs) == 1 and "16x16" in msgs[0], msgs
    assert not [w for w in caught if "Skipping Gaussian" in str(w.message)]
    assert torch.isfinite(first) and first.item() == second.item()
    # three scales kept: last weight renormalised over the first three
    w_last = MS_SSIM_WEIGHTS[2] / sum(MS_SSIM_WEIGHTS[:3])
    assert first.item() == pytest.approx(constant_msssim_loss(w_last), rel=1e-4)


def test_ms_ssim_single_scale_fallback_3d():
    term = MSSSIMTerm()
    with pytest.warns(UserWarning, match=r"2x4x4 .*single-scale SSIM"):
        got = term(torch.full((1, 1, 2, 4, 4), -BIG), torch.ones(1, 1, 2, 4, 4))
    # single scale: the luminance term alone, with full weight
    assert got.item() == pytest.approx(constant_msssim_loss(1.0), rel=1e-4)


def test_adaptive_loop_equals_library_ms_ssim():
    from pytorch_msssim import ms_ssim

    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 2, 64, 64, generator=g), torch.rand(2, 2, 64, 64, generator=g)
    w4 = [w / sum(MS_SSIM_WEIGHTS[:4]) for w in MS_SSIM_WEIGHTS[:4]]
    lib = ms_ssim(x, y, data_range=1.0, win_size=3, weights=w4)
    ours = adaptive_ms_ssim(x, y, levels=4, win_size=3)
    assert ours.item() == pytest.approx(lib.item(), rel=1e-5)


# ---------------------------------------------------------------------------- hybrids


def test_unet3p_hybrid_components():
    loss = build_loss("unet3p_hybrid", win_size=3).per_head
    _, t = rand_case((2, 1, 48, 48), seed=5, p=0.3)
    perfect = loss.components(BIG * (2 * t - 1), t)
    assert set(perfect) == {"focal", "ms_ssim", "iou"}
    for name, value in perfect.items():
        assert value.item() == pytest.approx(0.0, abs=1e-4), name
    # empty target, everything predicted
    empty, x = torch.zeros(1, 1, 48, 48), torch.full((1, 1, 48, 48), BIG)
    parts = loss.components(x, empty)
    assert parts["focal"].item() == pytest.approx(focal_ref(x[..., :1, :1], empty[..., :1, :1]),
                                                  rel=1e-5)
    assert parts["focal"].item() == pytest.approx(0.75 * BIG, rel=1e-6)
    assert parts["ms_ssim"].item() == pytest.approx(constant_msssim_loss(MS_SSIM_WEIGHTS[-1]),
                                                    rel=1e-4)
    s, n = 1e-5, 48 * 48
    assert parts["iou"].item() == pytest.approx(1 - s / (2 * n + s), rel=1e-6)
    total = loss(x, empty).item()
    assert total == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)


def test_unetsharp_hybrid_matches_formula():
    loss = build_loss("unetsharp_hybrid")
    for shape, seed in [((2, 2, 5, 6), 6), ((1, 2, 3, 4, 5), 7)]:
        x, t = rand_case(shape, seed=seed)
        t[0, 0] = 0
        expected = (0.5 * focal_ref(x, t) + overlap_ref(x, t, 1.0, False)
                    + 0.5 * lovasz_ref(x, t))
        assert loss(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_unetsharp_hybrid_special_cases():
    loss = build_loss("unetsharp_hybrid")
    _, t = rand_case((2, 1, 6, 6), seed=8)
    # perfect: every term ~0
    assert loss(BIG * (2 * t - 1), t).item() == pytest.approx(0.0, abs=1e-6)
    # empty target, empty prediction: ~0 thanks to Laplace smoothing
    empty = torch.zeros(2, 1, 6, 6)
    assert loss(torch.full_like(empty, -BIG), empty).item() == pytest.approx(0.0, abs=1e-6)
    # inverted: focal per pixel ~ alpha_t * BIG, dice ~ 1 - 1/(|T| + |P| + 1), lovasz 1 + BIG
    x = -BIG * (2 * t - 1)
    expected = 0.5 * focal_ref(x, t) + overlap_ref(x, t, 1.0, False) + 0.5 * (1 + BIG)
    assert loss(x, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("shape", [(2, 2, 4, 4), (1, 1, 2, 3, 4)])
def test_baselines_match_formula(shape):
    x, t = rand_case(shape, seed=9)
    s = 1e-5
    assert build_loss("bce")(x, t).item() == pytest.approx(bce_ref(x, t), rel=1e-5)
    assert build_loss("dice")(x, t).item() == pytest.approx(overlap_ref(x, t, s, False), rel=1e-5)
    assert build_loss("bce_dice")(x, t).item() == pytest.approx(
        bce_ref(x, t) + overlap_ref(x, t, s, False), rel=1e-5)


# ---------------------------------------------------------------------------- deep supervision


def test_pool_target_is_any_foreground():
    t = torch.zeros(1, 2, 4, 4)
    t[0, 0, 1, 2] = 1  # one pixel in the top-right 2x2 block
    t[0, 1, 3, 0] = 1
    pooled = pool_target(t, (2, 2))
    assert pooled[0, 0].tolist() == [[0, 1], [0, 0]]
    assert pooled[0, 1].tolist() == [[0, 0], [1, 0]]
    _, t3 = rand_case((1, 2, 4, 6, 8), seed=10, p=0.1)
    assert torch.equal(pool_target(t3, (2, 3, 4)), maxpool_ref(t3, 2))
    with pytest.raises(ValueError, match="larger"):
        pool_target(t, (8, 8))


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_deep_supervision_mean_weights_and_pooling(spatial):
    b, k = 2, 2
    g = torch.Generator().manual_seed(11)
    t = (torch.rand((b, k, *spatial), generator=g) < 0.2).float()
    half = tuple(s // 2 for s in spatial)
    outs = {"x_0_1": torch.randn((b, k, *spatial), generator=g),
            "x_0_2": torch.randn((b, k, *spatial), generator=g),
            "x_1_3": torch.randn((b, k, *half), generator=g)}
    th = maxpool_ref(t, 2)
    refs = {"x_0_1": bce_ref(outs["x_0_1"], t), "x_0_2": bce_ref(outs["x_0_2"], t),
            "x_1_3": bce_ref(outs["x_1_3"], th)}
    got = build_loss("bce")(outs, t).item()
    assert got == pytest.approx(sum(refs.values()) / 3, rel=1e-5)
    weighted = build_loss("bce", weights={"x_0_1": 1, "x_0_2": 1, "x_1_3": 2})(outs, t).item()
    assert weighted == pytest.approx((refs["x_0_1"] + refs["x_0_2"] + 2 * refs["x_1_3"]) / 4,
                                     rel=1e-5)
    fast = build_loss("bce", mode="fast", fast_head="x_1_3")(outs, t).item()
    assert fast == pytest.approx(refs["x_1_3"], rel=1e-5)
    # pooled target != naive comparison against a subsampled target
    assert refs["x_1_3"] != pytest.approx(
        bce_ref(outs["x_1_3"], t[(...,) + (slice(None, None, 2),) * len(spatial)]), rel=1e-3)


def test_deep_supervision_upsample_logits_option():
    g = torch.Generator().manual_seed(12)
    t = (torch.rand(1, 1, 8, 8, generator=g) < 0.3).float()
    low = torch.randn(1, 1, 4, 4, generator=g)
    up = F.interpolate(low, size=(8, 8), mode="bilinear", align_corners=True)
    got = build_loss("bce", head_resize="upsample_logits")({"x_2_2": low}, t).item()
    assert got == pytest.approx(bce_ref(up, t), rel=1e-5)


@pytest.mark.parametrize("cgm_loss", ["bce", "ce"])
def test_cgm_term(cgm_loss):
    t = torch.zeros(3, 2, 4, 4)
    t[0, 1, 2, 2] = 1  # sample 0 has organ (in channel 1 only), samples 1, 2 do not
    t[2, 0, 0, 0] = 1  # sample 2 has organ
    assert cgm_labels(t).tolist() == [1.0, 0.0, 1.0]
    z = torch.tensor([[0.3, 1.2], [2.0, -1.0], [-0.5, -0.4]])
    y = [1, 0, 1]
    if cgm_loss == "bce":  # sigmoid BCE against one-hot [1 - y, y], mean over 2B entries
        terms = [bce_ref(z[i, c].view(1, 1, 1, 1), torch.tensor(float(c == y[i])).view(1, 1, 1, 1))
                 for i, c in product(range(3), range(2))]
        cls = sum(terms) / 6
    else:  # softmax CE
        cls = sum(-z[i, y[i]].item() + math.log(math.exp(z[i, 0]) + math.exp(z[i, 1]))
                  for i in range(3)) / 3
    x, _ = rand_case((3, 2, 4, 4), seed=13)
    seg = bce_ref(x, t)
    loss = build_loss("bce", cgm_weight=0.5, cgm_loss=cgm_loss)
    got = loss({"x_0_4": x, "cgm:x_4_0": z}, t).item()
    assert got == pytest.approx(seg + 0.5 * cls, rel=1e-5)
    # two CGM outputs are averaged; a (B, 2, 1, 1) output is accepted
    got2 = loss({"x_0_4": x, "cgm:x_4_0": z, "cgm:x_3_1": z.view(3, 2, 1, 1)}, t).item()
    assert got2 == pytest.approx(got, rel=1e-6)
    parts = loss.breakdown({"x_0_4": x, "cgm:x_4_0": z}, t)
    assert parts["cgm:x_4_0"].item() == pytest.approx(cls, rel=1e-5)


# ---------------------------------------------------------------------------- gradients, errors


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_every_loss_gives_finite_gradients(name, spatial):
    _, t = rand_case((2, 2, *spatial), seed=14)
    half = tuple(s // 2 for s in spatial)
    outs = {"x_0_1": -BIG * (2 * t - 1),  # inverted: MS-SSIM factors clamp to 0
            "x_0_2": torch.randn(2, 2, *spatial),
            "x_1_3": torch.randn(2, 2, *half),
            "cgm:x_4_0": torch.randn(2, 2)}
    leaves = {k: v.clone().requires_grad_() for k, v in outs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MS-SSIM adaptation notes
        loss = build_loss(name)(leaves, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for key, leaf in leaves.items():
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), key
    assert leaves["x_0_2"].grad.abs().sum() > 0 and leaves["cgm:x_4_0"].grad.abs().sum() > 0


def test_errors_are_readable():
    with pytest.raises(SpecError, match="did you mean 'unet3p_hybrid'"):
        build_loss("unet3p_hybird")
    with pytest.raises(SpecError, match="unknown argument"):
        build_loss("bce", dice_smooth=1.0)
    assert build_loss("dice", dice_smooth=None) is not None  # None kwargs are dropped
    x, t = rand_case((1, 1, 4, 4))
    with pytest.raises(SpecError, match="missing: \\['x_0_2'\\]"):
        build_loss("bce", weights={"x_0_1": 1.0})({"x_0_1": x, "x_0_2": x}, t)
    with pytest.raises(SpecError, match="fast_head"):
        build_loss("bce", mode="fast")
    with pytest.raises(ValueError, match="disagree"):
        build_loss("bce")(x, t.expand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="CGM logits"):
        build_loss("bce")({"x": x, "cgm:x": torch.zeros(1, 3)}, t)
