"""Segmentation losses for multi-label sigmoid outputs, with deep supervision and CGM terms.

Conventions: ``logits`` and ``target`` are ``(B, K, *spatial)`` (2D: 4D tensors, 3D: 5D tensors),
``target`` in {0, 1}. A model's outputs are one logits tensor or a dict ``{head_id: logits}``
(deep supervision); keys starting with ``"cgm:"`` hold ``(B, 2)`` classification logits of the
classification-guided module (class 1 = "has organ").

Layout (after segmentation_models_pytorch): pure math helpers first (``pool_target``,
``lovasz_grad``, ``lovasz_hinge``, ``ms_ssim_plan``, ``adaptive_ms_ssim``), then the per-head
``HybridLoss`` (a weighted sum of named terms), one small registered builder per loss in
``LOSSES``, and ``DeepSupervisionLoss``, which ``build_loss`` returns.

Registered losses (``LOSSES.names()``):

- ``unet3p_hybrid``: focal + MS-SSIM + IoU (Huang et al., UNet 3+, ICASSP 2020).
- ``unetsharp_hybrid``: 0.5 * focal(alpha 0.25, gamma 2) + Laplace-smoothed Dice (+1) +
  0.5 * Lovasz hinge (Qian et al., UNet#, 2022; Lovasz hinge after Berman et al., CVPR 2018).
- ``bce_dice`` (baseline), ``bce``, ``dice``.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import SpecError, did_you_mean
from .registry import Registry

__all__ = [
    "LOSSES",
    "build_loss",
    "DeepSupervisionLoss",
    "HybridLoss",
    "FocalTerm",
    "SoftOverlapTerm",
    "LovaszHingeTerm",
    "MSSSIMTerm",
    "pool_target",
    "resize_logits",
    "cgm_labels",
    "lovasz_grad",
    "lovasz_hinge",
    "ms_ssim_plan",
    "adaptive_ms_ssim",
    "MS_SSIM_WEIGHTS",
]

LOSSES: Registry[Callable[..., "HybridLoss"]] = Registry("loss")

#: The five MS-SSIM scale weights of Wang et al. (2003), as pytorch-msssim uses them.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

CGM_PREFIX = "cgm:"


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def _check_pair(logits: Tensor, target: Tensor, what: str = "output") -> None:
    """Raise a readable error when logits and target cannot be compared."""
    if logits.dim() not in (4, 5):
        raise ValueError(
            f"{what}: expected logits (B, K, *spatial) with 2 or 3 spatial dims, found shape "
            f"{tuple(logits.shape)}"
        )
    if logits.dim() != target.dim() or logits.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"{what}: logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on "
            "(B, K) or on the number of spatial dims; the target must be (B, K, *spatial) "
            "with one {0, 1} channel per output channel"
        )


def pool_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Max-pool ``target`` (B, K, *spatial) down to ``size`` ("any foreground", as UNet# does).

    Uses adaptive max pooling, so non-integer ratios work too. Returns ``target`` unchanged when
    it already has that size; raises when ``size`` is larger than the target in any dim.
    """
    size = tuple(int(s) for s in size)
    spatial = tuple(target.shape[2:])
    if size == spatial:
        return target
    if len(size) != len(spatial) or any(s > t for s, t in zip(size, spatial)):
        raise ValueError(
            f"cannot pool a target of spatial size {spatial} to {size}: a head may be smaller "
            "than the target, not larger (use head_resize='upsample_logits' otherwise)"
        )
    pool = F.adaptive_max_pool2d if len(size) == 2 else F.adaptive_max_pool3d
    return pool(target, size)


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear/trilinear up-sampling of a head's logits to ``size`` (the UNet# code's way)."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[2:]) == size:
        return logits
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(logits, size=size, mode=mode, align_corners=True)


