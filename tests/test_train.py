"""Trainer and on-device augmentation: tiny widths, 16 images, one or two epochs."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch

from skipdsl.train.augment import AugmentConfig, augment_batch
from skipdsl.train.trainer import BUDGETS, resolve_config, train_and_evaluate

TINY = [4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def tiny(cache_dir, **kw):
    cfg = dict(model="unet", dataset="nuclei2d", n=16, epochs=1, widths=TINY, batch_size=4,
               cache_dir=cache_dir, threads=1, throughput_iters=1)
    cfg.update(kw)
    return cfg


# -- augmentation ---------------------------------------------------------------------------


def _ramp(n: int) -> torch.Tensor:
    return torch.arange(16.0).view(1, 1, 4, 4).repeat(n, 1, 1, 1)


def test_augment_draws_every_square_symmetry_per_sample():
    x = _ramp(1600)
    y = (x > 7).to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    xa, ya = augment_batch(x, y, config=AugmentConfig(intensity=False), generator=g)
    seen = collections.Counter(tuple(a.flatten().tolist()) for a in xa)
    assert len(seen) == 8  # the dihedral group of the square, each drawn ~1/8 of the time
    assert min(seen.values()) > 1600 / 8 * 0.7
    assert torch.equal((xa > 7).to(torch.uint8), ya)  # mask follows the image's geometry
    assert ya.dtype == torch.uint8 and xa.shape == x.shape


def test_augment_rot90_only_gives_rotations():
    x = _ramp(400)
    xa, _ = augment_batch(x, x.clone(), config=AugmentConfig(flip=False, intensity=False),
                          generator=torch.Generator().manual_seed(1))
    rotations = {tuple(torch.rot90(x[0], k, (-2, -1)).flatten().tolist()) for k in range(4)}
    assert {tuple(a.flatten().tolist()) for a in xa} == rotations


def test_augment_3d_intensity_and_reproducibility():
    x = torch.randn(6, 2, 8, 12, 12)
    y = (x[:, :1] > 0).to(torch.uint8)
    a1 = augment_batch(x, y, generator=torch.Generator().manual_seed(3))
    a2 = augment_batch(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    assert a1[0].shape == x.shape and a1[1].shape == y.shape
    # brightness/contrast changes the image only: the mask is still a permutation of voxels
    assert a1[1].sum() == y.sum()
    geo = augment_batch(x, y, config=AugmentConfig(intensity=False),
                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(geo[1], (geo[0][:, :1] > 0).to(torch.uint8))


def test_augment_non_square_skips_rotation():
    x = torch.randn(8, 1, 4, 6)
    xa, ya = augment_batch(x, x > 0, generator=torch.Generator().manual_seed(0),
                           config=AugmentConfig(intensity=False))
    assert xa.shape == x.shape and torch.equal(ya, xa > 0)


def test_augment_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="agree"):
        augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4))


# -- config ---------------------------------------------------------------------------------


def test_budgets_and_config_checks():
    assert BUDGETS["paper"].epochs == 100 and BUDGETS["paper"].width_scale == 1.0
    assert BUDGETS["smoke"].width_scale < BUDGETS["short"].width_scale < 1
    cfg = resolve_config({"model": "unet", "dataset": "nuclei2d"})
    assert cfg["lr"] == 1e-3 and cfg["weight_decay"] == 1e-4 and cfg["budget"] == "smoke"
    with pytest.raises(ValueError, match="unknown trainer config"):
        resolve_config({"model": "unet", "dataset": "nuclei2d", "lerning_rate": 1})
    with pytest.raises(ValueError, match="budget"):
        resolve_config({"model": "unet", "dataset": "nuclei2d", "budget": "huge"})


def test_one_budget_type_resolves_to_one_plan_per_trial():
    """Both tasks' budgets are one type; plan_trial resolves a budget once for a dataset (2D or
    3D from the registry, per-dataset changes, the config's overrides)."""
    from skipdsl.train.common import INSTANCE_BUDGETS, Budget, plan_trial

    assert type(BUDGETS["cpu"]) is type(INSTANCE_BUDGETS["cpu"]) is Budget
    p2 = plan_trial({"dataset": "nuclei2d", "budget": "cpu"})
    p3 = plan_trial({"dataset": "lung_nodule3d", "budget": "cpu"})
    assert (p2.dims, p2.epochs, p2.n, p2.width_scale, p2.batch_size, p2.patch, p2.loss) == \
        (2, 10, 128, 0.25, 4, 64, "bce_dice")
    assert (p3.dims, p3.epochs, p3.n, p3.width_scale, p3.batch_size, p3.patch, p3.loss) == \
        (3, 6, 24, 0.125, 2, 32, "bce_dice")
    assert plan_trial({"dataset": "liver2d", "budget": "cpu"}).n == 256  # per_dataset
    o = plan_trial({"dataset": "liver2d", "budget": "cpu", "epochs": 2, "n": 8, "patch": 0,
                    "hd95": 0, "samples": 0})
    assert (o.epochs, o.n, o.patch, o.hd95, o.samples) == (2, 8, 0, False, 0)
    i = plan_trial({"dataset": "nuclei2d", "budget": "smoke", "task": "instance", "lr": 5e-4})
    assert (i.task, i.image_size, i.lr, i.weight_decay, i.proposals, i.rois) == \
        ("instance", 192, 5e-4, 1e-2, 600, 64)
    # what a trial's key hashes: each task's fields as they were (the keys of results/ hold)
    assert set(BUDGETS["cpu"].key_fields("liver2d")) >= {"epochs_3d", "n_3d", "patch_3d"}
    assert BUDGETS["cpu"].key_fields("liver2d")["n"] == 256 == \
        BUDGETS["cpu"].key_fields("nuclei2d")["n"] * 2
    assert "image_size" in INSTANCE_BUDGETS["smoke"].key_fields()
    with pytest.raises(ValueError, match="in_3d"):
        Budget("x", epochs=1, n=1, width_scale=1.0, batch_size=1, in_3d={"lr": 1.0})
    with pytest.raises(ValueError, match="unknown instance budget"):
        plan_trial({"dataset": "nuclei2d", "budget": "huge", "task": "instance"})


