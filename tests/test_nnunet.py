"""Skip schemes inside nnU-Net v2 (skipdsl.nnunet) and per-level strides/kernels in the DSL."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import skipdsl
from skipdsl import SpecError
from skipdsl.spec import from_dict, load

ZOO = ["unet", "unetpp", "unet3p", "unetsharp", "wunet"]


# --------------------------------------------------------------------------- the DSL


def _strided(**grid):
    d = load("unetsharp").to_dict()
    d["grid"] = {"depth": 4, "widths": [4, 8, 16, 32], **grid}
    d["heads"] = [{"node": "x_0_3", "main": True}]
    return d


def test_isotropic_strides_are_the_default_network():
    """Strides of 2 on every level are what the grid always meant: same graph, same code,
    same outputs (the scales derived from the cumulative strides)."""
    plain = from_dict(_strided())
    strided = from_dict(_strided(strides=[1, [2, 2], 2, 2], kernels=[3, 3, [3, 3], 3]))
    a, b = skipdsl.compile(plain), skipdsl.compile(strided)
    assert a.code == b.code
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    ga, gb = skipdsl.graph(plain), skipdsl.graph(strided)
    assert all(ga.edges[e]["factor"] == gb.edges[e]["factor"] for e in ga.edges)


def test_zoo_hashes_do_not_see_the_new_keys():
    """Specs that do not use strides/kernels/downsample dump exactly as before."""
    for name in skipdsl.spec.zoo_names(None):
        d = load(name).to_dict()
        assert "strides" not in d["grid"] and "kernels" not in d["grid"]
        assert "downsample" not in d.get("encoder", {})


def test_anisotropic_strides_scale_every_edge_per_axis():
    d = _strided(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
                 kernels=[[1, 3, 3], [1, 3, 3], 3, 3])
    d.update(dims=3, in_channels=1, deep_supervision=True)
    d["heads"] += [{"node": "x_1_2", "match": "pool"}, {"node": "x_2_1"}]
    spec = from_dict(d)
    g = skipdsl.graph(spec)
    assert g.nodes["x_3_0"]["scale"] == (2, 8, 8)
    assert g.nodes["x_1_0"]["scale"] == (1, 2, 2)
    assert g.edges["x_3_0", "x_0_3"]["factor"] == (2.0, 8.0, 8.0)  # fullscale_up
    assert g.edges["x_2_0", "x_2_1"]["factor"] == 1.0
    assert g.nodes["x_0_1"]["block"]["kernel"] == [1, 3, 3]
    assert spec.input_multiples == (2, 8, 8)
    m = skipdsl.compile(spec)
    out = m(torch.randn(1, 1, 4, 16, 16))
    assert out["x_0_3"].shape[2:] == (4, 16, 16)
    assert out["x_1_2"].shape[2:] == (4, 8, 8)  # kept at its own scale
    assert out["x_2_1"].shape[2:] == (4, 16, 16)  # upsampled per axis
    with pytest.raises(SpecError, match=r"\(2, 8, 8\) per axis"):
        m(torch.randn(1, 1, 3, 16, 16))


def test_block_downsampling_strides_the_first_conv():
    d = _strided(strides=[[1, 1], [2, 1], [2, 2], [2, 2]])
    d["encoder"] = {"downsample": "block"}
    g = skipdsl.graph(from_dict(d))
    assert g.nodes["x_1_0"]["block"]["stride"] == [2, 1]
    assert g.edges["x_0_0", "x_1_0"]["op"] == "identity" and g.edges["x_0_0", "x_1_0"]["in_block"]
    m = skipdsl.compile(from_dict(d))
    assert m.x_1_0[0].conv.stride == (2, 1) and m.x_1_0[1].conv.stride == (1, 1)
    assert m(torch.randn(1, 3, 16, 8)).shape == (1, 1, 16, 8)


@pytest.mark.parametrize("grid, match", [
    ({"strides": [1, 2, [2, 0], 2]}, r"grid\.strides at level 2, axis 1: 0"),
    ({"kernels": [3, 3, [3, 4], 3]}, r"grid\.kernels at level 2, axis 1: 4 .*odd"),
    ({"strides": [1, 2, 2]}, r"grid\.strides has 3 entries but grid\.depth is 4"),
    ({"kernels": [3, 3, [1, 3, 3], 3]}, r"grid\.kernels at level 2 has 3 axes but the spec is 2D"),
    ({"strides": [2, 2, 2, 2]}, r"level 0 is \[2, 2\].*downsample: block"),
])
def test_bad_strides_and_kernels_name_level_and_axis(grid, match):
    with pytest.raises(SpecError, match=match):
        from_dict(_strided(**grid))


# --------------------------------------------------------------------------- nnU-Net

nnunet = pytest.importorskip("skipdsl.nnunet")


def _arch(dims: int, n: int = 4, anisotropic: bool = True) -> dict:
    """A plan's architecture entry as nnU-Net writes it (import paths as strings)."""
    if dims == 2:
        strides = [[1, 1], [2, 2], [2, 1], [2, 2]][:n] if anisotropic else [[1, 1]] + [[2, 2]] * (n - 1)
        kernels = [[3, 3]] * n
    else:
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]][:n]
        kernels = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]][:n]
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": [4, 8, 16, 32][:n],
                "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
                "kernel_sizes": kernels, "strides": strides,
                "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def _size(dims):
    return (32, 32) if dims == 2 else (8, 16, 16)


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_scheme_is_plainconvunet(dims):
    """Same parameter count and, through the documented key mapping, the same outputs, with
    deep supervision on and off (2D with an anisotropic stride, anisotropic 3D)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = _arch(dims)
    swapped = nnunet.swap_plans({"configurations": {"c": {"architecture": arch}}}, "unet")
    arch2 = swapped["configurations"]["c"]["architecture"]
    assert arch2["network_class_name"] == "skipdsl.nnunet.SkipUNet"
    assert arch2["arch_kwargs"]["scheme"] == "unet"
    torch.manual_seed(0)
    for ds in (True, False):
        ref = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], 2, 3, deep_supervision=ds)
        net = get_network_from_plans(arch2["network_class_name"], arch2["arch_kwargs"],
                                     arch2["_kw_requires_import"], 2, 3, deep_supervision=ds)
        assert isinstance(net, nnunet.SkipUNet)
        assert nnunet.parameter_count(net) == nnunet.parameter_count(ref)
        net.load_state_dict(nnunet.plainconv_state_dict(ref.state_dict(), 4), strict=True)
        x = torch.randn(2, 2, *_size(dims))
        a, b = ref(x), net(x)
        if ds:
            assert isinstance(b, list) and len(b) == len(a) == 3
            for p, q in zip(a, b):
                assert p.shape == q.shape
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("scheme", ZOO)
def test_every_zoo_scheme_builds_from_a_plan(dims, scheme, one_thread):
    """nnU-Net's own get_network_from_plans builds each scheme; forward and backward with
    deep supervision on (one output per decoder level at nnU-Net's scales) and off."""
    pytest.importorskip("nnunetv2")
    import numpy as np
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = nnunet.swap_plans({"configurations": {"c": {"architecture": _arch(dims)}}},
                             scheme)["configurations"]["c"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], 1, 2, deep_supervision=True)
    size = np.array(_size(dims))
    x = torch.randn(2, 1, *size)
    out = net(x)
    # nnUNetTrainer._get_deep_supervision_scales: 1 / cumprod(strides), all but the last
    scales = (1 / np.cumprod(np.vstack(arch["arch_kwargs"]["strides"]), axis=0))[:-1]
    assert [tuple(o.shape[2:]) for o in out] == [tuple((size * s).astype(int)) for s in scales]
    sum(o.float().mean() for o in out).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
    y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 2, *size)
    y.mean().backward()


