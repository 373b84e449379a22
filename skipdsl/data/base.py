"""The in-memory dataset object, deterministic splits, and the dataset registry.

Every dataset, synthetic or read from real files, ends up as one :class:`SegDataset`: all
samples in memory as numpy arrays (sizes here are small), masks as one binary channel per
foreground class (multi-label, sigmoid-style), and train/val/test index arrays that are a pure
function of the seed and of the groups (patients, volumes) the samples come from, so that
slices of one volume never straddle train and test.

A dataset is registered by one decorated function (after timm's registry)::

    @synthetic("nuclei2d", dims=2, default_n=320)
    def nuclei2d(n: int, seed: int) -> SegDataset: ...

    @real("brats19", dims=2, folder="brats19")
    def brats19(folder: Path, opts: LoadOptions) -> SegDataset: ...
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from ..errors import DataError
from ..registry import Registry

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}
SIZE_2D = 96
SIZE_3D = 64
#: Built-in (synthetic) datasets hold a test set of their own, generated from a seed stream of
#: its own and the same whatever ``n``, the budget, the model or the trial seed: enough cases
#: for a paired test on per-case metrics (a Wilcoxon test on 14 cases cannot reach p < 0.001,
#: one on 200 can tell a 1-point IoU difference). ``n`` counts the train + val samples only.
TEST_N_2D = 200
TEST_N_3D = 16
TEST_SEED_OFFSET = 1_000_003  # the test set of data seed s is generated with s + this
OnError = Literal["raise", "skip"]


class DataWarning(UserWarning):
    """A file skipped (``on_error="skip"``) or a cache rebuilt; the message names the file."""


def data_error(path: str | Path, problem: str, todo: str) -> DataError:
    """A :class:`DataError` that names the file, says what is wrong and what to do.

    The path is also kept as ``err.file`` for callers that want it.
    """
    err = DataError(f"{path}: {problem}\n  hint: {todo}")
    err.file = str(path)  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------- dataset object


@dataclass
class SegDataset:
    """A segmentation dataset held in memory.

    Attributes:
        name: registered name (``nuclei2d``, ``brats19``, ``nnunet:Dataset004_Hippocampus``).
        dims: 2 or 3 spatial dimensions.
        images: float32 ``(N, C, *spatial)``, normalised (see ``meta["normalisation"]``).
        masks: uint8 ``(N, K, *spatial)`` in {0, 1}, one channel per foreground class; the
            channels may overlap (BraTS WT ⊃ TC ⊃ ET).
        splits: ``{"train", "val", "test"}`` -> sorted int64 index arrays, disjoint, covering.
        class_names: the K mask channel names.
        case_ids: one id per sample (``"BraTS19_2013_2_1/z074"``).
        groups: the patient/volume each sample comes from; splits never cut a group.
        instances: optional int32 ``(N, *spatial)`` instance label maps (0 = background).
        meta: ``source``, ``seed``, ``files`` read, ``normalisation`` and anything else.
    """

    name: str
    dims: int
    images: np.ndarray
    masks: np.ndarray
    splits: dict[str, np.ndarray]
    class_names: list[str]
    case_ids: list[str]
    groups: list[str] = field(default_factory=list)
    instances: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        self.case_ids = list(self.case_ids)
        self.groups = list(self.groups) if len(self.groups) else list(self.case_ids)
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in self.splits.items()}
        self.validate()

    @classmethod
    def create(
        cls,
        name: str,
        dims: int,
        images: np.ndarray,
        masks: np.ndarray,
        class_names: Sequence[str],
        case_ids: Sequence[str],
        *,
        groups: Sequence[str] | None = None,
        instances: np.ndarray | None = None,
        seed: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> "SegDataset":
        """Build a dataset and derive its splits from ``seed`` and ``groups``."""
        groups = list(groups) if groups is not None else list(case_ids)
        meta = {"seed": seed, **(meta or {})}
        return cls(
            name=name,
            dims=dims,
            images=np.ascontiguousarray(images, dtype=np.float32),
            masks=np.ascontiguousarray(masks, dtype=np.uint8),
            splits=make_splits(groups, seed),
            class_names=list(class_names),
            case_ids=list(case_ids),
            groups=groups,
            instances=None if instances is None else np.ascontiguousarray(instances, np.int32),
            meta=meta,
        )

    # ----------------------------------------------------------------- properties

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.masks.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[2:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (
            f"SegDataset({self.name!r}, dims={self.dims}, n={len(self)}, "
            f"in_channels={self.in_channels}, classes={self.class_names}, "
            f"spatial={self.spatial_shape}, splits=({sizes}))"
        )

    # ----------------------------------------------------------------- views

    def subset(self, split: str | Sequence[int] | np.ndarray) -> "SegDataset":
        """The samples of one split (``"train"``) or of an index array, as a new dataset.

        The result keeps its samples under the same split name (all other splits empty).
        """
        if isinstance(split, str):
            if split not in self.splits:
                raise KeyError(f"unknown split {split!r}; valid: {', '.join(self.splits)}")
            idx, key = self.splits[split], split
        else:
            idx, key = np.asarray(split, dtype=np.int64), "train"
        empty = np.zeros(0, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            masks=self.masks[idx],
            splits={k: (np.arange(len(idx)) if k == key else empty) for k in SPLITS},
            case_ids=[self.case_ids[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            instances=None if self.instances is None else self.instances[idx],
            meta=dict(self.meta),
        )

    def summary(self) -> dict[str, Any]:
        """Counts, foreground fractions and empty-sample fractions per class (for reports)."""
        axes = tuple(range(2, self.masks.ndim))
        present = self.masks.any(axis=axes)
        return {
            "name": self.name,
            "dims": self.dims,
            "n": len(self),
            "in_channels": self.in_channels,
            "spatial": list(self.spatial_shape),
            "splits": {k: int(len(v)) for k, v in self.splits.items()},
            "classes": {
                c: {
                    "foreground_fraction": float(self.masks[:, k].mean()),
                    "empty_fraction": float(1.0 - present[:, k].mean()),
                }
                for k, c in enumerate(self.class_names)
            },
        }

    # ----------------------------------------------------------------- checks

    def validate(self) -> None:
        """Check shapes, dtypes, value ranges and splits; raise ``ValueError`` saying what came."""
        n, sp = self.images.shape[0], self.images.shape[2:]
        _expect(self.dims in (2, 3), "dims", "2 or 3", self.dims)
        _expect(self.images.ndim == 2 + self.dims, "images.ndim", 2 + self.dims, self.images.ndim)
        _expect(self.images.dtype == np.float32, "images.dtype", "float32", self.images.dtype)
        _expect(self.masks.dtype == np.uint8, "masks.dtype", "uint8", self.masks.dtype)
        want = (n, len(self.class_names), *sp)
        _expect(self.masks.shape == want, "masks.shape", want, self.masks.shape)
        _expect(self.masks.size == 0 or self.masks.max() <= 1, "mask values", "{0,1}", "> 1")
        _expect(len(self.case_ids) == n, "len(case_ids)", n, len(self.case_ids))
        _expect(len(self.groups) == n, "len(groups)", n, len(self.groups))
        if self.instances is not None:
            want_i = (n, *sp)
            _expect(self.instances.shape == want_i, "instances.shape", want_i, self.instances.shape)
        _expect(set(self.splits) == set(SPLITS), "split names", SPLITS, sorted(self.splits))
        allidx = np.concatenate([self.splits[k] for k in SPLITS])
        _expect(len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n)),
                "splits", f"disjoint and covering 0..{n - 1}", f"{len(allidx)} indices")


def _expect(ok: bool, what: str, expected: object, found: object) -> None:
    if not ok:
        raise ValueError(f"SegDataset: bad {what} (expected {expected}, found {found})")


def make_splits(
    groups: Sequence[str], seed: int, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Deterministic train/val/test index arrays that never cut a group.

    Groups are sorted, shuffled by ``seed`` and dealt out: ``fractions`` of them (at least one
    each when there are three or more groups) to val and test, the rest to train.
    """
    groups = [str(g) for g in groups]
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    shuffled = [uniq[i] for i in order]
    g = len(uniq)
    n_val = max(1, round(g * fractions["val"])) if g >= 3 else 0
    n_test = max(1, round(g * fractions["test"])) if g >= 3 else 0
    assign = {name: "test" for name in shuffled[:n_test]}
    assign.update({name: "val" for name in shuffled[n_test:n_test + n_val]})
    split_of = np.array([assign.get(x, "train") for x in groups])
    return {k: np.flatnonzero(split_of == k).astype(np.int64) for k in SPLITS}