# -- training -------------------------------------------------------------------------------


def test_budget_scales_each_spec_keeps_depth_and_relative_width(cache_dir):
    """The budget scales the spec's own widths: a depth-4 spec trains with four levels and
    UNet 3+ (64..1024) stays twice as wide as UNet (32..512)."""
    import skipdsl

    four = skipdsl.load("unet").to_dict()
    four["name"] = "unet_depth4"
    four["grid"] = {"depth": 4, "widths": [32, 64, 128, 256]}
    four["heads"] = [{"node": "x_0_3"}]
    r4 = train_and_evaluate(tiny(cache_dir, model=four, widths=None, n=8, epochs=1))
    assert r4["status"] == "ok" and r4["widths"] == [8, 16, 32, 64]
    r3p = train_and_evaluate(tiny(cache_dir, model="unet3p", widths=None, n=8, epochs=1))
    assert r3p["widths"] == [16, 32, 64, 128, 256]
    # its 64-channel projections are scaled with it: the smoke UNet 3+ is the zoo's at x0.25
    import skipdsl
    from skipdsl.spec import scale_spec

    small = skipdsl.compile(scale_spec(skipdsl.load("unet3p"), 0.25))
    assert r3p["params"] == sum(p.numel() for p in small.parameters())


def test_train_and_evaluate_tiny(cache_dir):
    calls = []
    r = train_and_evaluate(tiny(cache_dir, epochs=2), report=lambda e, v: calls.append((e, v)))
    assert r["status"] == "ok", r["reason"]
    assert [c[0] for c in calls] == [0, 1] and all(isinstance(c[1], float) for c in calls)
    assert r["model"] == "unet" and r["dataset"] == "nuclei2d" and r["epochs"] == 2
    assert len(r["curve"]) == 2 and {"train_loss", "val_iou", "lr"} <= set(r["curve"][0])
    assert r["curve"][1]["lr"] < r["curve"][0]["lr"]  # cosine annealing
    assert 0.0 <= r["iou"] <= 1.0 and r["params"] > 0 and r["gflops"] > 0
    assert r["images_per_s"] > 0 and r["train_seconds"] > 0 and r["spec_hash"]
    splits = r["splits"]
    assert set(splits) == {"train", "val", "test"}
    assert not set(splits["train"]) & set(splits["test"])
    cases = r["cases"]
    assert len(cases) == len(splits["test"]) == r["n_cases"]
    assert set(cases["case_id"]) == set(splits["test"])
    s = r["samples"]
    assert s["image"].ndim == 4 and s["prob"].shape == s["target"].shape
    areas = s["target"].reshape(len(s["target"]), -1).astype(int).sum(1)
    assert areas[0] > 0 and list(areas) == sorted(areas, reverse=True)  # most foreground first
    assert r["widths"] == TINY and r["loss"] == "bce_dice"


def test_fixed_seed_reproduces(cache_dir):
    a = train_and_evaluate(tiny(cache_dir, seed=3))
    b = train_and_evaluate(tiny(cache_dir, seed=3))
    assert a["curve"][0]["train_loss"] == b["curve"][0]["train_loss"]
    assert a["iou"] == b["iou"] or (math.isnan(a["iou"]) and math.isnan(b["iou"]))
    c = train_and_evaluate(tiny(cache_dir, seed=4))
    assert c["curve"][0]["train_loss"] != a["curve"][0]["train_loss"]