def cgm_labels(target: Tensor) -> Tensor:
    """Per-sample "has organ" label (B,) in {0, 1}: any foreground in any channel."""
    return (target.flatten(2).amax(-1).amax(-1) > 0).to(torch.float32)


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    ``gt_sorted`` is (N, P): the labels of each row sorted by decreasing error. With G the
    foreground count of a row, after the first i pixels are counted as mistakes the Jaccard
    loss is ``1 - (G - fg_i) / (G + bg_i)`` (fg_i / bg_i: foreground / background pixels among
    those i); the gradient is the increment of that quantity at each step (Berman et al. 2018,
    eq. 8-9). The union is never zero: with G = 0 the first step already counts one pixel.
    """
    gts = gt_sorted.sum(dim=1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=1)
    union = gts + (1.0 - gt_sorted).cumsum(dim=1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge(logits: Tensor, target: Tensor) -> Tensor:
    """Binary Lovasz hinge loss (Berman et al., CVPR 2018), per image and per channel, averaged.

    Each (image, channel) pair is one binary problem: with signs s = 2t - 1 the hinge errors are
    ``1 - x * s``; the loss is the Lovasz extension of the Jaccard loss applied to the positive
    part of the errors, i.e. ``sum_i relu(e_sorted_i) * lovasz_grad_i`` with errors sorted in
    decreasing order. An image with an empty target costs ``relu(largest error)``.
    Vectorised over all rows (no Python loop); written for this project after the paper.
    """
    rows = logits.flatten(2).flatten(0, 1).float()  # (B*K, P)
    labels = target.flatten(2).flatten(0, 1).to(rows.dtype)
    errors = 1.0 - rows * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    gt_sorted = torch.gather(labels, 1, perm)
    grad = lovasz_grad(gt_sorted)
    return (F.relu(errors_sorted) * grad).sum(dim=1).mean()


def ms_ssim_plan(
    spatial: Sequence[int], win_size: int = 11, levels: int = 5, min_win: int = 3
) -> tuple[int, int]:
    """Largest (levels, win_size) that fits an input of spatial size ``spatial``.

    At level i (0-based) pytorch-msssim average-pools with ceil, so the smallest side is
    ``ceil(m / 2**i)`` for ``m = min(spatial)``; the Gaussian window must fit in it at the last
    level. Keeps as many levels as possible, shrinking the (odd) window from ``win_size`` down to
    ``min_win`` first, then drops levels. Returns ``(1, w)`` for single-scale SSIM when not even
    two levels fit, with ``w`` the largest odd window <= ``min(win_size, m)`` (at least 1).
    """
    m = min(int(s) for s in spatial)
    for n in range(levels, 1, -1):
        smallest = math.ceil(m / 2 ** (n - 1))
        for w in range(win_size, min_win - 1, -2):
            if smallest >= w:
                return n, w
    w = min(win_size, m)
    w = w if w % 2 == 1 else w - 1
    return 1, max(w, 1)


def _gauss_window(win_size: int, sigma: float, channels: int, ndim: int) -> Tensor:
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    return _fspecial_gauss_1d(win_size, sigma).repeat([channels] + [1] * (ndim - 1))


def adaptive_ms_ssim(
    x: Tensor,
    y: Tensor,
    levels: int,
    win_size: int,
    win_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    data_range: float = 1.0,
) -> Tensor:
    """MS-SSIM with ``levels`` scales (weights truncated and renormalised), mean over (B, K).

    Uses pytorch-msssim's public ``ms_ssim`` when all five default scales are used (its size
    assertion then holds by construction of ``ms_ssim_plan``); otherwise repeats its algorithm
    with the library's per-scale ``_ssim`` (the public function hard-codes four down-samplings
    in its size check). ``levels == 1`` is single-scale SSIM (clamped at 0, like MS-SSIM's last
    scale). Works for 4D and 5D inputs.
    """
    from pytorch_msssim import ms_ssim
    from pytorch_msssim.ssim import _ssim

    if levels == len(weights) == len(MS_SSIM_WEIGHTS):
        return ms_ssim(x, y, data_range=data_range, win_size=win_size, win_sigma=win_sigma,
                       weights=list(weights))
    if not 1 <= levels <= len(weights):
        raise ValueError(f"MS-SSIM: {levels} levels but {len(weights)} weights")
    w = torch.tensor(list(weights)[:levels], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    win = _gauss_window(win_size, win_sigma, x.shape[1], x.dim())
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    factors = []
    for i in range(levels):
        ssim_val, cs = _ssim(x, y, data_range=data_range, win=win, size_average=False)
        if i < levels - 1:
            factors.append(F.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = pool(x, kernel_size=2, padding=padding)
            y = pool(y, kernel_size=2, padding=padding)
    factors.append(F.relu(ssim_val))
    stacked = torch.stack(factors, dim=0)  # (levels, B, K)
    return torch.prod(stacked ** w.view(-1, 1, 1), dim=0).mean()


# --------------------------------------------------------------------------------------------
# Per-head loss terms
# --------------------------------------------------------------------------------------------


class FocalTerm(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017) via ``monai.losses.FocalLoss``, mean over elements."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        from monai.losses import FocalLoss

        self.fn = FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False, reduction="mean")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.fn(logits, target)


class SoftOverlapTerm(nn.Module):
    """Soft Dice (or IoU with ``jaccard=True``) loss on sigmoid probabilities.

    ``monai.losses.DiceLoss(sigmoid=True)``, one value per (sample, channel), averaged.
    """

    def __init__(self, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 jaccard: bool = False) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.fn = DiceLoss(sigmoid=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                           jaccard=jaccard, reduction="mean")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.fn(logits, target)


class BCETerm(nn.Module):
    """Binary cross-entropy with logits, mean over elements."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, target)


