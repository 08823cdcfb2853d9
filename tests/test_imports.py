"""No import cycle inside cellc/, and `import cellc` (the CLI's check and grad too) needs no torch
or llvmlite.

The import graph is read from the source with `ast`, not from a running interpreter, so it holds
every import a module can make, not only those one run happened to take:
- top-level and function-level imports alike. A function-level (lazy) import still runs, just
  later, and a cycle through one is still a tangle: the modules cannot be read, tested or
  replaced one at a time. It is counted, so this test is strict; so are imports under
  `if TYPE_CHECKING:` (none of them is needed to break a cycle);
- relative imports resolved against the importing module's package; `from . import x` is an edge
  to the module `x` when there is one, else to the package (for a name defined there);
- `importlib.import_module` with a literal name (cellc/__init__'s lazy `cellc.native`);
- the target registry's imports by computed name: discovery (cellc/targets/__init__.py imports
  each target module, `targets.module_names()`) and `Table.rows()` (targets/_spec.py imports
  each registered table's module).
Any other dynamic import fails the test, since the graph could not see where it leads.
An edge names the module imported, not its parent packages: Python initialises a package
before its submodules whatever imports what, so counting those would make every module part of
a cycle with cellc/__init__.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import cellc
from cellc import targets

CELLC_DIR = Path(cellc.__file__).resolve().parent
CELLS_DIR = CELLC_DIR.parent / "cells"


@dataclass
class Graph:
    """module -> {imported module: where (file:line, first seen)}, plus what could not be read."""

    edges: dict[str, dict[str, str]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # dynamic imports: "file:line: code"


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module"
            and isinstance(f.value, ast.Name) and f.value.id == "importlib") or (
        isinstance(f, ast.Name) and f.id in ("import_module", "__import__"))


UNREAD = "?"  # a dynamic import whose target the source does not say


def imports_of(tree: ast.AST, name: str, package: str, modules: set[str]):
    """(imported module, line) for every import in one module's tree: None for a module outside
    the package, UNREAD where a dynamic import's target cannot be read from the source."""

    def known(target: str) -> str | None:
        # `import cellc.a.b` names cellc.a.b; an unknown name is outside cellc (or a typo that
        # the import itself would report).
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield known(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else known(base)), node.lineno
        elif isinstance(node, ast.Call) and _is_import_module(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                anchor = None
                if len(node.args) > 1 and isinstance(node.args[1], ast.Name):
                    anchor = {"__name__": name, "__package__": package}.get(node.args[1].id)
                try:
                    yield known(importlib.util.resolve_name(arg.value, anchor)), node.lineno
                    continue
                except (ImportError, ValueError):
                    pass
            yield UNREAD, node.lineno


def import_graph(root: Path, dynamic: dict[str, list[str]] | None = None) -> Graph:
    """The import graph of the package in `root`; `dynamic` adds edges ast cannot see (module ->
    modules it imports by computed name), and those modules' dynamic imports are then known."""
    dynamic = dynamic or {}
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph = Graph()
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = graph.edges.setdefault(name, {})
        where = path.relative_to(root.parent)
        text = path.read_text()
        for target, line in imports_of(ast.parse(text), name, package, modules):
            if target is UNREAD:
                if name not in dynamic:
                    code = text.splitlines()[line - 1].strip()
                    graph.unresolved.append(f"{where}:{line}: {code}")
            elif target is not None and target != name:
                out.setdefault(target, f"{where}:{line}")
        for target in dynamic.get(name, ()):
            out.setdefault(target, f"{where} (by computed name)")
    return graph


def tangles(graph: Graph) -> list[set[str]]:
    """The strongly connected components of more than one module: each holds at least one
    cycle (Tarjan's algorithm, iterative: a deep chain does not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph.edges:
        if start in index:
            continue
        work = [(start, iter(graph.edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.add(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph.edges.get(child, ()))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (a list of modules, first == last) per tangle."""
    return [shortest_cycle(graph, c) for c in tangles(graph)]


def shortest_cycle(graph: Graph, component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in graph.edges.get(node, ()):
                if child == start:
                    return paths[node] + [start]
                if child in component and child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in component {component}")


def describe(graph: Graph, cycle: list[str]) -> str:
    return "\n".join(f"  {a} -> {b}    ({graph.edges[a][b]})" for a, b in pairwise(cycle))


def describe_tangle(graph: Graph, component: set[str]) -> str:
    """A cycle, then every import inside the tangle: each is a place where it can be cut."""
    inside = [f"  {a} -> {b}    ({where})" for a in sorted(component)
              for b, where in graph.edges[a].items() if b in component]
    return (f"cycle:\n{describe(graph, shortest_cycle(graph, component))}\n"
            f"all {len(inside)} imports among {len(component)} modules:\n" + "\n".join(inside))


def cellc_graph() -> Graph:
    # The two imports by computed name: discovery, and a target's Table.rows() (its op table).
    tables = sorted({table.module for t in targets.registry().values() for table in t.tables})
    return import_graph(CELLC_DIR, {"cellc.targets": targets.module_names(),
                                    "cellc.targets._spec": tables})


def test_no_import_cycle_inside_cellc():
    graph = cellc_graph()
    assert not graph.unresolved, "dynamic imports the graph cannot follow:\n" + "\n".join(
        graph.unresolved)
    found = tangles(graph)
    assert not found, f"{len(found)} import cycle(s) inside cellc/:\n" + "\n\n".join(
        describe_tangle(graph, c) for c in found)


def test_graph_sees_the_imports_that_matter():
    # The graph is only as good as what it reads: the lazy, relative and computed imports that
    # the cycle check depends on are all in it.
    edges = cellc_graph().edges
    assert "cellc._version" in edges["cellc"]  # from ._version import __version__
    assert "cellc.native" in edges["cellc"]  # importlib.import_module(".native", __name__)
    assert "cellc.targets.llvm_target" in edges["cellc.targets"]  # discovery, by computed name
    assert "cellc.backends.llvm_ir" in edges["cellc.targets._spec"]  # Table.rows()
    assert "cellc.backends.aot" in edges["cellc.targets.llvm_target"]  # inside a function
    assert "cellc.targets._common" in edges["cellc.cli"]  # from .targets._common import ...


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "from ._version import v\n",
        "pkg/_version.py": "v = 1\n",
        "pkg/a.py": "from .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import g\n",
        "pkg/c.py": "import os\ndef g():\n    from pkg import a\n",
    })
    graph = import_graph(pkg)
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert describe(graph, cycles(graph)[0]).splitlines()[1] == (
        "  pkg.sub.b -> pkg.c    (pkg/sub/b.py:2)")


