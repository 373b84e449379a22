"""torchvision encoder backbones as the encoder column: the grid follows the stages, every
scheme trains over every backbone, weights load only from a named local file."""
import pytest
import torch

import skipdsl
from skipdsl.cli import run as cli_run

tvm = pytest.importorskip("torchvision.models")

SCHEMES = ["unet", "unetpp", "unet3p", "unetsharp"]
NARROW = [4, 8, 16, 32, 64]  # decoder widths; the backbone keeps its own
CHANNELS = {"vgg16_bn": [64, 128, 256, 512, 512], "resnet34": [64, 64, 128, 256, 512],
            "resnet50": [64, 256, 512, 1024, 2048], "resnet101": [64, 256, 512, 1024, 2048]}
CASES = [(b, s) for b in ("vgg16_bn", "resnet34", "resnet50") for s in SCHEMES] + [
    ("resnet101", "unet"), ("resnet101", "unetsharp")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("backbone,scheme", CASES, ids=[f"{b}-{s}" for b, s in CASES])
def test_scheme_over_backbone_forward_backward_every_parameter(backbone, scheme):
    torch.manual_seed(0)
    model = skipdsl.compile(scheme, backbone=backbone, widths=NARROW, in_channels=1,
                            num_classes=2, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    outs = out if isinstance(out, dict) else {"main": out}
    for k, y in outs.items():
        assert y.shape == (2, 2, 32, 32) and torch.isfinite(y).all(), k
    sum(y.square().mean() for y in outs.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]


@pytest.mark.parametrize("backbone", sorted(CHANNELS))
def test_grid_takes_channels_and_scales_from_the_stages(backbone):
    dag = skipdsl.graph(skipdsl.load("unet").with_backbone(backbone))
    assert [dag.nodes[f"x_{i}_0"]["width"] for i in range(5)] == CHANNELS[backbone]
    s0 = 1 if backbone.startswith("resnet") else 0  # ResNet's stem has stride 2
    assert [dag.nodes[f"x_{i}_0"]["scale"] for i in range(5)] == [2 ** (i + s0) for i in range(5)]
    # decoder inputs follow: x_3_1 = skip from x_3_0 + up(x_4_0)
    assert dag.nodes["x_3_1"]["in_channels"] == CHANNELS[backbone][3] + CHANNELS[backbone][4]
    assert skipdsl.load("unet").with_backbone(backbone).input_multiple == 2 ** (4 + s0)


def test_encoder_is_torchvisions_modules_one_call_per_stage():
    model = skipdsl.compile("unet", backbone="resnet50", widths=NARROW)
    assert isinstance(model.x_2_0[0], tvm.resnet.Bottleneck)
    assert isinstance(model.x_1_0[0], torch.nn.MaxPool2d)
    code = model.code
    for i in range(1, 5):
        assert f"x_{i}_0 = self.x_{i}_0(x_{i - 1}_0)" in code
    assert "max_pool2d" not in code  # the stages downsample themselves
    # level-0 logits are at 1/2 size (stride-2 stem): the head upsamples x2
    assert "head_x_0_4_up2 = torch.nn.functional.interpolate(head_x_0_4, scale_factor = 2.0" in code


def test_weights_load_from_a_local_file_only(tmp_path):
    torch.manual_seed(3)
    ref = tvm.resnet34(weights=None).eval()
    path = tmp_path / "resnet34.pth"
    torch.save(ref.state_dict(), path)
    model = skipdsl.compile("unet", backbone="resnet34", weights=str(path), widths=NARROW).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        feats = x
        for i in range(5):
            feats = getattr(model, f"x_{i}_0")(feats)
    assert torch.equal(feats, want)
    # one input channel: the RGB filters are summed (segmentation_models_pytorch's rule)
    gray = skipdsl.compile("unet", backbone="resnet34", weights=str(path), in_channels=1,
                           widths=NARROW)
    assert torch.allclose(gray.x_0_0[0].weight, ref.conv1.weight.sum(1, keepdim=True))


def test_bad_weights_files_get_clear_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(skipdsl.SpecError, match=r"(?s)nope.pth' does not exist.*hint: give the path"):
        skipdsl.compile("unet", backbone="resnet34", weights=str(missing), widths=NARROW)
    other = tmp_path / "r34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), other)
    with pytest.raises(skipdsl.SpecError, match=r"r34.pth' does not fit resnet50: .*missing"):
        skipdsl.compile("unet", backbone="resnet50", weights=str(other), widths=NARROW)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(skipdsl.SpecError, match="junk.pth' cannot be read"):
        skipdsl.compile("unet", backbone="resnet34", weights=str(junk), widths=NARROW)


def test_bad_backbone_specs_get_clear_errors(write_spec):
    with pytest.raises(skipdsl.SpecError, match="did you mean 'resnet101'"):
        skipdsl.compile("unet", backbone="resnet110")
    with pytest.raises(skipdsl.SpecError, match="2D torchvision network; use dims: 2"):
        skipdsl.compile("unet", backbone="resnet34", dims=3)
    text = skipdsl.load("unet").to_yaml().replace("encoder: {}", "encoder: {weights: w.pth}")
    with pytest.raises(skipdsl.SpecError, match="encoder.weights needs encoder.backbone") as e:
        skipdsl.load(write_spec(text))
    assert e.value.line is not None
    model = skipdsl.compile("unet", backbone="resnet34", widths=NARROW)
    with pytest.raises(skipdsl.SpecError, match="not divisible by 32"):
        model(torch.randn(1, 3, 48, 48))


def test_backbone_model_exports():
    model = skipdsl.compile("unetsharp", backbone="resnet34", widths=NARROW).eval()
    x = torch.randn(1, 3, 64, 64)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), model(x), atol=1e-4)


def test_cli_compile_with_backbone_prints_the_cost(capsys):
    assert cli_run(["compile", "unet", "--backbone", "resnet34", "--widths", "4", "--size",
                    "32"]) == 0
    text = capsys.readouterr().out
    assert "encoder resnet34" in text and "parameters" in text and "GFLOPs" in text
    n = sum(p.numel() for p in skipdsl.compile("unet", backbone="resnet34", widths=4).parameters())
    assert f"{n:,}" in text


def test_bench_plan_puts_the_backbone_under_every_model():
    from skipdsl.bench.runner import plan

    trials = plan(["unet", "unetsharp"], ["nuclei2d"], backbone="resnet34")
    names = sorted(t.config["model"]["name"] for t in trials)
    assert names == ["unet_resnet34", "unetsharp_resnet34"]
    assert all(t.config["model"]["encoder"]["backbone"] == "resnet34" for t in trials)
    plain = {t.key for t in plan(["unet"], ["nuclei2d"])}
    assert not plain & {t.key for t in trials}  # another network, another trial key


def test_trained_backbone_rebuilds_without_its_pretrained_file():
    # a checkpoint holds the trained weights: the spec's weights file need not exist later
    from skipdsl.checkpoint import build_network

    spec = skipdsl.load("unet").with_backbone("resnet34", "/gone/resnet34.pth").replace(widths=4)
    trained = skipdsl.compile("unet", backbone="resnet34", widths=4)
    net = build_network(spec, trained.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), trained.eval()(x), atol=1e-5)
    with pytest.raises(skipdsl.SpecError, match="does not exist"):
        build_network(spec)  # random init from the spec: the named file is needed