class LovaszHingeTerm(nn.Module):
    """Binary Lovasz hinge, per image and channel (see ``lovasz_hinge``)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_hinge(logits, target)


class MSSSIMTerm(nn.Module):
    """``1 - MS-SSIM`` between sigmoid probabilities and the target (data range 1).

    The window and number of scales adapt to small inputs (see ``ms_ssim_plan``); an adapted
    size is reported once per spatial size and instance with ``warnings.warn``.
    """

    def __init__(self, win_size: int = 11, win_sigma: float = 1.5, levels: int = 5,
                 min_win: int = 3) -> None:
        super().__init__()
        if win_size % 2 != 1 or min_win % 2 != 1:
            raise ValueError(f"MS-SSIM windows must be odd, found win_size={win_size}, "
                             f"min_win={min_win}")
        if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
            raise ValueError(f"MS-SSIM levels must be in 1..{len(MS_SSIM_WEIGHTS)}, "
                             f"found {levels}")
        self.win_size, self.win_sigma, self.levels, self.min_win = (
            win_size, win_sigma, levels, min_win)
        self._warned: set[tuple[int, ...]] = set()

    def plan(self, spatial: Sequence[int]) -> tuple[int, int]:
        """(levels, win_size) used for an input of this spatial size."""
        return ms_ssim_plan(spatial, self.win_size, self.levels, self.min_win)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        spatial = tuple(logits.shape[2:])
        levels, win = self.plan(spatial)
        if (levels, win) != (self.levels, self.win_size) and spatial not in self._warned:
            self._warned.add(spatial)
            what = ("single-scale SSIM" if levels == 1 else
                    f"{levels}-scale MS-SSIM" + (" (weights truncated and renormalised)"
                                                 if levels < self.levels else ""))
            warnings.warn(
                f"MS-SSIM: input of spatial size {'x'.join(map(str, spatial))} is too small for "
                f"{self.levels} scales with win_size={self.win_size}; using {what} with "
                f"win_size={win}"
            )
        probs = torch.sigmoid(logits.float())
        value = adaptive_ms_ssim(probs, target.to(probs.dtype), levels, win,
                                 self.win_sigma, MS_SSIM_WEIGHTS[: self.levels])
        return 1.0 - value


class HybridLoss(nn.Module):
    """Weighted sum of named per-head terms: ``sum_i w_i * term_i(logits, target)``."""

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a loss needs at least one term")
        self.term_names = [name for name, _, _ in terms]
        self.term_weights = [float(w) for _, w, _ in terms]
        self.terms = nn.ModuleDict({name: mod for name, _, mod in terms})

    def components(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Unweighted value of each term (for logging and tests)."""
        _check_pair(logits, target)
        logits, target = logits.float(), target.float()
        return {name: self.terms[name](logits, target) for name in self.term_names}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        parts = self.components(logits, target)
        return sum(w * parts[n] for n, w in zip(self.term_names, self.term_weights))


# --------------------------------------------------------------------------------------------
# Registered losses: one small builder each
# --------------------------------------------------------------------------------------------


@LOSSES.register("unet3p_hybrid")
def unet3p_hybrid(focal_alpha: float | None = 0.25, focal_gamma: float = 2.0,
                  win_size: int = 11, iou_smooth: float = 1e-5) -> HybridLoss:
    """UNet 3+ hybrid loss: focal + (1 - MS-SSIM) + IoU (Huang et al. 2020), equal weights.

    The paper gives no focal parameters; Lin et al.'s defaults (alpha 0.25, gamma 2) are used.
    """
    return HybridLoss([
        ("focal", 1.0, FocalTerm(focal_alpha, focal_gamma)),
        ("ms_ssim", 1.0, MSSSIMTerm(win_size=win_size)),
        ("iou", 1.0, SoftOverlapTerm(iou_smooth, iou_smooth, jaccard=True)),
    ])


