"""The package's layout: no ranlib module imports, even inside a function, a module that imports it
back (directly or round a longer loop), and every module imports on its own."""

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


def test_the_import_graph_finds_imports_of_every_form():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    assert "ranlib.cli" in graph["ranlib.__main__"]  # from .cli import main
    assert "ranlib" in graph["ranlib.train"]  # import ranlib (for its version)
    assert "ranlib.models.attention" in graph["ranlib.models"]  # from . import attention
    assert "ranlib.models._registry" in graph["ranlib.models.resnet"]  # from ._registry import
    assert "ranlib.errors" in graph["ranlib.noise"]  # from ranlib.errors import
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
