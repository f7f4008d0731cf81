"""The package's layers stay true: imports run downward only, and no module imports itself back.

Layers (DESIGN.md section 5), top to bottom:

    3  commands         verify, train, sample, study, __main__
    2  worlds           checks/ (the claims), training/ (objective, samplers, data, loop),
                        depth_study/ (the depth study's plan, runs and cells)
    1  machinery        analysis/ (the machinery of single claims), models/ (the backbones)
    0  vocabulary       sde, laws, stack, noise, solvers, stats, files, cli, the package itself

Every module of the package must belong to a layer; an import (at module level or inside a
function: both run) may only reach its own layer or a lower one, and the import graph has no
cycle.  The imports are read with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "rdm_dynamics"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: (module name or subpackage prefix, layer); a subpackage entry covers all its modules.
LAYERS = {
    "verify": 3, "train": 3, "sample": 3, "study": 3, "__main__": 3, "probe": 3,
    "checks": 2, "training": 2, "depth_study": 2,
    "analysis": 1, "models": 1,
    "": 0, "sde": 0, "laws": 0, "stack": 0, "noise": 0, "solvers": 0, "stats": 0, "files": 0,
    "cli": 0, "limits": 0, "locks": 0,
}
SUBPACKAGES = {"checks", "training", "depth_study", "analysis", "models"}


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that module ``name`` (file ``path``) imports, anywhere in its body.

    ``from X import y`` is an import of X.y when that is a module, else of X.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                if node.module:
                    base = base + node.module.split(".")
                source = ".".join(base)
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(PACKAGE + "."))
    found.discard(name)
    return found


def layer_of(name: str) -> int | None:
    """The layer of a dotted module name, or None when LAYERS does not place it."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return LAYERS[""]
    if parts[1] in SUBPACKAGES or (len(parts) == 2 and parts[1] in LAYERS):
        return LAYERS[parts[1]]
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer_of(b) is not None and layer_of(a) is not None
                  and layer_of(b) > layer_of(a))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [m0, m1, ..., m0], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer():
    unplaced = [name for name in module_names() if layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_run_downward_only():
    assert upward_imports(package_graph()) == []


def test_no_import_cycle():
    assert find_cycle(package_graph()) is None


def test_the_graph_sees_the_imports_it_must():
    """The reader is not blind: known edges of the package are in the graph."""
    graph = package_graph()
    assert "rdm_dynamics.stack" in graph["rdm_dynamics.checks.depth_limit"]
    assert "rdm_dynamics.checks" in graph["rdm_dynamics.checks.depth_limit"]  # from . import
    assert "rdm_dynamics.analysis.lipschitz" in graph["rdm_dynamics.analysis.fields"]
    assert "rdm_dynamics.sde" in graph["rdm_dynamics.laws"]
    assert any(m.startswith("rdm_dynamics.checks") for m in graph["rdm_dynamics.verify"])


@pytest.mark.parametrize("module, layer", [
    ("rdm_dynamics", 0), ("rdm_dynamics.sde", 0), ("rdm_dynamics.checks", 2),
    ("rdm_dynamics.checks.pf_ode", 2), ("rdm_dynamics.analysis.fields", 1),
    ("rdm_dynamics.models.dit", 1), ("rdm_dynamics.verify", 3), ("rdm_dynamics.nowhere", None),
    ("rdm_dynamics.sde.sub", None),
])
def test_layer_of(module, layer):
    assert layer_of(module) == layer


def test_negative_controls_an_upward_import_and_a_cycle_are_found(tmp_path):
    """The checks fail where they must: a vocabulary module importing a check, and a cycle."""
    pkg = tmp_path / PACKAGE
    (pkg / "checks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "checks" / "__init__.py").write_text("from ..sde import x\n")
    (pkg / "sde.py").write_text("def f():\n    from .checks import thing\n")
    (pkg / "laws.py").write_text("from . import stats\n")
    (pkg / "stats.py").write_text("import rdm_dynamics.laws\n")
    modules = module_names(pkg)
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert upward_imports(graph) == [("rdm_dynamics.sde", "rdm_dynamics.checks")]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 3
