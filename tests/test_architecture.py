"""The layer rule of docs/architecture.md, checked on the source: no module imports a module of a
higher layer, and no two modules import each other, directly or through others (function-level
imports included: a cycle hidden inside a function is still a cycle)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gridcam"

#: The layers, lowest first. A module may import its own layer and the layers below it; within a
#: layer the packages may use each other only where the list says (``ALLOWED_SIDEWAYS``).
LAYERS: list[set[str]] = [
    {"errors"},                                          # GridcamError: one line, no traceback
    {"gridcam", "problems", "recipes"},                  # the package root, problem reports, recipes
    {"models", "metrics", "data"},                       # architectures; metrics; file formats
    {"cam"},                                             # explanations of a model
    {"grid"},                                            # gridding, the consistency loss
    {"runtime"},                                         # what jobs share: files, ranks, seeds, signals
    {"training", "evaluation", "report"},                # the jobs, and the pages that read their runs
    {"study"},                                           # trains and evaluates: above both
    {"selfcheck"},                                       # a few-second check of the install
    {"cli", "engine"},                                   # the command line; old-path aliases
    {"__main__"},                                        # python -m gridcam
]
#: (importer, imported) package pairs that share a layer and may import each other that way.
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str) -> bool:
    rel = name.split(".")
    return (SRC.joinpath(*rel).with_suffix(".py").is_file()
            or SRC.joinpath(*rel, "__init__.py").is_file())


def import_graph() -> dict[str, set[str]]:
    """module -> the gridcam modules it imports (explicitly; a ``from pkg import name`` counts as
    importing ``pkg.name`` when that is a module, else ``pkg``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        edges = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "gridcam")
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(me, path.name == "__init__.py", node)
                if mod.split(".")[0] != "gridcam":
                    continue
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    edges.add(sub if _known(sub) else mod)
        edges.discard(me)
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gridcam"


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package gridcam.{package} is in no layer of LAYERS: add it (and to "
                         "docs/architecture.md)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        pa = package_of(a)
        for b in targets:
            pb = package_of(b)
            if pa == pb:
                continue
            la, lb = layer_of(pa), layer_of(pb)
            if lb > la or (lb == la and (pa, pb) not in ALLOWED_SIDEWAYS):
                bad.append(f"{a} imports {b} (layer {la} -> {lb})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    for module in import_graph():
        layer_of(package_of(module))


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_can_fail():
    """The checks catch what they are for: a planted upward import and a planted cycle."""
    graph = import_graph()
    planted = {k: set(v) for k, v in graph.items()}
    planted["gridcam.models.registry"].add("gridcam.training.loop")
    assert upward_imports(planted) == ["gridcam.models.registry imports gridcam.training.loop (layer 2 -> 6)"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["gridcam.runtime.rng"].add("gridcam.runtime.checkpoint")
    planted["gridcam.runtime.checkpoint"].add("gridcam.runtime.rng")
    assert ["gridcam.runtime.checkpoint", "gridcam.runtime.rng"] in cycles(planted)


#: Leaf modules: they import only the standard library and these gridcam modules, so a command can
#: read them without loading torch (``gridcam methods`` / ``gridcam models``: docs/cli.md).
LEAVES: dict[str, set[str]] = {
    "gridcam.cam.catalog": {"gridcam.errors"},
    "gridcam.models.catalog": {"gridcam.errors"},
}


def outside_imports(module: str) -> set[str]:
    """Top-level names of the non-gridcam modules ``module`` imports (anywhere in its source)."""
    path = SRC.joinpath(*module.split(".")).with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - {"gridcam"}


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_catalogs_are_leaves(module):
    assert import_graph()[module] <= LEAVES[module]
    assert outside_imports(module) <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("package", ["training", "evaluation", "study", "runtime"])
def test_job_packages_say_what_they_use(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and ("Uses" in doc or "use every layer" in doc)
