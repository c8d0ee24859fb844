"""Shared test helpers: start a service as its own process, the way it runs in production; the
real infrastructure's addresses for the integration and fault tests.

Integration and fault tests run against the real Kafka, MinIO and Prometheus that deploy/local
starts (`make infra-up`; `make test` does it). When they are not reachable the tests fail with a
message saying so: they never fall back to in-memory stand-ins."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# What every harness that starts services as processes sets, explicitly: gRPC without TLS and no
# authentication (both refuse to start otherwise). The end-to-end test switches them on instead.
PLAINTEXT_NO_AUTH = {"CLASSFORGE_GRPC_PLAINTEXT": "true", "CLASSFORGE_AUTH_DISABLED": "true"}


class ServiceProcess:
    """A classforge service started with `python -m services.<name>.main`, logs to a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{name}.main"], cwd=REPO_ROOT,
                                     env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_service(tmp_path):
    started: list[ServiceProcess] = []

    def start(name: str, env: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(name, env, tmp_path)
        started.append(service)
        return service

    yield start
    for service in started:
        service.terminate()


def local_infra_credential(name: str) -> str:
    """A credential of the local infrastructure: the environment variable `name` when set, else what
    deploy/local generated into its state directory's credentials.env (there are no default credentials);
    "" when neither exists (the infra_addresses fixture then says how to get them)."""
    if os.environ.get(name):
        return os.environ[name]
    state = Path(os.environ.get("CLASSFORGE_INFRA_DIR") or REPO_ROOT / ".infra")
    try:
        lines = (state / "credentials.env").read_text().splitlines()
    except FileNotFoundError:
        return ""
    values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return values.get(name, "")


KAFKA = os.environ.get("CLASSFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
S3_ENDPOINT = os.environ.get("CLASSFORGE_S3_ENDPOINT", "127.0.0.1:19000")
S3_ACCESS_KEY = local_infra_credential("CLASSFORGE_S3_ACCESS_KEY")
S3_SECRET_KEY = local_infra_credential("CLASSFORGE_S3_SECRET_KEY")
PROMETHEUS = os.environ.get("CLASSFORGE_PROMETHEUS_URL", "http://127.0.0.1:19090")


def _reachable(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def infra_addresses() -> dict[str, str]:
    """The real infrastructure's addresses as service environment variables."""
    missing = [name for name, address in [("Kafka", KAFKA), ("MinIO", S3_ENDPOINT),
                                          ("Prometheus", urllib.parse.urlparse(PROMETHEUS).netloc)]
               if not _reachable(address)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not reachable: run `make infra-up` (or use `make test`)", pytrace=False)
    if not (S3_ACCESS_KEY and S3_SECRET_KEY):
        pytest.fail("no MinIO credentials: set CLASSFORGE_S3_ACCESS_KEY and CLASSFORGE_S3_SECRET_KEY, or start the "
                    "local infrastructure (`make infra-up` generates .infra/credentials.env)", pytrace=False)
    return {
        "CLASSFORGE_KAFKA_BOOTSTRAP": KAFKA,
        "CLASSFORGE_S3_ENDPOINT": S3_ENDPOINT,
        "CLASSFORGE_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "CLASSFORGE_S3_SECRET_KEY": S3_SECRET_KEY,
        **PLAINTEXT_NO_AUTH,
    }


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for_value(self, promql: str, predicate, timeout: float = 60.0) -> float:
        """Polls until the query's first sample satisfies predicate; returns that value."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                last = float(result[0]["value"][1])
                if predicate(last):
                    return last
            time.sleep(0.5)
        raise AssertionError(f"Prometheus query {promql!r} never satisfied the condition (last value {last})")


@pytest.fixture
def infra(infra_addresses) -> dict[str, str]:
    """The addresses plus an event topic of the test's own: services started by one test never replay
    the jobs of another (a fresh consumer group reads its topic from the start)."""
    return {**infra_addresses, "CLASSFORGE_KAFKA_TOPIC": f"it.{uuid.uuid4().hex[:10]}"}


@pytest.fixture(scope="session")
def prometheus(infra_addresses) -> Prometheus:
    return Prometheus(PROMETHEUS)