def test_scheme_options_and_widths():
    a = _arch(2, anisotropic=False)["arch_kwargs"]
    kw = dict(a, input_channels=1, num_classes=2)
    for k in ("conv_op", "norm_op", "nonlin"):
        import pydoc
        kw[k] = pydoc.locate(kw[k])
    kw.pop("dropout_op"), kw.pop("dropout_op_kwargs")
    u3 = nnunet.plan_spec("unet3p", **kw)
    assert {e.project.channels for e in u3.edges if e.project} == {4}  # 64 at 64 -> 4 at 4
    assert {e.project.channels for e in nnunet.plan_spec("unet3p", project_channels=6, **kw).edges
            if e.project} == {6}
    assert nnunet.plan_spec("wunet", **kw).widths == [4, 9, 18, 35]  # x 35/32
    assert not nnunet.plan_spec("unetsharp", **kw).cgm


def test_a_scheme_the_plan_cannot_hold(tmp_path):
    d = load("unet").to_dict()
    d["nodes"] = ["x_0_0", "x_1_0", "x_2_0", "x_3_0", "x_4_0", "x_0_4", "x_1_3", "x_2_2", "x_3_1"]
    p = tmp_path / "listed.yaml"
    import yaml
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError, match=r"written for depth 5 \(it lists its nodes\); the plan "
                       r"has 4 stages"):
        nnunet.swap_plans({"configurations": {"c": {"architecture": _arch(2)}}}, str(p))
    with pytest.raises(SpecError, match="at least 3 levels"):
        nnunet.swap_plans({"configurations": {"c": {"architecture": _arch(2, n=2)}}}, "unetpp")


