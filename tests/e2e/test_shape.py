"""The package's shape, as the architecture page describes it: small modules and functions, one
root for every error, and a study file that is judged before any heavy library loads."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import harness
import harness.errors

PACKAGE = Path(harness.__file__).resolve().parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60  # lines of code: no blank lines, comments or docstrings
LONG_ALLOWED = {"harness/training/train.py:train"}  # the one loop, read top to bottom


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _code_lines(node: ast.AST, source: list[str]) -> int:
    """Lines of `node` that hold code (docstrings, comments and blank lines left out)."""
    doc = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    lines = range(node.lineno, (getattr(node, "end_lineno", None) or node.lineno) + 1)
    return sum(1 for n in lines if n not in doc and source[n - 1].strip()
               and not source[n - 1].strip().startswith("#"))


def test_no_module_is_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_over_60_lines_of_code_but_the_training_loop() -> None:
    long = {}
    for path in _modules():
        text = path.read_text()
        source = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.relative_to(PACKAGE.parent)}:{node.name}"
                if (n := _code_lines(node, source)) > MAX_FUNCTION_LINES \
                        and name not in LONG_ALLOWED:
                    long[name] = n
    assert not long, long


def test_every_error_class_derives_from_the_root_with_an_exit_status() -> None:
    classes = [c for _, c in inspect.getmembers(harness.errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == "harness.errors"]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, harness.errors.HarnessError), cls
        assert cls.exit_code in (1, 2), cls
    # Nowhere else does the harness define an exception of its own.
    for path in _modules():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & {"Exception", "ValueError", "RuntimeError", "LookupError"}, \
                    f"{path}: {node.name}"


HEAVY = ("torch", "optuna", "mlflow", "pandas", "matplotlib")


@pytest.mark.parametrize("command", ["run-study", "finalize", "status", "leaderboard"])
def test_a_bad_study_file_is_reported_without_heavy_imports(tmp_path: Path,
                                                            command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbudget: {n_trials: -1}\nsearch: {lr: [0.1]}\n")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", command,
                           str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "budget.n_trials: must be >= 1" in proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY), imported & set(HEAVY)  # its time: bench/startup.py


def test_no_import_cycle_among_harness_modules() -> None:
    """No module reaches itself through its imports (local imports included): the floors'
    contract keeps imports pointing down between floors, this keeps them acyclic within."""
    import grimp  # import-linter's graph builder

    graph = grimp.build_graph("harness")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if chain := graph.find_shortest_chain(importer=imported, imported=module):
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(cycles[:10])