@LOSSES.register("unetsharp_hybrid")
def unetsharp_hybrid(focal_alpha: float | None = 0.25, focal_gamma: float = 2.0,
                     dice_smooth: float = 1.0) -> HybridLoss:
    """UNet# hybrid loss: 0.5 * focal + Laplace-smoothed Dice (+1) + 0.5 * Lovasz hinge."""
    return HybridLoss([
        ("focal", 0.5, FocalTerm(focal_alpha, focal_gamma)),
        ("dice", 1.0, SoftOverlapTerm(dice_smooth, dice_smooth)),
        ("lovasz", 0.5, LovaszHingeTerm()),
    ])


@LOSSES.register("bce_dice")
def bce_dice(dice_smooth: float = 1e-5) -> HybridLoss:
    """Baseline: BCE + soft Dice."""
    return HybridLoss([("bce", 1.0, BCETerm()),
                       ("dice", 1.0, SoftOverlapTerm(dice_smooth, dice_smooth))])


@LOSSES.register("bce")
def bce() -> HybridLoss:
    """Binary cross-entropy with logits."""
    return HybridLoss([("bce", 1.0, BCETerm())])


@LOSSES.register("dice")
def dice(dice_smooth: float = 1e-5) -> HybridLoss:
    """Soft Dice loss on sigmoid probabilities."""
    return HybridLoss([("dice", 1.0, SoftOverlapTerm(dice_smooth, dice_smooth))])


# --------------------------------------------------------------------------------------------
# Deep supervision + CGM wrapper
# --------------------------------------------------------------------------------------------

Outputs = Tensor | Mapping[str, Tensor]


