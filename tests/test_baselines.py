"""Library baselines (Table 3): every one builds, trains a step in 2D (and 3D where its library
allows), reports params and GFLOPs, and says clearly which size rule a dataset breaks."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import skipdsl
from skipdsl import baselines as B
from skipdsl.bench.tables import table3
from skipdsl.errors import SpecError
from skipdsl.heads import init_heads

SMP = ("deeplabv3plus", "pspnet")
#: MONAI's ViT blocks hold a cross-attention norm that runs only with cross-attention
UNUSED = ("norm_cross_attn",)


def _needs(name: str) -> None:
    if name in SMP:
        pytest.importorskip("segmentation_models_pytorch", exc_type=ImportError)
    if name in ("unetr", "swinunetr"):
        pytest.importorskip("einops")


#: (name, dims, training size, evaluation size): the smallest sizes each rule allows
SLOW = pytest.mark.slow  # the transformers in 3D: 20-30 s each on 2 busy CPU cores
CASES = [pytest.param(n, 2, 64, 64, id=f"{n}-2d") for n in B.list_baselines()] + [
    pytest.param("attention_unet", 3, 32, 32, id="attention_unet-3d"),
    pytest.param("dynunet", 3, 16, 16, id="dynunet-3d"),
    pytest.param("unetr", 3, 16, 32, id="unetr-3d", marks=SLOW),
    pytest.param("swinunetr", 3, 64, 64, id="swinunetr-3d", marks=SLOW)]


@pytest.mark.parametrize("name,dims,train,evaluate", CASES)
def test_baseline_builds_trains_and_reports_costs(name, dims, train, evaluate):
    _needs(name)
    from skipdsl.train.metrics import count_params, gflops

    torch.manual_seed(0)
    net = B.BASELINES.get(name).build(in_channels=2, num_classes=3, dims=dims,
                                      image_size=evaluate, patch=train, width_scale=0.125)
    bias = init_heads(net, torch.tensor([0.1, 0.2, 0.3]))  # the zoo's prior head init
    assert torch.allclose(net.heads["out"].bias, bias)
    x = torch.randn(1 if dims == 3 else 2, 2, *(train,) * dims)
    y = net(x)
    assert y.shape == (x.shape[0], 3, *(train,) * dims)
    y.float().pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters()
               if p.grad is None and not any(u in n for u in UNUSED)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval()
    with torch.no_grad():  # whole images (UNETR: by sliding window)
        z = net(torch.randn(1, 2, *(evaluate,) * dims))
    assert z.shape == (1, 3, *(evaluate,) * dims) and torch.isfinite(z).all()
    assert count_params(net) > 0 and gflops(net, (2,) + (evaluate,) * dims) > 0
    assert net.spec.widths and net.spec.name == name


def test_describe_and_widths_scale():
    full = B.describe("dynunet", dims=2, size=32, width_scale=0.5)
    quarter = B.describe("dynunet", dims=2, size=32, width_scale=0.25)
    assert full["widths"] == [16, 32, 64, 128] and quarter["widths"] == [8, 16, 32, 64]
    assert quarter["params"] < full["params"] and 0 < quarter["gflops"] < full["gflops"]
    assert B.scale_from_widths(8) == 0.25 and B.scale_from_widths([16, 32]) == 0.5


def test_nnunet_plan_rule():
    p = B.nnunet_plan((64, 64))
    assert p["strides"] == [[1, 1]] + [[2, 2]] * 4  # 64 -> 4: stop at the 4-voxel minimum
    assert p["kernel_size"] == [[3, 3]] * 5 and p["filters"] == [32, 64, 128, 256, 512]
    assert p["upsample_kernel_size"] == p["strides"][1:]
    # anisotropic 3D (5 mm slices, 1 mm in plane): pool in plane first, kernel 1 along z
    a = B.nnunet_plan((16, 128, 128), (5.0, 1.0, 1.0))
    assert a["strides"][1:3] == [[1, 2, 2]] * 2 and a["kernel_size"][:2] == [[1, 3, 3]] * 2
    assert a["strides"][3] == [2, 2, 2] and a["kernel_size"][2] == [3, 3, 3]
    assert a["strides"][-1] == [1, 2, 2]  # z has reached the 4-voxel minimum
    assert max(a["filters"]) == 320


@pytest.mark.parametrize("name,dims,train,evaluate,words", [
    ("swinunetr", 2, 64, 80, "divisible by 32"),
    ("swinunetr", 3, 32, 64, "one voxel at its 1/32 bottleneck"),
    ("unetr", 2, 40, 96, "divisible by 16"),
    ("attention_unet", 2, 64, 72, "divisible by 16"),
    ("attention_unet", 3, 16, 32, "one voxel at its 1/16 bottleneck"),
    ("dynunet", 2, 64, 72, "planned total stride 16"),
    ("pspnet", 3, 64, 64, "no 3D form"),
    ("deeplabv3plus", 3, 64, 64, "no 3D form"),
    ("pspnet", 2, 36, 96, "divisible by 8"),
])
def test_size_rules_are_clear_spec_errors(name, dims, train, evaluate, words):
    with pytest.raises(SpecError, match=words) as err:
        B.BASELINES.get(name).build(in_channels=1, num_classes=1, dims=dims,
                                    image_size=evaluate, patch=train)
    assert name in str(err.value)


def test_registry_hash_and_lookup():
    dyn = B.lookup("dynunet")
    assert dyn is not None and B.lookup("unet") is None and B.lookup({"name": "x"}) is None
    assert skipdsl.spec_hash(dyn) == dyn.hash() == B.lookup("dynunet").hash()
    assert len({B.BASELINES.get(n).hash() for n in B.list_baselines()}) == len(B.list_baselines())
    assert len(dyn.heads) == 1 and dyn.loss is None
    with pytest.raises(SpecError, match="did you mean 'dynunet'"):
        B.BASELINES.get("dynunett")


def test_table3_layout():
    rows, cases = [], []
    for i, (m, d) in enumerate([(m, d) for m in ("unet", "dynunet")
                                for d in ("nuclei2d", "liver2d", "brain_tumor2d")]):
        for seed in (0, 1):
            key = f"k{i}s{seed}"
            rows.append({"trial_key": key, "model": m, "dataset": d, "seed": seed,
                         "deep_supervision": False, "status": "ok", "params": 1.2e6,
                         "gflops": 0.5})
            for c in range(4):
                v = 0.5 + 0.1 * c + 0.01 * seed
                cases.append({"trial_key": key, "model": m, "dataset": d, "seed": seed,
                              "deep_supervision": False, "case": c, "case_id": f"c{c}",
                              "iou": v, "dice": min(1.0, v + 0.1), "hd95": math.nan,
                              "channel": 0, "gt_empty": False, "pred_empty": False})
    md = table3(rows, pd.DataFrame(cases))
    head = md.splitlines()[0]
    assert head.index("brain_tumor2d IoU") < head.index("liver2d IoU") < head.index("nuclei2d")
    assert "monai.networks.nets.DynUNet" in md and "±" in md and "1.20M" in md
    assert md.splitlines()[2].startswith("| unet ")  # DSL models first, then baselines


def test_one_epoch_trial_through_the_trainer(tmp_path):
    from skipdsl.train.trainer import train_and_evaluate

    r = train_and_evaluate(dict(model="dynunet", dataset="nuclei2d", n=12, epochs=1,
                                batch_size=4, budget="quick", cache_dir=str(tmp_path),
                                threads=1, throughput_iters=1, samples=1))
    assert r["status"] == "ok", r["reason"]
    assert r["model"] == "dynunet" and r["spec_hash"] == B.lookup("dynunet").hash()
    assert r["params"] > 0 and r["gflops"] > 0 and 0 <= r["iou"] <= 1
    assert r["widths"] == [8, 16, 32, 64, 128] and not r["deep_supervision"] and not r["pruning"]


def test_plan_keys_baselines_without_deep_supervision():
    from skipdsl.bench.runner import plan

    trials = plan(["unetsharp", "attention_unet"], ["liver2d"], deep_supervision="both",
                  budget="quick")
    labels = sorted(t.label for t in trials)
    assert labels == ["attention_unet/liver2d/s0/nods", "unetsharp/liver2d/s0/ds",
                      "unetsharp/liver2d/s0/nods"]
