"""The package's layout: its folders are its layers and a layer imports only the layers below it; no
ranlib module imports, even inside a function, a module that imports it back (directly or round a
longer loop); and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ranlib"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The ranlib modules ``path`` imports anywhere in it (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from . import x` names a submodule; `from .x import y` names module x.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                      for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        state[node], _ = "done", stack.pop()
        return None

    return next((loop for node in sorted(graph) if node not in state and (loop := visit(node))), None)


# The shared top-level modules every layer may use, and the layers each folder may import (its own
# included). ``ranlib`` itself (create_model, complexity, the version) is the models layer's face;
# ``cli`` and ``__main__`` sit on top and may import anything.
SHARED = {"ranlib.errors", "ranlib.paths", "ranlib.files", "ranlib.options"}
TOP = {"ranlib.cli", "ranlib.__main__"}
MAY_IMPORT = {
    "shared": {"shared"},
    "models": {"shared", "models"},
    "data": {"shared", "models", "data"},
    "training": {"shared", "models", "data", "training"},
    "study": {"shared", "models", "data", "training", "study"},
    "bench": {"shared", "models", "data", "training", "bench"},
    "campaign": {"shared", "models", "data", "training", "study", "campaign"},
}


def layer_of(name: str) -> str:
    """``shared``, ``top`` or the layer's folder (``models``, ``data``, ...) of a ranlib module."""
    if name in SHARED:
        return "shared"
    if name in TOP:
        return "top"
    return "models" if name == "ranlib" else name.split(".")[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a imports b (layer x may not import layer y)"`` for every import against the layer rule."""
    found = []
    for name, imported in sorted(graph.items()):
        layer = layer_of(name)
        if layer == "top":
            continue
        found += [f"{name} imports {other} (the {layer} layer may not import the {layer_of(other)} layer)"
                  for other in sorted(imported) if layer_of(other) not in MAY_IMPORT[layer]]
    return found


def test_ranlib_shows_six_layer_folders_and_a_few_shared_modules():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert folders == sorted(set(MAY_IMPORT) - {"shared"})
    assert modules == sorted(["__init__", *(n.removeprefix("ranlib.") for n in SHARED | TOP)])
    assert set(map(layer_of, MODULES)) == set(MAY_IMPORT) | {"top"}


def test_the_layer_rule_names_an_import_against_it():
    graph = {"ranlib.data.cifar": {"ranlib.training.runtime", "ranlib.errors"},
             "ranlib.training.loop": {"ranlib.data.cifar", "ranlib"}, "ranlib.cli": {"ranlib.campaign.runner"}}
    assert layer_violations(graph) == [
        "ranlib.data.cifar imports ranlib.training.runtime (the data layer may not import the training layer)"]
    assert layer_violations({"ranlib.bench.step": {"ranlib.study.report"}}) == [
        "ranlib.bench.step imports ranlib.study.report (the bench layer may not import the study layer)"]


def test_every_layer_imports_only_the_layers_below_it():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    violations = layer_violations(graph)
    assert not violations, "imports against the layer rule:\n" + "\n".join(violations)


def test_the_import_graph_finds_imports_of_every_form():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    assert "ranlib.cli" in graph["ranlib.__main__"]  # from .cli import main
    assert "ranlib" in graph["ranlib.training.evaluation"]  # import ranlib (inside build_model)
    assert "ranlib.models.attention" in graph["ranlib.models"]  # from . import attention
    assert "ranlib.models._registry" in graph["ranlib.models.resnet"]  # from ._registry import
    assert "ranlib.errors" in graph["ranlib.data.noise"]  # from ranlib.errors import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_ranlib_modules():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    loop = find_cycle(graph)
    assert loop is None, f"import cycle: {' -> '.join(loop)}"


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imported first, with no other ranlib module loaded before it."""
    names = [n for n in MODULES if n != "ranlib.__main__"]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'ranlib' or m.startswith('ranlib.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
