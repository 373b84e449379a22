"""The package's import structure, read statically (benchmarks/structure.py): no import cycle
between skipdsl's modules, counting imports inside functions; no private name imported from
another module; the package never imports benchmarks/ or tests/."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import structure  # noqa: E402


def test_no_import_cycles():
    found = structure.cycles(ROOT / "skipdsl")
    assert not found, "import cycles in skipdsl/:\n" + "\n".join(
        structure.describe_cycle(c) for c in found)


def test_no_private_names_across_modules():
    found = structure.private_imports(ROOT / "skipdsl")
    assert not found, "private names imported across modules:\n" + "\n".join(
        f"{i.file}:{i.line}: {', '.join(i.names)} from {i.dst}" for i in found)


def test_package_never_imports_project_folders():
    bad = []
    for p in (ROOT / "skipdsl").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            mods = ([a.name for a in n.names] if isinstance(n, ast.Import)
                    else [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level
                    else [])
            bad += [f"{p.relative_to(ROOT)}:{n.lineno} {m}" for m in mods
                    if m.split(".")[0] in ("benchmarks", "tests")]
    assert not bad, bad


def test_the_check_finds_a_cycle_and_a_private_import(tmp_path):
    """The checker itself: a two-module cycle through a function-local relative import, and a
    private name, are found and named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import _hidden\n")
    (cycle,) = structure.cycles(pkg)
    text = structure.describe_cycle(cycle)
    assert "pkg.a" in text and "pkg.sub.b" in text and "sub/b.py:2" in text
    (priv,) = structure.private_imports(pkg)
    assert priv.names == ("_hidden",) and priv.local and priv.dst == "pkg.a"
