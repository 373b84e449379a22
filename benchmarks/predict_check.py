"""Does ``skipdsl predict`` reproduce a trial's test IoU? The trial's test images go to files,
``skipdsl predict`` writes their masks, and the IoU against the ground truth is compared with
the trial's own (``result.json``), with the same threshold and the same per-case metric.

    python benchmarks/predict_check.py runs/smoke/trials/<key> --out results/predict_nuclei2d.md

Two copies of the test images: ``.npy`` (the dataset's float arrays, predicted with
``--intensity none``: the network sees exactly what the trial saw, so the IoU must match) and
8-bit PNG (each image's channels min-max scaled to 0..255, predicted with the checkpoint's own
intensity step, the nuclei datasets' z-score per image and channel, which undoes the scaling;
only the 8-bit rounding differs, so the IoU matches closely, not exactly).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def _dataset(result: dict):
    from skipdsl.data import load_dataset
    from skipdsl.train.common import plan_trial

    cfg = result["config"]
    n = plan_trial(cfg).n  # the images the trial loaded
    ds = load_dataset(cfg["dataset"], root=cfg.get("data_root"), seed=int(cfg.get("data_seed") or 0),
                      n=n, cache_dir=cfg.get("cache_dir"))
    test = np.asarray(ds.splits["test"])
    ids = [str(ds.case_ids[i]) for i in test]
    if ids != list(result["splits"]["test"]):
        raise SystemExit("the dataset's test split is not the trial's: check --n / data_seed")
    return ds, test, ids


def _iou(masks: list[np.ndarray], truth: np.ndarray) -> float:
    from skipdsl.train.metrics import aggregate, case_metrics

    pred = torch.from_numpy(np.stack(masks).astype(bool))
    return aggregate(case_metrics(pred, torch.from_numpy(truth)))["iou"]


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from skipdsl.cli import run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trial", help="a trial folder with result.json and model.pt")
    p.add_argument("--out", default=None, help="write the outcome (markdown) here")
    p.add_argument("--keep", default=None, help="keep the image/mask folders here")
    a = p.parse_args(argv)
    trial = Path(a.trial)
    result = json.loads((trial / "result.json").read_text())
    ds, test, ids = _dataset(result)
    truth = ds.masks[test]
    work = Path(a.keep or tempfile.mkdtemp(prefix="predict-check-"))
    outcome = {}
    for kind in ("npy", "png"):
        src, dst, gt = work / f"images_{kind}", work / f"masks_{kind}", work / "truth"
        for d in (src, gt):
            d.mkdir(parents=True, exist_ok=True)
        for cid, img, mask in zip(ids, ds.images[test], truth):
            name = cid.replace("/", "_")
            if kind == "npy":
                np.save(src / f"{name}.npy", img)
            else:
                lo = img.min(axis=(1, 2), keepdims=True)
                hi = img.max(axis=(1, 2), keepdims=True)
                u8 = np.round(255 * (img - lo) / np.maximum(hi - lo, 1e-12)).astype(np.uint8)
                Image.fromarray(u8.transpose(1, 2, 0).squeeze(-1) if u8.shape[0] == 1
                                else u8.transpose(1, 2, 0)).save(src / f"{name}.png")
                Image.fromarray(mask[0].astype(np.uint8) * 255).save(gt / f"{name}.png")
        args = ["predict", str(trial), str(src), "-o", str(dst), "--no-progress"]
        if kind == "npy":
            args += ["--intensity", "none"]
        if run(args) != 0:
            return 1
        masks = []
        for cid in ids:
            f = dst / f"{cid.replace('/', '_')}.{kind}"
            m = np.load(f) if kind == "npy" else np.array(Image.open(f)) // 255
            masks.append(m[None] if m.ndim == 2 else m)
        outcome[kind] = (_iou(masks, truth), "skipdsl " + " ".join(map(shlex.quote, args)))
    want = float(result["iou"])
    lines = [
        "# `skipdsl predict` against the trial's own test IoU", "",
        "Command: `" + " ".join(["python", "benchmarks/predict_check.py",
                                 *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
        + "`", "",
        f"Trial: {result['model']} on {result['dataset']}, seed {result['seed']}, budget "
        f"{result['budget']}, deep supervision {'on' if result['deep_supervision'] else 'off'}, "
        f"{result['epochs']} epochs; {len(ids)} test images; threshold "
        f"{result['config'].get('threshold', 0.5)}.", "",
        "| input | predict command | IoU from the masks | trial's test IoU | difference |",
        "|---|---|---|---|---|",
    ]
    for kind, (iou, cmd) in outcome.items():
        lines.append(f"| {kind} | `{cmd.replace(str(work), 'WORK')}` | {iou:.6f} | {want:.6f} | "
                     f"{iou - want:+.2e} |")
    lines += ["", "`.npy`: the dataset's float arrays with `--intensity none`, the network sees "
              "what the trial saw. PNG: 8-bit copies (each channel min-max scaled to 0..255), "
              "predicted with the checkpoint's recorded intensity step (z-score per image and "
              "channel, which the scaling does not change); the 8-bit rounding moves a few "
              "pixels near the threshold.", ""]
    text = "\n".join(lines)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0 if abs(outcome["npy"][0] - want) < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
