"""``load_dataset``, ``list_datasets``, ``expand_datasets`` and the synthetic-data cache.

Every dataset is cached as ``.npz`` under ``cache_dir`` (default ``$SKIPDSL_CACHE`` or
``~/.cache/skipdsl/data``; ``cache_dir=False`` turns caching off), written atomically
(temporary file + ``os.replace``) so concurrent runs never read half a file:

* synthetic ones per (name, generator version and source hash, n, seed);
* real ones (read from ``ROOT/<folder>``, ``root`` argument or ``$SKIPDSL_DATA``) per load
  options, loader source hash and a fingerprint of every file under the dataset folder (path,
  size, mtime), so that changing, adding or removing a file re-reads the data. Files skipped
  with ``on_error="skip"`` are warned about again when the cache is used.
"""
from __future__ import annotations

import dataclasses
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
from typing import Any, Callable, Literal

import numpy as np

from ..errors import DataError, SpecError, did_you_mean
from . import anatomy, nnunet, real, synthetic  # noqa: F401  (registers the datasets)
from .arrays import to_slices
from .base import (DATASETS, TEST_SEED_OFFSET, DataWarning, DatasetEntry, LoadOptions, OnError,
                   SegDataset, data_error, with_test_set)

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
    cache_dir: str | Path | Literal[False] | None = None,
    on_error: OnError = "raise",
    dims: int | None = None,
    slices_per_case: int = 16,
    test_n: int | None = None,
) -> SegDataset:
    """Load a registered dataset by name.

    Args:
        name: ``nuclei2d`` ... (synthetic), ``dsb2018``, ``brats19``, ``lits17``, ``lidc``,
            ``luna16`` (real), or ``nnunet:DatasetXXX_Name``; see :func:`list_datasets`.
        root: folder holding the real datasets (default ``$SKIPDSL_DATA``).
        seed: generator seed (synthetic) and split seed (all).
        n: synthetic: number of train + val samples (default: the dataset's ``default_n``);
            real: read at most this many cases (images/volumes), first by sorted name.
        cache_dir: where datasets are cached (default :func:`default_cache_dir`); ``False``
            reads or generates without caching.
        on_error: ``"raise"`` a :class:`~skipdsl.errors.DataError` for a bad file, or
            ``"skip"`` it with a :class:`DataWarning` naming it.
        dims: 2 reads a 3D dataset as axial slices; 3 asks for volumes (3D datasets only).
        slices_per_case: real 3D volumes read as 2D: evenly spaced slices per volume.
        test_n: synthetic: size of the fixed test set, generated apart from the ``n`` train +
            val samples with seed ``seed + TEST_SEED_OFFSET`` (default: the dataset's, 200 in
            2D and 16 in 3D); it is the same for every ``n``, so every budget, model and trial
            seed is scored on the same cases. ``0``: one set of ``n`` samples split 70/15/15.
    """
    entry, member = _entry(name)
    cache = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
    if entry.kind == "synthetic":
        n = n or int(entry.default_n or 0)
        t = int(entry.test_n if test_n is None else test_n)
        path = cache and cache / f"{entry.name}-{_version(entry)}-n{n}-t{t}-s{seed}.npz"
        ds = _cached(path, lambda: _synthetic(entry, n, seed, t))
    elif entry.kind == "packaged":  # real files shipped by a package: n and seed do not apply
        if not _has_package(entry):
            raise DataError(f"dataset '{name}' reads files of the Python package "
                            f"'{entry.package}', which is not installed: {entry.install}")
        path = cache and cache / f"{entry.name}-{_version(entry)}.npz"
        ds = _cached(path, entry.build)
    else:
        opts = LoadOptions(seed=seed, n=n, on_error=on_error, dims=dims,
                           slices_per_case=slices_per_case)
        folder = _real_folder(entry, root)
        folder = folder / member if member else folder
        key = _real_key(entry, folder, opts) if cache else ""
        path = cache and cache / f"{name.replace(FAMILY_SEP, '_')}-{key}.npz"
        ds = _cached(path, lambda: entry.build(folder, opts))
    return _with_dims(ds, dims)


def list_datasets(root: str | Path | None = None) -> list[str]:
    """Every synthetic dataset, plus every real one found under ``root`` (or ``$SKIPDSL_DATA``)."""
    root = Path(root) if root else default_root()
    names = []
    for name in DATASETS:
        entry = DATASETS.get(name)
        if entry.kind == "synthetic":
            names.append(name)
        elif entry.kind == "packaged":
            if _has_package(entry):
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
            for name in DATASETS:
                entry = DATASETS.get(name)
                if entry.kind == "packaged" and name not in found:
                    warnings.warn(f"--datasets all: skipping {name} (needs the package "
                                  f"'{entry.package}': {entry.install})", DataWarning,
                                  stacklevel=2)
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


def _has_package(entry: DatasetEntry) -> bool:
    import importlib.util

    return importlib.util.find_spec(entry.package) is not None


def _real_folder(entry: DatasetEntry, root: str | Path | None) -> Path:
    base = Path(root) if root else default_root()
    if base is None:
        raise data_error(f"$SKIPDSL_DATA/{entry.folder}", f"dataset '{entry.name}' reads real "
                         "files but no root folder was given",
                         "pass root=FOLDER (or set $SKIPDSL_DATA) where "
                         f"FOLDER/{entry.folder} holds the data (docs/bench.md, Datasets)")
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


_SHARED = ("skipdsl.data.base", "skipdsl.data.arrays", "skipdsl.data.readers")


@functools.cache
def _code_hash(*modules: str) -> str:
    """Short hash of modules' source: editing a generator or loader invalidates its caches."""
    h = hashlib.sha256()
    for module in modules:
        try:
            h.update(inspect.getsource(sys.modules[module]).encode())
        except (OSError, TypeError, KeyError):
            h.update(f"nosrc:{module}".encode())
    return h.hexdigest()[:8]


def _version(entry: DatasetEntry) -> str:
    """Generator/loader version: the registered number plus a hash of the code it runs."""
    return f"v{entry.version}.{_code_hash(entry.build.__module__, *_SHARED)}"


def _real_key(entry: DatasetEntry, folder: Path, opts: LoadOptions) -> str:
    """Hash of what a real dataset's arrays depend on: options, loader code, the files."""
    files = sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file() and (st := p.stat()))
    key = json.dumps([str(folder.resolve()), dataclasses.asdict(opts), _version(entry), files])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _synthetic(entry: DatasetEntry, n: int, seed: int, test_n: int = 0) -> SegDataset:
    ds = entry.build(n, seed)
    if test_n:
        ds = with_test_set(ds, entry.build(test_n, seed + TEST_SEED_OFFSET))
    ds.meta.update({"source": "synthetic", "generator_version": _version(entry), "n": n,
                    "test_n": test_n, "files": []})
    return ds


def _cached(path: Path | None, make: Callable[[], SegDataset]) -> SegDataset:
    """``read_npz(path)`` if it is there and readable, else ``make()`` and write it there."""
    if path is None:
        return make()
    if path.exists():
        try:
            ds = read_npz(path)
        except Exception as err:  # a corrupt cache is rebuilt, never fatal
            warnings.warn(f"{path}: unreadable cache ({type(err).__name__}: {err}); "
                          "rebuilding it", DataWarning, stacklevel=3)
        else:
            for skipped in ds.meta.get("skipped", []):
                warnings.warn(f"skipped (cached in {path.name}): {skipped}", DataWarning,
                              stacklevel=3)
            return ds
    ds = make()
    ds.meta["cache"] = str(path)
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
