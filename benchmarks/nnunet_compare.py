"""nnU-Net's PlainConvUNet against the UNet++/UNet 3+/UNet# skip schemes inside nnU-Net v2.

Everything but the skip graph is nnU-Net's: one built-in dataset is exported
(``bench datasets export --format nnunet``), planned and preprocessed by
``nnUNetv2_plan_and_preprocess``; ``skipdsl nnunet plans`` swaps the 2D configuration's
network for each scheme; nnU-Net's ``nnUNetTrainer`` trains each plan on cross-validation
folds (its data loading, augmentation, deep supervision, loss, poly learning rate), and
``nnUNetv2_predict`` (with its mirroring test-time augmentation) segments the exported test
split. Each fold's network is one "seed" of the Table-1 statistics (skipdsl.bench.stats:
t-intervals over folds, Wilcoxon over test cases with Holm, rankings).

nnU-Net's schedule is 1000 epochs of 250 iterations; ``--epochs``/``--iterations`` shorten it
by setting ``num_epochs``/``num_iterations_per_epoch`` of nnU-Net's trainer in the training
process (nothing else changes). Finished folds (their ``checkpoint_final.pth``) and finished
predictions are kept: running it again resumes.

    python benchmarks/nnunet_compare.py --epochs 4 --iterations 25 --out results/nnunet-cpu
    python benchmarks/nnunet_compare.py --device cuda --epochs 1000 --iterations 250 \\
        --folds 0,1,2,3,4 --n 400 --out results/nnunet-gpu           # the full recipe
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TRAIN = """
import sys
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.run.run_training import run_training_entry

VAL_ITERATIONS = int(sys.argv.pop())
ITERATIONS = int(sys.argv.pop())
EPOCHS = int(sys.argv.pop())
_init = nnUNetTrainer.__init__

def _schedule(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
    # nnU-Net records its trainer's init arguments by the signature: keep it
    _init(self, plans, configuration, fold, dataset_json, device)
    self.num_epochs = EPOCHS
    self.num_iterations_per_epoch = ITERATIONS
    self.num_val_iterations_per_epoch = VAL_ITERATIONS

nnUNetTrainer.__init__ = _schedule
sys.argv = ["nnUNetv2_train", *sys.argv[1:]]
run_training_entry()
"""


def run(cmd: list, env: dict, log: Path) -> float:
    t = time.time()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(str(c) for c in cmd) + "\n")
        f.flush()
        r = subprocess.run([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {shlex.join(str(c) for c in cmd)}; see {log}")
    return time.time() - t


def read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="nuclei2d")
    p.add_argument("--id", type=int, default=501)
    p.add_argument("--n", type=int, default=60, help="train + val images exported")
    p.add_argument("--test-n", type=int, default=40, help="test images exported")
    p.add_argument("--schemes", default="unetpp,unet3p,unetsharp")
    p.add_argument("--folds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=250)
    p.add_argument("--val-iterations", type=int, default=None,
                   help="validation iterations per epoch (default: nnU-Net's 50, scaled "
                   "with --iterations)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=None, help="nnU-Net's folders (default runs/<out name>)")
    p.add_argument("--out", default="results/nnunet-cpu")
    a = p.parse_args(argv)

    out = Path(a.out)
    work = Path(a.work or f"runs/{out.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_compile="f")
    if a.device == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "1")
        env.setdefault("nnUNet_def_n_proc", "1")
    schemes = [s for s in a.schemes.split(",") if s]
    folds = [int(f) for f in a.folds.split(",")]
    val_it = a.val_iterations or max(1, round(50 * a.iterations / 250))
    walls: dict[str, float] = {}
    t0 = time.time()

    name = None
    raw = work / "raw"
    found = sorted(raw.glob(f"Dataset{a.id:03d}_*")) if raw.is_dir() else []
    if not found:
        run([BIN / "bench", "datasets", "export", a.dataset, "--format", "nnunet", "--id", a.id,
             "--out", raw, "--n", a.n, "--test-n", a.test_n, "--cache-dir", work / "cache"],
            env, log)
        found = sorted(raw.glob(f"Dataset{a.id:03d}_*"))
    name = found[0].name
    pre = work / "pre" / name
    if not (pre / "nnUNetPlans.json").is_file() or not (pre / "nnUNetPlans_2d").is_dir():
        walls["plan_and_preprocess"] = run(
            [BIN / "nnUNetv2_plan_and_preprocess", "-d", a.id, "-c", "2d", "-np", "1",
             "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"}, log)
    plans = {"plainconv": "nnUNetPlans"}
    for s in schemes:
        run([BIN / "skipdsl", "nnunet", "plans", a.id, "--scheme", s, "--configurations", "2d"],
            env, log)
        plans[s] = f"nnUNetPlans_{s}"

    from skipdsl.nnunet import build_from_arch, parameter_count

    ds_json = json.loads((pre / "dataset.json").read_text())
    n_in, n_out = len(ds_json["channel_names"]), len(ds_json["labels"])
    params = {}
    for m, pl in plans.items():
        arch = json.loads((pre / f"{pl}.json").read_text())["configurations"]["2d"]["architecture"]
        params[m] = parameter_count(build_from_arch(arch, input_channels=n_in, num_classes=n_out))

    rows = []
    for m, pl in plans.items():
        for f in folds:
            model = work / "res" / name / f"nnUNetTrainer__{pl}__2d"
            if not (model / f"fold_{f}" / "checkpoint_final.pth").is_file():
                walls[f"train {m} fold {f}"] = run(
                    [sys.executable, "-c", TRAIN, a.id, "2d", f, "-p", pl, "-device", a.device,
                     a.epochs, a.iterations, val_it], env, log)
            pred = work / "pred" / f"{m}_fold{f}"
            if not (pred / "predict_from_raw_data_args.json").is_file():
                walls[f"predict {m} fold {f}"] = run(
                    [BIN / "nnUNetv2_predict", "-i", raw / name / "imagesTs", "-o", pred,
                     "-d", a.id, "-c", "2d", "-f", f, "-p", pl, "-chk", "checkpoint_final.pth",
                     "-device", a.device, "-npp", "1", "-nps", "1"], env, log)
            for lab in sorted((raw / name / "labelsTs").glob("*.nii.gz")):
                gt, pr = read(lab), read(pred / lab.name)
                for c in range(1, n_out):
                    g, q = gt == c, pr == c
                    tp, fp, fn = (g & q).sum(), (~g & q).sum(), (g & ~q).sum()
                    den = tp + fp + fn
                    rows.append({"dataset": a.dataset, "model": m, "deep_supervision": True,
                                 "seed": f, "case_id": lab.name[:-7], "channel": c,
                                 "iou": tp / den if den else np.nan,
                                 "dice": 2 * tp / (2 * tp + fp + fn) if den else np.nan,
                                 "status": "ok"})
    import pandas as pd

    from skipdsl.bench import stats

    cases = pd.DataFrame(rows)
    cases.to_csv(out / "cases.csv", index=False)
    md, _ = stats.markdown(cases, [a.dataset], plots=out)
    summary = {"dataset": a.dataset, "dataset_id": a.id, "n": a.n, "test_n": a.test_n,
               "folds": folds, "epochs": a.epochs, "iterations": a.iterations,
               "val_iterations": val_it, "device": a.device, "params": params,
               "wall_s": round(time.time() - t0, 1),
               "walls_s": {k: round(v, 1) for k, v in walls.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "stats.md").write_text(md)
    print(md)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
