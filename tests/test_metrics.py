"""Per-case metrics, the empty-case rule, HD95 on shapes with known distances, and cost measures."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from skipdsl.train.metrics import (
    aggregate,
    case_metrics,
    count_params,
    empty_rule,
    gflops,
    inference_throughput,
)


def masks(b: int, k: int, *spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(b, k, *spatial), torch.zeros(b, k, *spatial)


def test_iou_dice_by_hand_and_threshold():
    pred, gt = masks(1, 1, 4, 4)
    gt[0, 0, 0, :4] = 1  # 4 pixels
    pred[0, 0, 0, 1:4] = 0.9  # 3 of them ...
    pred[0, 0, 1, :3] = 0.7  # ... plus 3 false positives
    pred[0, 0, 2, :] = 0.5  # exactly the threshold: background
    row = case_metrics(pred, gt).iloc[0]
    assert row["iou"] == pytest.approx(3 / 7)  # TP 3, FP 3, FN 1
    assert row["dice"] == pytest.approx(6 / 10)
    assert math.isnan(row["hd95"])  # opt-in only
    # a higher threshold drops the 0.7 pixels: TP 3, FP 0, FN 1
    row = case_metrics(pred, gt, threshold=0.8).iloc[0]
    assert (row["iou"], row["dice"]) == (pytest.approx(3 / 4), pytest.approx(6 / 7))
    # boolean masks are used as they are
    row = case_metrics(pred > 0.8, gt.bool()).iloc[0]
    assert row["iou"] == pytest.approx(3 / 4)


def test_rows_columns_and_empty_rules():
    pred, gt = masks(3, 2, 4, 4)
    # case 0: both channels empty in ground truth and prediction -> NaN
    # case 1: channel 0 false positive on empty image, channel 1 missed object
    pred[1, 0, 0, 0] = 1
    gt[1, 1, 2, 2] = 1
    # case 2: channel 0 perfect, channel 1 empty gt and empty prediction
    gt[2, 0, 1:3, 1:3] = 1
    pred[2, 0, 1:3, 1:3] = 1
    df = case_metrics(pred, gt, case_offset=10)
    assert list(df.columns) == ["case", "channel", "iou", "dice", "hd95", "gt_empty",
                                "pred_empty"]
    assert df["case"].tolist() == [10, 10, 11, 11, 12, 12]
    assert df["channel"].tolist() == [0, 1] * 3
    iou = df["iou"].tolist()
    assert math.isnan(iou[0]) and math.isnan(iou[1]) and math.isnan(iou[5])
    assert iou[2] == 0.0 and iou[3] == 0.0 and iou[4] == 1.0
    assert df["dice"].iloc[2] == 0.0 and df["dice"].iloc[4] == 1.0
    assert df["gt_empty"].tolist() == [True, True, True, False, False, True]
    assert df["pred_empty"].tolist() == [True, True, False, True, False, True]
    agg = aggregate(df)
    assert set(agg) == {"iou", "dice", "iou_std", "dice_std", "hd95", "fp_empty", "n_cases"}
    # nanmean over [0, 0, 1]; population std sqrt(2/9)
    assert agg["iou"] == pytest.approx(1 / 3) and agg["dice"] == pytest.approx(1 / 3)
    assert agg["iou_std"] == pytest.approx(math.sqrt(2 / 9))
    # four empty-gt rows, one of them with a prediction
    assert agg["fp_empty"] == pytest.approx(1 / 4)
    assert agg["n_cases"] == 3
    assert math.isnan(agg["hd95"])


def test_aggregate_edge_cases():
    pred, gt = masks(2, 1, 3, 3)
    gt[:, 0, 1, 1] = 1
    pred[:, 0, 1, 1] = 1
    agg = aggregate(case_metrics(pred, gt))
    assert math.isnan(agg["fp_empty"])  # no empty ground truth
    assert agg["iou"] == 1.0 and agg["iou_std"] == 0.0
    agg = aggregate(case_metrics(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)))
    assert math.isnan(agg["iou"]) and agg["fp_empty"] == 0.0


def test_empty_rule_text():
    text = empty_rule()
    assert "NaN" in text and "nanmean" in text and "fp_empty" in text
    import skipdsl.train.metrics as m

    assert "both empty" in m.__doc__ and "nanmean" in m.__doc__


def test_hd95_known_distances_2d():
    pred, gt = masks(3, 1, 32, 32)
    # case 0: two parallel vertical segments 4 pixels apart -> every distance is 4
    gt[0, 0, 3:11, 5] = 1
    pred[0, 0, 3:11, 9] = 1
    # case 1: 16x16 square vs the 12x12 square inside it (2 pixels in on each side).
    # Edge pixels: pred ring (44 px) -> gt ring: all 2. gt ring (60 px) -> pred ring:
    # 48 sides at 2, 8 corner neighbours at sqrt(5), 4 corners at sqrt(8).
    gt[1, 0, 8:24, 8:24] = 1
    pred[1, 0, 10:22, 10:22] = 1
    # case 2: empty prediction -> NaN
    gt[2, 0, 4, 4] = 1
    df = case_metrics(pred, gt, hd95=True)
    gt_to_pred = [2.0] * 48 + [math.sqrt(5)] * 8 + [math.sqrt(8)] * 4
    expected_sq = max(np.quantile(gt_to_pred, 0.95), np.quantile([2.0] * 44, 0.95))
    assert df["hd95"].iloc[0] == pytest.approx(4.0)
    assert df["hd95"].iloc[1] == pytest.approx(expected_sq, rel=1e-5)
    assert math.isnan(df["hd95"].iloc[2])
    assert aggregate(df)["hd95"] == pytest.approx((4.0 + expected_sq) / 2, rel=1e-5)


def test_hd95_3d_and_spacing():
    pred, gt = masks(1, 1, 6, 8, 8)
    gt[0, 0, 1:5, 2, 2] = 1
    pred[0, 0, 1:5, 2, 5] = 1  # shifted 3 voxels along the last axis
    assert case_metrics(pred, gt, hd95=True)["hd95"].iloc[0] == pytest.approx(3.0)
    got = case_metrics(pred, gt, hd95=True, spacing=(1.0, 1.0, 0.5))["hd95"].iloc[0]
    assert got == pytest.approx(1.5)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same"):
        case_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))


def test_count_params():
    conv = nn.Conv2d(3, 8, 3)
    assert count_params(conv) == 3 * 8 * 9 + 8
    shared = nn.Sequential(conv, conv)  # the same module twice counts once
    assert count_params(shared) == 3 * 8 * 9 + 8
    conv.bias.requires_grad_(False)
    assert count_params(conv, trainable_only=True) == 3 * 8 * 9


@pytest.mark.parametrize("dims", [2, 3])
def test_gflops_single_conv(dims):
    cin, cout, k, size = 3, 8, 3, 16
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(cin, cout, k, padding=1)
    conv.train()
    got = gflops(conv, (cin,) + (size,) * dims)
    assert got == pytest.approx(2 * cin * cout * k**dims * size**dims / 1e9, rel=1e-9)
    assert gflops(conv, (cin,) + (size,) * dims, batch=3) == pytest.approx(got)
    assert conv.training  # mode restored


def test_inference_throughput():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    model.train()
    ips = inference_throughput(model, (3, 16, 16), batch=2, iters=3, device="cpu")
    assert math.isfinite(ips) and ips > 0
    assert model.training
    # eval mode is used: BatchNorm running stats are not updated
    assert torch.equal(model[1].running_mean, torch.zeros(4))
    with pytest.raises(ValueError):
        inference_throughput(model, (3, 16, 16), iters=0)


def test_dataframe_is_plain_pandas():
    df = case_metrics(torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    assert df["gt_empty"].dtype == bool and df["case"].dtype.kind == "i"
