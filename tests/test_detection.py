"""Feature pyramids as specs inside torchvision's Mask R-CNN (skipdsl.detection), instance
targets and metrics (skipdsl.train.instance)."""
import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

import skipdsl  # noqa: E402
from skipdsl.detection import (PyramidBackbone, maskrcnn, pyramid_spec,  # noqa: E402
                               torchvision_fpn_state_dict)
from skipdsl.errors import SpecError  # noqa: E402
from skipdsl.spec import load, scale_spec  # noqa: E402

PYRAMIDS = ["fpn", "fpn_pp", "fpn_3p", "fpn_sharp"]
RESNET34_LEVELS = [64, 128, 256, 512]  # layer1..layer4 = x_1_0..x_4_0


def _pyramid_params(body):
    """Parameters outside the backbone column (laterals, merge nodes, output convs)."""
    return sum(p.numel() for n, p in body.named_parameters()
               if body.dag.nodes.get(n.split(".")[0], {}).get("kind") != "encoder")


def test_pyramid_zoo_is_listed_apart():
    assert skipdsl.spec.zoo_names(task="instance") == sorted(PYRAMIDS)
    assert not set(PYRAMIDS) & set(skipdsl.spec.zoo_names(dims=None))


def test_fpn_has_torchvisions_parameter_count():
    from torchvision.ops import FeaturePyramidNetwork

    body = PyramidBackbone("fpn").body
    want = sum(p.numel() for p in FeaturePyramidNetwork(RESNET34_LEVELS, 256).parameters())
    assert _pyramid_params(body) == want == 2_607_104