def test_a_cycle_through_the_package_init_is_found(tmp_path):
    # What cellc/__init__ <-> api through __version__ was: `from . import __version__` names the
    # package itself, which imports the module back.
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\nfrom .api import load\n",
        "pkg/api.py": "from . import __version__\ndef load():\n    pass\n",
    })
    assert cycles(import_graph(pkg)) == [["pkg", "pkg.api", "pkg"]]


def test_an_unreadable_dynamic_import_is_reported(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "import importlib\nNAME = 'x'\nm = importlib.import_module(NAME)\n",
        "pkg/x.py": "import importlib\nimportlib.import_module('.y', __package__)\n",
        "pkg/y.py": "",
    })
    graph = import_graph(pkg)
    assert graph.unresolved == ["pkg/__init__.py:3: m = importlib.import_module(NAME)"]
    assert graph.edges["pkg.x"] == {"pkg.y": "pkg/x.py:2"}
    assert not import_graph(pkg, {"pkg": ["pkg.x"]}).unresolved


def test_import_cellc_and_the_cli_need_no_torch_or_llvmlite():
    # check, grad and the --help texts (which read every target's registration) import neither.
    code = f"""
import sys, contextlib, io
import cellc, cellc.cli
with contextlib.redirect_stdout(io.StringIO()):
    assert cellc.cli.main(["check", {str(CELLS_DIR / "lstm.cell")!r}]) == 0
    assert cellc.cli.main(["grad", {str(CELLS_DIR / "gru.cell")!r}]) == 0
    for argv in (["compile", "--help"], ["show", "--help"]):
        try:
            cellc.cli.main(argv)
        except SystemExit as e:
            assert e.code == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "llvmlite"))
print(heavy)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
