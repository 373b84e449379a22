"""Train and evaluate one (model, dataset, seed, deep supervision) trial with the papers' recipe.

One function, :func:`train_and_evaluate`, does the whole trial; the benchmark runner (Ray Tune
or local), and the architecture search call it. It takes a plain, serialisable ``config`` dict
and returns a result dict (see :func:`train_and_evaluate`).

Recipe (UNet# code, REFERENCE.md): Adam (lr 1e-3, weight decay 1e-4), cosine annealing of the
learning rate over all steps, He init (done by the compiler, ``init: he``), batch training with
on-device augmentation (rot90, flips, brightness/contrast; :mod:`skipdsl.train.augment`),
per-channel normalisation with the training split's statistics. The model of the epoch with the
best validation IoU is evaluated on the test split. On CUDA: bf16 autocast, channels_last and
cuDNN autotuning. Seeds fix the initialisation, the batch order and the augmentation.

The fast path (:mod:`skipdsl.fast`; config key ``fast``, else the spec's ``fast:``) adds
``torch.compile`` of the training model and CUDA-graph inference for evaluation and the
throughput measurement; ``result['fast']`` names the parts applied and
``result['fast_skipped']`` the parts left out, with reasons (on CPU, ``on`` applies none).

A trial whose loss becomes NaN/inf is stopped and returned with ``status='failed'`` and a
``reason`` (it is not an exception: a sweep records it and goes on).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import SpecError
from ..heads import init_heads
from .augment import AugmentConfig, augment_batch, random_crop

__all__ = ["Budget", "BUDGETS", "DEFAULTS", "Diverged", "resolve_config", "fast_path",
           "train_and_evaluate", "planned_epochs", "TrialData", "load_data", "train_epoch",
           "recipe"]


@dataclass(frozen=True)
class Budget:
    """How much training a trial gets.

    ``width_scale``/``width_scale_3d`` multiply the spec's own level widths and projection
    channels (:func:`skipdsl.spec.scale_spec`), so a reduced budget keeps each model's shape:
    UNet 3+ stays twice as wide as UNet and WUNet keeps its widening, and a depth-4 spec keeps
    four levels.
    """

    name: str
    epochs: int
    epochs_3d: int
    n: int | None  # images (volumes) loaded per dataset; None = all
    n_3d: int | None
    width_scale: float
    width_scale_3d: float
    batch_size: int
    batch_size_3d: int
    hd95: bool = False
    throughput_iters: int = 5
    samples: int = 4  # test cases kept for the overlay plots
    patch: int = 0  # train on random patch x patch crops (0: whole images); eval on whole ones
    patch_3d: int = 0
    loss: str | None = None  # one loss for every model (None: each spec's own loss)
    #: per-dataset changes of the fields above, the same for every model on that dataset
    #: (``{"liver2d": {"n": 256}}``); :meth:`for_dataset` applies them
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> "Budget":
        """This budget as a trial on ``dataset`` gets it (its :attr:`per_dataset` applied)."""
        return dataclasses.replace(self, **self.per_dataset.get(dataset, {}), per_dataset={})


#: ``cpu``: the comparison budget (the zoo's Table 1 on 2 CPU cores, ``bench run --budget cpu
#: --seeds 0,1,2``). One recipe for every model: the same images, epochs, patch, width scale and
#: loss (``bce_dice``: each paper's own hybrid loss would make the loss, not the topology,
#: part of the comparison; ``--loss`` overrides it for all).
#:
#: Arithmetic (measured on this project's 2-core machine before the run, fwd+bwd+Adam, batch 4,
#: 1 torch thread per trial, two trials side by side): train images/s on 64x64 patches at x0.25
#: widths: UNet 81, WUNet 66, UNet++ 35, UNet# 15-16, UNet 3+ 10 (UNet 3+ keeps twice UNet's
#: widths). One (dataset, seed) block of the 8 configurations costs
#: sum(1/rate) = 0.41 core-s per training image. 2D: n=128 -> 109 train / 19 val images,
#: 10 epochs = 1,090 training images per trial -> 450 core-s of training per block, plus about
#: 30 s per trial of evaluation (200 test images at 96x96, the validation set every epoch,
#: pruning levels, HD95, images/s): ~700 core-s per block; 4 datasets x 3 seeds = 12 blocks
#: -> ~8,400 core-s = ~70 min on 2 cores. 3D: 24 volumes (20 train) of 64^3, 32^3 patches,
#: 6 epochs at x0.125 widths, 16 test volumes: ~25 min for 3 seeds. Total ~95 min for the 120
#: trials (the measured wall time is in results/cpu-zoo/README.md), inside the 3 hours allowed.
#: Patches of 64 (not 48: liver2d lost 7 IoU points at 48, it needs the context) cut the cost
#: per image 2.25x against whole 96x96 images.
#:
#: liver2d gets n=256 (218 train / 38 validation images; every model alike): at n=128 its
#: 19-image validation set picked epochs whose validation IoU was up to 0.15 above their test
#: IoU, and UNet's test IoU over seeds 0, 1, 2 was 0.77, 0.58, 0.71; 20 epochs at n=128 gave
#: 0.77, 0.57, 0.75, n=256 at 10 epochs 0.83, 0.76, 0.76. It doubles liver2d's training images
#: (as 20 epochs would): +450 core-s per (liver2d, seed) block, +~11 min on 2 cores, ~105 min
#: for the 120 trials. Its 24 trials ran again; the other datasets' trials keep their keys
#: (:func:`skipdsl.bench.runner.budget_fingerprint` hashes the budget as a trial gets it).
#:
#: mni2d (one real volume: 60 training slices, whatever ``n``) gets 30 epochs, so that a
#: trial sees 1,800 training images, as the synthetic 2D sets do (109 x 10 = 1,090; liver2d
#: 218 x 10 = 2,180); at 10 epochs it saw 600. Set before any mni2d result was looked at
#: beyond two UNet 3+ trials (test IoU 0.58 and 0.50 at 10 epochs).
CPU_BUDGET = Budget("cpu", epochs=10, epochs_3d=6, n=128, n_3d=24, width_scale=0.25,
                    width_scale_3d=0.125, batch_size=4, batch_size_3d=2, patch=64, patch_3d=32,
                    loss="bce_dice", hd95=True, throughput_iters=2,
                    per_dataset={"liver2d": {"n": 256}, "mni2d": {"epochs": 30}})

#: ``quick``: the default of ``bench run``: the cpu recipe with less training, so that the whole
#: zoo (8 configurations) on the five built-in datasets, one seed (40 trials), runs in <= 20
#: minutes on 2 CPU cores. A look at everything, not a comparison (use ``cpu`` for that).
QUICK_BUDGET = dataclasses.replace(CPU_BUDGET, name="quick", epochs=3, epochs_3d=2, n=96,
                                   n_3d=12, hd95=False, throughput_iters=1, per_dataset={})

#: ``smoke``: minutes on 2 CPU cores for the whole zoo x datasets sweep (tiny widths, few
#: epochs, small n); ``short``: a real but quick comparison; ``paper``: the papers' 100 epochs.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", epochs=10, epochs_3d=3, n=96, n_3d=8,
                    width_scale=0.25, width_scale_3d=0.125, batch_size=4,
                    batch_size_3d=2, throughput_iters=2),
    "quick": QUICK_BUDGET,
    "cpu": CPU_BUDGET,
    "short": Budget("short", epochs=20, epochs_3d=20, n=None, n_3d=None,
                    width_scale=0.5, width_scale_3d=0.25,
                    batch_size=16, batch_size_3d=2, hd95=True),
    "paper": Budget("paper", epochs=100, epochs_3d=100, n=None, n_3d=None, width_scale=1.0,
                    width_scale_3d=0.5, batch_size=128, batch_size_3d=2,
                    hd95=True, throughput_iters=10),
}

#: Config keys and their defaults; ``None`` means "from the budget / the spec / the dataset".
DEFAULTS: dict[str, Any] = {
    "model": None,  # zoo name, path to a YAML spec, or a spec dict (Spec.to_dict())
    # semantic (this module) or instance (Mask R-CNN over a pyramid spec: skipdsl.train.instance)
    "task": "semantic",
    "dataset": None,  # a name from skipdsl.data.list_datasets()
    "seed": 0,
    "deep_supervision": False,
    "budget": "smoke",
    "epochs": None,
    "n": None,
    "widths": None,  # list per level or an int base
    # one factor on every width of the spec instead of the budget's width_scale: set by
    # bench run --params/--flops (skipdsl.sizing.scale_to), with the target it was solved for
    # (recorded) and, for a target the model cannot reach, the reason the trial fails
    "width_scale": None,
    "size_target": None,
    "size_value": None,  # the target's value on this dataset (params, or GFLOPs per image)
    "size_error": None,
    "batch_size": None,
    "patch": None,  # training crop size (0: whole images); None: the budget's
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "eta_min": 1e-5,
    "loss": None,  # default: the spec's loss, else bce_dice
    "loss_kwargs": None,  # to build_loss (mode, head_resize, cgm_weight, ...)
    "cgm": None,
    # prior: zero-mean head weights, bias = log-odds of the training foreground; he: the
    # papers' exact init (He weights, bias 0) - see skipdsl.heads.init_heads
    "head_init": "prior",
    "augment": True,
    "data_root": None,
    "data_seed": 0,  # the dataset's generation/split seed (the same for every trial seed)
    "cache_dir": None,
    "device": "auto",  # auto: cuda if visible, else cpu
    "threads": None,  # torch CPU threads (the runner sets it to the trial's CPUs)
    "gpu_memory_fraction": None,  # cap this process's share of GPU memory (packed trials)
    "amp": "auto",  # bf16 autocast on CUDA
    "channels_last": "auto",  # on CUDA
    "fast": None,  # off | on | parts (skipdsl.fast); None: the spec's fast, else off
    "hd95": None,
    "threshold": 0.5,
    "prune": True,  # evaluate pruning levels when deep supervision is on and prune exists
    "throughput_iters": None,
    "samples": None,
    # result["checkpoint"]: the selected weights, the spec as trained and the normalisation
    # (skipdsl.checkpoint). Off here, on in bench run_sweep (the store writes model.pt +
    # spec.yaml) and in a search that keeps weights: a caller that stores results as they
    # come is not handed tensors it does not expect
    "save_weights": False,
}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every key of :data:`DEFAULTS`; unknown keys raise ``ValueError``."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trainer config key(s) {unknown}; valid: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if out["model"] is None or out["dataset"] is None:
        raise ValueError("config needs 'model' and 'dataset'")
    if out["budget"] not in BUDGETS:
        raise ValueError(f"unknown budget '{out['budget']}'; valid: {', '.join(BUDGETS)}")
    if out["task"] not in ("semantic", "instance"):
        raise ValueError(f"unknown task '{out['task']}'; valid: semantic, instance")
    if out["head_init"] not in ("prior", "he"):
        raise ValueError(f"unknown head_init '{out['head_init']}'; valid: prior, he")
    if out["fast"] is not None:
        from skipdsl.fast import normalize

        out["fast"] = normalize(out["fast"])
    return out


def fast_path(cfg: dict[str, Any], spec: Any, device: Any):
    """The trial's :class:`~skipdsl.fast.FastPath`: the config's ``fast`` (the command line)
    over the spec's, then the ``amp`` and ``channels_last`` keys: ``auto`` adds their part on
    CUDA (as before the fast path existed), ``True`` forces it on any device, ``False`` drops it
    (recorded)."""
    from skipdsl.fast import FastPath, choose

    fast = FastPath.resolve(choose(cfg["fast"], getattr(spec, "fast", None)), device)
    for part, key in (("bf16", "amp"), ("channels_last", "channels_last")):
        value = cfg[key]
        if value == "auto":
            if fast.device == "cuda" and not getattr(fast, part):
                fast = fast.with_part(part, True)
        else:
            fast = fast.with_part(part, bool(value), reason=f"{key}: false in the config")
    return fast


def load_spec(model: Any):
    """A zoo name, a YAML path, a spec dict or a ``Spec`` -> a checked ``Spec``; a library
    baseline's name -> its :class:`skipdsl.baselines.Baseline`."""
    import skipdsl
    from skipdsl.baselines import lookup
    from skipdsl.spec import from_dict

    if lookup(model) is not None:
        return lookup(model)
    if isinstance(model, dict):
        return from_dict(model, source="<config>")
    return skipdsl.load(model)


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _main(model: torch.nn.Module, out: Any) -> torch.Tensor:
    import skipdsl

    return skipdsl.main_logits(model, out)


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


