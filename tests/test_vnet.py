"""V-Net in the DSL: zoo/vnet.yaml is MONAI's VNet (parameters, key mapping, outputs), the
V-Net family trains, the new blocks export, and bad V-Net specs get clear errors."""
import pytest
import torch

import skipdsl
from skipdsl.spec import from_dict
from skipdsl.vnet import monai_vnet_key, monai_vnet_state_dict

monai_nets = pytest.importorskip("monai.networks.nets")

# parameters at the specs' own settings (in_channels=1, num_classes=1, main head only)
VNET_PARAMS = {
    "vnet": 45_593_892,      # == monai.networks.nets.VNet()
    "wvnet": 57_703_144,     # widths x 18/16: (18/16)^2 = 1.266 x V-Net
    "vnetpp": 55_649_716,
    "vnet3p": 29_674_308,
    "vnetsharp": 68_810_164,
}
TINY = [4, 8, 16, 32, 64]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _randomise_bn(model):
    """Non-trivial running statistics and affine parameters, so eval mode tests them."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


def _vnet_spec(**changes):
    """zoo/vnet.yaml with top-level changes; ``act`` replaces every activation."""
    data = skipdsl.load("vnet").to_dict()
    act = changes.pop("act", None)
    if act:
        data["defaults"]["block"]["act"] = act
        data["defaults"]["resample"]["act"] = act
        for e in data["edges"]:
            if "resample" in e:
                e["resample"]["act"] = act
    data.update(changes)
    return from_dict(data)


def test_vnet_equals_monai_vnet_3d_defaults():
    torch.manual_seed(0)
    ref = monai_nets.VNet()  # spatial_dims=3, in_channels=1, out_channels=1, ELU
    ours = skipdsl.compile("vnet")
    assert n_params(ours) == n_params(ref) == VNET_PARAMS["vnet"]
    _randomise_bn(ref)
    mapped = monai_vnet_state_dict(ref.state_dict())
    assert set(mapped) == set(ours.state_dict())  # every tensor has exactly one place
    assert all(ours.state_dict()[k].shape == v.shape for k, v in mapped.items())
    ours.load_state_dict(mapped, strict=True)
    ref.eval(), ours.eval()  # MONAI's dropout defaults (0.5) are training-only
    x = torch.randn(2, 1, 16, 16, 16)  # the smallest size VNet takes (4 halvings)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert want.shape == got.shape == (2, 1, 16, 16, 16)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_vnet_equals_monai_vnet_2d_prelu_multichannel():
    # MONAI's act='prelu' is one slope per channel: the DSL's prelu_channel
    torch.manual_seed(0)
    ref = monai_nets.VNet(spatial_dims=2, in_channels=2, out_channels=3, act="prelu")
    ours = skipdsl.compile(_vnet_spec(act="prelu_channel"), dims=2, in_channels=2, num_classes=3)
    assert n_params(ours) == n_params(ref)
    _randomise_bn(ref)
    with torch.no_grad():  # PReLU slopes differ from their 0.25 init, per channel
        for m in ref.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    ours.load_state_dict(monai_vnet_state_dict(ref.state_dict()), strict=True)
    ref.eval(), ours.eval()
    x = torch.randn(2, 2, 32, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=1e-4)


def test_vnet_has_monais_dropout_layers():
    ref = monai_nets.VNet(spatial_dims=3)
    ours = skipdsl.compile("vnet", widths=TINY)
    drops = lambda m: sorted(d.p for d in m.modules() if isinstance(d, torch.nn.Dropout3d))  # noqa: E731
    assert drops(ours) == drops(ref) == [0.5] * 8
    code = ours.code
    assert "self.edges.x_4_0__x_3_1.dropout(x_4_0)" in code  # before the up-convolution
    assert "self.edges.x_1_3__x_0_4.dropout" not in code     # MONAI: none on up_tr32's input


def test_key_mapping_rejects_foreign_keys():
    assert monai_vnet_key("down_tr128.ops.2.conv_block.adn.N.weight") == "x_3_0.units.2.norm.weight"
    assert monai_vnet_key("up_tr32.up_conv.bias") == "edges.x_1_3__x_0_4.resample.conv.bias"
    assert monai_vnet_key("out_tr.conv2.weight") == "heads.x_0_4.out.weight"
    with pytest.raises(KeyError, match="not a MONAI VNet key"):
        monai_vnet_key("encoder.layer1.weight")


@pytest.mark.parametrize("name", sorted(VNET_PARAMS))
def test_vnet_family_parameter_counts(name):
    assert n_params(skipdsl.compile(name)) == VNET_PARAMS[name]


def test_vnet_family_is_listed_apart_from_the_2d_zoo():
    assert skipdsl.spec.zoo_names(dims=3) == sorted(VNET_PARAMS)
    assert not set(VNET_PARAMS) & set(skipdsl.spec.zoo_names())
    assert skipdsl.spec.zoo_names(dims=None) == sorted(skipdsl.spec.zoo_names() + list(VNET_PARAMS))


@pytest.mark.parametrize("name", sorted(VNET_PARAMS))
def test_vnet_family_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    model = skipdsl.compile(name, widths=[2, 4, 8, 16, 32], num_classes=2, deep_supervision=True)
    x = torch.randn(2, 1, 16, 16, 16)
    out = model(x)
    outs = out if isinstance(out, dict) else {"main": out}
    for k, y in outs.items():
        assert y.shape == (2, 2, 16, 16, 16) and torch.isfinite(y).all(), k
    sum(y.square().mean() for y in outs.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing[:5]


@pytest.mark.parametrize("name", ["vnet", "vnetsharp"])
def test_vnet_blocks_export(name):
    model = skipdsl.compile(name, dims=2, widths=TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


def test_wvnet_is_vnet_widened_by_18_16():
    assert skipdsl.load("wvnet").widths == [w * 18 // 16 for w in skipdsl.load("vnet").widths]
    ratio = VNET_PARAMS["wvnet"] / VNET_PARAMS["vnet"]
    assert abs(ratio - (18 / 16) ** 2) < 0.01


def test_bad_vnet_specs_get_clear_errors():
    # the input stage tiles the input channels: 16 is not a multiple of 3
    with pytest.raises(skipdsl.SpecError, match=r"(?s)node x_0_0.*vnet_input.*multiple of 3"):
        skipdsl.compile("vnet", in_channels=3)
    data = skipdsl.load("vnet").to_dict()
    data["edges"][1]["resample"]["up"] = "transpose"
    with pytest.raises(skipdsl.SpecError, match="did you mean 'transposed'"):
        from_dict(data)
    data = skipdsl.load("vnet").to_dict()
    data["edges"][1]["resample"]["up"] = "bilinear"  # channels/norm/act need weights
    with pytest.raises(skipdsl.SpecError, match=r"'bilinear' has no weights"):
        skipdsl.compile(from_dict(data))
    data = skipdsl.load("vnet").to_dict()
    data["heads"][0]["type"] = "vnet_out"
    with pytest.raises(skipdsl.SpecError, match="did you mean 'vnet_output'"):
        skipdsl.compile(from_dict(data))


def test_new_options_leave_existing_hashes_alone():
    # trial keys and search caches are keyed by these: the new spec options are unset in the
    # 2D zoo, so its hashes are the ones stored before V-Net and backbones existed
    assert {n: skipdsl.spec_hash(n) for n in skipdsl.spec.zoo_names()} == {
        "unet": "184214e5719a6245", "unet3p": "f959b69e1b6d7856", "unetpp": "7d99d7edcf29a2b2",
        "unetsharp": "b3c7d0411f5e122c", "wunet": "b8c0c08c1f3e05a2"}
    assert skipdsl.load("unetsharp").hash() == "af79f42c87a64741"