def _plans_dir(tmp_path, monkeypatch):
    pre = tmp_path / "pre" / "Dataset501_Toy"
    pre.mkdir(parents=True)
    plans = {"plans_name": "nnUNetPlans", "configurations": {
        "2d": {"architecture": _arch(2)}, "3d_fullres": {"architecture": _arch(3)},
        "3d_lowres": {"inherits_from": "3d_fullres"}}}
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return pre


def test_plans_command(tmp_path, monkeypatch, capsys):
    from skipdsl.cli import run

    pre = _plans_dir(tmp_path, monkeypatch)
    assert run(["nnunet", "plans", "501", "--scheme", "unetsharp"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetv2_train Dataset501_Toy 2d FOLD -p nnUNetPlans_unetsharp" in out
    assert "3d_fullres FOLD" in out
    new = json.loads((pre / "nnUNetPlans_unetsharp.json").read_text())
    old = json.loads((pre / "nnUNetPlans.json").read_text())
    assert new["plans_name"] == "nnUNetPlans_unetsharp"
    for c in ("2d", "3d_fullres"):
        arch = new["configurations"][c]["architecture"]
        assert arch["network_class_name"] == "skipdsl.nnunet.SkipUNet"
        assert {k: v for k, v in arch["arch_kwargs"].items() if k != "scheme"} == \
            old["configurations"][c]["architecture"]["arch_kwargs"]
    assert new["configurations"]["3d_lowres"] == old["configurations"]["3d_lowres"]
    assert run(["nnunet", "plans", "Dataset501_Toy", "--scheme", "unet3p",
                "--configurations", "2d"]) == 0
    new = json.loads((pre / "nnUNetPlans_unet3p.json").read_text())
    assert new["configurations"]["3d_fullres"] == old["configurations"]["3d_fullres"]


@pytest.mark.parametrize("argv, env, match", [
    (["502"], True, "no dataset with id 502"),
    (["501", "--plans", "nnUNetResEncPlans"], True, "has not been planned: no nnUNetResEncPlans"),
    (["501"], False, "nnUNet_preprocessed is not set"),
    (["501", "--configurations", "3d_lowres"], True, "inherits"),
])
def test_plans_command_errors(tmp_path, monkeypatch, capsys, argv, env, match):
    from skipdsl.cli import run

    _plans_dir(tmp_path, monkeypatch)
    if not env:
        monkeypatch.delenv("nnUNet_preprocessed")
    assert run(["nnunet", "plans", *argv[:1], "--scheme", "unet", *argv[1:]]) == 2
    assert match in capsys.readouterr().err


def test_export_roundtrip(tmp_path):
    """bench datasets export writes an nnU-Net raw dataset that skipdsl's own nnU-Net reader
    reads back to the same masks."""
    import numpy as np
    from skipdsl.bench.cli import main
    from skipdsl.data import load_dataset

    rc = main(["datasets", "export", "nuclei2d", "--format", "nnunet", "--id", "501",
               "--out", str(tmp_path / "nnunet"), "--n", "6", "--test-n", "2",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    folder = tmp_path / "nnunet" / "Dataset501_Nuclei2d"
    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["numTraining"] == 6 and spec["labels"] == {"background": 0, "nucleus": 1}
    assert len(list((folder / "imagesTr").glob("*_0000.nii.gz"))) == 6
    assert len(list((folder / "imagesTs").glob("*_0002.nii.gz"))) == 2  # 3 channels
    back = load_dataset("nnunet:Dataset501_Nuclei2d", root=tmp_path, cache_dir=False)
    src = load_dataset("nuclei2d", n=6, test_n=2, cache_dir=tmp_path / "cache")
    train = np.sort(np.concatenate([src.splits["train"], src.splits["val"]]))
    assert back.masks.shape == (6, 1, *src.spatial_shape)
    assert np.array_equal(back.masks, src.masks[train])
    assert main(["datasets", "export", "nuclei2d", "--id", "501", "--out",
                 str(tmp_path / "nnunet"), "--n", "6", "--test-n", "2",
                 "--cache-dir", str(tmp_path / "cache")]) == 2  # never overwrites


# --------------------------------------------------------------------------- end to end

#: nnU-Net's own trainer (``nnUNetTrainer_1epoch``, found by name by ``nnUNetv2_train`` and by
#: ``nnUNetv2_predict``) and its own command-line entry, with the epoch cut from 250 training
#: and 50 validation iterations to a few, so that the test fits 2 CPU cores
SHORT_TRAIN = """
import sys
import torch
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
    nnUNetTrainer_1epoch)
from nnunetv2.run.run_training import run_training_entry

_init = nnUNetTrainer_1epoch.__init__
ITERATIONS = int(sys.argv.pop())

def _short(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
    # nnU-Net records its trainer's init arguments by the signature: keep it
    _init(self, plans, configuration, fold, dataset_json, device)
    self.num_iterations_per_epoch = ITERATIONS
    self.num_val_iterations_per_epoch = 2

nnUNetTrainer_1epoch.__init__ = _short
sys.argv = ["nnUNetv2_train", *sys.argv[1:]]
run_training_entry()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_end_to_end_inside_nnunet(tmp_path):
    """Export a built-in dataset, nnUNetv2_plan_and_preprocess, the plans command, nnU-Net's
    trainer for a few iterations on the CPU with deep supervision, nnUNetv2_predict."""
    pytest.importorskip("nnunetv2")
    import numpy as np
    import SimpleITK as sitk

    bindir = Path(sys.executable).parent
    if not (bindir / "nnUNetv2_plan_and_preprocess").exists():
        pytest.skip("nnU-Net's commands are not installed beside this Python")
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"),
               nnUNet_preprocessed=str(tmp_path / "pre"), nnUNet_results=str(tmp_path / "res"),
               nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", nnUNet_compile="f",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def sh(*cmd, **extra):
        r = subprocess.run([str(c) for c in cmd], env={**env, **extra}, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{cmd[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    sh(bindir / "bench", "datasets", "export", "nuclei2d", "--format", "nnunet", "--id", "501",
       "--out", tmp_path / "raw", "--n", "10", "--test-n", "2", "--cache-dir", tmp_path / "c")
    sh(bindir / "nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "2d", "-np", "1",
       "-npfp", "1")
    # a tiny plan, so that the CPU gets through it: 3 stages of 4-16 channels, 32x32 patches
    pre = tmp_path / "pre" / "Dataset501_Nuclei2d"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["2d"]
    conf.update(patch_size=[32, 32], batch_size=2)
    a = conf["architecture"]["arch_kwargs"]
    for k, v in (("n_stages", 3), ("features_per_stage", [4, 8, 16]),
                 ("kernel_sizes", [[3, 3]] * 3), ("strides", [[1, 1], [2, 2], [2, 2]]),
                 ("n_conv_per_stage", [2] * 3), ("n_conv_per_stage_decoder", [2] * 2)):
        a[k] = v
    conf["pool_op_kernel_sizes"], conf["conv_kernel_sizes"] = a["strides"], a["kernel_sizes"]
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))

    out = sh(bindir / "skipdsl", "nnunet", "plans", "501", "--scheme", "unet3p",
             "--configurations", "2d")
    assert "nnUNetv2_train Dataset501_Nuclei2d 2d FOLD -p nnUNetPlans_unet3p" in out
    sh(sys.executable, "-c", SHORT_TRAIN, "501", "2d", "0", "-p", "nnUNetPlans_unet3p",
       "-tr", "nnUNetTrainer_1epoch", "-device", "cpu", "4")
    model = tmp_path / "res" / "Dataset501_Nuclei2d" / "nnUNetTrainer_1epoch__nnUNetPlans_unet3p__2d"
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "skipdsl.nnunet.SkipUNet" in log and "'scheme': 'unet3p'" in log
    assert "train_loss" in log  # an epoch of nnU-Net's training ran (deep supervision on)
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert json.loads((model / "fold_0" / "validation" / "summary.json").read_text())[
        "foreground_mean"]["Dice"] >= 0
    sh(bindir / "nnUNetv2_predict", "-i", tmp_path / "raw" / "Dataset501_Nuclei2d" / "imagesTs",
       "-o", tmp_path / "pred", "-d", "501", "-c", "2d", "-f", "0", "-p", "nnUNetPlans_unet3p",
       "-tr", "nnUNetTrainer_1epoch", "-chk", "checkpoint_final.pth", "-device", "cpu",
       "-npp", "1", "-nps", "1", "--disable_tta")
    masks = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert [m.name for m in masks] == ["case_ts0000.nii.gz", "case_ts0001.nii.gz"]
    for m in masks:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(m)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(
            tmp_path / "raw" / "Dataset501_Nuclei2d" / "labelsTs" / m.name)))
        assert arr.shape == ref.shape and set(np.unique(arr)) <= {0, 1}