def _pick_samples(target: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to ``k`` cases, those with the most foreground first."""
    area = target.reshape(target.shape[0], -1).astype(np.int64).sum(1)  # uint8: no wrap-around
    return np.argsort(-area, kind="stable")[:k]


def _slice_2d(a: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(C, *spatial) -> (C, H, W); in 3D the depth slice with the most foreground."""
    if a.ndim == 3:
        return a
    z = int(target.reshape(target.shape[0], target.shape[1], -1).sum((0, 2)).argmax())
    return a[:, z]


def _samples(images: torch.Tensor, target: torch.Tensor, probs: torch.Tensor,
             case_ids: list[str], k: int) -> dict[str, Any]:
    t = target.numpy()
    idx = _pick_samples(t, k)
    img, gt, pr = [], [], []
    for i in idx:
        img.append(_slice_2d(images[i].numpy(), t[i]))
        gt.append(_slice_2d(t[i], t[i]))
        pr.append(_slice_2d(probs[i].numpy(), t[i]))
    return {
        "image": np.stack(img).astype(np.float16) if img else np.zeros((0,)),
        "target": np.stack(gt).astype(np.uint8) if gt else np.zeros((0,)),
        "prob": np.stack(pr).astype(np.float16) if pr else np.zeros((0,)),
        "case_id": [case_ids[i] for i in idx],
    }


def _empty_result(cfg: dict[str, Any]) -> dict[str, Any]:
    nan = float("nan")
    return {
        "status": "ok", "reason": "",
        "model": None, "dataset": cfg["dataset"], "seed": int(cfg["seed"]),
        "deep_supervision": bool(cfg["deep_supervision"]), "budget": cfg["budget"],
        "loss": None, "iou": nan, "dice": nan, "iou_std": nan, "dice_std": nan, "hd95": nan,
        "fp_empty": nan, "n_cases": 0, "params": 0, "gflops": nan, "images_per_s": nan,
        "train_seconds": 0.0, "peak_train_mb": None, "epochs": 0, "best_epoch": -1, "spec_hash": None,
        "device": None, "curve": [], "splits": {}, "cases": None, "samples": None,
        "pruning": [], "fast": None, "fast_skipped": "", "config": dict(cfg),
    }


@dataclass
class TrialData:
    """A trial's data: the dataset, its splits (index arrays), the images normalised per channel
    with the training split's statistics (``mean``, ``std``; ``raw_images`` before), the masks,
    and ``red``, the dimensions the statistics reduce over."""

    ds: Any
    dims: int
    is3d: bool
    splits: dict[str, np.ndarray]
    case_ids: list[str]
    images: torch.Tensor
    raw_images: torch.Tensor
    masks: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    red: tuple[int, ...]


def load_data(cfg: dict[str, Any], budget: Budget | None = None) -> TrialData:
    """Load and normalise a resolved config's dataset (``cfg['n']`` images, else the budget's
    image count, else all); an empty validation split falls back to the training split."""
    from skipdsl.data import load_dataset

    n = cfg["n"]
    if n is None and budget is not None:
        n = _budget_n(budget, cfg["dataset"], cfg["data_root"])
    ds = load_dataset(cfg["dataset"], root=cfg["data_root"], seed=int(cfg["data_seed"]), n=n,
                      cache_dir=cfg["cache_dir"])
    splits = {k: np.asarray(ds.splits[k], dtype=np.int64) for k in ("train", "val", "test")}
    if len(splits["train"]) == 0 or len(splits["test"]) == 0:
        raise ValueError(f"dataset '{cfg['dataset']}' has an empty train or test split: "
                         f"{ {k: len(v) for k, v in splits.items()} }")
    if len(splits["val"]) == 0:  # tiny data: select on the training split instead
        splits["val"] = splits["train"]
    images = _as_tensor(ds.images).float()
    # per-channel normalisation with training statistics
    red = (0,) + tuple(range(2, images.dim()))
    tr = images[torch.from_numpy(splits["train"])]
    mean = tr.mean(dim=red, keepdim=True)
    std = tr.std(dim=red, keepdim=True).clamp_min(1e-6)
    return TrialData(ds=ds, dims=int(ds.dims), is3d=int(ds.dims) == 3, splits=splits,
                     case_ids=[str(c) for c in ds.case_ids], images=(images - mean[:1]) / std[:1],
                     raw_images=images, masks=_as_tensor(ds.masks), mean=mean, std=std, red=red)


def recipe(model: torch.nn.Module, cfg: dict[str, Any], total_steps: int):
    """The recipe's optimiser (Adam), its cosine schedule over ``total_steps`` and the
    augmentation settings, from a resolved config."""
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]),
                           weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps,
                                                       eta_min=float(cfg["eta_min"]))
    return opt, sched, augment_config(cfg)


