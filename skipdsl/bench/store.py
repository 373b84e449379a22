"""The result store of a benchmark run: one folder per trial, written atomically.

Layout of ``OUT``::

    OUT/trials/<trial_key>/result.json    summary, curve, splits, pruning, config (written last:
                                          its presence marks the trial finished)
    OUT/trials/<trial_key>/cases.parquet  per-case test metrics
    OUT/trials/<trial_key>/samples.npz    a few test images, ground truths and probabilities
    OUT/trials/<trial_key>/model.pt       the selected weights, spec and normalisation, and
    OUT/trials/<trial_key>/spec.yaml      the spec as trained (skipdsl.checkpoint: the format)
    OUT/results.csv                       one row per finished trial (rebuilt from the folders)
    OUT/cases.parquet                     every trial's per-case values, with trial columns
    OUT/curves.csv                        every trial's validation curve

Every file is written atomically (:mod:`skipdsl.fileio`), so a killed run leaves either the old
or the new file, never half of one; ``results.csv`` is derived data and can always be rebuilt with
:func:`write_tables`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "RESULT_COLUMNS",
    "trial_key",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "trial_dir",
    "save_trial",
    "read_trial",
    "load_results",
    "finished",
    "load_cases",
    "load_curves",
    "load_samples",
    "results_frame",
    "write_tables",
]

TRIALS = "trials"

#: The columns of ``results.csv``, in order (the issue's list first, then extras).
RESULT_COLUMNS = [
    "model", "dataset", "seed", "deep_supervision", "loss", "iou", "dice", "hd95", "fp_empty",
    "params", "gflops", "images_per_s", "train_seconds", "spec_hash", "status", "reason",
    "iou_std", "dice_std", "n_cases", "budget", "epochs", "best_epoch", "device", "node",
    "trial_key", "fast", "head_init", "task", "backbone", "ap", "ap50", "pyramid_params",
    "peak_train_mb", "width_scale", "size_target", "size_value",
]


def trial_key(spec_hash: str, dataset: str, budget: str, seed: int, deep_supervision: bool,
              extra: dict[str, Any] | None = None) -> str:
    """A short stable id of a trial: hash of spec, dataset, budget, seed, DS and overrides.

    ``extra`` holds the settings that change the result (epochs, n, widths, ...); keys with
    ``None`` values are ignored so that "not given" and "given as None" are the same trial.
    """
    extra = {k: v for k, v in sorted((extra or {}).items()) if v is not None}
    blob = json.dumps([spec_hash, dataset, budget, int(seed), bool(deep_supervision), extra],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- trials ---------------------------------------------------------------------------------


def trial_dir(out: str | os.PathLike, key: str) -> Path:
    return Path(out) / TRIALS / key


def save_trial(out: str | os.PathLike, key: str, result: dict[str, Any]) -> Path:
    """Store one trial's result (a :func:`~skipdsl.train.trainer.train_and_evaluate` dict).

    Per-case values go to ``cases.parquet``, overlay samples to ``samples.npz``, the
    checkpoint to ``model.pt`` + ``spec.yaml`` (:mod:`skipdsl.checkpoint`; ``result.json``
    says ``"checkpoint": "model.pt"``), everything else to ``result.json``, which is written
    last. Returns the trial folder.
    """
    d = trial_dir(out, key)
    d.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    cases = result.pop("cases", None)
    samples = result.pop("samples", None)
    weights = result.pop("checkpoint", None)
    if cases is not None and len(cases):
        buf = io.BytesIO()
        cases.to_parquet(buf, index=False)
        atomic_write_bytes(d / "cases.parquet", buf.getvalue())
    if samples:
        buf = io.BytesIO()
        arrays = {k: np.asarray(v) for k, v in samples.items() if k != "case_id"}
        np.savez_compressed(buf, case_id=np.asarray(samples.get("case_id", []), dtype=str),
                            **arrays)
        atomic_write_bytes(d / "samples.npz", buf.getvalue())
    if weights is not None:
        from skipdsl import checkpoint

        weights = {**weights, "trial": {**weights.get("trial", {}), "trial_key": key}}
        checkpoint.write(d, weights)
        result["checkpoint"] = checkpoint.MODEL_FILE
    result["trial_key"] = key
    atomic_write_json(d / "result.json", result)
    return d


def read_trial(out: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The stored ``result.json`` of a trial, or ``None`` if it has not finished."""
    p = trial_dir(out, key) / "result.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_results(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished trial's ``result.json``, sorted by model, dataset, DS, seed."""
    root = Path(out) / TRIALS
    rows = []
    for p in sorted(root.glob("*/result.json")) if root.is_dir() else []:
        try:
            rows.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a foreign or damaged file: ignore it (atomic writes never leave one)
    rows.sort(key=lambda r: (str(r.get("model")), str(r.get("dataset")),
                             bool(r.get("deep_supervision")), int(r.get("seed") or 0)))
    return rows


