"""Every zoo model x {2D, 3D} x an odd-but-valid size: shapes, gradients, NaN, exact counts."""
import pytest
import torch

import skipdsl
from skipdsl.graph import INPUT

# ../shared/REFERENCE.md section 1: in_channels=3, num_classes=1, main head only
REFERENCE_PARAMS = {
    "unet": 7_852_545,
    "wunet": 9_392_916,
    "unetpp": 9_163_329,
    "unet3p": 26_971_777,
    "unetsharp": 10_748_481,
}
ZOO = sorted(REFERENCE_PARAMS)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_zoo_is_complete():
    assert skipdsl.spec.zoo_names() == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_exact_reference_parameter_count(name):
    assert n_params(skipdsl.compile(name)) == REFERENCE_PARAMS[name]


def test_unet3p_deep_supervision_with_cgm_count():
    assert n_params(skipdsl.compile("unet3p", deep_supervision=True, cgm=True)) == 26_991_687


# (dims, spatial size): 48 = 3 * 16 is odd in the sense of not being a power of two
CASES = [(2, (48, 80)), (3, (16, 16, 48))]


@pytest.mark.parametrize("dims,size", CASES, ids=["2d", "3d"])
@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("ds", [False, True], ids=["main", "ds"])
def test_forward_backward_every_parameter(name, dims, size, ds, tiny_widths):
    torch.manual_seed(0)
    model = skipdsl.compile(name, dims=dims, widths=tiny_widths, in_channels=2, num_classes=3,
                            deep_supervision=ds)
    x = torch.randn(2, 2, *size)
    out = model(x)
    outs = out if isinstance(out, dict) else {"main": out}
    if ds:
        assert list(outs) == model.head_ids and len(outs) == len(model.spec.heads)
    for k, y in outs.items():
        assert y.shape == (2, 3, *size), k
        assert torch.isfinite(y).all(), k
    sum(y.float().square().mean() for y in outs.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", ZOO)
def test_3d_uses_3d_operations(name, tiny_widths):
    model = skipdsl.compile(name, dims=3, widths=tiny_widths)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Conv3d" in kinds and "BatchNorm3d" in kinds
    assert not kinds & {"Conv2d", "BatchNorm2d"}
    if name not in ("unet3p",):
        assert "trilinear" in model.code


def test_node_ids_are_module_names():
    model = skipdsl.compile("unetpp")
    dag = model.dag
    top = {n for n, _ in model.named_children()}
    assert {n for n in dag if n != INPUT} <= top
    assert "x_0_0.0.conv.weight" in model.state_dict()


def test_generated_code_is_readable():
    code = skipdsl.compile("unetsharp").code
    assert "x_0_4 = self.x_0_4(x_0_4_in)" in code
    assert "x_4_0_up8 = torch.nn.functional.interpolate(x_4_0, scale_factor = 8.0" in code


def test_shared_resampling_is_computed_once():
    # an explicit edge whose resampled tensor is the same as another edge's: emitted once
    spec = skipdsl.load("unetpp").to_dict()
    spec["edges"].append({"rule": "fullscale_up"})
    spec["edges"].append({"from": "x_2_0", "to": "x_0_3"})  # x_2_0 up x4 also feeds x_0_2
    model = skipdsl.compile(skipdsl.spec.from_dict(spec))
    assert model.code.count("interpolate(x_2_0, scale_factor = 4.0") == 1
    assert "x_0_3_in = torch.cat([x_0_0, x_0_1, x_0_2, x_1_2_up2, x_2_0_up4" in model.code


def test_torch_compile_and_export_roundtrip(tiny_widths):
    model = skipdsl.compile("unetsharp", widths=tiny_widths).eval()
    x = torch.randn(1, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


def test_overrides_none_keeps_spec_values():
    a = skipdsl.compile("unet")
    b = skipdsl.compile("unet", in_channels=None, num_classes=None, dims=None, widths=None)
    assert n_params(a) == n_params(b)
    assert n_params(skipdsl.compile("unet", widths=16)) < n_params(a)


def test_forward_rejects_bad_sizes_with_clear_error():
    model = skipdsl.compile("unet", widths=[4, 8, 16, 32, 64])
    with pytest.raises(skipdsl.SpecError, match=r"(?s)not divisible by 16.*hint: pad or resize"):
        model(torch.randn(1, 3, 50, 48))
    with pytest.raises(skipdsl.SpecError, match="expects 3 input channels"):
        model(torch.randn(1, 1, 48, 48))


@pytest.mark.parametrize("name", ["unetsharp", "unet3p"])
def test_checkpointing_same_result_less_memory(name):
    from skipdsl.info import saved_activation_bytes

    x = torch.randn(2, 3, 32, 32)
    results = {}
    for ck in (False, True):
        torch.manual_seed(0)
        model = skipdsl.compile(name, widths=[8, 16, 32, 64, 128], checkpoint=ck)
        saved = saved_activation_bytes(model, x)
        out = model(x)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[ck] = (saved, out.detach(), grads)
    assert results[True][0] < 0.6 * results[False][0]
    assert torch.allclose(results[True][1], results[False][1], atol=1e-6)
    assert results[True][2].keys() == results[False][2].keys()  # nothing lost from the module
    flat = {ck: torch.cat([g.flatten() for _, g in sorted(r[2].items())]) for ck, r in results.items()}
    assert (flat[True] - flat[False]).norm() <= 1e-4 * flat[False].norm()
