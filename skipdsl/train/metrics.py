"""Per-case segmentation metrics with one documented empty-case rule, and model cost measures.

Empty-case rule (``empty_rule()`` returns this text):

- Metrics are computed per case (sample) and per channel on binary masks
  (prediction = ``probs > threshold``; boolean masks are used as they are).
- IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN).
- Ground truth AND prediction both empty: IoU and Dice are stored as NaN (nothing to
  segment, nothing predicted; as nnU-Net does). Exactly one of them empty: 0.
- HD95 (opt-in, MONAI ``HausdorffDistanceMetric(percentile=95)``, symmetric, in voxels unless a
  spacing is given): NaN when either mask is empty.
- Aggregation: the mean over non-NaN values (nanmean); std is the population std (ddof=0)
  over the same values. Both-empty cases are thus left out of IoU/Dice; they are neither
  rewarded (Metrics Reloaded would count 1) nor hidden when they are false positives.
- ``fp_empty``: among the (case, channel) rows whose ground truth is empty, the fraction with
  any predicted foreground (NaN when no ground truth is empty). False positives on empty
  images are what the classification-guided module (CGM) is meant to remove: report them.
"""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = [
    "EMPTY_RULE",
    "empty_rule",
    "binarize",
    "overlap_counts",
    "iou_dice",
    "hd95_per_case",
    "case_metrics",
    "aggregate",
    "count_params",
    "gflops",
    "inference_throughput",
]

EMPTY_RULE = (
    "Per case and channel on binary masks (probs > threshold): IoU = TP/(TP+FP+FN), "
    "Dice = 2TP/(2TP+FP+FN). Ground truth and prediction both empty -> NaN; exactly one empty "
    "-> 0. HD95 (MONAI, percentile 95, symmetric) -> NaN when either is empty. Aggregate = "
    "nanmean (std: population std over non-NaN values). fp_empty = fraction of empty-ground-"
    "truth rows with any predicted foreground (NaN if there is none)."
)

COLUMNS = ["case", "channel", "iou", "dice", "hd95", "gt_empty", "pred_empty"]


def empty_rule() -> str:
    """The empty-case and aggregation rule used by ``case_metrics`` and ``aggregate``."""
    return EMPTY_RULE


def binarize(pred: Tensor, threshold: float = 0.5) -> Tensor:
    """Boolean mask from probabilities (``> threshold``) or from an existing mask."""
    if pred.dtype == torch.bool:
        return pred
    return pred > threshold


