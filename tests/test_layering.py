"""The package's layering: no import cycles, each layer importing only from below, no private imports.

Reads every `import` statement of the package (inside functions too: a lazy import still ties two
modules) and checks the graph it forms. The layer order is the architecture the README describes.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llada_jax"

# Bottom to top: a module may import from its own layer and the layers before it.
# planning compiles the train step without running it; serving runs the sampler for many clients.
LAYERS = ("config", "model", "io", "data", "inference", "training", "planning", "evaluation", "serving", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_imports() -> dict[str, dict[str, set[str]]]:
    """{module: {imported package module: names taken}} for every module of the package."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in files.items():
        edges: dict[str, set[str]] = {}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files:
                        edges.setdefault(alias.name, set()).add("*")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in files else base
                    if target in files and target != name:
                        edges.setdefault(target, set()).add(alias.name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_cycle_finder_sees_a_cycle():
    graph = {"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": set()}, "b": {}}) is None


def test_no_import_cycles():
    cycle = find_cycle(package_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_lives_in_a_layer():
    stray = [m for m in package_imports() if m != "llada_jax" and layer_of(m) is None]
    assert not stray, f"modules outside the layer packages {LAYERS}: {stray}"


def test_layers_import_only_from_below():
    wrong = []
    for module, edges in package_imports().items():
        here = layer_of(module)
        if here is None:  # the package face re-exports the public API from every layer
            continue
        for target in edges:
            there = layer_of(target)
            if there is not None and there > here:
                wrong.append(f"{module} ({LAYERS[here]}) imports {target} ({LAYERS[there]})")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_imported_across_modules():
    private = [f"{module} takes {name} from {target}"
               for module, edges in package_imports().items()
               for target, names in edges.items() for name in sorted(names)
               if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_subpackage_says_what_it_holds(layer):
    doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 10, f"llada_jax/{layer}/__init__.py needs a docstring"
