"""The package's shape: no two modules import each other, directly or round a longer circle,
counting the imports inside functions too (a circle there still ties the modules together)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """Module -> the ropestretch modules it imports anywhere in its file (``from a.b import c``
    counts as a.b.c where that is a module, else as a.b)."""
    files = {}
    for f in (SRC / "ropestretch").rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ropestretch"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("ropestretch")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    graph = import_graph()
    assert "ropestretch.hub" in graph["ropestretch.checkpoints"]  # the graph sees imports inside functions
    assert circles(graph) == []


def test_the_base_modules_import_nothing_above_them():
    """Errors, JSON lines, paths, locks and budgets are the floor every other module stands on: they
    import only each other (a budget that read a model config would tie the floor to the rope package)."""
    base = {"ropestretch.errors", "ropestretch.jsonl", "ropestretch.paths", "ropestretch.locks", "ropestretch.budgets",
            "ropestretch.options"}
    graph = import_graph()
    assert base <= set(graph)
    assert {m: graph[m] - base for m in base if graph[m] - base} == {}


def private_uses(path: Path) -> list[str]:
    """Where a file reaches into another ropestretch module's private names: ``from ropestretch.x
    import _y``, or ``x._y`` on a ropestretch module it imported (reading or patching)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ropestretch"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {a.name}")
                modules.add(a.asname or a.name)  # a submodule, or a name: attributes of either count
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("ropestretch")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names(tmp_path):
    """The package, its benchmarks and the engines' check use each other's public names only (tests
    may test a private helper); the check finds both spellings."""
    root = SRC.parent
    files = [p for folder in ("src", "benchmarks", "engines", "examples") for p in sorted((root / folder).rglob("*.py"))]
    found = [use for p in files for use in private_uses(p)]
    assert not found, found
    probe = tmp_path / "probe.py"
    probe.write_text("from ropestretch.report import _table\nfrom ropestretch.data import tasks\ntasks._digits = 1\n")
    assert len(private_uses(probe)) == 2
