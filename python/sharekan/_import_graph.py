"""The import graph of the `sharekan` package, read from source with `ast` (nothing is
imported), for tests/test_import_graph.py and for anyone who wants to see it:

    python -m sharekan._import_graph            # module -> the sharekan modules it imports
    python -m sharekan._import_graph --dot      # the same as Graphviz dot

Every import statement counts, at module level or inside a function, relative or absolute,
except those under `if TYPE_CHECKING:` (annotations only, never executed).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "sharekan"
ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (both dotted sharekan module names) at `line`;
    `function_level` when the import statement is inside a function body."""

    source: str
    target: str
    line: int
    function_level: bool


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package and every
    .pyi stub without one (the compiled `sharekan._core`)."""
    out = {}
    paths = sorted(root.rglob("*.py"))
    paths += [p for p in sorted(root.rglob("*.pyi")) if not p.with_suffix(".py").exists()]
    for path in paths:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements with whether they are inside a function; skips TYPE_CHECKING."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:  # the else branch does run
                    yield from walk(other, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)

    yield from walk(tree, False)


def _resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             modules: set[str]) -> list[str]:
    """The sharekan modules an import statement loads (the most specific known name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from pkg import name`: name may be a submodule, else an attribute of pkg
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                 for alias in node.names]
    out = []
    for name in names:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        while name not in modules and "." in name:  # e.g. the compiled `sharekan._core`
            name = name.rsplit(".", 1)[0]
        if name in modules and name not in out:
            out.append(name)
    return out


def edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a sharekan module by a sharekan module (self-imports dropped)."""
    files = module_files(root)
    modules = set(files)
    out = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _imports(tree):
            for target in _resolve(module, is_package, node, modules):
                if target != module:
                    out.append(Edge(module, target, node.lineno, in_function))
    return out


def graph(all_edges: list[Edge]) -> dict[str, set[str]]:
    """module -> the sharekan modules it imports."""
    out: dict[str, set[str]] = {}
    for e in all_edges:
        out.setdefault(e.source, set()).add(e.target)
        out.setdefault(e.target, set())
    return out


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic.

    A package's `__init__` importing its own submodules is not a cycle by itself, but a
    submodule importing its package (e.g. `from . import x` in `sharekan.torch.ops`) is an
    edge to the package's `__init__` and is counted."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharekan._import_graph",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dot", action="store_true", help="print Graphviz dot")
    args = parser.parse_args(argv)
    all_edges = edges()
    lazy = {(e.source, e.target) for e in all_edges if e.function_level}
    g = graph(all_edges)
    if args.dot:
        print("digraph sharekan {")
        for src in sorted(g):
            for dst in sorted(g[src]):
                style = ' [style=dashed]' if (src, dst) in lazy else ""
                print(f'  "{src}" -> "{dst}"{style};')
        print("}")
    else:
        for src in sorted(g):
            targets = [t + (" (in a function)" if (src, t) in lazy else "") for t in sorted(g[src])]
            print(f"{src}: {', '.join(targets) if targets else '-'}")
    cycle = find_cycle(g)
    print("cycle: " + " -> ".join(cycle) if cycle else "no cycle", file=sys.stderr)
    return 1 if cycle else 0


if __name__ == "__main__":
    sys.exit(main())
