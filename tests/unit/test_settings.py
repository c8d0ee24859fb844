import subprocess
import sys

import pytest

from services.common.settings import ServiceSettings, SettingsError

REQUIRED = {
    "CLASSFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "CLASSFORGE_S3_ENDPOINT": "127.0.0.1:2",
    "CLASSFORGE_S3_ACCESS_KEY": "a",
    "CLASSFORGE_S3_SECRET_KEY": "b",
}


def test_defaults_and_parsing():
    settings = ServiceSettings.load({**REQUIRED, "CLASSFORGE_S3_SECURE": "true", "CLASSFORGE_GRACE_SECONDS": "2.5"})
    assert settings.kafka_bootstrap == "127.0.0.1:1"
    assert settings.s3_secure is True
    assert settings.grace_seconds == 2.5
    assert settings.s3_bucket == "classforge"
    assert settings.ports_for("jobs") == (50051, 9101)


def test_explicit_ports_override_service_defaults():
    settings = ServiceSettings.load({**REQUIRED, "CLASSFORGE_GRPC_PORT": "6000", "CLASSFORGE_METRICS_PORT": "-1"})
    assert settings.ports_for("jobs") == (6000, -1)


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_missing_required_variable_is_named(missing):
    environ = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(SettingsError, match=f"^{missing} is required"):
        ServiceSettings.load(environ)


@pytest.mark.parametrize(("name", "value"), [
    ("CLASSFORGE_GRPC_PORT", "fifty"), ("CLASSFORGE_S3_SECURE", "maybe"), ("CLASSFORGE_GRACE_SECONDS", "1s")])
def test_malformed_value_is_named(name, value):
    with pytest.raises(SettingsError, match=f"^{name}='{value}' is not a valid"):
        ServiceSettings.load({**REQUIRED, name: value})


def test_service_exits_with_one_line_naming_the_missing_variable():
    env = {k: v for k, v in REQUIRED.items() if k != "CLASSFORGE_S3_ENDPOINT"}
    result = subprocess.run([sys.executable, "-m", "services.jobs.main"], env={"PATH": "/usr/bin", **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CLASSFORGE_S3_ENDPOINT is required" in lines[0]
