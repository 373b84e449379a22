"""The zoo equals the hand-written reference architectures layer for layer: same state-dict
keys and shapes, and, with the same weights, the same outputs (2D and 3D)."""
import pytest
import torch

import skipdsl
from benchmarks.reference_models import REFERENCE_MODELS

ZOO = ["unet", "wunet", "unetpp", "unet3p", "unetsharp"]


@pytest.mark.parametrize("name", ZOO)
def test_same_layers_full_width(name):
    ours = skipdsl.compile(name).state_dict()
    ref = REFERENCE_MODELS[name]().state_dict()
    assert list(ours) == list(ref) or set(ours) == set(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 32))], ids=["2d", "3d"])
@pytest.mark.parametrize("name", ZOO)
def test_same_function(name, dims, size):
    torch.manual_seed(0)
    widths = [4, 8, 16, 32, 64] if name != "wunet" else [5, 10, 20, 40, 80]
    ours = skipdsl.compile(name, dims=dims, widths=widths, in_channels=2, num_classes=2)
    ref = REFERENCE_MODELS[name](in_channels=2, num_classes=2, widths=widths, dims=dims)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 2, *size)
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=1e-4), mode
