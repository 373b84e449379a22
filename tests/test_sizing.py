"""Matched size (issue 20): exact counts without allocation, scaling to a parameter or FLOP
target, the size guard in compile, bench run --params, aliases, cost columns, mni2d."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import skipdsl
from skipdsl import SpecError
from skipdsl.bench import cli, report, runner, store
from skipdsl.sizing import count, parse_size, scale_to, scale_to_flops, scale_to_params
from skipdsl.spec import scale_spec

ZOO = ["unet", "wunet", "unetpp", "unet3p", "unetsharp"]
ZOO_DIR = Path(skipdsl.__file__).parent / "zoo"


def real_params(spec, **kw) -> int:
    return sum(p.numel() for p in skipdsl.compile(spec, **kw).parameters())


# -- counting -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO + ["vnetsharp"])
def test_meta_count_equals_the_built_network(name):
    spec = scale_spec(skipdsl.load(name), 0.125)
    kw = dict(in_channels=2, num_classes=3)
    assert count(spec, **kw).params == real_params(spec, **kw)


def test_count_gives_flops_and_leaves_the_random_streams_alone():
    torch.manual_seed(0)
    a = skipdsl.compile("unet", widths=[4, 8, 16, 32, 64]).state_dict()
    c = count("unet", size=96)
    torch.manual_seed(0)
    b = skipdsl.compile("unet", widths=[4, 8, 16, 32, 64]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert c.gflops == pytest.approx(3.91, rel=0.01)  # UNet at 96x96, 3 -> 1


# -- scaling --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_scales_to_unetsharps_size(name):
    target = count(scale_spec(skipdsl.load("unetsharp"), 0.25), in_channels=3,
                   num_classes=1).params
    spec = scale_to_params(name, target, 3, 1)
    got = real_params(spec, in_channels=3, num_classes=1)
    assert abs(got / target - 1) <= 0.03
    assert all(isinstance(w, int) and w >= 1 for w in spec.widths)


def test_scaling_in_3d_and_to_flops():
    s3 = scale_to("unet3p", 150_000, in_channels=1, num_classes=1, dims=3)
    assert abs(real_params(s3.spec, in_channels=1, num_classes=1, dims=3) / 150_000 - 1) <= 0.03
    with pytest.raises(SpecError, match=r"no integer widths within 3%.*\n.*reachable"):
        scale_to("unet3p", 50_000, in_channels=1, num_classes=1, dims=3)  # between two steps
    spec = scale_to_flops("unetpp", 0.5, 96, 3, 1)
    assert abs(count(spec, in_channels=3, num_classes=1, size=96).gflops / 0.5 - 1) <= 0.03


def test_unreachable_targets_name_the_model_and_the_range():
    with pytest.raises(SpecError, match=r"(?s)unet cannot be made as small as .*reachable"):
        scale_to("unet", 50, in_channels=3, num_classes=1)
    bb = skipdsl.load("unet").with_backbone("resnet34")
    with pytest.raises(SpecError, match="backbone"):
        scale_to(bb, 1e6, in_channels=3, num_classes=1)


@pytest.mark.parametrize("text,value", [("670k", 670_000), ("0.67M", 670_000),
                                        ("670000", 670_000), ("1.5e6", 1_500_000)])
def test_parse_size_numbers(text, value):
    t = parse_size(text)
    assert t.kind == "params" and t.value == pytest.approx(value) and t.model is None


def test_parse_size_models_and_errors():
    assert parse_size("unetsharp").model == "unetsharp"
    assert parse_size("0.5", "flops").value == 0.5
    with pytest.raises(SpecError):
        parse_size("unetshrp")
    with pytest.raises(SpecError):
        parse_size("-3k")
    with pytest.raises(SpecError):
        parse_size(float("inf"))


# -- the guard ------------------------------------------------------------------------------


def test_absurd_channels_are_refused_before_allocation():
    text = (ZOO_DIR / "unet3p.yaml").read_text().replace("channels: 64", "channels: 1000000", 1)
    spec = skipdsl.loads(text, source="big.yaml")
    with pytest.raises(SpecError) as err:
        skipdsl.compile(spec)
    msg = str(err.value)
    assert "big.yaml" in msg and "limit" in msg and ("node x_" in msg or "edge x_" in msg)
    assert "max_params" in msg


def test_the_limit_can_be_raised(monkeypatch):
    with pytest.raises(SpecError, match="limit"):
        skipdsl.compile("unet", max_params=1000)
    monkeypatch.setenv("SKIPDSL_MAX_PARAMS", "1000")
    with pytest.raises(SpecError, match="limit"):
        skipdsl.compile("unet")
    monkeypatch.setenv("SKIPDSL_MAX_PARAMS", "1e8")
    assert real_params("unet") == 7_852_545


@pytest.mark.parametrize("widths,word", [
    ("{base: 35, growth: .inf}", "finite"),
    ("{base: 35, growth: 1e300}", "level 1"),
    ("{base: 35, growth: 2, multipliers: [1, 1, .nan, 1, 1]}", "finite"),
    ("{base: 35, growth: 2, multipliers: [1, 1, -1, 1, 1]}", "greater than 0"),
])
def test_non_finite_widths_are_refused_where_written(widths, word):
    text = re.sub(r"widths: .*", f"widths: {widths}", (ZOO_DIR / "unet.yaml").read_text(), 1)
    with pytest.raises(SpecError) as err:
        skipdsl.loads(text, source="w.yaml")
    msg = str(err.value)
    assert "w.yaml:" in msg and word in msg and "valid list" not in msg


# -- bench run --params ---------------------------------------------------------------------


def _overrides(cache_dir, **kw):
    o = dict(epochs=1, n=16, batch_size=4, cache_dir=cache_dir, throughput_iters=1, prune=False,
             hd95=False)
    o.update(kw)
    return o


def test_plan_with_a_size_target_rekeys_and_records_the_factor(tmp_path):
    o = _overrides(str(tmp_path))
    plain = runner.plan(["unet", "unet3p"], ["nuclei2d"], budget="smoke", overrides=o)
    sized = runner.plan(["unet", "unet3p"], ["nuclei2d"], budget="smoke", overrides=o,
                        size=parse_size("unetsharp"))
    assert {t.key for t in plain}.isdisjoint({t.key for t in sized})
    f = {t.config["model"]: t.config["width_scale"] for t in sized}
    assert f["unet3p"] < 0.25 < f["unet"]  # UNet 3+ shrinks, UNet grows to UNet#'s size
    again = runner.plan(["unet", "unet3p"], ["nuclei2d"], budget="smoke", overrides=o,
                        size=parse_size("unetsharp"))
    assert [t.key for t in again] == [t.key for t in sized]
    target = {t.config["size_value"] for t in sized}
    assert len(target) == 1 and target.pop() == count(
        scale_spec(skipdsl.load("unetsharp"), 0.25), in_channels=3, num_classes=1).params


def test_the_committed_table1_keys_are_unchanged():
    """A run without --params finds every committed Table-1 trial (no retraining)."""
    out = Path(__file__).resolve().parents[1] / "results" / "cpu-zoo"
    if not out.is_dir():
        pytest.skip("results/cpu-zoo is not in this checkout")
    trials = runner.plan(ZOO, ["nuclei2d", "liver2d", "brain_tumor2d", "lung_nodule2d",
                               "lung_nodule3d"], seeds=[0, 1, 2], deep_supervision="both",
                         budget="cpu")
    done = store.finished(out)
    assert len(trials) == 120 and all(t.key in done for t in trials)


@pytest.mark.slow
def test_matched_sweep_end_to_end(tmp_path, capsys):
    """The issue's check (smaller): three models at 300k +-3%, a model that cannot get there
    fails alone, aliases are said in the plan and the report, cost columns are filled."""
    my = tmp_path / "my_unet.yaml"
    my.write_text((ZOO_DIR / "unet.yaml").read_text().replace("name: unet", "name: my_unet"))
    out = tmp_path / "run"
    rc = cli.main(["run", "--params", "300k", "--models", f"unet,unet3p,unetsharp,{my}",
                   "--datasets", "nuclei2d", "--budget", "smoke", "--epochs", "1", "--n", "16",
                   "--ds", "off", "--backend", "local", "--out", str(out), "--no-progress",
                   "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "my_unet is the same network as unet" in re.sub(r"\s+", " ", err)
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 3 and (df.status == "ok").all()
    assert ((df.params / 300_000 - 1).abs() <= 0.03).all()
    assert df.peak_train_mb.gt(0).all() and df.width_scale.gt(0).all()
    assert set(df.size_target) == {"params=300000.0"}
    md = (out / "report.md").read_text()
    assert "unet = my_unet" in md and "All models at matched size" in md
    assert "Peak train MB" in md and "GFLOPs/img" in md
    # an unreachable target fails its trials with the reason; the sweep goes on
    out2 = tmp_path / "tiny"
    cli.main(["run", "--params", "400", "--models", "unet,unet3p", "--datasets", "nuclei2d",
              "--budget", "smoke", "--epochs", "1", "--n", "16", "--ds", "off", "--backend",
              "local", "--out", str(out2), "--no-progress", "--no-report",
              "--cache-dir", str(tmp_path / "cache")])
    res = {r["model"]: r for r in store.load_results(out2)}
    assert res["unet"]["status"] == "ok"
    assert res["unet3p"]["status"] == "failed"
    assert "unet3p cannot be made as small as" in res["unet3p"]["reason"]
    assert "reachable" in res["unet3p"]["reason"]


# -- mni2d ----------------------------------------------------------------------------------


def test_mni2d_is_real_anatomy_with_a_gapped_slab_split():
    pytest.importorskip("nilearn")
    from skipdsl.data import load_dataset
    from skipdsl.data.anatomy import GAP

    ds = load_dataset("mni2d", cache_dir=False)
    assert ds.images.shape[1:] == (1, 96, 96) and ds.class_names == ["white_matter"]
    z = np.array([int(c.rsplit("z", 1)[1]) for c in ds.case_ids])
    tr, va, te = (z[ds.splits[k]] for k in ("train", "val", "test"))
    assert len(te) >= 30 and len(tr) >= 50
    gap = np.abs(te[:, None] - np.concatenate([tr, va])[None, :]).min()
    assert gap >= 2 * GAP + 1  # no test slice next to a training or validation slice
    fg = ds.masks.reshape(len(ds), -1).mean(1)
    assert 0.05 < fg.mean() < 0.3 and (fg == 0).any()  # white matter, and empty slices
    assert ds.images.min() >= 0 and ds.images.max() <= 1


def test_mni2d_without_nilearn_says_how_to_get_it(monkeypatch):
    import importlib.util

    from skipdsl.data import expand_datasets, list_datasets, load_dataset
    from skipdsl.errors import DataError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real(name, *a))
    assert "mni2d" not in list_datasets()
    with pytest.warns(UserWarning, match=r"skipping mni2d .*skipdsl\[anatomy\]"):
        assert "mni2d" not in expand_datasets("all")
    with pytest.raises(DataError, match=r"skipdsl\[anatomy\]"):
        load_dataset("mni2d", cache_dir=False)


def test_the_committed_matched_keys_are_unchanged():
    """The committed equal-size run resumes: re-planning its command finds every finished trial
    (nuclei2d, complete) under the same keys."""
    out = Path(__file__).resolve().parents[1] / "results" / "cpu-zoo-matched"
    if not out.is_dir():
        pytest.skip("results/cpu-zoo-matched is not in this checkout")
    trials = runner.plan(ZOO, ["nuclei2d"], seeds=[0, 1, 2], deep_supervision="both",
                         budget="cpu", size=parse_size("unetsharp"))
    done = store.finished(out)
    assert len(trials) == 24 and all(t.key in done for t in trials)
