"""The hand-written baselines (benchmarks/reference_models.py, the compiler's test oracle):
sizes, shapes, and that they compute exactly what the compiled zoo models compute once the
weights are copied across."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.reference_models import PARAM_COUNTS, REFERENCE_MODELS

ROOT = Path(__file__).resolve().parents[1]

NAMES = sorted(REFERENCE_MODELS)
SMALL = [4, 8, 16, 32, 64]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_reference(name):
    assert n_params(REFERENCE_MODELS[name](in_channels=3, num_classes=1)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", NAMES)
def test_forward_2d_shape(name):
    torch.manual_seed(0)
    model = REFERENCE_MODELS[name](in_channels=3, num_classes=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, 1, 48, 48)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_3d_small(name):
    torch.manual_seed(0)
    model = REFERENCE_MODELS[name](in_channels=2, num_classes=3, widths=SMALL, dims=3)
    out = model(torch.randn(2, 2, 16, 16, 16))
    assert out.shape == (2, 3, 16, 16, 16)
    out.mean().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_matches_compiled_model(name, dims, size):
    skipdsl = pytest.importorskip("skipdsl")
    torch.manual_seed(0)
    compiled = skipdsl.compile(name, dims=dims, widths=SMALL, deep_supervision=False)
    ref = REFERENCE_MODELS[name](widths=SMALL, dims=dims)
    assert set(ref.state_dict()) == set(compiled.state_dict())
    ref.load_state_dict(compiled.state_dict())
    # 2D checks batch statistics (train) and running statistics (eval); 3D eval only, to stay fast
    modes = ("train", "eval") if dims == 2 else ("eval",)
    x = torch.randn(2 if dims == 2 else 1, 3, *(size,) * dims)
    for mode in modes:
        compiled.train(mode == "train")
        ref.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(ref(x), compiled(x), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        REFERENCE_MODELS["unet"](dims=1)
    with pytest.raises(ValueError, match="widths needs 5 values"):
        REFERENCE_MODELS["unetsharp"](widths=[8, 16, 32])


def test_speed_harness_smoke(tmp_path, monkeypatch):
    """benchmarks/speed.py (the script over skipdsl.bench.speed) end to end on a tiny UNet:
    table written, same function, ratios."""
    pytest.importorskip("rich")
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a folder of scripts
    from benchmarks import speed

    out = tmp_path / "speed.md"
    argv = ["--models", "unet", "--device", "cpu", "--size", "16", "--batch", "2",
            "--widths", "4,8,16,32,64", "--iters", "1", "--reps", "2", "--warmup", "1",
            "--out", str(out)]
    assert speed.main(argv) == 0
    text = out.read_text()
    assert "python benchmarks/speed.py --models unet" in text
    assert "torch: " + torch.__version__ in text
    row = next(line for line in text.splitlines() if line.startswith("| unet |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) < 1e-5  # max rel diff: both compute the same function
    assert all(c != "-" for c in cells), row
