"""Train and evaluate one instance-segmentation trial: Mask R-CNN over a pyramid spec.

``bench run --task instance`` runs :func:`run_instance` (through
:func:`skipdsl.train.trainer.train_and_evaluate`, ``task: instance``) with the same runner
as the semantic trials (Ray, resume, atomic results, failed trials recorded). The detector is
``torchvision.models.detection.MaskRCNN`` whose backbone-with-FPN is a compiled pyramid spec
(:mod:`skipdsl.detection`); the data are a dataset's instance label maps (``nuclei2d``,
``dsb2018``), turned into boxes, labels and masks by :func:`instance_targets`.

Recipe (:data:`skipdsl.train.common.INSTANCE_BUDGETS`): AdamW at PyTorch's defaults (lr 1e-3,
weight decay 1e-2) with a linear warm-up over the first epoch (torchvision's detection reference
warms up the same way, from 0.001 x lr) and cosine decay to 0; torchvision's SGD recipe (lr 0.02 per 16 images)
is tuned for ImageNet-initialised backbones, and these backbones start from random weights.
Augmentation: the 8 rot90/flip symmetries and brightness/contrast (skipdsl.train.augment),
applied to image and instance map together. The epoch with the best validation mask AP50 is
evaluated on the test split.

Metrics: mask AP@[.5:.95] and AP50 (torchmetrics ``MeanAveragePrecision(iou_type="segm")``,
COCO's definition through pycocotools), and IoU / Dice of the union of the predicted masks
(score >= 0.5, mask probability >= 0.5) against the union of the true ones, per image by the
empty-case rule of :mod:`skipdsl.train.metrics`, so rows compare with the semantic models'.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .augment import augment_batch
from .common import (TrialPlan, augment_config, empty_result, load_data, overlay_samples,
                     pick_device, plan_trial, seed_everything)

__all__ = ["instance_targets", "mask_ap", "run_instance",
           "union_masks", "detector_for"]


def instance_targets(instances: "np.ndarray | torch.Tensor") -> dict[str, torch.Tensor]:
    """An instance label map ``(H, W)`` (0 = background, k > 0 = instance k) -> Mask R-CNN's
    target: ``boxes`` (N, 4) float ``x1, y1, x2, y2`` in pixel-edge coordinates (a one-pixel
    instance is a 1x1 box), ``labels`` (N,) all 1, ``masks`` (N, H, W) uint8, one per label
    present, in label order."""
    from torchvision.ops import masks_to_boxes

    inst = torch.as_tensor(np.asarray(instances) if not isinstance(instances, torch.Tensor)
                           else instances)
    if inst.dim() != 2:
        raise ValueError(f"an instance label map is (H, W), found shape {tuple(inst.shape)}")
    ids = torch.unique(inst)
    ids = ids[ids > 0]
    masks = inst[None] == ids[:, None, None]
    boxes = masks_to_boxes(masks) if len(ids) else torch.zeros((0, 4))
    boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel's index: the box ends after it
    return {"boxes": boxes.float(), "labels": torch.ones(len(ids), dtype=torch.int64),
            "masks": masks.to(torch.uint8)}


def union_masks(outputs: Sequence[dict[str, torch.Tensor]], shape: tuple[int, int],
                score: float = 0.5, mask: float = 0.5) -> torch.Tensor:
    """The union of each image's predicted masks (score >= ``score``, probability >= ``mask``):
    ``(B, 1, H, W)`` float in {0, 1}."""
    out = torch.zeros((len(outputs), 1, *shape))
    for b, o in enumerate(outputs):
        keep = o["scores"] >= score
        if bool(keep.any()):
            out[b, 0] = (o["masks"][keep, 0] >= mask).any(0).float()
    return out


def mask_ap(outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]
            ) -> dict[str, float]:
    """COCO mask AP@[.5:.95] and AP50 (torchmetrics ``MeanAveragePrecision(iou_type="segm")``);
    masks are binarised at probability 0.5. Returns ``{'ap', 'ap50'}``; -1 (torchmetrics' 'no
    ground truth') becomes NaN."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="segm")
    preds = [{"masks": (o["masks"][:, 0] >= 0.5), "scores": o["scores"], "labels": o["labels"]}
             for o in outputs]
    gts = [{"masks": t["masks"].bool(), "labels": t["labels"]} for t in targets]
    metric.update(preds, gts)
    r = metric.compute()
    val = lambda k: float(r[k]) if float(r[k]) >= 0 else float("nan")  # noqa: E731
    return {"ap": val("map"), "ap50": val("map_50")}


def detector_for(spec: Any, plan: TrialPlan, in_channels: int,
                 scale: bool = True) -> torch.nn.Module:
    """The Mask R-CNN of a pyramid spec for a trial's plan (its instance budget resolved;
    two classes: background, instance)."""
    from skipdsl.detection import maskrcnn
    from skipdsl.spec import scale_spec

    if scale:
        spec = scale_spec(spec, plan.width_scale)
    roi = plan.roi_width or spec.pyramid.channels
    if plan.anchors and len(plan.anchors) != len(spec.pyramid.nodes) + int(spec.pyramid.pool):
        raise ValueError(f"the budget has {len(plan.anchors)} anchor sizes but spec "
                         f"'{spec.name}' has {len(spec.pyramid.nodes) + int(spec.pyramid.pool)} "
                         "pyramid levels")
    return maskrcnn(spec, 2, in_channels=in_channels, anchor_sizes=plan.anchors,
                    image_size=plan.image_size, image_mean=[0.0] * in_channels,
                    image_std=[1.0] * in_channels, roi_width=roi,
                    rpn_pre_nms_top_n_train=plan.proposals,
                    rpn_post_nms_top_n_train=plan.proposals,
                    rpn_pre_nms_top_n_test=max(1, plan.proposals // 2),
                    rpn_post_nms_top_n_test=max(1, plan.proposals // 2),
                    box_batch_size_per_image=plan.rois, box_detections_per_img=100)


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor, bs: int
             ) -> list[dict[str, torch.Tensor]]:
    model.eval()
    out: list[dict[str, torch.Tensor]] = []
    for b in range(0, images.shape[0], bs):
        out += [{k: v.cpu() for k, v in o.items()} for o in model(list(images[b:b + bs]))]
    return out


def model_label(model: Any, spec: Any) -> str:
    """The trial's model name: ``maskrcnn_sharp`` for ``fpn_sharp`` (the Mask R-CNN names)."""
    from skipdsl.detection import MASKRCNN_MODELS

    if isinstance(model, str) and model in MASKRCNN_MODELS:
        return model
    base = {v: k for k, v in MASKRCNN_MODELS.items()}
    bb = spec.encoder.backbone
    name = spec.name.removesuffix(f"_{bb}") if bb else spec.name
    label = base.get(name, f"maskrcnn_{name}")
    return f"{label}_{bb}" if bb and spec.name.endswith(f"_{bb}") else label


def run_instance(cfg: dict[str, Any], report: Callable[[int, float], Any] | None
                 ) -> dict[str, Any]:
    """The trial of a resolved config (``skipdsl.train.trainer.train_and_evaluate`` calls it
    for ``task: instance``, with the torch threads set)."""
    from skipdsl.graph import spec_hash
    from skipdsl.detection import pyramid_spec
    from skipdsl.train.metrics import aggregate, case_metrics, count_params


    # the instance budget with the command line's --epochs, --n, --batch-size and --lr (the
    # trainer's lr default, 1e-3, is AdamW's own)
    plan = plan_trial(cfg)
    result = empty_result(cfg)
    result.update(task="instance", ap=float("nan"), ap50=float("nan"))
    gen = seed_everything(int(cfg["seed"]))
    device = pick_device(cfg["device"])
    spec = pyramid_spec(cfg["model"])
    result["model"] = model_label(cfg["model"], spec)
    result["backbone"] = spec.encoder.backbone
    result["spec_hash"] = spec_hash(spec)
    result["loss"] = "maskrcnn"

    data = load_data(cfg, plan)  # normalised with the training statistics
    ds, splits, case_ids = data.ds, data.splits, data.case_ids
    if ds.instances is None or data.dims != 2:
        raise ValueError(f"dataset '{cfg['dataset']}' has no 2D instance labels; instance "
                         "trials need one that keeps them (nuclei2d, dsb2018)")
    result["splits"] = {k: [case_ids[i] for i in v] for k, v in splits.items()}
    raw_images, images = data.raw_images, data.images
    inst = torch.from_numpy(np.ascontiguousarray(ds.instances)).long()

    model = detector_for(spec, plan, int(ds.in_channels)).to(device)
    epochs, bs = int(plan.epochs), max(1, min(int(plan.batch_size), len(splits["train"])))
    steps = max(1, len(splits["train"]) // bs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    warm, total = steps, epochs * steps

    def lr_at(step: int) -> float:  # linear warm-up from 0.001 x over one epoch, then cosine
        if step < warm:
            return 0.001 + (1 - 0.001) * step / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    aug = augment_config(cfg)
    val_idx = torch.from_numpy(splits["val"])
    val_targets = [instance_targets(inst[i]) for i in val_idx]
    curve, best, t0 = [], (-math.inf, -1, None), time.perf_counter()
    result["device"] = str(device)
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        perm = torch.from_numpy(splits["train"])[torch.randperm(len(splits["train"]),
                                                                generator=gen)]
        losses = []
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            x, y = augment_batch(images[idx], inst[idx][:, None], config=aug, generator=gen)
            targets = [{k: v.to(device) for k, v in instance_targets(m[0]).items()} for m in y]
            loss_dict = model([im.to(device) for im in x], targets)
            loss = sum(loss_dict.values())
            if not bool(torch.isfinite(loss)):
                result.update(status="failed", curve=curve, epochs=len(curve),
                              reason=f"diverged: loss is {float(loss)} at epoch {epoch} step {s}",
                              train_seconds=time.perf_counter() - t0)
                return result
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        preds = _predict(model, images[val_idx].to(device), bs * 2)
        vm = mask_ap(preds, val_targets)
        um = aggregate(case_metrics(union_masks(preds, tuple(images.shape[2:])),
                                    (inst[val_idx] > 0)[:, None].float()))
        v = vm["ap50"] if not math.isnan(vm["ap50"]) else 0.0
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_iou": um["iou"],
                      "val_dice": um["dice"], "val_ap": vm["ap"], "val_ap50": vm["ap50"],
                      "lr": float(opt.param_groups[0]["lr"]), "seconds": time.perf_counter() - te})
        if v > best[0]:
            best = (v, epoch, copy.deepcopy(model.state_dict()))
        if report is not None:
            report(epoch, float(vm["ap50"]))
    train_seconds = time.perf_counter() - t0
    if best[2] is not None:
        model.load_state_dict(best[2])

    test_idx = torch.from_numpy(splits["test"])
    te = time.perf_counter()
    preds = _predict(model, images[test_idx].to(device), bs * 2)
    ips = len(test_idx) / max(time.perf_counter() - te, 1e-9)
    tm = mask_ap(preds, [instance_targets(inst[i]) for i in test_idx])
    union = union_masks(preds, tuple(images.shape[2:]))
    gt = (inst[test_idx] > 0)[:, None].float()
    cases = case_metrics(union, gt)
    test_ids = [case_ids[i] for i in splits["test"]]
    cases.insert(1, "case_id", [test_ids[c] for c in cases["case"]])
    agg = aggregate(cases)
    body = model.backbone.body
    encoder = sum(p.numel() for n, p in body.named_parameters()
                  if body.dag.nodes.get(n.split(".")[0], {}).get("kind") == "encoder")
    result.update(
        ap=tm["ap"], ap50=tm["ap50"], iou=agg["iou"], dice=agg["dice"], iou_std=agg["iou_std"],
        dice_std=agg["dice_std"], fp_empty=agg["fp_empty"], n_cases=agg["n_cases"],
        params=int(count_params(model)), pyramid_params=int(count_params(body)) - encoder,
        images_per_s=ips, train_seconds=train_seconds, epochs=len(curve),
        best_epoch=int(best[1]), curve=curve, cases=cases, widths=[body.spec.pyramid.channels],
        dims=2, in_channels=int(ds.in_channels), num_classes=1,
        recipe=dataclasses.asdict(plan),
        samples=overlay_samples(raw_images[test_idx], gt, union, test_ids,
                         int(plan.samples)),
    )
    return result
