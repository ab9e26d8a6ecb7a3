"""Layering rules of DESIGN.md: imports only point down; the library never imports orchestration."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_LIBRARY = {"prefect", "mlflow", "tasks", "flows", "dvc"}
COMPOSITION_ROOT = ROOT / "reid" / "cli.py"


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
        if path == COMPOSITION_ROOT:
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
