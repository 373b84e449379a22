"""The package's structure, read statically (ast): files, lines, internal imports (at module
level and inside functions), import cycles, private names imported across modules, and the
largest functions.

    python benchmarks/structure.py            # skipdsl/ beside this folder

Every ``import`` / ``from ... import`` of the package by itself counts, wherever it sits
(module level, inside a function or a class, under ``if TYPE_CHECKING``), relative imports
resolved, and ``importlib.import_module("skipdsl....")`` with a literal name too. ``from pkg
import name`` is an edge to the submodule ``pkg.name`` when one exists, else to ``pkg``
itself (its ``__init__``). tests/test_structure.py asserts no cycle and no private import.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    """One internal import: ``src`` imports ``dst`` (a module of the package) at ``line``;
    ``names``: the names taken from it (``from dst import a, b``); ``local``: inside a
    function."""

    src: str
    dst: str
    names: tuple[str, ...]
    line: int
    local: bool
    file: str


def module_files(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every .py file under ``package``."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def internal_imports(package: Path) -> list[Import]:
    """Every import of the package by one of its own modules (see the module docstring)."""
    pkg = package.name
    files = module_files(package)
    ours = lambda name: name == pkg or name.startswith(pkg + ".")  # noqa: E731
    out: list[Import] = []
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        local_lines: set[int] = set()
        for f in ast.walk(tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for n in ast.walk(f):
                    if n is not f and hasattr(n, "lineno"):
                        local_lines.add(id(n))
        rel = str(path.relative_to(package.parent))
        for node in ast.walk(tree):
            local = id(node) in local_lines
            if isinstance(node, ast.Import):
                for a in node.names:
                    if ours(a.name):
                        out.append(Import(mod, a.name, (), node.lineno, local, rel))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node.level, node.module)
                if not ours(target):
                    continue
                names = [a.name for a in node.names]
                subs = [n for n in names if f"{target}.{n}" in files]
                rest = tuple(n for n in names if f"{target}.{n}" not in files)
                for s in subs:
                    out.append(Import(mod, f"{target}.{s}", (), node.lineno, local, rel))
                if rest or not subs:
                    out.append(Import(mod, target, rest, node.lineno, local, rel))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str) and ours(node.args[0].value)):
                out.append(Import(mod, node.args[0].value, (), node.lineno, local, rel))
    return out


def import_graph(package: Path) -> dict[str, dict[str, Import]]:
    """``{module: {imported module: first import}}`` over the package's own modules."""
    files = module_files(package)
    graph: dict[str, dict[str, Import]] = {m: {} for m in files}
    for imp in internal_imports(package):
        if imp.dst in files and imp.dst != imp.src:
            graph[imp.src].setdefault(imp.dst, imp)
    return graph


def cycles(package: Path) -> list[list[Import]]:
    """One cycle (a list of imports, each naming file and line) per strongly connected group
    of modules that import each other; ``[]`` when the import graph is acyclic."""
    import networkx as nx

    graph = import_graph(package)
    g = nx.DiGraph([(s, d) for s, ds in graph.items() for d in ds])
    out = []
    for comp in sorted(nx.strongly_connected_components(g), key=sorted):
        if len(comp) > 1:
            edges = nx.find_cycle(g.subgraph(comp))
            out.append([graph[s][d] for s, d in edges])
    return out


def private_imports(package: Path) -> list[Import]:
    """Imports of a leading-underscore name from another module of the package."""
    return [i for i in internal_imports(package)
            if any(n.startswith("_") and not n.startswith("__") for n in i.names)]


def describe_cycle(cycle: list[Import]) -> str:
    return " -> ".join(f"{i.src} ({i.file}:{i.line})" for i in cycle) + f" -> {cycle[0].src}"


def largest_functions(package: Path, k: int = 10) -> list[tuple[int, str]]:
    rows = []
    for p in package.rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((n.end_lineno - n.lineno + 1,
                             f"{p.relative_to(package.parent)}:{n.name}"))
    return sorted(rows, reverse=True)[:k]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    package = Path(argv[0]) if argv else ROOT / "skipdsl"
    files = module_files(package)
    lines = sum(len(p.read_text().splitlines()) for p in files.values())
    imps = internal_imports(package)
    print(f"files: {len(files)}  lines: {lines}")
    print(f"internal imports: {len(imps)}  inside functions: {sum(i.local for i in imps)}")
    cs = cycles(package)
    print(f"import cycles: {len(cs)}")
    for c in cs:
        print("  " + describe_cycle(c))
    pv = private_imports(package)
    print(f"private names imported across modules: {len(pv)}")
    for i in pv:
        print(f"  {i.file}:{i.line} imports {', '.join(i.names)} from {i.dst}")
    print("largest functions (lines):")
    for n, name in largest_functions(package):
        print(f"  {n:4d} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