def overlap_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TP, FP, FN per (case, channel) of boolean masks (B, K, *spatial); each (B, K), float64."""
    p = pred.flatten(2).to(torch.float64)
    t = target.flatten(2).to(torch.float64)
    tp = (p * t).sum(-1)
    return tp, (p * (1 - t)).sum(-1), ((1 - p) * t).sum(-1)


def iou_dice(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and Dice from counts; NaN where TP + FP + FN == 0 (both masks empty)."""
    union = tp + fp + fn
    nan = torch.full_like(union, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
    return iou, dice


def hd95_per_case(pred: Tensor, target: Tensor,
                  spacing: float | Sequence[float] | None = None) -> Tensor:
    """Symmetric 95th-percentile Hausdorff distance per (case, channel), (B, K) float64.

    MONAI ``HausdorffDistanceMetric(include_background=True, percentile=95)`` on the rows where
    both masks are non-empty; NaN elsewhere (so MONAI never sees, nor warns about, empty masks).
    """
    from monai.metrics import HausdorffDistanceMetric

    b, k = pred.shape[:2]
    p = pred.reshape(b * k, 1, *pred.shape[2:]).float()
    t = target.reshape(b * k, 1, *target.shape[2:]).float()
    out = torch.full((b * k,), float("nan"), dtype=torch.float64)
    valid = (p.flatten(1).amax(1) > 0) & (t.flatten(1).amax(1) > 0)
    if valid.any():
        metric = HausdorffDistanceMetric(include_background=True, percentile=95)
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated argument
            warnings.filterwarnings("ignore", message=r"monai\.", category=FutureWarning)
            hd = metric(y_pred=p[valid].cpu(), y=t[valid].cpu(), spacing=spacing)
        out[valid.cpu()] = hd.reshape(-1).to(torch.float64)
    return out.reshape(b, k)


@torch.no_grad()
def case_metrics(
    pred_probs_or_mask: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    hd95: bool = False,
    *,
    spacing: float | Sequence[float] | None = None,
    case_offset: int = 0,
) -> pd.DataFrame:
    """One row per (case, channel): case, channel, iou, dice, hd95, gt_empty, pred_empty.

    ``pred_probs_or_mask``: sigmoid probabilities (thresholded with ``> threshold``) or a mask
    (bool, or {0, 1} numbers), shaped like ``target`` (B, K, *spatial). ``hd95`` is NaN unless
    ``hd95=True``. ``case_offset`` is added to the case index (to number cases across batches).
    See ``empty_rule()`` for NaN values.
    """
    if pred_probs_or_mask.shape != target.shape or target.dim() < 3:
        raise ValueError(
            f"prediction {tuple(pred_probs_or_mask.shape)} and target {tuple(target.shape)} "
            "must have the same (B, K, *spatial) shape"
        )
    pred = binarize(pred_probs_or_mask.detach(), threshold)
    gt = target.detach() > 0.5 if target.dtype != torch.bool else target.detach()
    tp, fp, fn = overlap_counts(pred, gt)
    iou, dice = iou_dice(tp, fp, fn)
    b, k = iou.shape
    hd = hd95_per_case(pred, gt, spacing) if hd95 else torch.full((b, k), float("nan"),
                                                                   dtype=torch.float64)
    gt_empty = (tp + fn) == 0
    pred_empty = (tp + fp) == 0
    case_idx, chan_idx = np.meshgrid(np.arange(b) + case_offset, np.arange(k), indexing="ij")
    return pd.DataFrame({
        "case": case_idx.reshape(-1),
        "channel": chan_idx.reshape(-1),
        "iou": iou.cpu().numpy().reshape(-1),
        "dice": dice.cpu().numpy().reshape(-1),
        "hd95": hd.cpu().numpy().reshape(-1),
        "gt_empty": gt_empty.cpu().numpy().reshape(-1),
        "pred_empty": pred_empty.cpu().numpy().reshape(-1),
    }, columns=COLUMNS)


def aggregate(df: pd.DataFrame) -> dict[str, float]:
    """Aggregate ``case_metrics`` rows by the empty rule (nanmean; see ``empty_rule()``).

    Returns iou, dice, iou_std, dice_std, hd95, fp_empty and n_cases (distinct case indices).
    Filter ``df`` by ``channel`` first for per-channel figures.
    """
    def nanmean(col: str) -> float:
        values = df[col].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    def nanstd(col: str) -> float:
        values = df[col].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        return float(values.std(ddof=0)) if values.size else float("nan")

    empty_gt = df[df["gt_empty"].astype(bool)]
    fp_empty = (float((~empty_gt["pred_empty"].astype(bool)).mean()) if len(empty_gt)
                else float("nan"))
    return {
        "iou": nanmean("iou"),
        "dice": nanmean("dice"),
        "iou_std": nanstd("iou"),
        "dice_std": nanstd("dice"),
        "hd95": nanmean("hd95"),
        "fp_empty": fp_empty,
        "n_cases": int(df["case"].nunique()),
    }


# --------------------------------------------------------------------------------------------
# Model cost
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def gflops(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> float:
    """Forward GFLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    ``input_shape`` is one image's shape ``(C, *spatial)`` (no batch dim, as in
    ``inference_throughput``). One multiply-add counts as 2 FLOPs (a conv is
    ``2 * Cin * Cout * prod(k) * prod(out_spatial)``); element-wise ops are not counted. Runs in
    eval mode under ``torch.no_grad`` on the model's device; the training mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((batch, *input_shape), device=_model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch / 1e9


def inference_throughput(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    iters: int = 10,
    device: str | torch.device = "cpu",
    warmup: int = 3,
) -> float:
    """Inference images/s: ``iters`` timed forwards of ``(batch, *input_shape)`` after warm-up.

    ``input_shape`` is one image's shape ``(C, *spatial)``. Eval mode, ``torch.no_grad``,
    synchronised on CUDA. The model is moved to ``device``; its training mode is restored.
    """
    if iters < 1 or batch < 1:
        raise ValueError(f"iters and batch must be >= 1, found iters={iters}, batch={batch}")
    device = torch.device(device)
    model = model.to(device)
    x = torch.randn((batch, *input_shape), device=device)
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            sync()
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            sync()
            elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return batch * iters / max(elapsed, 1e-12)