def with_test_set(trainval: SegDataset, test: SegDataset) -> SegDataset:
    """``trainval`` (split into train and val by its own groups and seed) with ``test``'s
    samples appended as the whole test split (case ids and groups prefixed ``test/``).

    The built-in datasets are made this way (:data:`TEST_N_2D`, :data:`TEST_SEED_OFFSET`), so
    their test set does not change with the number of training samples.
    """
    seed = int(trainval.meta.get("seed", 0))
    fractions = {"val": SPLIT_FRACTIONS["val"], "test": 0.0}
    groups = [str(g) for g in trainval.groups]
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_val = max(1, round(len(uniq) * fractions["val"])) if len(uniq) >= 3 else 0
    val = {uniq[i] for i in order[:n_val]}
    is_val = np.array([g in val for g in groups], dtype=bool)
    n_a, n_b = len(trainval), len(test)
    inst = None
    if trainval.instances is not None and test.instances is not None:
        inst = np.concatenate([trainval.instances, test.instances])
    meta = {**trainval.meta, "test_n": n_b, "test_seed": test.meta.get("seed")}
    return SegDataset(
        name=trainval.name, dims=trainval.dims,
        images=np.concatenate([trainval.images, test.images]),
        masks=np.concatenate([trainval.masks, test.masks]),
        splits={"train": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val),
                "test": np.arange(n_a, n_a + n_b)},
        class_names=trainval.class_names,
        case_ids=trainval.case_ids + [f"test/{c}" for c in test.case_ids],
        groups=groups + [f"test/{g}" for g in test.groups],
        instances=inst, meta=meta)


