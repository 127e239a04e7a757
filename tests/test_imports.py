"""The import structure of motfm, read from the source with ``ast`` (nothing is imported): no import cycle,
and each layer imports only the layers below it (docs/architecture.md, "Layers").

Every ``import`` of a ``motfm`` module counts, those inside functions included (they run sooner or later),
relative ones resolved. Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so a module that
imports a package whose ``__init__`` imports it back is a cycle too (the importer's own packages excepted:
they are initialised before it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The motfm packages a layer may import (itself included); names are prefixes at a dot boundary.
ALLOWED = {
    "motfm.data_spec": (),
    "motfm.io": ("motfm.io", "motfm.data_spec"),
    "motfm.checkpoint": ("motfm.data_spec",),
    "motfm.flow": ("motfm.flow",),
    "motfm.diffusion": ("motfm.diffusion",),
    # the fixed transforms the flow may run on (pure tensor arithmetic): below the networks
    "motfm.representation": ("motfm.representation", "motfm.data_spec"),
    "motfm.nn": ("motfm.nn", "motfm.checkpoint", "motfm.data_spec", "motfm.representation"),
    "motfm.objectives": ("motfm.objectives", "motfm.flow", "motfm.diffusion", "motfm.nn"),
}
# The mathematics is plain PyTorch, importable without Lightning or Hydra (io reads YAML with omegaconf).
CORE = tuple(layer for layer in ALLOWED if layer != "motfm.io")
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")


def _within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _packages_of(name: str) -> list[str]:
    """The packages that contain module ``name``, outermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path], package: str) -> tuple[set[str], set[str]]:
    """What module ``name`` (file ``path``) imports: ``package`` modules by name (``from p import m`` is the
    module ``p.m`` when it exists, else ``p``) and the top-level names of other distributions."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            (inside if _within(target, [package]) else outside).add(target)
    return inside, {t.split(".")[0] for t in outside}


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(direct, executed)`` edges of ``package``: the modules each module names in its imports, and those
    whose code those imports run (the named modules plus their packages' ``__init__`` outside the importer's
    own packages)."""
    known = modules(root, package)
    direct = {name: imported(name, path, known, package)[0] - {name} for name, path in known.items()}
    executed = {}
    for name, targets in direct.items():
        runs = set(targets)
        for target in targets:
            runs.update(p for p in _packages_of(target) if p in known and p not in _packages_of(name))
        executed[name] = runs - {name}
    return direct, executed


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or not."""

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {name: reachable(name) for name in graph}
    groups, done = [], set()
    for name in sorted(graph):
        if name not in done:
            group = {name} | {other for other in reach[name] if name in reach.get(other, ())}
            done |= group
            if len(group) > 1:
                groups.append(sorted(group))
    return groups


def test_motfm_has_no_import_cycle():
    _, executed = import_graph(SRC, "motfm")
    assert "motfm.study.run" in executed and len(executed) > 100  # the source was found
    assert cycles(executed) == []


def test_layers_import_only_downwards():
    direct, _ = import_graph(SRC, "motfm")
    wrong = [
        f"{name} imports {target}"
        for name, targets in direct.items()
        for layer, allowed in ALLOWED.items()
        if _within(name, [layer])
        for target in sorted(targets)
        if not _within(target, allowed)
    ]
    assert wrong == []


def test_core_needs_no_framework():
    known = modules(SRC, "motfm")
    wrong = [
        f"{name} imports {top}"
        for name, path in known.items()
        if _within(name, CORE)
        for top in sorted(imported(name, path, known, "motfm")[1])
        if top in FRAMEWORKS
    ]
    assert wrong == []


def test_cycles_found_through_functions_relative_imports_and_packages(tmp_path: Path):
    files = {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "def f():\n    from pkg.b import g\n",  # a -> b inside a function
        "pkg/b.py": "from . import a\n",  # b -> a, relative
        "pkg/c.py": "from pkg.sub.d import x\n",  # runs pkg/sub/__init__.py ...
        "pkg/sub/__init__.py": "import pkg.c\n",  # ... which imports c back
        "pkg/sub/d.py": "from pkg.sub import e\nx = 1\n",  # its own package: no cycle
        "pkg/sub/e.py": "import os\n",
        "pkg/ok.py": "import pkg.a\nfrom .sub import e\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    direct, executed = import_graph(tmp_path, "pkg")
    assert direct["pkg.ok"] == {"pkg.a", "pkg.sub.e"}
    assert executed["pkg.ok"] == {"pkg.a", "pkg.sub", "pkg.sub.e"}
    assert cycles(executed) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub"]]
