"""Every registered model (timm's tests/test_models.py pattern): built by name through
``skipdsl.create_model`` at tiny widths, one forward and backward in train mode, in every
dimension it is registered for: finite outputs, a finite loss, and a finite gradient on every
parameter. The registry itself: listing, filtering, unknown names, spec paths."""
from __future__ import annotations

import pytest
import torch

import skipdsl
from skipdsl.models import model_info
from skipdsl.spec import zoo_names

#: Input sizes that keep every model small and fast on 2 CPU cores: the zoo at 32 (2D) and
#: 16^3; the baselines at the smallest size their rules allow (skipdsl.baselines: a multiple
#: of the total stride, and two voxels at the bottleneck, so one side may be twice the others).
SIZE = {2: (32, 32), 3: (16, 16, 16)}
BASELINE_SIZE = {"swinunetr": {2: (64, 32), 3: (64, 32, 32)}, "pspnet": {2: (48, 48)}}
#: Parameters a library creates but never uses in its forward (no gradient by design):
#: MONAI's ViT blocks build a cross-attention norm even without cross-attention.
UNUSED = {"unetr": ("norm_cross_attn",)}


def _case(name: str, dims: int) -> tuple[dict, torch.Tensor]:
    info = model_info(name)
    if info.source == "baseline":
        size = BASELINE_SIZE.get(name, {}).get(dims) or ((32, 32) if dims == 2 else (32, 16, 16))
        return (dict(in_channels=2, num_classes=2, dims=dims, image_size=size,
                     width_scale=0.125), torch.randn(2, 2, *size))
    if info.source == "detector":
        return dict(num_classes=2, image_size=64, width_scale=0.125, roi_width=16,
                    rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                    box_batch_size_per_image=16), torch.rand(2, 3, 64, 64)
    spec = skipdsl.load(name)
    if info.task == "instance":  # a feature pyramid over a ResNet-34 (its own channels)
        return dict(width_scale=0.125), torch.randn(1, spec.in_channels, 64, 64)
    opts = dict(width_scale=0.125, dims=dims, in_channels=2, num_classes=2,
                deep_supervision=len(spec.heads) > 1)
    return opts, torch.randn(2, 2, *SIZE[dims])


def _targets(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    out = []
    for k in range(x.shape[0]):
        masks = torch.zeros(1, *x.shape[2:], dtype=torch.uint8)
        masks[0, 8 + 4 * k:40, 12:44] = 1
        out.append({"boxes": torch.tensor([[12.0, 8.0 + 4 * k, 44.0, 40.0]]),
                    "labels": torch.tensor([1]), "masks": masks})
    return out


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


CASES = [(name, dims) for name in skipdsl.list_models() for dims in model_info(name).dims]


@pytest.mark.parametrize("name,dims", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_forward_backward_every_parameter_gets_a_gradient(name, dims, one_thread):
    torch.manual_seed(0)
    options, x = _case(name, dims)
    model = skipdsl.create_model(name, **options).train()
    if model_info(name).source == "detector":
        losses = model(list(x), _targets(x))
        outs = list(losses.values())
    else:
        outs = _tensors(model(x))
        assert outs and all(o.shape[0] == x.shape[0] for o in outs)
    assert all(torch.isfinite(o).all() for o in outs), name
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None
               and not any(u in n for u in UNUSED.get(name, ()))]
    assert not missing, f"{name} {dims}D: no gradient for {missing[:5]}"
    bad = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name} {dims}D: non-finite gradient for {bad[:5]}"


def test_the_issue_s_models_build_by_name():
    names = skipdsl.list_models()
    for name in ("unetsharp", "vnetsharp", "attention_unet", "maskrcnn_sharp"):
        assert name in names
    assert isinstance(skipdsl.create_model("unetsharp"), torch.fx.GraphModule)
    assert type(skipdsl.create_model("maskrcnn_sharp", width_scale=0.125)).__name__ \
        == "MaskRCNN"


def test_list_models_filters_and_reads_one_registry():
    assert skipdsl.list_models(source="zoo", task="semantic", dims=2) == zoo_names()
    assert set(skipdsl.list_models(source="zoo", dims=3)) >= set(zoo_names(dims=3))
    assert skipdsl.list_models(source="zoo", task="instance") == zoo_names(task="instance")
    assert skipdsl.list_models("maskrcnn_*") == ["maskrcnn_3p", "maskrcnn_fpn", "maskrcnn_pp",
                                                 "maskrcnn_sharp"]
    assert "deeplabv3plus" in skipdsl.list_models(dims=2)
    assert "deeplabv3plus" not in skipdsl.list_models(dims=3)  # smp: 2D only
    assert set(skipdsl.list_models(task="instance")) == set(
        skipdsl.list_models("fpn*") + skipdsl.list_models("maskrcnn_*"))


def test_unknown_names_name_the_close_ones_and_none_options_are_dropped(tmp_path):
    with pytest.raises(skipdsl.SpecError, match="did you mean 'unetsharp'"):
        skipdsl.create_model("unetsharpp")
    net = skipdsl.create_model("unet", widths=None, dims=None, deep_supervision=None)
    assert sum(p.numel() for p in net.parameters()) == 7_852_545  # the spec's own values
    path = tmp_path / "mine.yaml"
    path.write_text(skipdsl.load("unetpp").to_yaml())
    a = skipdsl.create_model(str(path), widths=[4, 8, 16, 32, 64])
    b = skipdsl.create_model(skipdsl.load("unetpp"), widths=[4, 8, 16, 32, 64])
    c = skipdsl.create_model(skipdsl.load("unetpp").to_dict(), widths=[4, 8, 16, 32, 64])
    assert {sum(p.numel() for p in m.parameters()) for m in (a, b, c)} == {
        sum(p.numel() for p in skipdsl.compile("unetpp", widths=[4, 8, 16, 32, 64]).parameters())}