class DeepSupervisionLoss(nn.Module):
    """Applies a per-head loss to one output or to every head of a deep-supervision dict.

    - ``mode='accurate'``: (weighted) mean of the branch losses over all segmentation heads;
      ``weights`` maps every head id to a weight (normalised by their sum).
    - ``mode='fast'``: only the head ``fast_head`` is trained.
    - A head smaller than the target is compared with the target max-pooled to its size
      (``head_resize='pool_target'``, the UNet# paper) or has its logits up-sampled to the
      target's size (``'upsample_logits'``, the UNet# code).
    - Keys starting with ``'cgm:'`` are (B, 2) classification logits; their mean BCE (or CE,
      ``cgm_loss='ce'``) against ``cgm_labels(target)`` is added times ``cgm_weight``.
    """

    def __init__(
        self,
        per_head: nn.Module,
        *,
        mode: str = "accurate",
        weights: Mapping[str, float] | None = None,
        fast_head: str | None = None,
        cgm_weight: float = 1.0,
        cgm_loss: str = "bce",
        head_resize: str = "pool_target",
    ) -> None:
        super().__init__()
        for arg, value, valid in (("mode", mode, ("accurate", "fast")),
                                  ("cgm_loss", cgm_loss, ("bce", "ce")),
                                  ("head_resize", head_resize,
                                   ("pool_target", "upsample_logits"))):
            if value not in valid:
                raise SpecError(f"unknown loss {arg} '{value}'", hint=did_you_mean(value, valid))
        if mode == "fast" and not fast_head:
            raise SpecError("loss mode 'fast' trains one branch and needs fast_head",
                            hint="pass fast_head='x_0_4' (or the head to keep)")
        self.per_head = per_head
        self.mode = mode
        self.weights = dict(weights) if weights is not None else None
        self.fast_head = fast_head
        self.cgm_weight = float(cgm_weight)
        self.cgm_loss = cgm_loss
        self.head_resize = head_resize

    # -- pieces ----------------------------------------------------------------------------

    def head_loss(self, logits: Tensor, target: Tensor, head: str = "output") -> Tensor:
        """Loss of one segmentation head, resizing target or logits to match."""
        _check_pair(logits, target, head)
        logits, target = logits.float(), target.float()
        size = tuple(logits.shape[2:])
        if size != tuple(target.shape[2:]):
            if self.head_resize == "pool_target":
                target = pool_target(target, size)
            else:
                logits = resize_logits(logits, target.shape[2:])
        return self.per_head(logits, target)

    def cgm_term(self, logits: Tensor, target: Tensor, head: str = "cgm") -> Tensor:
        """BCE (or CE) of (B, 2) classification logits against "has organ" labels."""
        b = target.shape[0]
        if logits.shape[0] != b or logits.numel() != 2 * b:
            raise ValueError(f"{head}: expected CGM logits of shape ({b}, 2), found "
                             f"{tuple(logits.shape)}")
        logits = logits.reshape(b, 2).float()
        labels = cgm_labels(target).to(logits.device)
        if self.cgm_loss == "ce":
            return F.cross_entropy(logits, labels.long())
        onehot = torch.stack([1.0 - labels, labels], dim=1)
        return F.binary_cross_entropy_with_logits(logits, onehot)

    def _seg_weights(self, heads: list[str]) -> dict[str, float]:
        if self.mode == "fast":
            if self.fast_head not in heads:
                raise SpecError(f"fast_head '{self.fast_head}' is not among the outputs",
                                hint=did_you_mean(str(self.fast_head), heads))
            return {self.fast_head: 1.0}
        if self.weights is None:
            return {h: 1.0 / len(heads) for h in heads}
        missing = sorted(set(heads) - set(self.weights))
        unknown = sorted(set(self.weights) - set(heads))
        if missing or unknown:
            raise SpecError("loss weights do not match the deep-supervision heads",
                            expected=sorted(heads), found=sorted(self.weights),
                            hint=f"missing: {missing}, unknown: {unknown}")
        total = sum(float(self.weights[h]) for h in heads)
        if total <= 0:
            raise SpecError("loss weights must sum to a positive number", found=total)
        return {h: float(self.weights[h]) / total for h in heads}

    def breakdown(self, outputs: Outputs, target: Tensor) -> dict[str, Tensor]:
        """Loss of every segmentation head and every CGM output, unweighted, keyed by head id."""
        if isinstance(outputs, Tensor):
            return {"output": self.head_loss(outputs, target)}
        out: dict[str, Tensor] = {}
        for key, value in outputs.items():
            if key.startswith(CGM_PREFIX):
                out[key] = self.cgm_term(value, target, key)
            elif self.mode == "accurate" or key == self.fast_head:
                out[key] = self.head_loss(value, target, key)
        return out

    def forward(self, outputs: Outputs, target: Tensor) -> Tensor:
        """Scalar loss: (weighted) mean over heads, plus ``cgm_weight`` x mean CGM loss."""
        if isinstance(outputs, Tensor):
            return self.head_loss(outputs, target)
        heads = [k for k in outputs if not k.startswith(CGM_PREFIX)]
        cgm = [k for k in outputs if k.startswith(CGM_PREFIX)]
        if not heads:
            raise ValueError(f"no segmentation output among {sorted(outputs)}")
        weights = self._seg_weights(heads)
        loss = sum(w * self.head_loss(outputs[h], target, h) for h, w in weights.items())
        if cgm and self.cgm_weight:
            cls = sum(self.cgm_term(outputs[k], target, k) for k in cgm) / len(cgm)
            loss = loss + self.cgm_weight * cls
        return loss


def build_loss(
    name: str,
    *,
    mode: str = "accurate",
    weights: Mapping[str, float] | None = None,
    fast_head: str | None = None,
    cgm_weight: float = 1.0,
    cgm_loss: str = "bce",
    head_resize: str = "pool_target",
    **kwargs: object,
) -> DeepSupervisionLoss:
    """Build the registered loss ``name`` wrapped for deep supervision and CGM.

    ``kwargs`` go to the registered builder (``None`` values are dropped, so config defaults
    never override the loss's own). Unknown names raise ``SpecError`` listing the valid ones.
    ``forward(outputs, target)`` takes one logits tensor or a ``{head_id: logits}`` dict.
    """
    builder = LOSSES.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SpecError(f"loss '{name}' got unknown argument(s) {unknown}",
                        hint=f"valid: {', '.join(accepted) or '(none)'}")
    per_head = builder(**kwargs)
    return DeepSupervisionLoss(per_head, mode=mode, weights=weights, fast_head=fast_head,
                               cgm_weight=cgm_weight, cgm_loss=cgm_loss, head_resize=head_resize)
