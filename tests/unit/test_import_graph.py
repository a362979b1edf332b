"""One-way imports, read from the source (ast), lazy imports inside functions included.

The layers (DESIGN.md): ``plugins -> algorithms -> kernels``. ``algorithms/`` never imports the plugin registry, the
adapters or a runtime (components reach it through the config's ``components`` lookup); ``kernels/`` imports
nothing of anydecode's but itself; a runtime is imported only inside its own adapter; and no module imports itself
back through others (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: folder -> the import name it is installed as (setup.py)
PACKAGES = {"anydecode": "anydecode", "algorithms": "anydecode.algorithms", "plugins": "anydecode.plugins",
            "kernels": "anydecode.kernels", "conformance": "anydecode.conformance"}
RUNTIMES = {"transformers": "anydecode.plugins.hf", "llama_cpp": "anydecode.plugins.llamacpp",
            "vllm": "anydecode.plugins.vllm"}
#: modules outside an adapter that may import a runtime: the conformance suite's reference oracles (transformers'
#: own beam search and the tiny random Llama it runs on), imported lazily and skipped when transformers is absent
REFERENCE_ORACLES = {"transformers": ("anydecode.conformance.exact_checks", "anydecode.conformance.tiny_llama")}
#: what each layer may import of anydecode (prefixes)
ALLOWED = {
    "anydecode.kernels": ("anydecode.kernels",),
    "anydecode.algorithms": ("anydecode.algorithms", "anydecode.kernels"),
    "anydecode.plugins": ("anydecode.plugins", "anydecode.algorithms", "anydecode.kernels", "anydecode.registry",
                          "anydecode.models", "anydecode.hookspecs"),
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _typing_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk(tree: ast.AST):
    """Every node, except the bodies of ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _typing_only(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports(name: str, path: Path, known: set[str] | None = None) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of the file (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names}
            named = submodules & (known or set())
            found |= named  # ``from . import rng`` imports the module rng, not the package's __init__
            if named != submodules or not named:
                found.add(target)
            found |= submodules - named if known is None else set()
    return found


_MODULES = modules()
GRAPH = {name: imports(name, path, set(_MODULES)) for name, path in _MODULES.items()}
INTERNAL = set(GRAPH)


def edges(name: str) -> set[str]:
    return {t for t in GRAPH[name] if t in INTERNAL and t != name}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_upward_import(layer):
    bad = []
    for name, targets in GRAPH.items():
        if not name.startswith(layer):
            continue
        for target in targets:
            if target.startswith("anydecode") and not target.startswith(ALLOWED[layer]) and target != "anydecode":
                bad.append(f"{name} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_a_runtime_is_imported_only_by_its_own_adapter():
    bad = []
    for name, targets in GRAPH.items():
        for target in targets:
            root = target.split(".")[0]
            if root in RUNTIMES and not name.startswith(RUNTIMES[root]) and name not in REFERENCE_ORACLES.get(root, ()):
                bad.append(f"{name} imports {target}")
            if root == "triton" and not name.startswith("anydecode.kernels"):
                bad.append(f"{name} imports {target}")
    assert not bad, "runtime imports outside their adapter:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting its own modules is not a cycle of code
            real = [m for m in component if not any(m != o and o.startswith(m + ".") for o in component)]
            if len(real) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    """The walk finds lazy imports: an algorithms module importing the registry inside a function is caught."""
    source = tmp_path / "planted.py"
    source.write_text("def f():\n    from anydecode.registry import get_registry\n    return get_registry\n")
    assert "anydecode.registry" in imports("anydecode.algorithms.planted", source)
