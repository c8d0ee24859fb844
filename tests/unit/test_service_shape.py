"""Every service has the same shape (docs/architecture.md, Layout): domain.py (the logic: no gRPC, no Kafka),
servicer.py (thin translation; the shared interceptor maps errors), main.py (wiring), settings.py; and
nothing under services/ depends on test-only code."""

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
NAMES = ["ingest", "tfrecords", "trainer", "evaluator", "inference", "jobs", "model_server"]
DOMAIN = {"model_server": "core.py"}  # the stand-in's servable manager; every other service: domain.py
TRANSPORTS = ("grpc", "grpc_health", "grpc_reflection", "kafka", "minio", "starlette", "uvicorn")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("name", NAMES)
def test_a_service_has_domain_servicer_main_and_settings(name):
    folder = SERVICES / name
    for module in (DOMAIN.get(name, "domain.py"), "servicer.py", "main.py", "settings.py"):
        assert (folder / module).is_file(), f"services/{name}/{module} is missing"


@pytest.mark.parametrize("name", NAMES)
def test_a_domain_imports_no_transport(name):
    path = SERVICES / name / DOMAIN.get(name, "domain.py")
    direct = {module for module in _imports(path) if module.split(".")[0] in TRANSPORTS}
    assert not direct, f"{path.relative_to(SERVICES.parent)} imports {sorted(direct)}"


@pytest.mark.parametrize("name", NAMES)
def test_a_servicer_leaves_status_codes_to_the_interceptor(name):
    text = (SERVICES / name / "servicer.py").read_text()
    assert "StatusCode" not in text and ".abort(" not in text


def test_no_service_module_imports_test_code():
    offenders = [str(path.relative_to(SERVICES.parent)) for path in SERVICES.rglob("*.py")
                 if any(module.split(".")[0] in ("tests", "bench") for module in _imports(path))]
    assert offenders == []
