"""Layering rules of DESIGN.md: imports only point down; the library never imports orchestration."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_LIBRARY = {"prefect", "mlflow", "tasks", "flows", "dvc"}
# The `reid` command: cli.py and the stage commands it dispatches to (commands.py).
COMPOSITION_ROOT = {ROOT / "reid" / "cli.py", ROOT / "reid" / "commands.py"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_never_imports_orchestration_or_tracking():
    offenders = {}
    for path in (ROOT / "reid").rglob("*.py"):
        if path in COMPOSITION_ROOT:
            continue
        bad = imported_roots(path) & FORBIDDEN_IN_LIBRARY
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_tasks_never_import_flows():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tasks").rglob("*.py")
                 if "flows" in imported_roots(p)]
    assert offenders == []


def test_checker_sees_a_forbidden_import(tmp_path):
    # The rule above must be able to fail: a module importing mlflow is reported.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom mlflow.tracking import MlflowClient\n")
    assert imported_roots(bad) & FORBIDDEN_IN_LIBRARY == {"mlflow"}


# ---------------------------------------------------------------------------- module graph
# Nodes: the modules of reid/, tasks/ and flows/ (a package is its __init__.py). Edges: every
# import statement in a module's source, wherever it stands: at module level, inside a
# function (a lazy import is deferred, not absent), inside a class or under
# ``if TYPE_CHECKING:`` (a reader and a type checker follow it too). An import names the
# deepest project module it reaches (``from reid.engine import hooks`` -> reid.engine.hooks,
# ``from reid.engine import Trainer`` -> reid.engine); the parent packages that Python runs
# first are not edges, or every package's __init__ re-exporting its submodules would be a
# cycle. The CLI's lazy imports of tasks/ and flows/ (the composition root, DESIGN.md) are
# edges like any other: they close no cycle because nothing imports the CLI back.
PROJECT_PACKAGES = ("reid", "tasks", "flows")
CLI_MODULES = {module_path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for module_path in COMPOSITION_ROOT}
MAX_MODULE_LINES = 400


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT, packages=PROJECT_PACKAGES) -> dict[str, Path]:
    return {module_name(path, root): path
            for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` (at ``path``) imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT, packages=PROJECT_PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Shortest import cycles (``[a, b, ..., a]``), until every module on a cycle is in one."""
    cycles, covered = [], set()
    for start in sorted(graph):
        if start in covered:
            continue
        parents, frontier = {}, [start]
        while frontier and start not in parents:
            following = []
            for module in frontier:
                for target in sorted(graph[module]):
                    if target not in parents:
                        parents[target] = module
                        following.append(target)
            frontier = following
        if start in parents:
            cycle = [start]
            while len(cycle) == 1 or cycle[-1] != start:
                cycle.append(parents[cycle[-1]])
            cycle.reverse()
            cycles.append(cycle)
            covered |= set(cycle)
    return cycles


def test_no_import_cycle_among_the_project_modules():
    cycles = [" -> ".join(cycle) for cycle in import_cycles(import_graph())]
    assert cycles == [], "import cycles: " + "; ".join(cycles)


def test_tasks_and_flows_never_import_the_cli():
    # The CLI is the composition root: it imports tasks/ and flows/, nothing imports it back.
    graph = import_graph()
    assert "reid.cli" in graph
    offenders = sorted(name for name, targets in graph.items()
                       if targets & CLI_MODULES and name not in CLI_MODULES)
    assert offenders == []


def test_the_graph_sees_lazy_relative_and_type_only_imports_and_names_a_cycle(tmp_path):
    # The checks above must be able to fail: a cycle through a function-level import, a
    # relative import and an import under TYPE_CHECKING is found and named.
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("A = 1\n\ndef load():\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import c\nif TYPE_CHECKING:\n"
        "    from pkg.a import A\n")
    (package / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(),
                     "pkg.sub.b": {"pkg.a", "pkg.sub.c"}, "pkg.sub.c": set()}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def module_lines() -> dict[str, int]:
    return {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
            for package in PROJECT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def test_no_module_is_over_400_lines():
    over = {path: count for path, count in module_lines().items() if count > MAX_MODULE_LINES}
    assert over == {}, f"split these by responsibility (> {MAX_MODULE_LINES} lines): {over}"


# ---------------------------------------------------------------------------- environment first
# tasks/__init__.py and flows/__init__.py import tasks.environment, so its defaults (telemetry
# off, embedded store) are set before any module of those packages loads mlflow or prefect,
# whatever an import sorter does to the modules' own imports.
WATCH_FIRST_IMPORTS = """
import importlib, json, os, sys
keys, seen = sys.argv[2].split(","), {}

class Watch:  # records the environment when mlflow / prefect is first imported
    def find_spec(self, name, path=None, target=None):
        if name in ("mlflow", "prefect") and name not in seen:
            seen[name] = {key: os.environ.get(key) for key in keys}

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(json.dumps({"first_imports": seen, "after": {key: os.environ.get(key) for key in keys}}))
"""


@pytest.mark.parametrize("module, loads", [("tasks.tracking", {"mlflow"}),
                                           ("flows.pipeline", {"mlflow", "prefect"})])
def test_telemetry_is_off_before_mlflow_or_prefect_loads(module, loads, tmp_path):
    from tasks.environment import PREFECT_LOGS, TELEMETRY_OFF
    expected = {**TELEMETRY_OFF, **PREFECT_LOGS}
    env = {key: value for key, value in os.environ.items()
           if key not in expected and key != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run([sys.executable, "-c", WATCH_FIRST_IMPORTS, module, ",".join(expected)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["after"] == expected
    assert set(report["first_imports"]) >= loads
    for name, seen in report["first_imports"].items():
        assert seen == expected, f"{name} was imported before tasks.environment ran: {seen}"
