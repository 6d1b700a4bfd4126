"""The package's shape: no import circle anywhere in jaxnets/, the engine's modules small and one concept each,
train/ importing neither the checkpoint nor the streaming module (they implement its protocols), fit short."""

import ast
import inspect
import pathlib

import jaxnets

ROOT = pathlib.Path(jaxnets.__file__).resolve().parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").exists() or (ROOT.parent / rel / "__init__.py").exists()


def imports() -> dict[str, set[str]]:
    """Every module's explicit imports of jaxnets modules, at module level or inside functions."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name, edges = _module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("jaxnets")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxnets"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges.add(target if _is_module(target) else node.module)
        graph[name] = {e for e in edges if e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules: the import system orders them
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle_anywhere_in_the_package():
    graph = imports()
    assert "jaxnets.train.loop" in graph["jaxnets.train"] and "jaxnets.checkpoint" in graph["jaxnets"]  # it sees them
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_train_imports_neither_checkpoint_nor_streaming_and_its_modules_are_small():
    graph = imports()
    for name, edges in graph.items():
        if name.startswith("jaxnets.train"):
            assert not edges & {"jaxnets.checkpoint", "jaxnets.streaming"}, (name, edges)
    for path in (ROOT / "train").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_fit_is_a_short_preset():
    lines = inspect.getsource(jaxnets.fit).splitlines()
    assert len(lines) <= 150, len(lines)
