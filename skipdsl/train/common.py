"""What the semantic trainer (:mod:`skipdsl.train.trainer`), the instance trainer
(:mod:`skipdsl.train.instance`) and the one-shot supernet (:mod:`skipdsl.search.supernet`)
share: the budgets, the config keys and their defaults, the trial's data (loaded and
normalised once), seeding, the device, the overlay samples and the empty result row.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .augment import AugmentConfig

__all__ = ["Budget", "TrialPlan", "TASKS", "BUDGETS", "CPU_BUDGET", "QUICK_BUDGET",
           "instance_budget", "budgets_for", "plan_trial", "dataset_dims",
           "INSTANCE_BUDGETS", "DEFAULTS", "resolve_config", "load_spec", "seed_everything",
           "pick_device", "as_tensor", "overlay_samples", "empty_result", "TrialData",
           "load_data", "augment_config"]


#: The tasks a trial has: semantic segmentation (:mod:`skipdsl.train.trainer`) or instance
#: segmentation (Mask R-CNN over a pyramid spec, :mod:`skipdsl.train.instance`).
TASKS = ("semantic", "instance")

#: The fields each task's budget had when they were two types: a trial's key hashes a budget
#: through them (:meth:`Budget.key_fields`, :func:`skipdsl.bench.runner.budget_fingerprint`),
#: so that the committed results keep their keys.
SEMANTIC_KEY_FIELDS = ("name", "epochs", "epochs_3d", "n", "n_3d", "width_scale",
                       "width_scale_3d", "batch_size", "batch_size_3d", "hd95",
                       "throughput_iters", "samples", "patch", "patch_3d", "loss")
INSTANCE_KEY_FIELDS = ("name", "epochs", "n", "width_scale", "batch_size", "image_size",
                       "anchors", "lr", "weight_decay", "roi_width", "proposals", "rois",
                       "samples")
#: The fields a 3D dataset may get other values of (:attr:`Budget.in_3d`).
DIMS_FIELDS = ("epochs", "n", "width_scale", "batch_size", "patch")


@dataclass(frozen=True)
class Budget:
    """How much training a trial gets, for either task; :meth:`plan` resolves it, once, into
    the concrete :class:`TrialPlan` of one trial.

    ``width_scale`` multiplies the spec's own level widths and projection channels
    (:func:`skipdsl.spec.scale_spec`), so a reduced budget keeps each model's shape: UNet 3+
    stays twice as wide as UNet and WUNet keeps its widening, and a depth-4 spec keeps four
    levels. ``in_3d``: the values a 3D dataset gets instead (of :data:`DIMS_FIELDS`);
    ``per_dataset``: changes for one dataset, the same for every model on it
    (``{"liver2d": {"n": 256}}``).

    ``task='instance'`` (Mask R-CNN over a pyramid spec, :mod:`skipdsl.train.instance`) adds
    the detector's recipe: ``image_size`` (the detector's input size: its transform resizes
    the 96x96 images to it); ``anchors`` (one anchor size per pyramid level, P2..P5 and pool,
    in pixels of the resized image); AdamW's ``lr`` and ``weight_decay``; ``roi_width`` (None:
    the scaled pyramid's channels) sets the RoI heads' width (torchvision: mask head 256, box
    MLP 1024 = 4 x 256); ``proposals``: RPN proposals kept per image before / after NMS in
    training (torchvision: 2000; the test keeps half); ``rois``: sampled RoIs per image
    (torchvision: 512). There ``width_scale`` scales the pyramid (FPN's 256 channels); the
    backbone keeps its channels.
    """

    name: str
    epochs: int
    n: int | None  # images (volumes) loaded per dataset; None = all
    width_scale: float
    batch_size: int
    task: str = "semantic"
    hd95: bool = False
    throughput_iters: int = 5
    samples: int = 4  # test cases kept for the overlay plots
    patch: int = 0  # train on random patch x patch crops (0: whole images); eval on whole ones
    loss: str | None = None  # one loss for every model (None: each spec's own loss)
    in_3d: dict[str, Any] = field(default_factory=dict)
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int | None = None
    anchors: tuple[int, ...] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    roi_width: int | None = None
    proposals: int | None = None
    rois: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"budget '{self.name}': task must be one of {TASKS}")
        bad = sorted(set(self.in_3d) - set(DIMS_FIELDS))
        if bad:
            raise ValueError(f"budget '{self.name}': in_3d may set {DIMS_FIELDS}, not {bad}")

    def for_dataset(self, dataset: str | None) -> "Budget":
        """This budget as a trial on ``dataset`` gets it (its :attr:`per_dataset` applied)."""
        return dataclasses.replace(self, **self.per_dataset.get(dataset or "", {}),
                                   per_dataset={})

    def for_dims(self, dims: int) -> "Budget":
        """This budget's values for a ``dims``-D dataset (:attr:`in_3d` applied in 3D)."""
        return dataclasses.replace(self, **(self.in_3d if dims == 3 else {}), in_3d={})

    def key_fields(self, dataset: str | None = None) -> dict[str, Any]:
        """What a trial's key hashes of this budget on ``dataset``: the fields of its task
        (:data:`SEMANTIC_KEY_FIELDS`, :data:`INSTANCE_KEY_FIELDS`), 3D values as ``*_3d``."""
        b = self.for_dataset(dataset) if self.task == "semantic" else self
        if self.task == "instance":
            return {f: getattr(b, f) for f in INSTANCE_KEY_FIELDS}
        b3 = b.for_dims(3)
        return {f: getattr(b3, f[:-3]) if f.endswith("_3d") else getattr(b, f)
                for f in SEMANTIC_KEY_FIELDS}

    def plan(self, dataset: str, dims: int, **overrides: Any) -> "TrialPlan":
        """The concrete plan of one trial on a ``dims``-D ``dataset``: this budget's values
        for the dataset and its dimensions, with ``overrides`` (the trainer config's
        ``epochs``, ``n``, ``batch_size``, ``patch``, ``loss``, ``hd95``,
        ``throughput_iters``, ``samples``, ``lr``; ``None``: the budget's)."""
        b = self.for_dataset(dataset).for_dims(dims)
        values = {f.name: getattr(b, f.name) for f in dataclasses.fields(TrialPlan)
                  if hasattr(b, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return TrialPlan(**{**values, "budget": self.name, "dataset": dataset, "dims": int(dims)})


@dataclass(frozen=True)
class TrialPlan:
    """What one trial trains with, resolved once from its budget, its dataset (and whether it
    is 2D or 3D) and the config's overrides: the trainer, the instance trainer and the
    one-shot supernet read these values and nothing else of the budget."""

    budget: str
    task: str
    dataset: str
    dims: int
    epochs: int
    n: int | None
    batch_size: int
    patch: int
    width_scale: float
    loss: str | None
    hd95: bool
    throughput_iters: int
    samples: int
    image_size: int | None = None
    anchors: tuple[int, ...] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    roi_width: int | None = None
    proposals: int | None = None
    rois: int | None = None

    @property
    def is3d(self) -> bool:
        return self.dims == 3


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
CPU_BUDGET = Budget("cpu", epochs=10, n=128, width_scale=0.25, batch_size=4, patch=64,
                    loss="bce_dice", hd95=True, throughput_iters=2,
                    in_3d={"epochs": 6, "n": 24, "width_scale": 0.125, "batch_size": 2,
                           "patch": 32},
                    per_dataset={"liver2d": {"n": 256}, "mni2d": {"epochs": 30}})

#: ``quick``: the default of ``bench run``: the cpu recipe with less training, so that the whole
#: zoo (8 configurations) on the five built-in datasets, one seed (40 trials), runs in <= 20
#: minutes on 2 CPU cores. A look at everything, not a comparison (use ``cpu`` for that).
QUICK_BUDGET = dataclasses.replace(CPU_BUDGET, name="quick", epochs=3, n=96, hd95=False,
                                   throughput_iters=1, per_dataset={},
                                   in_3d={**CPU_BUDGET.in_3d, "epochs": 2, "n": 12})

#: ``smoke``: minutes on 2 CPU cores for the whole zoo x datasets sweep (tiny widths, few
#: epochs, small n); ``short``: a real but quick comparison; ``paper``: the papers' 100 epochs.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", epochs=10, n=96, width_scale=0.25, batch_size=4, throughput_iters=2,
                    in_3d={"epochs": 3, "n": 8, "width_scale": 0.125, "batch_size": 2}),
    "quick": QUICK_BUDGET,
    "cpu": CPU_BUDGET,
    "short": Budget("short", epochs=20, n=None, width_scale=0.5, batch_size=16, hd95=True,
                    in_3d={"width_scale": 0.25, "batch_size": 2}),
    "paper": Budget("paper", epochs=100, n=None, width_scale=1.0, batch_size=128, hd95=True,
                    throughput_iters=10, in_3d={"width_scale": 0.5, "batch_size": 2}),
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
    "channels_last": "auto",  # on CUDA, and on the CPU for 2D data (docs/speed.md)
    # none | resample | split (skipdsl.compile's recompute): less activation memory, the same
    # network and gradients (split: to float rounding), so not part of the trial key; None:
    # the spec's, else none
    "recompute": None,
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


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every key of :data:`DEFAULTS`; unknown keys raise ``ValueError``."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trainer config key(s) {unknown}; valid: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if out["model"] is None or out["dataset"] is None:
        raise ValueError("config needs 'model' and 'dataset'")
    if out["task"] not in TASKS:
        raise ValueError(f"unknown task '{out['task']}'; valid: {', '.join(TASKS)}")
    if out["budget"] not in budgets_for(out["task"]):
        raise ValueError(f"unknown budget '{out['budget']}'; valid: "
                         f"{', '.join(budgets_for(out['task']))}")
    if out["recompute"] not in (None, "none", "resample", "split"):
        raise ValueError(f"unknown recompute '{out['recompute']}'; valid: none, resample, split")
    if out["head_init"] not in ("prior", "he"):
        raise ValueError(f"unknown head_init '{out['head_init']}'; valid: prior, he")
    if out["fast"] is not None:
        from skipdsl.fast import normalize

        out["fast"] = normalize(out["fast"])
    return out


def load_spec(model: Any):
    """A zoo name, a YAML path, a spec dict or a ``Spec`` -> a checked ``Spec``; a library
    baseline's name -> its :class:`skipdsl.baselines.Baseline`."""
    from skipdsl.spec import load
    from skipdsl.baselines import lookup
    from skipdsl.spec import from_dict

    if lookup(model) is not None:
        return lookup(model)
    if isinstance(model, dict):
        return from_dict(model, source="<config>")
    return load(model)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


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


def overlay_samples(images: torch.Tensor, target: torch.Tensor, probs: torch.Tensor,
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


def empty_result(cfg: dict[str, Any]) -> dict[str, Any]:
    nan = float("nan")
    return {
        "status": "ok", "reason": "",
        "model": None, "dataset": cfg["dataset"], "seed": int(cfg["seed"]),
        "deep_supervision": bool(cfg["deep_supervision"]), "budget": cfg["budget"],
        "loss": None, "iou": nan, "dice": nan, "iou_std": nan, "dice_std": nan, "hd95": nan,
        "fp_empty": nan, "n_cases": 0, "params": 0, "gflops": nan, "images_per_s": nan,
        "train_seconds": 0.0, "peak_train_mb": None, "epochs": 0, "best_epoch": -1,
        "spec_hash": None,
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


def load_data(cfg: dict[str, Any], plan: TrialPlan | None = None) -> TrialData:
    """Load and normalise a resolved config's dataset (``cfg['n']`` images, else the plan's
    image count, else all); an empty validation split falls back to the training split."""
    from skipdsl.data import load_dataset

    n = cfg["n"]
    if n is None and plan is not None:
        n = plan.n
    ds = load_dataset(cfg["dataset"], root=cfg["data_root"], seed=int(cfg["data_seed"]), n=n,
                      cache_dir=cfg["cache_dir"])
    splits = {k: np.asarray(ds.splits[k], dtype=np.int64) for k in ("train", "val", "test")}
    if len(splits["train"]) == 0 or len(splits["test"]) == 0:
        raise ValueError(f"dataset '{cfg['dataset']}' has an empty train or test split: "
                         f"{ {k: len(v) for k, v in splits.items()} }")
    if len(splits["val"]) == 0:  # tiny data: select on the training split instead
        splits["val"] = splits["train"]
    images = as_tensor(ds.images).float()
    # per-channel normalisation with training statistics
    red = (0,) + tuple(range(2, images.dim()))
    tr = images[torch.from_numpy(splits["train"])]
    mean = tr.mean(dim=red, keepdim=True)
    std = tr.std(dim=red, keepdim=True).clamp_min(1e-6)
    return TrialData(ds=ds, dims=int(ds.dims), is3d=int(ds.dims) == 3, splits=splits,
                     case_ids=[str(c) for c in ds.case_ids], images=(images - mean[:1]) / std[:1],
                     raw_images=images, masks=as_tensor(ds.masks), mean=mean, std=std, red=red)


def augment_config(cfg: dict[str, Any]) -> AugmentConfig:
    """The augmentation of a resolved config: all of it, or none (``augment: false``)."""
    return AugmentConfig() if cfg["augment"] else AugmentConfig(rot90=False, flip=False,
                                                                intensity=False)


def dataset_dims(dataset: str, root: Any = None) -> int:
    """2 or 3: a registered dataset's dimensions (an unregistered family member, e.g.
    ``nnunet:Dataset004_Hippocampus``, by its name's suffix until its files are read)."""
    from skipdsl.data import DATASETS

    if dataset in DATASETS:
        return int(DATASETS.get(dataset).dims)
    return 3 if dataset.lower().endswith("3d") else 2


def budgets_for(task: str) -> dict[str, Budget]:
    """The budgets of ``task`` by name (:data:`BUDGETS`, :data:`INSTANCE_BUDGETS`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; valid: {', '.join(TASKS)}")
    return BUDGETS if task == "semantic" else INSTANCE_BUDGETS


def plan_trial(cfg: dict[str, Any], dims: int | None = None) -> TrialPlan:
    """The :class:`TrialPlan` of a trainer config (at least ``dataset`` and ``budget``; a
    resolved config, or the keys a caller has): its task's budget, for its dataset in ``dims``
    (default: the registry's, :func:`dataset_dims`), with the config's overrides. The
    benchmark planner, both trainers, the supernet and the searches resolve a budget here."""
    task = cfg.get("task") or "semantic"
    budgets = budgets_for(task)
    if cfg["budget"] not in budgets:
        raise ValueError(f"unknown {task} budget '{cfg['budget']}'; valid: "
                         f"{', '.join(budgets)}")
    dims = int(dims or dataset_dims(cfg["dataset"], cfg.get("data_root")))
    over = {k: cfg.get(k) for k in ("n", "patch", "loss", "hd95", "samples")}
    if over["hd95"] is not None:
        over["hd95"] = bool(over["hd95"])
    # 0 epochs, batch size or timing steps asks for the budget's (as an unset one)
    over.update({k: cfg.get(k) or None for k in ("epochs", "batch_size", "throughput_iters")})
    if task == "instance":  # the trainer's lr (1e-3 by default) is AdamW's own
        over["lr"] = float(cfg.get("lr") or DEFAULTS["lr"])
    return budgets[cfg["budget"]].plan(cfg["dataset"], dims, **over)


def instance_budget(name: str, *, epochs: int, n: int | None, width_scale: float,
                    batch_size: int, image_size: int, anchors: tuple[int, ...],
                    lr: float = 1e-3, weight_decay: float = 1e-2, roi_width: int | None = None,
                    proposals: int = 2000, rois: int = 512, samples: int = 4) -> Budget:
    """A :class:`Budget` of the instance task, with torchvision's defaults where unset
    (AdamW at PyTorch's defaults: lr 1e-3, weight decay 1e-2)."""
    return Budget(name, epochs=epochs, n=n, width_scale=width_scale, batch_size=batch_size,
                  task="instance", samples=samples, image_size=image_size,
                  anchors=tuple(anchors), lr=lr, weight_decay=weight_decay, roi_width=roi_width,
                  proposals=proposals, rois=rois)


#: ``smoke``: Mask R-CNN with ResNet-34 on 2 CPU cores, two trials side by side in <= 30
#: minutes, AP50 > 0.3 on nuclei2d. Arithmetic (measured on the shared 2-core machine, 1 torch
#: thread a trial, batch 4): with the pyramid at x0.25 (64 channels), RoI heads 64 wide (mask
#: head 4 x 64, box MLP 256), 600 proposals and 64 sampled RoIs per image, a training step
#: costs ~0.3 s per image at 96x96 and ~0.55 s at 192x192 (the ResNet-34 and the RoI heads
#: dominate; FPN# and FPN cost alike). At 96x96 the nuclei (6-13 px) cover 2-3 cells of P2
#: (stride 4): FPN reached val AP50 0.09 after 6 epochs. Resized to 192 they are 12-26 px
#: (anchors 16..256 on P2..P6; torchvision's 32..512 are for 800-px COCO images and would
#: match no nucleus at the RPN's IoU 0.7): FPN reached val AP50 0.42 at epoch 3 and 0.67 at
#: epoch 8 of 12 (test AP50 0.64, AP 0.27, union IoU 0.71; 96 images). So: 192 px, 8 epochs,
#: 96 images (67 train, 14 val; the 200 test images of nuclei2d): 67 x 8 x 0.55 s ~ 5 min of
#: training, ~1 min of validation and ~1.5 min of testing per trial on a free core, i.e.
#: ~8 min for the two trials side by side on 2 quiet cores; the committed run's wall time
#: (cores shared with other work) is in results/instance-smoke/README.md.
INSTANCE_BUDGETS: dict[str, Budget] = {
    "smoke": instance_budget("smoke", epochs=8, n=96, width_scale=0.25, batch_size=4,
                            image_size=192, anchors=(16, 32, 64, 128, 256), roi_width=64,
                            proposals=600, rois=64),
    # the budgets below are defined, not yet measured
    "quick": instance_budget("quick", epochs=16, n=160, width_scale=0.25, batch_size=4,
                            image_size=192, anchors=(16, 32, 64, 128, 256), roi_width=64,
                            proposals=600, rois=64),
    "cpu": instance_budget("cpu", epochs=40, n=320, width_scale=0.5, batch_size=4,
                           image_size=192, anchors=(16, 32, 64, 128, 256), roi_width=128,
                           proposals=1000, rois=128),
    "short": instance_budget("short", epochs=40, n=None, width_scale=1.0, batch_size=8,
                            image_size=192, anchors=(16, 32, 64, 128, 256)),
    "paper": instance_budget("paper", epochs=100, n=None, width_scale=1.0, batch_size=8,
                            image_size=384, anchors=(32, 64, 128, 256, 512)),
}
