"""The package's import graph is acyclic, and sharekan modules are imported at module level.

The graph is read from source with `ast` by `sharekan._import_graph` (every import
statement, module level and inside functions, relative and absolute; those under
`if TYPE_CHECKING:` are left out because they never run). Print it with

    .venv/bin/python -m sharekan._import_graph          # or --dot for Graphviz

Function-level imports of sharekan modules hide cycles and import-time failures; they are
allowed only where the imported module needs an optional dependency (`ALLOWED_LAZY`).
"""

from __future__ import annotations

from sharekan import _import_graph

EXCLUDED: tuple[str, ...] = ()

# Function-level imports of sharekan modules that stay function-level, with the reason:
# - sharekan.torch (and its submodules) needs torch, an optional dependency: the core
#   package must import without it (export_pte, the default model's training recipe).
# - triton_lutham needs triton, and triton.jit picks its interpreter when the module is
#   imported, so ops.py imports it on the op's first CUDA dispatch.
ALLOWED_LAZY = {("sharekan.torch.ops", "sharekan.torch.triton_lutham")}



def _excluded(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _edges() -> list[_import_graph.Edge]:
    return [e for e in _import_graph.edges()
            if not _excluded(e.source, EXCLUDED) and not _excluded(e.target, EXCLUDED)]


def _optional(edge: _import_graph.Edge) -> bool:
    torch_pkg = _excluded(edge.target, ("sharekan.torch",))
    return ((torch_pkg and not _excluded(edge.source, ("sharekan.torch",)))
            or (edge.source, edge.target) in ALLOWED_LAZY)


def test_graph_sees_the_package():
    g = _import_graph.graph(_edges())
    for module in ("sharekan", "sharekan.compiler", "sharekan.refine", "sharekan.artifact",
                   "sharekan.compressed", "sharekan.torch.modules", "sharekan._core"):
        assert module in g
    assert "sharekan.refine" in g["sharekan.compiler"]


def test_no_import_cycle():
    cycle = _import_graph.find_cycle(_import_graph.graph(_edges()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_reports_one():
    assert _import_graph.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _import_graph.find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_level_import_of_sharekan_modules():
    lazy = [e for e in _edges() if e.function_level and not _optional(e)]
    assert not lazy, "function-level imports of sharekan modules:\n" + "\n".join(
        f"  {e.source}:{e.line} imports {e.target}" for e in lazy)


def test_type_checking_imports_are_not_edges(tmp_path):
    pkg = tmp_path / "sharekan"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from sharekan.a import f\n")
    edges = _import_graph.edges(pkg)
    assert {(e.source, e.target, e.function_level) for e in edges} == {
        ("sharekan.a", "sharekan.b", True), ("sharekan.b", "sharekan.a", False)}
