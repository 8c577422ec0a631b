"""Package boundaries, read from the source (AST, nothing imported): the dependency runs
``converters -> jaxuq`` and never back, ``experiments`` never import ``bench``, ``converters`` imports
jaxuq (and itself) at module top, and the functions of these packages fit on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

MAX_LINES = 60
# the packages whose functions this rule covers: the whole library, the CLI, the experiments, the benches
SHORT_FUNCTIONS = ["jaxuq", "converters", "experiments", "bench"]


def _files(*roots: str) -> list[Path]:
    out = []
    for r in roots:
        p = REPO / r
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    assert out, roots
    return out


def _imports(tree: ast.AST):
    """``(module name, node, inside a function)`` of every import statement (relative ones resolved
    to their level only; the packages here use absolute imports)."""
    def walk(node, in_fn):
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child, fn
            elif isinstance(child, ast.ImportFrom):
                yield "." * child.level + (child.module or ""), child, fn
            yield from walk(child, fn)

    yield from walk(tree, False)


def _top(name: str) -> str:
    return name.split(".")[0]


def _offenders(roots, bad) -> list[str]:
    found = []
    for f in _files(*roots):
        for name, node, in_fn in _imports(ast.parse(f.read_text(), str(f))):
            if bad(name, in_fn):
                found.append(f"{f.relative_to(REPO)}:{node.lineno} imports {name}")
    return found


def test_nothing_in_jaxuq_imports_converters():
    assert _offenders(["jaxuq"], lambda name, _: _top(name) == "converters") == []


def test_nothing_in_experiments_imports_bench():
    assert _offenders(["experiments"], lambda name, _: _top(name) == "bench") == []


def test_converters_import_jaxuq_at_module_top():
    """No function-level import of jaxuq or of converters itself (what used to dodge the cycle); only
    the optional torch side loads lazily: torch, TU, huggingface_hub, yaml, safetensors, and
    ``converters.torch_refs`` (the torch reference models, which import torch at their top)."""
    lazy = {"torch", "torch_uncertainty", "huggingface_hub", "yaml", "safetensors"}

    def bad(name, in_fn):
        return in_fn and _top(name) not in lazy and name != "converters.torch_refs"

    assert _offenders(["converters"], bad) == []
    top = _offenders(["converters"], lambda name, in_fn: not in_fn and _top(name) == "jaxuq")
    assert any("core.py" in t for t in top) and any("hub.py" in t for t in top), top


def test_jaxuq_imports_itself_at_module_top():
    """No function-level import of jaxuq, jax, flax, optax or numpy inside the library (what dodges an
    import cycle or hides a dependency); only optional or heavy extras load lazily (orbax's checkpointer,
    rich, matplotlib, scipy, tensorflow_datasets)."""
    core = {"jaxuq", "jax", "jaxlib", "flax", "optax", "numpy"}
    found = _offenders(["jaxuq"], lambda name, in_fn: in_fn and (_top(name) in core or name.startswith(".")))
    assert found == []


def test_bench_common_does_not_edit_sys_path():
    tree = ast.parse((REPO / "bench" / "_common.py").read_text())
    edits = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
             and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert edits == []


@pytest.mark.parametrize("root", SHORT_FUNCTIONS)
def test_functions_are_at_most_60_lines(root):
    long = []
    for f in _files(root):
        for n in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_LINES:
                long.append(f"{f.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert long == []


def _package_graph() -> dict[str, set[str]]:
    """``{"jaxuq.<package>": {"<package>", ...}}``: what each first-level part of jaxuq imports from the
    rest of jaxuq (any import statement, at any level)."""
    graph: dict[str, set[str]] = {}
    for f in _files("jaxuq"):
        parts = f.relative_to(REPO).with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        src = "jaxuq." + parts[1]
        for name, _, _ in _imports(ast.parse(f.read_text(), str(f))):
            dst = name.split(".")
            if dst[0] == "jaxuq" and len(dst) > 1 and dst[1] != parts[1]:
                graph.setdefault(src, set()).add(dst[1])
    return graph


def test_readme_import_graph_is_the_real_one():
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- import-graph -->", 1)[1].split("<!-- /import-graph -->", 1)[0]
    documented = {}
    for line in block.splitlines():
        if "->" in line:
            src, dsts = (s.strip() for s in line.split("->"))
            documented[src] = {d.strip() for d in dsts.split(",")}
    assert documented == _package_graph()
    assert not any("train" in deps for deps in documented.values())
