"""``skipdsl export``: ONNX (onnxruntime), TorchScript and torch.export, full and pruned, from a
spec or a checkpoint; dynamic axes, the check against eager, and the errors."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import skipdsl
from skipdsl import checkpoint
from skipdsl.checkpoint import build_network
from skipdsl.cli import run
from skipdsl.errors import SpecError
from skipdsl.export import check, export_network, load_runner

TINY = "4,8,16,32,64"


def _export(capsys, *args):
    rc = run(["export", *map(str, args), "--json", "--iters", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported"])
def test_each_format_pruned_matches_eager_on_other_batches_and_sizes(tmp_path, capsys, fmt):
    path = tmp_path / f"u2.{fmt}"
    res = _export(capsys, "unetsharp", "--widths", TINY, "--format", fmt, "--prune", "2",
                  "-o", path, "--size", "32")
    assert res["format"] == fmt and res["level"] == 2 and res["max_diff"] < 1e-4
    # two batch sizes and two widths went through the one file: the axes are dynamic
    assert res["shapes"] == [[2, 3, 32, 32], [1, 3, 32, 48]]
    assert res["size_bytes"] == path.stat().st_size > 10_000
    assert res["eager_ms"] > 0 and res["exported_ms"] > 0
    run_file = load_runner(fmt, path)
    assert run_file(np.zeros((3, 3, 64, 16), np.float32)).shape == (3, 1, 64, 16)
    if fmt == "onnx":
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        meta = json.loads(props["skipdsl.json"])
    else:  # TorchScript and torch.export archives carry it as an extra file
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("skipdsl.json"))
            meta = json.loads(z.read(name))
    assert meta["prune"] == 2 and meta["head"] == "x_0_2" and "widths" in meta["spec"]


def test_checkpoint_export_bakes_in_the_normalisation(tmp_path, capsys):
    torch.manual_seed(0)
    model = skipdsl.compile("unet", widths=[4, 8, 16, 32, 64], in_channels=2)
    checkpoint.write(tmp_path / "trial", checkpoint.payload(
        model, mean=[3.0, -1.0], std=[2.0, 0.5], image_size=(32, 32), threshold=0.3,
        input_normalisation="z-score per image and channel"))
    res = _export(capsys, tmp_path / "trial", "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert res["max_diff"] < 1e-4 and res["latency_shape"] == [1, 2, 32, 32]
    x = np.random.default_rng(0).normal(3, 2, (1, 2, 32, 32)).astype(np.float32)
    ck = skipdsl.load_checkpoint(tmp_path / "trial")
    with torch.no_grad():
        want = ck.network()(torch.from_numpy(x)).numpy()
    assert np.abs(load_runner("onnx", tmp_path / "m.onnx")(x) - want).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    meta = json.loads(props["skipdsl.json"])
    assert meta["threshold"] == 0.3 and meta["normalisation"]["mean"] == [3.0, -1.0]
    assert "z-score per image" in meta["input"]
    # a checkpoint fixes its network: spec options are refused
    assert run(["export", str(tmp_path / "trial"), "--format", "onnx", "--widths", "8"]) == 2
    assert "--widths change a spec" in capsys.readouterr().err


class _Bessel(nn.Module):
    """A block with an operation ONNX has no form for (prims.bessel_j0)."""

    def __init__(self, cin, cout, dims, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return torch.special.bessel_j0(self.conv(x))


@pytest.fixture
def bessel_spec(tmp_path):
    from skipdsl.layers import BLOCKS

    BLOCKS.register("bessel_test")(_Bessel)
    text = skipdsl.load("unet").replace(widths=[4, 8, 16, 32, 64]).to_yaml().replace(
        "type: conv", "type: bessel_test")
    path = tmp_path / "bessel.yaml"
    path.write_text(text)
    yield path
    del BLOCKS._items["bessel_test"]


def test_an_unsupported_op_is_a_clear_error_and_writes_nothing(tmp_path, capsys, bessel_spec):
    out = tmp_path / "b.onnx"
    assert run(["export", str(bessel_spec), "--format", "onnx", "-o", str(out)]) == 2
    msg = capsys.readouterr().err
    assert "bessel.yaml: cannot export 'unet' to onnx: the operation prims.bessel_j0" in msg
    assert "hint: replace the block or edge" in msg and not out.exists()
    assert not list(tmp_path.glob(".b.onnx.*"))
    # torch.export has it: the same network exports there
    net = build_network(skipdsl.load(bessel_spec))
    export_network(net, "exported", tmp_path / "b.pt2", size=[32, 32])
    assert check(net, "exported", tmp_path / "b.pt2", size=[32, 32], iters=1).max_diff < 1e-5


def test_bad_format_and_tolerance(tmp_path, capsys):
    net = build_network(skipdsl.load("unet").replace(widths=[4, 8, 16, 32, 64]))
    with pytest.raises(SpecError, match="(?s)unknown export format 'onx'.*did you mean 'onnx'"):
        export_network(net, "onx", tmp_path / "x", size=[32, 32])
    rc = run(["export", "unet", "--widths", TINY, "--format", "torchscript", "-o",
              str(tmp_path / "u.pt"), "--size", "32", "--iters", "1", "--tolerance", "-1"])
    assert rc == 1 and "differ from eager" in capsys.readouterr().err
