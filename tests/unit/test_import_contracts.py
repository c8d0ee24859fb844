"""The dependency rule (docs/architecture.md): a service package imports only services.common, the
generated protos and itself. `lint-imports` enforces it from pyproject.toml's [tool.importlinter]
contracts; the AST check here states the same rule in a few lines and proves it catches an offender."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "tfrecords", "trainer", "evaluator", "inference", "jobs", "model_server")
# Composition roots and client tools: they may import services, no service may import them.
ROOTS = ("cli", "embedded", "demo", "demo_data", "lineage", "progress")


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """Every module an AST imports (also inside functions), with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            if node.module == "services":  # `from services import trainer`
                found += [(f"services.{alias.name}", node.lineno) for alias in node.names]
    return found


def offending_imports(path: Path, service: str) -> list[str]:
    """The imports of one module of `service` that break the rule, as 'file:line module'."""
    bad = []
    for module, line in imported_modules(ast.parse(path.read_text(), str(path))):
        parts = module.split(".")
        if parts[0] != "services" or len(parts) < 2:
            continue
        if parts[1] in ROOTS or (parts[1] in SERVICES and parts[1] != service):
            bad.append(f"{path}:{line} {module}")
    return bad


def tree_offences(services_dir: Path) -> list[str]:
    bad = []
    for service in SERVICES:
        for path in sorted((services_dir / service).rglob("*.py")):
            bad += offending_imports(path, service)
    return bad


def test_no_service_imports_another_service_or_a_composition_root():
    assert tree_offences(ROOT / "services") == []


def test_the_check_catches_a_cross_service_import(tmp_path):
    evaluator = tmp_path / "services" / "evaluator"
    evaluator.mkdir(parents=True)
    (evaluator / "fine.py").write_text("from services.common.errors import NotFound\n"
                                       "from services.evaluator import cam\nfrom classforge.v1 import common_pb2\n")
    (evaluator / "offender.py").write_text(
        "import json\n\ndef rebuild():\n    from services.trainer.backbones import build_network\n"
        "    from services import cli\n    import services.tfrecords.reader\n")
    assert tree_offences(tmp_path / "services") == [
        f"{evaluator / 'offender.py'}:4 services.trainer.backbones",
        f"{evaluator / 'offender.py'}:5 services.cli",
        f"{evaluator / 'offender.py'}:6 services.tfrecords.reader"]


def test_the_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    # PYTHONPATH: analyse this tree, not the one an editable install of the package may point at.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