def test_deep_supervision_and_pruning_levels(cache_dir):
    r = train_and_evaluate(tiny(cache_dir, model="unetpp", deep_supervision=True))
    assert r["status"] == "ok" and r["deep_supervision"]
    levels = [p["level"] for p in r["pruning"]]
    assert levels == [1, 2, 3, 4]
    params = [p["params"] for p in r["pruning"]]
    assert params == sorted(params) and params[0] < r["params"]
    assert all(0 <= p["iou"] <= 1 or math.isnan(p["iou"]) for p in r["pruning"])


def test_nan_loss_is_a_failed_trial_not_an_exception(cache_dir):
    r = train_and_evaluate(tiny(cache_dir, lr=1e30, epochs=2))
    assert r["status"] == "failed"
    assert r["reason"].startswith("diverged") and "epoch 0" in r["reason"]
    assert math.isnan(r["iou"])


def test_model_from_spec_dict(cache_dir):
    import skipdsl

    spec = skipdsl.load("unet").to_dict()
    spec["name"] = "my_unet"
    r = train_and_evaluate(tiny(cache_dir, model=spec))
    assert r["status"] == "ok" and r["model"] == "my_unet"


@pytest.mark.slow
def test_train_3d_tiny(cache_dir):
    r = train_and_evaluate(tiny(cache_dir, dataset="lung_nodule3d", n=6, batch_size=2))
    assert r["status"] == "ok" and r["dims"] == 3
    assert r["samples"]["image"].ndim == 4  # the 3D samples are sliced for the overlays
    assert np.isfinite(r["gflops"])


def test_bf16_autocast_and_channels_last_path(cache_dir):
    # the CUDA recipe (bf16 autocast + channels_last), exercised here on the CPU
    r = train_and_evaluate(tiny(cache_dir, amp=True, channels_last=True, seed=1))
    assert r["status"] == "ok", r["reason"]
    assert 0.0 <= r["iou"] <= 1.0 and r["curve"][0]["train_loss"] == r["curve"][0]["train_loss"]


def test_unetpp_deep_supervision_main_head_learns(cache_dir):
    """Regression: UNet++ with deep supervision at widths 8..128, seed 0, kept its main head
    x_0_4 empty (IoU 0) under He-initialised heads; the default prior head init fixes it."""
    r = train_and_evaluate(tiny(cache_dir, model="unetpp", deep_supervision=True, n=64,
                                epochs=6, widths=[8, 16, 32, 64, 128], threads=2, prune=False))
    assert r["status"] == "ok" and r["head_init"] == "prior"
    assert r["iou"] > 0.1


def test_random_crop_same_window_for_image_and_mask_and_per_sample():
    from skipdsl.train.augment import random_crop

    x = torch.arange(4 * 2 * 12 * 12, dtype=torch.float32).view(4, 2, 12, 12)
    y = (x[:, :1] % 3 == 0).to(torch.uint8)
    cx, cy = random_crop(x, y, 5, generator=torch.Generator().manual_seed(1))
    assert cx.shape == (4, 2, 5, 5) and cy.shape == (4, 1, 5, 5)
    assert torch.equal(cy, (cx[:, :1] % 3 == 0).to(torch.uint8))  # same window in the mask
    for b in range(4):  # each crop is a contiguous window of its own sample
        r0, c0 = divmod(int(cx[b, 0, 0, 0] - x[b, 0, 0, 0]), 12)
        assert torch.equal(cx[b], x[b, :, r0:r0 + 5, c0:c0 + 5])
    corners = {int(cx[b, 0, 0, 0] - x[b, 0, 0, 0]) for b in range(4)}
    assert len(corners) > 1  # offsets drawn per sample
    v = torch.randn(2, 1, 8, 8, 8)
    cv, _ = random_crop(v, v.clone(), 4)
    assert cv.shape == (2, 1, 4, 4, 4)
    same, _ = random_crop(x, y, 12)
    assert same is x


def test_cpu_budget_one_recipe_for_every_model(cache_dir):
    """The comparison budget trains every model with the same loss, patch and width scale."""
    from skipdsl.train.trainer import BUDGETS

    b = BUDGETS["cpu"]
    assert b.loss == "bce_dice" and b.patch == 64 and b.width_scale == 0.25
    r = train_and_evaluate({"model": "unetsharp", "dataset": "nuclei2d", "budget": "cpu",
                            "epochs": 1, "n": 24, "cache_dir": str(cache_dir),
                            "deep_supervision": False, "prune": False})
    assert r["status"] == "ok" and r["loss"] == "bce_dice" and r["n_cases"] == 200
    assert r["widths"] == [8, 16, 32, 64, 128]