def test_fpn_equals_torchvisions_backbone_with_fpn():
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    torch.manual_seed(0)
    ref = BackboneWithFPN(torchvision.models.resnet34(weights=None),
                          {f"layer{k}": str(k - 1) for k in range(1, 5)}, RESNET34_LEVELS,
                          256).eval()
    ours = PyramidBackbone("fpn").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = ours(x)["0"]
        ours.body.load_state_dict(torchvision_fpn_state_dict(ref.state_dict()), strict=True)
        a, b = ref(x), ours(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    assert not torch.allclose(before, a["0"])  # the equality below comes from the weights
    for k in a:
        assert a[k].shape == b[k].shape
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    assert ours.out_channels == ref.out_channels == 256


def test_state_dict_mapping_refuses_foreign_keys():
    with pytest.raises(KeyError, match="not a BackboneWithFPN key"):
        torchvision_fpn_state_dict({"backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="pyramid has 4 levels"):
        torchvision_fpn_state_dict({"fpn.layer_blocks.4.0.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", PYRAMIDS)
def test_pyramid_trains_one_step_inside_maskrcnn(name, one_thread):
    from skipdsl.train.instance import instance_targets

    torch.manual_seed(0)
    spec = scale_spec(load(name), 0.125)  # 32-channel pyramid
    det = maskrcnn(spec, 2, image_size=64, anchor_sizes=(8, 16, 32, 64, 128), roi_width=16,
                   image_mean=[0.0] * 3, image_std=[1.0] * 3, rpn_pre_nms_top_n_train=100,
                   rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
                   rpn_post_nms_top_n_test=50, box_batch_size_per_image=16)
    assert det.backbone.out_channels == 32
    inst = np.zeros((64, 64), np.int32)
    inst[10:20, 12:22], inst[40:52, 30:38] = 1, 2
    target = instance_targets(inst)
    body = det.backbone.body
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    opt = torch.optim.SGD(det.parameters(), lr=0.01)
    det.train()
    losses = det([torch.randn(3, 64, 64), torch.randn(3, 64, 64)], [target, target])
    assert {"loss_mask", "loss_objectness", "loss_classifier"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    moved = [n for n, p in body.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("heads.") for n in moved) and any(n.startswith("edges.") for n in moved)
    det.eval()
    with torch.no_grad():
        out = det([torch.randn(3, 64, 64)])[0]
    assert out["masks"].shape[1:] == (1, 64, 64) and out["boxes"].shape[1] == 4


def test_pyramid_graphs_differ_as_designed():
    """FPN: one lateral and one top-down edge per merge; ++ adds nested nodes; 3+ full-scale
    edges into the outer diagonal; # = ++ plus full-scale up edges."""
    g = {n: skipdsl.build_graph(n) for n in PYRAMIDS}
    assert set(g["fpn"].predecessors("x_1_4")) == {"x_1_0", "x_2_3"}
    assert set(g["fpn_3p"].predecessors("x_1_4")) == {"x_0_0", "x_1_0", "x_2_3", "x_3_2", "x_4_1"}
    assert set(g["fpn_pp"].predecessors("x_1_4")) == {"x_1_0", "x_1_1", "x_1_2", "x_1_3", "x_2_3"}
    assert set(g["fpn_sharp"].predecessors("x_1_4")) == {"x_1_0", "x_1_1", "x_1_2", "x_1_3",
                                                          "x_2_3", "x_3_2", "x_4_1"}
    assert set(g["fpn_pp"].edges) < set(g["fpn_sharp"].edges)
    # every edge out of the backbone has its own 1x1 lateral projection; no other edge has one
    for name, dag in g.items():
        for u, v, d in dag.edges(data=True):
            if dag.nodes[u].get("kind") == "encoder" and dag.nodes[v]["kind"] == "decoder":
                assert d["project"]["kernel"] == 1, (name, u, v)
            elif dag.nodes[v]["kind"] == "decoder":
                assert d["project"] is None, (name, u, v)


def test_pyramid_spec_errors(write_spec):
    with pytest.raises(SpecError, match="no 'pyramid:' section"):
        pyramid_spec("unet")
    text = load("fpn").to_yaml()
    bad = write_spec(text.replace("- x_4_1\n  channels", "- x_3_2\n  channels"))
    with pytest.raises(SpecError, match="distinct levels"):
        skipdsl.build_graph(str(bad))
    with pytest.raises(SpecError, match="outside the grid"):
        skipdsl.build_graph(str(write_spec(load("fpn").to_yaml().replace("columns: 5",
                                                                          "columns: 2"))))


def test_instance_targets_from_dsb2018_fixture(tmp_path):
    from PIL import Image

    from skipdsl.data import fixtures, load_dataset
    from skipdsl.data.arrays import resize_mask
    from skipdsl.train.instance import instance_targets

    fixtures.write_dsb2018(tmp_path, n_cases=3, size=24, seed=3)
    ds = load_dataset("dsb2018", root=tmp_path)
    cases = sorted((tmp_path / "dsb2018" / "stage1_train").iterdir())
    for i, case in enumerate(cases):
        t = instance_targets(ds.instances[i])
        ids = np.unique(ds.instances[i])[1:]
        assert t["masks"].shape == (len(ids), 96, 96) and t["labels"].tolist() == [1] * len(ids)
        assert np.array_equal(t["masks"].numpy().any(0), ds.masks[i, 0] > 0)
        for k, m in enumerate(t["masks"].numpy().astype(bool)):
            ys, xs = np.nonzero(m)
            assert t["boxes"][k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # instance k is the nucleus of mask file k (the loader numbers them in file order)
            png = np.asarray(Image.open(sorted((case / "masks").glob("*.png"))[ids[k] - 1])) > 127
            big = resize_mask(png[None].astype(np.uint8), (96, 96))[0] > 0
            assert (m & big).sum() / m.sum() > 0.9
    assert instance_targets(np.zeros((8, 8), np.int32))["boxes"].shape == (0, 4)


def test_mask_ap_and_union():
    pytest.importorskip("torchmetrics")
    pytest.importorskip("pycocotools")
    from skipdsl.train.instance import instance_targets, mask_ap, union_masks

    inst = np.zeros((32, 32), np.int32)
    inst[2:10, 2:10], inst[20:30, 18:26] = 1, 2
    t = instance_targets(inst)
    perfect = {"masks": t["masks"][:, None].float(), "scores": torch.tensor([0.9, 0.8]),
               "labels": torch.ones(2, dtype=torch.int64), "boxes": t["boxes"]}
    r = mask_ap([perfect], [t])
    assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)
    half = {k: v[:1] for k, v in perfect.items()}  # one of the two nuclei found
    assert mask_ap([half], [t])["ap50"] == pytest.approx(0.5, abs=0.02)
    u = union_masks([perfect, half], (32, 32))
    assert u.shape == (2, 1, 32, 32)
    assert torch.equal(u[0, 0].bool(), torch.from_numpy(inst > 0))
    assert u[1].sum() == 64


def test_instance_bench_sweep_resumes_and_reports(tmp_path, one_thread):
    """bench run --task instance through the runner (local backend) on a DSB2018 fixture:
    results with AP/AP50, Table 2 in the report, and a rerun that skips the finished trial."""
    pytest.importorskip("torchmetrics")
    import pandas as pd

    from skipdsl.bench.cli import main
    from skipdsl.data import fixtures

    fixtures.write_dsb2018(tmp_path / "data", n_cases=6, size=24)
    out = tmp_path / "run"
    argv = ["run", "--task", "instance", "--models", "maskrcnn_fpn", "--datasets", "dsb2018",
            "--data-root", str(tmp_path / "data"), "--budget", "smoke", "--epochs", "1",
            "--backend", "local", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    row = df.iloc[0]
    assert len(df) == 1 and row["status"] == "ok" and row["task"] == "instance"
    assert row["model"] == "maskrcnn_fpn" and row["backbone"] == "resnet34"
    assert 0 <= row["ap50"] <= 1 and 0 <= row["iou"] <= 1 and row["params"] > 2e7
    report = (out / "report.md").read_text()
    assert "## Table 2" in report and "| maskrcnn_fpn | resnet34 | dsb2018 | 1 |" in report
    mtime = (out / "trials" / row["trial_key"] / "result.json").stat().st_mtime
    assert main(argv) == 0  # resume: the finished trial is skipped
    assert (out / "trials" / row["trial_key"] / "result.json").stat().st_mtime == mtime