def reuse_trials(out: str | os.PathLike, keys: Iterable[str],
                 sources: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Copy into ``out`` every finished, ok trial of ``sources`` (other output folders) whose
    key is one of ``keys`` and that ``out`` lacks: the same key is the same network, dataset,
    budget definition, seed, deep supervision, size and trainer settings, so the result is the
    one this sweep would compute. The copy's ``result.json`` gains ``reused_from``. Returns
    ``{source: trials copied}``; a source that is not an output folder raises
    ``FileNotFoundError``."""
    import shutil

    want = set(keys) - set(finished(out))
    copied: dict[str, int] = {}
    for src in sources:
        src = Path(src)
        if not (src / TRIALS).is_dir():
            raise FileNotFoundError(f"--reuse {src}: not a bench output folder (no {TRIALS}/)")
        n = 0
        for key in sorted(want):
            r = read_trial(src, key)
            if r is None or r.get("status", "ok") != "ok":
                continue
            dst = trial_dir(out, key)
            tmp = dst.with_name(dst.name + ".reuse-tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(trial_dir(src, key), tmp)
            atomic_write_json(tmp / "result.json", {**r, "reused_from": str(src.resolve())})
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)  # whole or not at all: result.json is in place when it appears
            want.discard(key)
            n += 1
        copied[str(src)] = n
    return copied


def finished(out: str | os.PathLike) -> dict[str, str]:
    """``{trial_key: status}`` of every finished trial."""
    return {r["trial_key"]: r.get("status", "ok") for r in load_results(out) if "trial_key" in r}


def results_frame(results: Iterable[dict[str, Any]]):
    """A DataFrame with :data:`RESULT_COLUMNS` (NaN for missing metrics)."""
    import pandas as pd

    rows = [{c: r.get(c) for c in RESULT_COLUMNS} for r in results]
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for c in ("iou", "dice", "hd95", "fp_empty", "gflops", "images_per_s", "train_seconds",
              "iou_std", "dice_std", "ap", "ap50"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df["reason"] = df["reason"].fillna("")
    return df


def load_cases(out: str | os.PathLike, results: list[dict[str, Any]] | None = None):
    """Per-case values of every finished trial with model/dataset/seed/DS/key columns."""
    import pandas as pd

    results = load_results(out) if results is None else results
    frames = []
    for r in results:
        p = trial_dir(out, r["trial_key"]) / "cases.parquet"
        if not p.is_file():
            continue
        df = pd.read_parquet(p)
        for i, c in enumerate(("model", "dataset", "seed", "deep_supervision", "trial_key")):
            df.insert(i, c, r.get(c))
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "dataset", "seed", "deep_supervision", "trial_key",
                                     "case", "case_id", "channel", "iou", "dice", "hd95",
                                     "gt_empty", "pred_empty"])
    return pd.concat(frames, ignore_index=True)


def load_curves(results: list[dict[str, Any]]):
    """Every trial's curve as one DataFrame (model, dataset, seed, deep_supervision, epoch...)."""
    import pandas as pd

    rows = []
    for r in results:
        for point in r.get("curve") or []:
            rows.append({"model": r.get("model"), "dataset": r.get("dataset"),
                         "seed": r.get("seed"), "deep_supervision": r.get("deep_supervision"),
                         "trial_key": r.get("trial_key"), **point})
    return pd.DataFrame(rows, columns=["model", "dataset", "seed", "deep_supervision",
                                       "trial_key", "epoch", "train_loss", "val_iou",
                                       "val_dice", "lr", "seconds"])


def load_samples(out: str | os.PathLike, key: str) -> dict[str, np.ndarray] | None:
    p = trial_dir(out, key) / "samples.npz"
    if not p.is_file():
        return None
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def write_tables(out: str | os.PathLike):
    """Rebuild ``results.csv``, ``cases.parquet`` and ``curves.csv`` from the trial folders.

    Returns the results DataFrame.
    """
    out = Path(out)
    results = load_results(out)
    df = results_frame(results)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    cases = load_cases(out, results)
    buf = io.BytesIO()
    cases.to_parquet(buf, index=False)
    atomic_write_bytes(out / "cases.parquet", buf.getvalue())
    atomic_write_text(out / "curves.csv", load_curves(results).to_csv(index=False))
    return df
