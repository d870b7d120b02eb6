"""The package is laid out in layers (docs/architecture.md): every module imports only modules of
its own subpackage or of a lower layer, the commands import the layers but not each other, and no
two modules import each other in a circle. Imports inside functions count, as do those under
``TYPE_CHECKING``: a function-level import is the same dependency, deferred.

The light packages stay light: importing the data, models or metrics does not load Lightning or
Hydra (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import avsac_lit

PACKAGE = Path(avsac_lit.__file__).resolve().parent

# Lowest first. A module may import its own subpackage and the layers below its own.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"storage", "conf"}),
    frozenset({"models", "metrics"}),
    frozenset({"data"}),
    frozenset({"viz"}),
    frozenset({"checkpoints"}),
    frozenset({"system"}),
    frozenset({"run"}),
    frozenset({"inference", "analysis", "profiling"}),
)
# The top level holds the package's __init__ and the commands (python -m avsac_lit.<command>).
COMMANDS = frozenset(
    {
        "train",
        "eval",
        "predict",
        "report",
        "convert",
        "export",
        "bench",
        "model_cost",
        "pretrain",
        "gpu_check",
    }
)
COMMAND_LAYER = len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def suite_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the suite in ``path``, at any depth of its code; a name
    imported from a module that is itself a module counts as that module."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / full.replace(".", "/")).with_suffix(".py").is_file()
                found.append((node.lineno, full if is_module else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "avsac_lit"]


def layer_of(module: str) -> tuple[int, str]:
    """(layer, unit): the unit is the subpackage, or the command's own module."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1, "avsac_lit"  # the package's __init__, which only the outside imports
    if len(parts) == 2 and parts[1] in COMMANDS:
        return COMMAND_LAYER, parts[1]
    for layer, units in enumerate(LAYERS):
        if parts[1] in units:
            return layer, parts[1]
    raise AssertionError(f"{module}: a module outside the declared layers (tests/test_layers.py)")


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(found: dict[str, Path]) -> list[str]:
    """Every import that goes up, sideways within a layer, or from one command to another."""
    wrong = []
    for module, path in found.items():
        layer, unit = layer_of(module)
        for line, imported in suite_imports(path):
            their_layer, their_unit = layer_of(imported)
            if module == "avsac_lit":
                continue  # the public API names what the layers define
            if their_unit == unit and layer != COMMAND_LAYER:
                continue
            if their_layer == -1 or their_layer >= layer:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {module} (layer {layer}, "
                    f"{unit}) imports {imported} (layer {their_layer}, {their_unit})"
                )
    return wrong


def circles(found: dict[str, Path]) -> list[list[str]]:
    """The module cycles (strongly connected components of more than one module), a package's
    ``__init__`` counting as imported by each of its modules. What a package's ``__init__``
    itself names (the lazy public names of ``avsac_lit`` and ``avsac_lit.data``) is its facade,
    imported when asked for, not a dependency of its modules."""
    graph: dict[str, set[str]] = {module: set() for module in found}
    for module, path in found.items():
        parts = module.split(".")
        graph[module] |= {".".join(parts[:i]) for i in range(1, len(parts))}
        if path.name != "__init__.py":
            graph[module] |= {name for _, name in suite_imports(path) if name in graph}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_every_import_goes_down_the_layers():
    found = modules()
    assert len(found) > 60  # the whole package was read
    assert upward_imports(found) == []


def test_no_two_modules_import_each_other_in_a_circle():
    assert circles(modules()) == []


def test_the_top_level_holds_the_commands_only():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == COMMANDS | {"__init__"}


def test_an_upward_import_is_named_with_its_place(tmp_path, monkeypatch):
    """What the rule reports when a lower layer imports a higher one (the data importing the
    run's resume point, as 0.7.1's data module did)."""
    planted = PACKAGE / "data" / "planted_upward.py"
    planted.write_text("def f():\n    from avsac_lit.run.resume import resume_point\n")
    try:
        wrong = upward_imports(modules())
    finally:
        planted.unlink()
    assert wrong == [
        "avsac_lit/data/planted_upward.py:2: avsac_lit.data.planted_upward (layer 2, data) "
        "imports avsac_lit.run.resume (layer 6, run)"
    ]


LIGHT = (
    "avsac_lit",
    "avsac_lit.data",
    "avsac_lit.data.io",
    "avsac_lit.models",
    "avsac_lit.metrics",
)


@pytest.mark.parametrize("module", LIGHT)
def test_the_light_packages_load_neither_lightning_nor_hydra(module):
    probe = (
        f"import sys, json, {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not {"lightning", "pytorch_lightning", "hydra"} & set(loaded)
