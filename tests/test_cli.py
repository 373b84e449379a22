"""The skipdsl command end to end, run as a user would (a subprocess, from an empty folder)."""
import json
import os
import subprocess
import sys

import pytest

import skipdsl


def skipdsl_cli(*args, cwd):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "skipdsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_compile_zoo_from_empty_directory(tmp_path):
    r = skipdsl_cli("compile", "unetsharp.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10,748,481" in r.stdout and "x_0_4" in r.stdout
    assert "GFLOPs" in r.stdout and "activation memory" in r.stdout


def test_compile_json_code_and_prune(tmp_path):
    r = skipdsl_cli("compile", "unetsharp", "--prune", "2", "--json", "--code", "gen.py",
                    "--size", "32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["params"] == 556_002
    assert [n["node"] for n in data["nodes"]][-1] == "x_0_2"
    assert data["gflops"] > 0 and data["activation_mb"] > 0
    code = (tmp_path / "gen.py").read_text()
    assert "def forward(self, x)" in code and "x_0_3" not in code


def test_compile_3d_overrides(tmp_path):
    r = skipdsl_cli("compile", "unet", "--dims", "3", "--widths", "4", "--size", "16", "--json",
                    cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["size"] == [16, 16, 16]
    assert data["params"] == sum(p.numel() for p in skipdsl.compile("unet", dims=3, widths=4).parameters())


@pytest.mark.parametrize("text,expect", [
    ("name: x\ngrid: {depth: 5, widths: [1, 2]}\nheads: [{node: x_0_4}]\n", "grid.widths has 2"),
    ("name: x\ngrid: {depth: 5\n", "YAML syntax error"),
    ("name: x\ngrid: {depth: 4, widths: [4,8,16,32]}\nnodez: triangle\nheads: [{node: x_0_3}]\n",
     "did you mean 'nodes'"),
])
def test_malformed_spec_exits_nonzero_without_traceback(tmp_path, text, expect):
    (tmp_path / "bad.yaml").write_text(text)
    for cmd in ("compile", "validate"):
        r = skipdsl_cli(cmd, "bad.yaml", cwd=tmp_path)
        assert r.returncode == 2
        assert expect in r.stderr and "bad.yaml" in r.stderr
        assert "Traceback" not in r.stderr + r.stdout


def test_unknown_zoo_name(tmp_path):
    r = skipdsl_cli("compile", "unetpluplus", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean" in r.stderr and "Traceback" not in r.stderr


def test_validate_ok_and_list(tmp_path):
    r = skipdsl_cli("validate", "unet", "unet3p", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("ok") == 2
    r = skipdsl_cli("list", cwd=tmp_path)
    assert r.returncode == 0
    for name in skipdsl.spec.zoo_names():
        assert name in r.stdout
    assert "26,971,777" in r.stdout


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_draw(tmp_path, ext):
    r = skipdsl_cli("draw", "unetsharp", "-o", f"g.{ext}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / f"g.{ext}").read_bytes()
    assert len(data) > 10_000
    assert data[:4] == b"\x89PNG" if ext == "png" else b"<svg" in data[:2000]