def stack_samples(
    name: str,
    dims: int,
    samples: list[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    case_ids: Sequence[str],
    groups: Sequence[str],
    opts: "LoadOptions",
    meta: dict[str, Any],
    instances: list[np.ndarray] | None = None,
) -> SegDataset:
    """Stack per-sample ``(image, mask)`` pairs into a dataset; DataError when none are left."""
    if not samples:
        raise data_error(meta.get("source", name), "no usable samples were found",
                         "check the folder layout (docs/bench.md, Datasets) and the warnings "
                         "printed for skipped files")
    shapes = sorted({(s[0].shape, s[1].shape) for s in samples})
    if len(shapes) > 1:
        raise data_error(meta.get("source", name), f"cases give samples of different shapes "
                         f"{shapes}", "keep one dimensionality (all 2D or all 3D) per dataset")
    images = np.stack([s[0] for s in samples])
    masks = np.stack([s[1] for s in samples])
    inst = np.stack(instances) if instances else None
    return SegDataset.create(name, dims, images, masks, class_names, case_ids, groups=groups,
                             instances=inst, seed=opts.seed, meta=meta)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LoadOptions:
    """What a real-format loader is asked for (filled in by ``load_dataset``)."""

    seed: int = 0
    n: int | None = None  # at most this many cases (files/volumes), sorted by name
    on_error: OnError = "raise"
    dims: int | None = None  # None: the dataset's own
    slices_per_case: int = 16  # 3D volumes read as 2D: evenly spaced slices per volume

    def guard(self) -> "CaseGuard":
        return CaseGuard(self.on_error)


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: how to build it and where its files live."""

    name: str
    kind: Literal["synthetic", "real", "family", "packaged"]
    dims: int
    build: Callable[..., SegDataset]
    default_n: int | None = None
    folder: str | None = None  # real: ROOT/<folder>
    probe: str | None = None  # real: ROOT/<probe> must exist for list_datasets to show it
    version: int = 1  # synthetic: bump when the generator changes (invalidates caches)
    doc: str = ""
    test_n: int = 0  # synthetic: size of the fixed, separately generated test set
    package: str | None = None  # packaged: the Python package whose files it reads
    install: str = ""  # packaged: how to install that package


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def synthetic(name: str, *, dims: int, default_n: int, version: int = 1):
    """Register a generator ``fn(n, seed) -> SegDataset`` as synthetic dataset ``name``."""

    def deco(fn: Callable[[int, int], SegDataset]) -> Callable[[int, int], SegDataset]:
        DATASETS.register(name)(DatasetEntry(
            name, "synthetic", dims, fn, default_n=default_n, version=version,
            doc=(fn.__doc__ or "").strip(), test_n=TEST_N_3D if dims == 3 else TEST_N_2D))
        return fn

    return deco


def packaged(name: str, *, dims: int, package: str, install: str):
    """Register ``fn() -> SegDataset`` as a built-in dataset made of real data files that the
    Python ``package`` ships (nothing is downloaded): listed when the package is installed."""

    def deco(fn: Callable[[], SegDataset]) -> Callable[[], SegDataset]:
        DATASETS.register(name)(DatasetEntry(
            name, "packaged", dims, fn, package=package, install=install,
            doc=(fn.__doc__ or "").strip()))
        return fn

    return deco


def real(name: str, *, dims: int, folder: str, probe: str | None = None, family: bool = False):
    """Register a loader ``fn(folder_path, opts) -> SegDataset`` reading ``ROOT/<folder>``."""

    def deco(fn: Callable[[Path, LoadOptions], SegDataset]) -> Callable[..., SegDataset]:
        DATASETS.register(name)(DatasetEntry(
            name, "family" if family else "real", dims, fn, folder=folder,
            probe=probe or folder, doc=(fn.__doc__ or "").strip()))
        return fn

    return deco


# --------------------------------------------------------------------------- per-case errors


class CaseGuard:
    """Runs per-case readers: re-raises a :class:`DataError`, or warns and skips it."""

    def __init__(self, on_error: OnError) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.skipped: list[str] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or ``None`` when it raised DataError and we skip."""
        try:
            return fn(*args, **kwargs)
        except DataError as err:
            if self.on_error == "raise":
                raise
            self.skipped.append(getattr(err, "file", str(err)))
            warnings.warn(f"skipped: {err}", DataWarning, stacklevel=3)
            return None

    def problem(self, err: DataError) -> None:
        """A dataset-level inconsistency: raise it, or warn when skipping."""
        if self.on_error == "raise":
            raise err
        warnings.warn(str(err), DataWarning, stacklevel=3)
