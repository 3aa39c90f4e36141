"""The import graph of src/backstory: no circle, no import up the layers, no Kedro in the
domain code, and no module importing another one's private names.

The layers (docs/architecture.md), lowest first; a module may import its own layer and
those below it. Imports inside functions count too: a lazy import is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "backstory"
# (module prefixes) lowest first; the package's own __init__ is below them all.
LAYERS = (
    ("core",),
    ("params", "variants"),
    ("data",),
    ("lm",),
    ("evaluation",),
    ("experiment",),
    ("settings", "config_loader", "hooks", "cli", "datasets", "pipelines", "pipeline_registry"),
    ("tools", "__main__"),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules one file imports (backstory's, and the top-level names of others),
    anywhere in it but under `if TYPE_CHECKING:`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    checking_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and ast.unparse(node.test).endswith("TYPE_CHECKING")
                     for inner in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checking_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # `from package import module` needs the module, not what package/__init__ holds.
            names = {f"{base}.{alias.name}" for alias in node.names}
            found.update(names & known.keys())
            if not names <= known.keys():
                found.add(base)
    return {name if name in known else name.partition(".")[0] for name in found
            if name and name != module}


def layer(module: str) -> int:
    if module == PACKAGE:
        return -1
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    known = modules()
    return {module: imported(module, path, known) for module, path in known.items()}


@pytest.fixture(scope="module")
def graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {name for name in names if name in imports}
            for module, names in imports.items()}


def test_kedro_stays_out_of_the_domain_code(imports: dict[str, set[str]]) -> None:
    domain = LAYERS.index(("experiment",))
    assert sorted(module for module, names in imports.items()
                  if layer(module) <= domain and "kedro" in names) == []


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    tops = {module.split(".")[1] for module in graph if module != PACKAGE}
    assert tops <= {name for names in LAYERS for name in names}


def test_no_import_goes_up_a_layer(graph: dict[str, set[str]]) -> None:
    upward = sorted(f"{module} -> {target}" for module, targets in graph.items()
                    for target in targets if layer(target) > layer(module))
    assert upward == []


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (its modules in order, the first again at the end)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        for target in sorted(graph.get(module, ())):
            if found := visit(target, [*path, module]):
                return found
        done.add(module)
        return []

    return next((found for module in sorted(graph) if (found := visit(module, []))), [])


def test_import_graph_has_no_circle(graph: dict[str, set[str]]) -> None:
    assert circle(graph) == []


def test_a_planted_circle_is_found() -> None:
    assert circle({"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def private_imports(source: str) -> list[str]:
    """The ``_private`` names that ``source`` imports from backstory modules."""
    return sorted(f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE)
                  for alias in node.names
                  if alias.name.startswith("_") and not alias.name.startswith("__"))


def test_no_module_imports_another_modules_private_names() -> None:
    benchmarks = sorted((SRC.parent / "benchmarks").glob("*.py"))
    found = {str(path.relative_to(SRC.parent)): names for path in [*modules().values(), *benchmarks]
             if (names := private_imports(path.read_text()))}
    assert found == {}


def test_a_planted_private_import_is_found() -> None:
    source = "from backstory.data.text import _MARK, reverse_words\nfrom os import _exit\n"
    assert private_imports(source) == ["backstory.data.text._MARK"]
