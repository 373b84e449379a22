"""A fast stand-in for ``train_and_evaluate`` used by the search tests (no test functions here).

Deterministic: the validation curve rises to a ceiling derived from the spec's canonical hash and
size, so different networks get different IoUs and the same network the same one. It honours
``epochs``, calls ``report`` every epoch and returns the keys the search reads. Importable by
subprocess and Ray workers when ``tests/`` is on PYTHONPATH.
"""
from __future__ import annotations

import hashlib
import os
import time

import skipdsl
from skipdsl.train.trainer import BUDGETS, load_spec


def fake_train(config, report=None):
    spec = load_spec(config["model"])
    spec = spec.replace(widths=config.get("widths"))
    h = skipdsl.spec_hash(spec)
    model = skipdsl.compile(spec, deep_supervision=False, cgm=False)
    params = sum(p.numel() for p in model.parameters())
    ceiling = 0.5 + 0.4 * (int(hashlib.sha256(h.encode()).hexdigest()[:6], 16) / 0xFFFFFF)
    epochs = int(config.get("epochs") or BUDGETS[config.get("budget", "smoke")].epochs)
    delay = float(os.environ.get("SKIPDSL_FAKE_DELAY", "0"))
    curve = []
    for e in range(epochs):
        v = ceiling * (1 - 0.5 ** (e + 1))
        curve.append({"epoch": e, "val_iou": v})
        if delay:
            time.sleep(delay)
        if report is not None:
            report(e, v)
    if spec.name.endswith("_fail"):
        return {"status": "failed", "reason": "fake failure"}
    return {"status": "ok", "reason": "", "iou": curve[-1]["val_iou"] - 0.01, "dice": 0.8,
            "params": params, "gflops": 0.1, "images_per_s": 100.0, "epochs": epochs,
            "best_epoch": epochs - 1, "train_seconds": 0.01, "curve": curve, "dims": spec.dims,
            "in_channels": spec.in_channels, "num_classes": spec.num_classes, "device": "cpu"}
