"""Train and evaluate one (model, dataset, seed, deep supervision) trial with the papers' recipe.

One function, :func:`train_and_evaluate`, does the whole trial; the benchmark runner (Ray Tune
or local), and the architecture search call it. It takes a plain, serialisable ``config`` dict
and returns a result dict (see :func:`train_and_evaluate`).

Recipe (the UNet# paper's public code, Qian et al. 2022): Adam (lr 1e-3, weight decay 1e-4),
cosine annealing of the learning rate over all steps, He init (done by the compiler,
``init: he``), batch training with on-device augmentation (rot90, flips, brightness/contrast;
:mod:`skipdsl.train.augment`), per-channel normalisation with the training split's statistics. The model of the epoch with the
best validation IoU is evaluated on the test split. On CUDA: bf16 autocast, channels_last and
cuDNN autotuning; on the CPU: channels_last for 2D data (config ``channels_last: false`` turns it
off). Seeds fix the initialisation, the batch order and the augmentation.

The fast path (:mod:`skipdsl.fast`; config key ``fast``, else the spec's ``fast:``) adds
``torch.compile`` of the training model and CUDA-graph inference for evaluation and the
throughput measurement; ``result['fast']`` names the parts applied and
``result['fast_skipped']`` the parts left out, with reasons (on CPU, ``on`` applies none).

A trial whose loss becomes NaN/inf is stopped and returned with ``status='failed'`` and a
``reason`` (it is not an exception: a sweep records it and goes on).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import torch

from ..errors import SpecError
from ..heads import init_heads
from .augment import AugmentConfig, augment_batch, random_crop
from .common import (BUDGETS, CPU_BUDGET, DEFAULTS, INSTANCE_BUDGETS, QUICK_BUDGET, Budget,
                     TrialData, TrialPlan, augment_config, empty_result, load_data, load_spec,
                     overlay_samples, pick_device, plan_trial, resolve_config, seed_everything)
from .instance import run_instance

# Budget, TrialPlan, BUDGETS, DEFAULTS, resolve_config, TrialData, load_data and load_spec live in
# skipdsl.train.common (shared with the instance trainer and the supernet) and are
# re-exported here, where the trial's callers have always found them.
__all__ = ["Budget", "TrialPlan", "plan_trial", "BUDGETS", "INSTANCE_BUDGETS", "CPU_BUDGET",
           "QUICK_BUDGET", "DEFAULTS", "Diverged", "load_spec", "resolve_config", "fast_path",
           "train_and_evaluate", "planned_epochs", "TrialData", "load_data", "train_epoch",
           "recipe"]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def fast_path(cfg: dict[str, Any], spec: Any, device: Any, dims: int | None = None):
    """The trial's :class:`~skipdsl.fast.FastPath`: the config's ``fast`` (the command line)
    over the spec's, then the ``amp`` and ``channels_last`` keys: ``auto`` adds their part on
    CUDA (as before the fast path existed) and channels_last on the CPU for 2D data (``dims``
    2; 1.2-1.6x the contiguous training step of every zoo model at the cpu budget, the same
    results to float rounding, docs/speed.md; in 3D it measured 0.95-1.05x), ``True`` forces
    it on any device, ``False`` drops it (recorded)."""
    from skipdsl.fast import FastPath, choose

    fast = FastPath.resolve(choose(cfg["fast"], getattr(spec, "fast", None)), device)
    for part, key in (("bf16", "amp"), ("channels_last", "channels_last")):
        value = cfg[key]
        if value == "auto":
            cpu_2d = part == "channels_last" and fast.device == "cpu" and dims == 2
            if (fast.device == "cuda" or cpu_2d) and not getattr(fast, part):
                fast = fast.with_part(part, True)
        else:
            fast = fast.with_part(part, bool(value), reason=f"{key}: false in the config")
    return fast


def _main(model: torch.nn.Module, out: Any) -> torch.Tensor:
    from skipdsl.compiler import main_logits

    return main_logits(model, out)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int, *,
            forward: Callable | None = None) -> torch.Tensor:
    """Sigmoid probabilities of the main head for ``images`` (on the model's device), on CPU.

    ``forward``: the model's eval forward with its fast path (a
    :class:`~skipdsl.fast.FastInference`); default: ``model`` itself.
    """
    model.eval()
    run = forward if forward is not None else model
    dev = next(model.parameters()).device
    out = []
    for b in range(0, images.shape[0], batch_size):
        x = images[b:b + batch_size].to(dev, non_blocking=True)
        logits = _main(model, run(x))
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out) if out else torch.empty(0)


def recipe(model: torch.nn.Module, cfg: dict[str, Any], total_steps: int):
    """The recipe's optimiser (Adam), its cosine schedule over ``total_steps`` and the
    augmentation settings, from a resolved config."""
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]),
                           weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps,
                                                       eta_min=float(cfg["eta_min"]))
    return opt, sched, augment_config(cfg)


def train_epoch(forward: Callable, opt: Any, sched: Any, loss_fn: Callable,
                train_x: torch.Tensor, train_y: torch.Tensor, *, epoch: int, batch_size: int,
                steps: int, patch: int, aug: AugmentConfig, generator: torch.Generator,
                fast: Any, memory_format: Any = None) -> torch.Tensor:
    """One epoch of ``steps`` optimiser steps on shuffled batches (random patch crops when
    ``patch``, augmentation); returns the step losses. Raises :class:`Diverged` when one is
    NaN/inf. ``forward`` is called once per step in training mode (the one-shot supernet
    samples its path there)."""
    n_train = train_x.shape[0]
    perm = torch.randperm(n_train, generator=generator)
    losses = torch.zeros(steps, device=train_x.device)
    for step in range(steps):
        idx = perm[step * batch_size:(step + 1) * batch_size].to(train_x.device)
        x, y = train_x.index_select(0, idx), train_y.index_select(0, idx)
        if patch:
            x, y = random_crop(x, y, patch, generator=generator)
        x, y = augment_batch(x, y, config=aug, generator=generator)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        with fast.autocast():
            out = forward(x)
        loss = loss_fn(out, y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses[step] = loss.detach().float()
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise Diverged(f"diverged: loss is {losses[first].item()} at epoch {epoch} "
                       f"step {first} (lr {opt.param_groups[0]['lr']:.3g})")
    return losses


def train_and_evaluate(config: dict[str, Any],
                       report: Callable[[int, float], Any] | None = None) -> dict[str, Any]:
    """Train one model on one dataset and evaluate it on the test split.

    ``config``: see :data:`DEFAULTS` (at least ``model`` and ``dataset``; ``budget`` sets
    epochs, n, widths and batch size unless given). ``report(epoch, val_iou)`` is called after
    every epoch (0-based) with the validation IoU; an exception it raises (e.g. a pruner's)
    propagates and ends the trial.

    Returns a dict: ``status`` ('ok' or 'failed'), ``reason``, ``model`` (spec name),
    ``dataset``, ``seed``, ``deep_supervision``, ``budget``, ``loss``, test metrics ``iou``,
    ``dice``, ``iou_std``, ``dice_std``, ``hd95``, ``fp_empty``, ``n_cases``; costs ``params``
    (inference network: main head only), ``gflops`` (forward, per image), ``images_per_s``
    (inference), ``train_seconds``; ``epochs``, ``best_epoch``, ``spec_hash`` (canonical hash of
    the spec as given), ``device``; ``curve`` (one dict per epoch: epoch, train_loss, val_iou,
    val_dice, lr, seconds), ``splits`` (case ids of train/val/test), ``cases`` (per-case test
    metrics, a DataFrame), ``samples`` (a few test images, ground truths and probabilities for
    overlays), ``pruning`` (per level: level, params, images_per_s, iou, dice), ``fast`` (the
    fast-path parts applied, e.g. ``'bf16,channels_last,compile,cuda_graphs'`` or ``'off'``),
    ``fast_skipped`` (``'part: reason; ...'`` for those asked for but not applied), ``config``;
    with ``save_weights`` ``checkpoint``: the selected epoch's weights with the spec
    as trained, the normalisation, threshold and image size (:func:`skipdsl.checkpoint.payload`).
    """
    cfg = resolve_config(config)
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        if cfg["task"] == "instance":  # Mask R-CNN over a pyramid spec
            return run_instance(cfg, report)
        return _train_and_evaluate(cfg, report)
    finally:  # a trial run in-process (local backend, search) leaves the caller's setting
        torch.set_num_threads(threads)


def _train_and_evaluate(cfg: dict[str, Any],
                        report: Callable[[int, float], Any] | None) -> dict[str, Any]:
    from skipdsl.graph import spec_hash
    from skipdsl.losses import build_loss
    from skipdsl.models import create_model
    from skipdsl.spec import Spec
    from skipdsl.train.metrics import aggregate, case_metrics, count_params, gflops

    plan = plan_trial(cfg)  # the budget resolved for this dataset (its registered dims)
    result = empty_result(cfg)
    gen = seed_everything(int(cfg["seed"]))
    device = pick_device(cfg["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        frac = cfg["gpu_memory_fraction"]
        if frac is not None and 0 < float(frac) < 1:
            # Ray does not enforce fractional GPUs: trials packed on one GPU each keep to
            # their share of its memory instead of starving the others
            torch.cuda.set_per_process_memory_fraction(float(frac), device)

    # -- data ------------------------------------------------------------------------------
    spec = load_spec(cfg["model"])
    result["model"] = spec.name
    result["spec_hash"] = spec_hash(spec)
    data = load_data(cfg, plan)
    ds, dims, is3d, splits, case_ids = data.ds, data.dims, data.is3d, data.splits, data.case_ids
    fast = fast_path(cfg, spec, device, dims)
    result.update(fast=fast.summary(), fast_skipped=fast.reasons())
    images, masks, mean, std, red = data.images, data.masks, data.mean, data.std, data.red
    raw_images = data.raw_images
    result["splits"] = {k: [case_ids[i] for i in v] for k, v in splits.items()}

    # -- model -----------------------------------------------------------------------------
    if dims != plan.dims:  # a family member's dimensions are known once its files are read
        plan = plan_trial(cfg, dims=dims)
    if cfg["size_error"]:  # bench run --params/--flops: this model cannot reach the target
        raise SpecError(cfg["size_error"])
    scale = plan.width_scale
    if cfg["width_scale"] is not None:  # matched size: the factor solved for this model
        scale = float(cfg["width_scale"])
    widths = cfg["widths"]
    widths = list(widths) if isinstance(widths, (list, tuple)) else widths
    use_ds = bool(cfg["deep_supervision"]) and len(spec.heads) > 1
    # one call for every model (skipdsl.models): the plan's width scale scales the spec's own
    # widths (its shape) unless widths are given; a library baseline checks its size rules
    model = create_model(spec if isinstance(spec, Spec) else spec.name,
                         in_channels=int(ds.in_channels), num_classes=int(ds.num_classes),
                         dims=dims, widths=widths,
                         width_scale=scale if widths is None else None,
                         deep_supervision=use_ds, cgm=cfg["cgm"], recompute=cfg["recompute"],
                         image_size=tuple(images.shape[2:]), patch=plan.patch,
                         spacing=ds.meta.get("spacing")).to(device)
    patch = plan.patch
    result["head_init"] = cfg["head_init"]
    if cfg["head_init"] == "prior":
        train_masks = masks[torch.from_numpy(splits["train"])].float()
        if train_masks.dim() == images.dim() and train_masks.shape[1] == int(ds.num_classes):
            prior = train_masks.mean(dim=red)  # one foreground fraction per class
        else:
            prior = train_masks.mean()
        init_heads(model, prior)
    memory_format = fast.memory_format(dims)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    forward = fast.compile_model(model)  # the training forward (compiled with fast: compile)
    evaluate = fast.inference(model, fn=forward)  # eval forward (CUDA graphs: replayed)
    loss_name = plan.loss or spec.loss or "bce_dice"
    result["loss"] = loss_name
    loss_fn = build_loss(loss_name, **(cfg["loss_kwargs"] or {}))

    epochs, bs = int(plan.epochs), int(plan.batch_size)
    n_train = len(splits["train"])
    bs = max(1, min(bs, n_train))
    steps_per_epoch = max(1, n_train // bs)  # drop the last partial batch (BatchNorm)
    opt, sched, aug = recipe(model, cfg, epochs * steps_per_epoch)
    result["device"] = str(device)

    # data lives on the device for the whole trial (small benchmark sets)
    train_x = images[torch.from_numpy(splits["train"])].to(device)
    train_y = masks[torch.from_numpy(splits["train"])].to(device)
    val_x = images[torch.from_numpy(splits["val"])]
    val_y = masks[torch.from_numpy(splits["val"])]
    eval_bs = max(bs, 1) * 2

    # -- train -----------------------------------------------------------------------------
    curve: list[dict[str, Any]] = []
    best = (-math.inf, -1, None)
    t0 = time.perf_counter()
    try:
        for epoch in range(epochs):
            model.train()
            te = time.perf_counter()
            losses = train_epoch(forward, opt, sched, loss_fn, train_x, train_y, epoch=epoch,
                                 batch_size=bs, steps=steps_per_epoch, patch=patch, aug=aug,
                                 generator=gen, fast=fast, memory_format=memory_format)
            probs = predict(model, val_x, eval_bs, forward=evaluate)
            vm = aggregate(case_metrics(probs, val_y, threshold=cfg["threshold"]))
            val_iou = vm["iou"] if not math.isnan(vm["iou"]) else 0.0
            curve.append({"epoch": epoch, "train_loss": float(losses.mean()),
                          "val_iou": vm["iou"], "val_dice": vm["dice"],
                          "lr": float(opt.param_groups[0]["lr"]),
                          "seconds": time.perf_counter() - te})
            if val_iou > best[0]:
                best = (val_iou, epoch, copy.deepcopy(model.state_dict()))
            if report is not None:
                report(epoch, float(vm["iou"]))
    except Diverged as err:
        result.update(status="failed", reason=str(err), curve=curve, epochs=len(curve),
                      train_seconds=time.perf_counter() - t0)
        return result
    train_seconds = time.perf_counter() - t0
    peak_mb = _peak_step_mb(model, cfg, loss_fn, train_x, train_y, bs, patch, aug, fast,
                            memory_format)
    if best[2] is not None:
        model.load_state_dict(best[2])

    # -- evaluate on the test split --------------------------------------------------------
    test_idx = torch.from_numpy(splits["test"])
    test_x, test_y = images[test_idx], masks[test_idx]
    hd95 = plan.hd95
    probs = predict(model, test_x, eval_bs, forward=evaluate)
    cases = case_metrics(probs, test_y, threshold=cfg["threshold"], hd95=hd95)
    test_ids = [case_ids[i] for i in splits["test"]]
    cases.insert(1, "case_id", [test_ids[c] for c in cases["case"]])
    agg = aggregate(cases)

    # costs, measured on the inference network (main head only, weights shared)
    infer = model
    if use_ds:
        infer = create_model(model.spec, deep_supervision=False).to(device)
        if memory_format is not None:
            infer = infer.to(memory_format=memory_format)
        missing, _ = infer.load_state_dict(model.state_dict(), strict=False)
        if missing:
            infer = model
    shape = tuple(images.shape[1:])
    iters = int(plan.throughput_iters)
    pruning = []
    if use_ds and cfg["prune"]:
        pruning = _pruning_levels(model, test_x, test_y, shape, eval_bs, device, iters, cfg,
                                  fast)

    result.update(
        iou=agg["iou"], dice=agg["dice"], iou_std=agg["iou_std"], dice_std=agg["dice_std"],
        hd95=agg["hd95"], fp_empty=agg["fp_empty"], n_cases=agg["n_cases"],
        params=int(count_params(infer)),
        gflops=float(gflops(infer, shape)),
        images_per_s=_throughput(fast.inference(infer, fn=forward if infer is model else None),
                                 shape, eval_bs, iters, device, is3d),
        train_seconds=train_seconds, peak_train_mb=peak_mb, epochs=len(curve),
        best_epoch=int(best[1]),
        width_scale=None if getattr(spec, "is_baseline", False) else scale,
        size_target=cfg["size_target"], size_value=cfg["size_value"],
        curve=curve, cases=cases, pruning=pruning, widths=list(infer.spec.widths),
        dims=dims, in_channels=int(ds.in_channels), num_classes=int(ds.num_classes),
        samples=overlay_samples(raw_images[test_idx], test_y, probs, test_ids,
                         int(plan.samples)),
    )
    # the model holds the selected epoch's weights (loaded above); a library baseline is not
    # compiled from a spec, so it has no checkpoint (skipdsl.checkpoint rebuilds from specs)
    if cfg["save_weights"] and not getattr(spec, "is_baseline", False):
        from skipdsl.checkpoint import payload

        result["checkpoint"] = payload(
            model, mean=mean, std=std, input_normalisation=ds.meta.get("normalisation"),
            threshold=cfg["threshold"], image_size=shape[1:], patch=patch,
            classes=ds.class_names,
            trial={"model": spec.name, "dataset": cfg["dataset"], "seed": int(cfg["seed"]),
                   "budget": cfg["budget"], "deep_supervision": use_ds, "epochs": len(curve),
                   "best_epoch": int(best[1]), "val_iou": best[0], "test_iou": agg["iou"]})
    return result


def _throughput(model, shape, eval_bs, iters, device, is3d) -> float:
    """Inference images/s at a small batch (one volume in 3D), one warm-up pass (with CUDA
    graphs, the capture). ``model``: a FastInference of its own, so its graph has this batch."""
    from skipdsl.train.metrics import inference_throughput

    batch = 1 if is3d else max(1, min(eval_bs // 2, 8))
    return float(inference_throughput(model, shape, batch=batch, iters=iters, device=device,
                                      warmup=1))


def planned_epochs(config: dict[str, Any]) -> int:
    """The number of epochs a config will train (for progress bars)."""
    return int(plan_trial(resolve_config(config)).epochs)


def _pruning_levels(model, test_x, test_y, shape, eval_bs, device, iters, cfg,
                    fast) -> list[dict[str, Any]]:
    """Params, images/s and test IoU of each pruned sub-network x_0_1 .. x_0_(depth-1), with
    the same fast path as the full network."""
    from skipdsl.compiler import prune
    from skipdsl.train.metrics import aggregate, case_metrics, count_params

    out = []
    for level in range(1, model.spec.depth):
        if f"x_0_{level}" not in getattr(model, "head_ids", []):
            continue
        try:
            sub = prune(model, level=level)
        except Exception:  # a spec that cannot be pruned at this level
            continue
        forward = fast.compile_model(sub)
        probs = predict(sub, test_x, eval_bs, forward=fast.inference(sub, fn=forward))
        agg = aggregate(case_metrics(probs, test_y, threshold=cfg["threshold"]))
        out.append({"level": level, "params": int(count_params(sub)),
                    "images_per_s": _throughput(fast.inference(sub, fn=forward), shape,
                                                eval_bs, iters, device, len(shape) == 4),
                    "iou": agg["iou"], "dice": agg["dice"]})
    return out


def _peak_step_mb(model, cfg, loss_fn, train_x, train_y, bs, patch, aug, fast,
                  memory_format) -> float | None:
    """Peak memory (MB) of one of the trial's training steps, measured: a copy of the model
    and a fresh optimiser run one :func:`train_epoch` step (same batch size, patch, loss and
    augmentation) under PyTorch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``:
    live parameters, gradients, optimiser state, activations and temporaries, tracked by
    tensor lifetime, so it also works on the CPU, where the allocator keeps freed pages and
    the process's resident memory does not show a step's peak). On CUDA the same figure is
    ``torch.cuda.max_memory_allocated``. None when it cannot be measured (the tracker is a
    private PyTorch API). The trial's random streams are left untouched."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # noqa: BLE001 - an optional measurement
        return None
    try:
        with torch.random.fork_rng(devices=[]):
            net = copy.deepcopy(model).train()
            opt, sched, _ = recipe(net, cfg, 1)
            gen = torch.Generator(device=train_x.device).manual_seed(0)
            step = dict(epoch=0, batch_size=bs, steps=1, patch=patch, aug=aug, generator=gen,
                        fast=fast, memory_format=memory_format)
            if train_x.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(train_x.device)
                base = torch.cuda.memory_allocated(train_x.device)
                train_epoch(net, opt, sched, loss_fn, train_x, train_y, **step)
                torch.cuda.synchronize()
                return (torch.cuda.max_memory_allocated(train_x.device) - base) / 2**20
            tracker = MemTracker()
            tracker.track_external(net, opt)
            with tracker:
                train_epoch(net, opt, sched, loss_fn, train_x, train_y, **step)
            peak = tracker.get_tracker_snapshot("peak")
            return float(sum(v.get("Total", 0) for v in peak.values())) / 2**20
    except Exception:  # noqa: BLE001 - a measurement never fails a trial
        return None
