"""The README a newcomer reads: the two commands CI runs stay at its top, its layout section
matches the tree, and its links (and the docs' links) lead to files that exist."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _layout() -> str:
    section = README.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_two_commands_come_first():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith(".venv/bin/bench run --datasets all")
    assert "python -m pytest -q" in blocks[1] and "unshare -n" in blocks[1]
    assert README.index(blocks[1]) < README.index("## A short tour")


def test_layout_names_every_module_and_nothing_that_is_gone():
    layout = _layout()
    pkg = ROOT / "skipdsl"
    missing = []
    for p in sorted(pkg.rglob("*.py")):
        if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.name)}", layout):
            missing.append(str(p.relative_to(ROOT)))
    for d in sorted(x for x in pkg.iterdir() if x.is_dir() and x.name != "__pycache__"):
        if f"{d.name}/" not in layout:
            missing.append(f"skipdsl/{d.name}/")
    assert not missing, f"README layout does not name: {missing}"
    for name in set(re.findall(r"\b(\w+\.py)\b", layout)):
        assert list(pkg.rglob(name)) or list((ROOT / "benchmarks").glob(name)), \
            f"README layout names {name}, which is not in the tree"
    for top in re.findall(r"^(\S+)/\s", layout, re.M):
        assert (ROOT / top).is_dir(), f"README layout names {top}/, which is not a folder"


def test_links_lead_to_files():
    bad = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://")) and \
                    not (doc.parent / target).exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not bad, bad
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in README, f"the README does not link docs/{doc.name}"