def augment_config(cfg: dict[str, Any]) -> AugmentConfig:
    """The augmentation of a resolved config: all of it, or none (``augment: false``)."""
    return AugmentConfig() if cfg["augment"] else AugmentConfig(rot90=False, flip=False,
                                                                intensity=False)


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
            from .instance import run_instance

            return run_instance(cfg, report)
        return _train_and_evaluate(cfg, report)
    finally:  # a trial run in-process (local backend, search) leaves the caller's setting
        torch.set_num_threads(threads)


def _train_and_evaluate(cfg: dict[str, Any],
                        report: Callable[[int, float], Any] | None) -> dict[str, Any]:
    import skipdsl
    from skipdsl.spec import scale_spec
    from skipdsl.losses import build_loss
    from skipdsl.train.metrics import aggregate, case_metrics, count_params, gflops

    budget = BUDGETS[cfg["budget"]].for_dataset(cfg["dataset"])
    result = _empty_result(cfg)
    gen = _seed_everything(int(cfg["seed"]))
    device = _device(cfg["device"])
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
    fast = fast_path(cfg, spec, device)
    result.update(fast=fast.summary(), fast_skipped=fast.reasons())
    result["spec_hash"] = skipdsl.spec_hash(spec)
    data = load_data(cfg, budget)
    ds, dims, is3d, splits, case_ids = data.ds, data.dims, data.is3d, data.splits, data.case_ids
    images, masks, mean, std, red = data.images, data.masks, data.mean, data.std, data.red
    raw_images = data.raw_images
    result["splits"] = {k: [case_ids[i] for i in v] for k, v in splits.items()}

    # -- model -----------------------------------------------------------------------------
    if cfg["size_error"]:  # bench run --params/--flops: this model cannot reach the target
        raise SpecError(cfg["size_error"])
    widths = cfg["widths"]
    baseline = getattr(spec, "is_baseline", False)
    scale = budget.width_scale_3d if is3d else budget.width_scale
    if cfg["width_scale"] is not None:  # matched size: the factor solved for this model
        scale = float(cfg["width_scale"])
    if widths is None and not baseline:  # the budget scales the spec's widths (its shape)
        spec = scale_spec(spec, scale)
    widths = list(widths) if isinstance(widths, (list, tuple)) else widths
    has_ds_heads = len(spec.heads) > 1
    use_ds = bool(cfg["deep_supervision"]) and has_ds_heads
    build = dict(in_channels=int(ds.in_channels), num_classes=int(ds.num_classes), dims=dims,
                 widths=widths, cgm=cfg["cgm"])
    patch = int(cfg["patch"] if cfg["patch"] is not None
                else (budget.patch_3d if is3d else budget.patch))
    if baseline:  # a library network (skipdsl.baselines): its size rules are checked here
        from skipdsl.baselines import scale_from_widths

        model = spec.build(in_channels=build["in_channels"], num_classes=build["num_classes"],
                           dims=dims, image_size=tuple(images.shape[2:]), patch=patch,
                           spacing=ds.meta.get("spacing"),
                           width_scale=scale if widths is None else scale_from_widths(widths))
        model = model.to(device)
    else:
        model = skipdsl.compile(spec, deep_supervision=use_ds, **build).to(device)
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
    loss_name = cfg["loss"] or budget.loss or spec.loss or "bce_dice"
    result["loss"] = loss_name
    loss_fn = build_loss(loss_name, **(cfg["loss_kwargs"] or {}))

    epochs = int(cfg["epochs"] or (budget.epochs_3d if is3d else budget.epochs))
    bs = int(cfg["batch_size"] or (budget.batch_size_3d if is3d else budget.batch_size))
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
    hd95 = budget.hd95 if cfg["hd95"] is None else bool(cfg["hd95"])
    probs = predict(model, test_x, eval_bs, forward=evaluate)
    cases = case_metrics(probs, test_y, threshold=cfg["threshold"], hd95=hd95)
    test_ids = [case_ids[i] for i in splits["test"]]
    cases.insert(1, "case_id", [test_ids[c] for c in cases["case"]])
    agg = aggregate(cases)

    # costs, measured on the inference network (main head only, weights shared)
    infer = model
    if use_ds:
        infer = skipdsl.compile(spec, deep_supervision=False, **build).to(device)
        if memory_format is not None:
            infer = infer.to(memory_format=memory_format)
        missing, _ = infer.load_state_dict(model.state_dict(), strict=False)
        if missing:
            infer = model
    shape = tuple(images.shape[1:])
    iters = int(cfg["throughput_iters"] or budget.throughput_iters)
    pruning = []
    if use_ds and cfg["prune"] and hasattr(skipdsl, "prune"):
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
        best_epoch=int(best[1]), width_scale=None if baseline else scale,
        size_target=cfg["size_target"], size_value=cfg["size_value"],
        curve=curve, cases=cases, pruning=pruning, widths=list(infer.spec.widths),
        dims=dims, in_channels=int(ds.in_channels), num_classes=int(ds.num_classes),
        samples=_samples(raw_images[test_idx], test_y, probs, test_ids,
                         int(cfg["samples"] if cfg["samples"] is not None else budget.samples)),
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


