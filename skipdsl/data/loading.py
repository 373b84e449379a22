"""``load_dataset``, ``list_datasets``, ``expand_datasets`` and the synthetic-data cache.

Synthetic datasets are generated once per (name, generator version, n, seed) and cached as
``.npz`` under ``cache_dir`` (default ``$SKIPDSL_CACHE`` or ``~/.cache/skipdsl/data``), written
atomically (temporary file + ``os.replace``) so concurrent runs never read half a file. Real
datasets are read from ``ROOT/<folder>`` (``root`` argument or ``$SKIPDSL_DATA``) each time.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import inspect
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError, did_you_mean
from . import nnunet, real, synthetic  # noqa: F401  (registers the datasets)
from .arrays import to_slices
from .base import DATASETS, DataWarning, DatasetEntry, LoadOptions, OnError, SegDataset, data_error

FAMILY_SEP = ":"


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """``$SKIPDSL_CACHE`` if set, else ``~/.cache/skipdsl/data``."""
    env = os.environ.get("SKIPDSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skipdsl" / "data"


def default_root() -> Path | None:
    """``$SKIPDSL_DATA`` if set (the folder holding ``dsb2018/``, ``brats19/``, ...)."""
    env = os.environ.get("SKIPDSL_DATA")
    return Path(env).expanduser() if env else None


def _entry(name: str) -> tuple[DatasetEntry, str | None]:
    """The registry entry for ``name`` and the member for family names (``nnunet:X``)."""
    family, sep, member = name.partition(FAMILY_SEP)
    entry = DATASETS.get(family if sep else name)
    if sep and entry.kind != "family":
        raise SpecError(f"dataset '{family}' takes no '{FAMILY_SEP}NAME' suffix",
                        hint=did_you_mean(name, DATASETS.names()))
    if entry.kind == "family" and not member:
        raise SpecError(f"dataset '{name}' needs a member: '{name}{FAMILY_SEP}DatasetXXX_Name'",
                        hint="see list_datasets(root) for the ones found")
    return entry, (member or None)


# --------------------------------------------------------------------------- public API


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    n: int | None = None,
    cache_dir: str | Path | None = None,
    on_error: OnError = "raise",
    dims: int | None = None,
    slices_per_case: int = 16,
) -> SegDataset:
    """Load a registered dataset by name.

    Args:
        name: ``nuclei2d`` ... (synthetic), ``dsb2018``, ``brats19``, ``lits17``, ``lidc``,
            ``luna16`` (real), or ``nnunet:DatasetXXX_Name``; see :func:`list_datasets`.
        root: folder holding the real datasets (default ``$SKIPDSL_DATA``).
        seed: generator seed (synthetic) and split seed (all).
        n: synthetic: number of samples (default: the dataset's ``default_n``); real: read at
            most this many cases (images/volumes), first by sorted name.
        cache_dir: where synthetic datasets are cached (default :func:`default_cache_dir`).
        on_error: ``"raise"`` a :class:`~skipdsl.errors.DataError` for a bad file, or
            ``"skip"`` it with a :class:`DataWarning` naming it.
        dims: 2 reads a 3D dataset as axial slices; 3 asks for volumes (3D datasets only).
        slices_per_case: real 3D volumes read as 2D: evenly spaced slices per volume.
    """
    entry, member = _entry(name)
    if entry.kind == "synthetic":
        ds = _cached_synthetic(entry, n=n or entry.default_n, seed=seed,
                               cache_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        opts = LoadOptions(seed=seed, n=n, on_error=on_error, dims=dims,
                           slices_per_case=slices_per_case)
        folder = _real_folder(entry, root)
        ds = entry.build(folder / member, opts) if member else entry.build(folder, opts)
    return _with_dims(ds, dims)


def list_datasets(root: str | Path | None = None) -> list[str]:
    """Every synthetic dataset, plus every real one found under ``root`` (or ``$SKIPDSL_DATA``)."""
    root = Path(root) if root else default_root()
    names = []
    for name in DATASETS:
        entry = DATASETS.get(name)
        if entry.kind == "synthetic":
            names.append(name)
        elif root is not None and entry.probe and (root / entry.probe).exists():
            if entry.kind == "family":
                names += [f"{name}{FAMILY_SEP}{m}" for m in nnunet.members(root / entry.folder)]
            else:
                names.append(name)
    return names


def expand_datasets(spec: str | list[str], root: str | Path | None = None) -> list[str]:
    """``"all"``, ``"a,b"``, wildcards (``"lung*"``) or a list -> dataset names, in order.

    Unknown names raise :class:`~skipdsl.errors.SpecError` with a did-you-mean and the valid
    names. A known real dataset is accepted even when its files are absent (loading then
    raises a DataError saying where to put them).
    """
    tokens = spec if isinstance(spec, list) else [t.strip() for t in spec.split(",")]
    found = list_datasets(root)
    valid = sorted(set(found) | set(DATASETS.names()))
    out: list[str] = []
    for tok in filter(None, tokens):
        if tok == "all":
            hits = found
        elif any(ch in tok for ch in "*?["):
            hits = [x for x in valid if fnmatch.fnmatch(x, tok)]
            if not hits:
                raise SpecError(f"dataset pattern '{tok}' matches nothing",
                                hint=did_you_mean(tok, valid))
        elif FAMILY_SEP in tok and tok not in found:
            _entry(tok)  # an unknown family raises here
            raise SpecError(f"unknown dataset '{tok}' (not found under {root or '$SKIPDSL_DATA'})",
                            hint=did_you_mean(tok, valid))
        else:
            _entry(tok)
            hits = [tok]
        out += [h for h in hits if h not in out]
    return out


# --------------------------------------------------------------------------- helpers


def _real_folder(entry: DatasetEntry, root: str | Path | None) -> Path:
    base = Path(root) if root else default_root()
    if base is None:
        raise data_error(f"$SKIPDSL_DATA/{entry.folder}", f"dataset '{entry.name}' reads real "
                         "files but no root folder was given",
                         "pass root=FOLDER (or set $SKIPDSL_DATA) where "
                         f"FOLDER/{entry.folder} holds the data (REFERENCE.md section 4)")
    folder = base / str(entry.folder)
    if not folder.is_dir():
        raise data_error(folder, f"dataset '{entry.name}' folder is missing",
                         f"put the data in {folder} (layout: {entry.doc.splitlines()[0]})")
    return folder


def _with_dims(ds: SegDataset, dims: int | None) -> SegDataset:
    if dims is None or dims == ds.dims:
        return ds
    if dims == 2 and ds.dims == 3:
        return to_slices(ds)
    raise SpecError(f"dataset '{ds.name}' is {ds.dims}D and cannot be read as {dims}D",
                    expected=f"dims in (None, {ds.dims}" + (", 2)" if ds.dims == 3 else ")"),
                    found=dims)


@functools.cache
def _code_hash(module: str) -> str:
    """Short hash of a generator module's source: editing a generator invalidates its caches."""
    try:
        src = inspect.getsource(sys.modules[module])
    except (OSError, TypeError, KeyError):
        return "nosrc"
    return hashlib.sha256(src.encode()).hexdigest()[:8]


def cache_path(cache_dir: Path, entry: DatasetEntry, n: int, seed: int) -> Path:
    """Where a synthetic dataset is cached: ``<name>-v<version>.<code hash>-n<n>-s<seed>.npz``."""
    tag = f"v{entry.version}.{_code_hash(entry.build.__module__)}"
    return cache_dir / f"{entry.name}-{tag}-n{n}-s{seed}.npz"


def _cached_synthetic(entry: DatasetEntry, *, n: int, seed: int, cache_dir: Path) -> SegDataset:
    path = cache_path(cache_dir, entry, n, seed)
    if path.exists():
        try:
            return read_npz(path)
        except Exception as err:  # a corrupt cache is rebuilt, never fatal
            warnings.warn(f"{path}: unreadable cache ({type(err).__name__}: {err}); "
                          "regenerating it", DataWarning, stacklevel=3)
    ds = entry.build(n, seed)
    ds.meta.update({"source": "synthetic", "generator_version": entry.version, "n": n,
                    "files": [str(path)]})
    write_npz(ds, path)
    return ds


_ARRAYS = ("images", "masks", "instances")


def write_npz(ds: SegDataset, path: str | Path) -> Path:
    """Save a dataset to ``.npz`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {k: getattr(ds, k) for k in _ARRAYS if getattr(ds, k) is not None}
    arrays.update({f"split_{k}": v for k, v in ds.splits.items()})
    header = {"name": ds.name, "dims": ds.dims, "class_names": ds.class_names,
              "case_ids": ds.case_ids, "groups": ds.groups, "meta": ds.meta}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | Path) -> SegDataset:
    """Load a dataset saved by :func:`write_npz`."""
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["header"]).decode())
        arrays = {k: z[k] for k in _ARRAYS if k in z.files}
        splits = {k[len("split_"):]: z[k] for k in z.files if k.startswith("split_")}
    return SegDataset(name=header["name"], dims=header["dims"], images=arrays["images"],
                      masks=arrays["masks"], splits=splits, class_names=header["class_names"],
                      case_ids=header["case_ids"], groups=header["groups"],
                      instances=arrays.get("instances"), meta=header["meta"])
