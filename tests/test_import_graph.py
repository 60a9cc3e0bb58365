"""The import graph of ``emu`` and ``qtest``, read from the modules' own source: no cycles, no upward imports.

Every ``import``/``from ... import`` counts wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency. ``from pkg import name`` is an edge to the
submodule ``pkg.name`` when there is one, else to ``pkg`` itself; the implicit import of parent
packages is not an edge. The layers are read from the table in ``docs/layers.md`` (DESIGN.md's
layers, module by module), highest first; a module may import its own layer and the ones below.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emu", "qtest")


def _layers() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(layer, module prefixes) from docs/layers.md, highest first."""
    text = (ROOT / "docs" / "layers.md").read_text()
    table = text.split("<!-- layers: highest first -->", 1)[1].split("<!-- end of layers -->", 1)[0]
    rows = [line.strip("|").split("|") for line in table.strip().splitlines()[2:]]
    return tuple((name.strip(), tuple(re.findall(r"`([\w.]+)`", prefixes))) for name, prefixes in rows)


LAYERS = _layers()


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each import in the module that names one of ours."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                package = name.split(".") if is_pkg else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``import a.b.c`` of a name in a.b, etc.
                target = target.rpartition(".")[0]
            if target and target != name:
                yield node.lineno, target


GRAPH: dict[str, dict[str, int]] = {}
for _name, _path in MODULES.items():
    GRAPH[_name] = {}
    for _line, _target in _imports(_name, _path):
        GRAPH[_name].setdefault(_target, _line)


def layer_of(module: str) -> int:
    """Index in LAYERS (0 is the highest) of the longest prefix that matches."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise LookupError(f"{module} is in no layer: add it to the table in docs/layers.md")
    return best


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components with more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph[succ])))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_the_layers_are_read() -> None:
    assert LAYERS[0] == ("harness, outside the emulator process", ("qtest",))
    assert len(LAYERS) == 8 and all(prefixes for _, prefixes in LAYERS)
    assert layer_of("emu.migration.vmstate") > layer_of("emu.devices.rtc") > layer_of("emu.migration.manager")


def test_the_graph_is_read() -> None:
    """The reader finds the edges everyone knows are there (a reader that finds none passes all else)."""
    assert GRAPH["emu.cli"].keys() >= {"emu.config", "emu.assembly"}
    assert "emu.migration.vmstate" in GRAPH["emu.devices.rtc"]
    assert "qtest.client" in GRAPH["qtest.machine"]


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = strongly_connected(GRAPH)
    detail = [" <-> ".join(c) + "\n    " + "\n    ".join(
        f"{a} imports {b} (line {GRAPH[a][b]})" for a in c for b in GRAPH[a] if b in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_downward(module: str) -> None:
    here = layer_of(module)
    upward = [f"{module} (layer '{LAYERS[here][0]}') imports {target} (layer '{LAYERS[layer_of(target)][0]}') "
              f"at line {line}" for target, line in GRAPH[module].items() if layer_of(target) < here]
    assert not upward, "\n".join(upward)
