"""The shape of the house, checked from the source: which package imports which.

A package is the first name below `taskapi` (`taskapi.tasks.service` is in `tasks`, `taskapi.app`
is `app`). Every import counts wherever it is written: at module level, inside a function (an
import moved into a function still runs, it only hides a cycle from whoever reads the top of the
file) and under `if TYPE_CHECKING:` (the type checker follows it, and the dependency is real).

The rules: no two packages depend on each other, however indirectly; the infrastructure in
`taskapi.kit` depends on nothing else of taskapi; no module is longer than a reader can hold.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "taskapi"
MAX_MODULE_LINES = 400


@dataclass(frozen=True, slots=True)
class ImportSite:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# package -> imported package -> where
Graph = dict[str, dict[str, list[ImportSite]]]


def _module_name(path: Path, root: Path) -> list[str]:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(
    node: ast.Import | ast.ImportFrom, module: list[str], is_package: bool
) -> list[str]:
    """The dotted names an import statement may bring in, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # `from . import x` in a package's __init__ is relative to the package itself.
        base = module if is_package else module[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, *([node.module] if node.module else [])])
    else:
        prefix = node.module or ""
    # `from taskapi import tasks` imports the package `tasks`, not something of `taskapi`.
    return [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]


def import_graph(root: Path) -> Graph:
    """Which top-level packages of `root` (a package directory) import which, and where."""
    top_level = {
        p.stem for p in root.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    top_level.discard("__init__")
    graph: Graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        package = module[1] if len(module) > 1 else None
        if package is None:
            continue  # the root __init__ (version only)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported_modules(node, module, path.name == "__init__.py"):
                parts = name.split(".")
                if len(parts) < 2 or parts[0] != root.name or parts[1] not in top_level:
                    continue
                if parts[1] != package:
                    site = ImportSite(str(path.relative_to(root.parent)), node.lineno)
                    sites = graph[package][parts[1]]
                    if site not in sites:
                        sites.append(site)
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """Every cycle that some import closes, each the shortest way back round, written from its
    smallest package, e.g. [a, b, a]; shortest first. Packages in one strongly connected group
    (Tarjan) are the ones that depend on each other; each import between two of them closes
    the cycle listed for it."""
    cycles: set[tuple[str, ...]] = set()
    for component in _strongly_connected(graph):
        members = set(component)
        for source in component:
            for target in graph.get(source, {}):
                if target in members:
                    cycles.add(_rotated([source, *_shortest_path(graph, target, source, members)]))
    return [list(c) for c in sorted(cycles, key=lambda c: (len(c), c))]


def _strongly_connected(graph: Graph) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, {})):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(set(graph) | {t for targets in graph.values() for t in targets}):
        if node not in index:
            visit(node)
    return components


def _shortest_path(graph: Graph, start: str, end: str, members: set[str]) -> list[str]:
    paths = {start: [start]}
    frontier = [start]
    while end not in paths:
        frontier = [
            paths.setdefault(target, [*paths[node], target])[-1]
            for node in frontier
            for target in sorted(graph.get(node, {}))
            if target in members and target not in paths
        ]
        if not frontier:
            raise AssertionError(f"no way from {start} to {end}")
    return paths[end]


def _rotated(cycle: list[str]) -> tuple[str, ...]:
    ring = cycle[:-1]
    first = ring.index(min(ring))
    ring = ring[first:] + ring[:first]
    return (*ring, ring[0])


def describe(graph: Graph, cycle: list[str]) -> str:
    steps = [
        f"  {a} -> {b} ({', '.join(str(s) for s in graph[a][b][:3])})"
        for a, b in itertools.pairwise(cycle)
    ]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


# --- the rules, on taskapi -----------------------------------------------------------------------


def test_no_package_depends_on_itself_through_others() -> None:
    graph = import_graph(SOURCE)
    # The graph is really built: the application imports the domains it serves.
    assert {"tasks", "auth", "kit"} <= set(graph["app"])
    cycles = find_cycles(graph)
    assert not cycles, "package import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)


def kit_imports(graph: Graph) -> list[str]:
    """What `kit` imports from other packages, with where."""
    return [
        f"{target} ({', '.join(map(str, sites))})" for target, sites in sorted(graph["kit"].items())
    ]


def test_kit_depends_on_no_other_package() -> None:
    outside = kit_imports(import_graph(SOURCE))
    assert not outside, "taskapi.kit imports " + ", ".join(outside)


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(SOURCE.parent)): lines
        for path in sorted(SOURCE.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


# --- the check itself sees what it must ----------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return package


@pytest.mark.parametrize(
    "hidden_import",
    [
        "def later():\n    from pkg.b import thing\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b.c import Thing\n",
        "from .. import b\n",
        "import pkg.b.c\n",
    ],
    ids=["inside-a-function", "type-checking", "relative", "plain-import"],
)
def test_the_check_finds_a_cycle_however_the_import_is_written(
    tmp_path: Path, hidden_import: str
) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "",
            "a/x.py": hidden_import,
            "b/__init__.py": "",
            "b/c.py": "from pkg.a import x\n",
            "kit/__init__.py": "",
        },
    )
    graph = import_graph(package)
    assert find_cycles(graph) == [["a", "b", "a"]]
    assert "a/x.py" in describe(graph, ["a", "b", "a"])


def test_the_check_names_every_cycle_the_shortest_way_round(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import pkg.b\nimport pkg.c\n",
            "b.py": "import pkg.c\n",
            "c.py": "import pkg.a\n",
            "d.py": "import pkg.a\n",
        },
    )
    assert find_cycles(import_graph(package)) == [["a", "c", "a"], ["a", "b", "c", "a"]]


def test_the_check_finds_kit_importing_a_domain_even_inside_a_function(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "",
            "kit/__init__.py": "",
            "kit/db.py": "import pkg.models\n",
            "kit/errors.py": "def render():\n    from pkg.tasks.schemas import MAX_ID\n",
            "kit/cache.py": "from pkg.kit import db\n",
            "tasks/__init__.py": "",
            "tasks/schemas.py": "",
        },
    )
    assert kit_imports(import_graph(package)) == [
        "models (pkg/kit/db.py:1)",
        "tasks (pkg/kit/errors.py:2)",
    ]
