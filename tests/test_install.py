"""A non-editable install (a wheel, as `pip install .` builds it) gives every command: nothing the
package needs lives outside it (benchmarks/, tests/, the repository's zoo/ folder).

The wheel is built from a copy of the package's sources (no network: the running interpreter's
setuptools, no build isolation) and installed into a folder of its own, which is put first on
PYTHONPATH; the commands then run from an empty folder, so neither the repository nor its
editable install can be what they import.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "-q"],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    # the package with the zoo symlink resolved, as a source distribution carries it
    shutil.copytree(ROOT / "skipdsl", src / "skipdsl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _pip("wheel", "--no-build-isolation", "-w", str(base / "wheel"), str(src), cwd=base)
    (wheel,) = (base / "wheel").glob("skipdsl-*.whl")
    _pip("install", "--target", str(base / "site"), str(wheel), cwd=base)
    return base / "site"


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_installed_package_imports_from_its_own_folder_and_ships_the_zoo(installed, tmp_path):
    r = _run(installed, tmp_path, sys.executable, "-c",
             "import skipdsl, skipdsl.bench.speed, skipdsl.bench.cli; "
             "from skipdsl.spec import zoo_dir; print(skipdsl.__file__); "
             "print(len(list(zoo_dir().glob('*.yaml'))))")
    assert r.returncode == 0, r.stderr
    where, n = r.stdout.split()
    assert Path(where).is_relative_to(installed) and int(n) >= 5
    assert not (installed / "benchmarks").exists() and not (installed / "tests").exists()
    # the project's own benchmark scripts and the test oracle stay in the repository
    for name in ("gpu_suite", "trials_per_hour", "fastcheck", "reference_models"):
        assert not list(installed.rglob(f"{name}.py")), name
    r = _run(installed, tmp_path, str(installed / "bin" / "skipdsl"), "compile", "unetsharp")
    assert r.returncode == 0, r.stderr
    assert "10,748,481" in r.stdout


@pytest.mark.slow
def test_bench_speed_runs_from_the_installed_package(installed, tmp_path):
    r = _run(installed, tmp_path, str(installed / "bin" / "bench"), "speed", "--models", "unet",
             "--device", "cpu", "--size", "16", "--batch", "2", "--widths", "2,4,8,16,32",
             "--iters", "1", "--reps", "1", "--warmup", "0", "--threads", "1",
             "--skip-memory", "--out", "speed.md")
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "speed.md").read_text()
    assert "| unet |" in table, table