def _throughput(model, shape, eval_bs, iters, device, is3d) -> float:
    """Inference images/s at a small batch (one volume in 3D), one warm-up pass (with CUDA
    graphs, the capture). ``model``: a FastInference of its own, so its graph has this batch."""
    from skipdsl.train.metrics import inference_throughput

    batch = 1 if is3d else max(1, min(eval_bs // 2, 8))
    return float(inference_throughput(model, shape, batch=batch, iters=iters, device=device,
                                      warmup=1))


def planned_epochs(config: dict[str, Any]) -> int:
    """The number of epochs a config will train (for progress bars)."""
    cfg = resolve_config(config)
    if cfg["task"] == "instance":
        from .instance import INSTANCE_BUDGETS

        return int(cfg["epochs"] or INSTANCE_BUDGETS[cfg["budget"]].epochs)
    b = BUDGETS[cfg["budget"]].for_dataset(cfg["dataset"])
    return int(cfg["epochs"] or (b.epochs_3d if _is_3d(cfg["dataset"], cfg["data_root"])
                                 else b.epochs))


def _budget_n(budget: Budget, dataset: str, root: Any) -> int | None:
    """The budget's image count for a dataset (3D sets get ``n_3d``)."""
    if budget.n is None and budget.n_3d is None:
        return None
    return budget.n_3d if _is_3d(dataset, root) else budget.n


def _is_3d(dataset: str, root: Any) -> bool:
    """Whether a dataset name is registered as 3D (unregistered family names: by suffix)."""
    from skipdsl.data import DATASETS

    if dataset in DATASETS:
        return DATASETS.get(dataset).dims == 3
    return dataset.lower().endswith("3d")


def _pruning_levels(model, test_x, test_y, shape, eval_bs, device, iters, cfg,
                    fast) -> list[dict[str, Any]]:
    """Params, images/s and test IoU of each pruned sub-network x_0_1 .. x_0_(depth-1), with
    the same fast path as the full network."""
    import skipdsl
    from skipdsl.train.metrics import aggregate, case_metrics, count_params

    out = []
    for level in range(1, model.spec.depth):
        if f"x_0_{level}" not in getattr(model, "head_ids", []):
            continue
        try:
            sub = skipdsl.prune(model, level=level)
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
