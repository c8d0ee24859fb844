"""Kafka, MinIO and Prometheus with TLS (issue #16), as deploy/local starts them in TLS mode, reached by the
real clients the services use (KafkaEventBus, MinioObjectStore) configured from the same environment
variables (deploy/local/env.sh output -> ServiceSettings).

The module starts its own instances with a throw-away CA (trustme) in a temporary state directory on free
ports, never the shared ones on 19092/19000/19090, and stops them at the end even when a test fails.
Plaintext clients, clients that do not trust the CA, a wrong SCRAM password and the old default MinIO
credentials are all refused.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import pytest
import trustme

from classforge.v1 import events_pb2
from services.common.errors import Unavailable
from services.common.events import InMemoryProcessedEvents
from services.common.events.envelope import new_event
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.settings import ServiceSettings
from services.common.storage.minio import MinioObjectStore
from tests.contracts.event_bus_contract import Recorder, wait_until

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL = REPO_ROOT / "deploy" / "local"
SHARED_PORTS = {19092, 19093, 19094, 19000, 19001, 19090}
# Fail fast on the short timeouts a refused client should show, instead of kafka-python's defaults.
FAST = dict(backoff_s=0.05, session_timeout_ms=6000, heartbeat_interval_ms=1000, poll_timeout_ms=100,
            publish_timeout_s=5.0, request_timeout_ms=3000)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports, none of the shared instance's (held open together, so distinct)."""
    sockets = []
    try:
        while len(sockets) < n:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] in SHARED_PORTS:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TlsInfra:
    """The TLS instances: their environment for clients (what env.sh prints), the CA, the SCRAM port."""

    def __init__(self, env: dict[str, str], client_env: dict[str, str], ca_file: str, state: Path):
        self.env, self.client_env, self.ca_file, self.state = env, client_env, ca_file, state
        self.sasl_bootstrap = f"127.0.0.1:{env['CLASSFORGE_INFRA_KAFKA_SASL_PORT']}"
        self.credentials = dict(line.split("=", 1) for line in (state / "credentials.env").read_text().splitlines()
                                if line and not line.startswith("#"))

    def settings(self, **overrides: str) -> ServiceSettings:
        return ServiceSettings.load({**self.client_env, **overrides})


def run_script(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tls_infra(tmp_path_factory) -> TlsInfra:
    base = tmp_path_factory.mktemp("infra-tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    tls_dir = base / "tls"
    tls_dir.mkdir()
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    (tls_dir / "server.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(tls_dir / "server.key"))

    kafka, controller, sasl, minio, console, prometheus = free_ports(6)
    state = base / "state"
    env = {**os.environ, "CLASSFORGE_INFRA_DIR": str(state), "CLASSFORGE_INFRA_TLS_DIR": str(tls_dir),
           "CLASSFORGE_INFRA_KAFKA_PORT": str(kafka), "CLASSFORGE_INFRA_KAFKA_CONTROLLER_PORT": str(controller),
           "CLASSFORGE_INFRA_KAFKA_SASL_PORT": str(sasl), "CLASSFORGE_INFRA_MINIO_PORT": str(minio),
           "CLASSFORGE_INFRA_MINIO_CONSOLE_PORT": str(console), "CLASSFORGE_INFRA_PROMETHEUS_PORT": str(prometheus),
           "CLASSFORGE_READY_TIMEOUT": "90"}
    # Only this module's own instances may ever be stopped below.
    assert Path(env["CLASSFORGE_INFRA_DIR"]).is_relative_to(base)
    started = time.monotonic()
    try:
        up = run_script([str(LOCAL / "infra.sh"), "up"], env, timeout=150)
        assert up.returncode == 0, f"TLS infrastructure did not start:\n{up.stderr[-4000:]}"
        print(f"\nTLS Kafka, MinIO and Prometheus up in {time.monotonic() - started:.1f}s")
        printed = run_script([str(LOCAL / "env.sh")], env, timeout=30)
        assert printed.returncode == 0, printed.stderr
        client_env = {}
        for line in printed.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            client_env[name] = shlex.split(value)[0]
        yield TlsInfra(env, client_env, str(tls_dir / "ca.pem"), state)
    finally:
        down = run_script([str(LOCAL / "infra.sh"), "down"], env, timeout=120)
        assert down.returncode == 0, down.stderr


def make_bus(settings: ServiceSettings, **overrides) -> KafkaEventBus:
    """A service's bus, as KafkaBusConfig.from_settings makes it, on a topic of its own with short timeouts."""
    topic = f"test.tls.{uuid.uuid4().hex[:10]}"
    config = KafkaBusConfig.from_settings(settings, client_id="tls-test")
    options = {**FAST, "topic": topic, "dead_letter_topic": f"{topic}.dlq", "security": config.security,
               **overrides}
    return KafkaEventBus(KafkaBusConfig(config.bootstrap, config.client_id, **options), InMemoryProcessedEvents())


def assert_delivers(bus: KafkaEventBus) -> None:
    try:
        got = Recorder()
        bus.subscribe(f"tls-{uuid.uuid4().hex[:8]}", got)
        event = new_event(f"job-{uuid.uuid4().hex[:8]}", "tls-test", job_submitted=events_pb2.JobSubmitted())
        bus.publish(event)
        wait_until(lambda: got.has(event.event_id), 60, "the event to come back over TLS")
        assert got.events == [event]
    finally:
        bus.close()


def assert_refused(bus: KafkaEventBus) -> None:
    try:
        with pytest.raises(Unavailable):
            bus.ping()
    finally:
        bus.close()


# Kafka

def test_the_printed_environment_configures_ssl_for_every_client(tls_infra):
    env = tls_infra.client_env
    assert env["CLASSFORGE_KAFKA_SECURITY_PROTOCOL"] == "SSL" and env["CLASSFORGE_S3_SECURE"] == "true"
    assert env["CLASSFORGE_KAFKA_SSL_CA"] == env["CLASSFORGE_S3_CA_BUNDLE"] == tls_infra.ca_file
    assert env["CLASSFORGE_PROMETHEUS_URL"].startswith("https://")


def test_events_are_published_and_consumed_over_ssl(tls_infra):
    assert_delivers(make_bus(tls_infra.settings()))


def test_a_plaintext_kafka_client_is_refused(tls_infra):
    assert_refused(make_bus(tls_infra.settings(CLASSFORGE_KAFKA_SECURITY_PROTOCOL="PLAINTEXT",
                                               CLASSFORGE_KAFKA_SSL_CA="")))
    # The broker's own readiness probe without TLS gets no Metadata answer either.
    probe = run_script(["python3", str(LOCAL / "kafka" / "probe.py"), "127.0.0.1",
                        tls_infra.env["CLASSFORGE_INFRA_KAFKA_PORT"]], tls_infra.env, timeout=30)
    assert probe.returncode == 1, probe.stdout


def test_a_kafka_client_that_does_not_trust_the_ca_is_refused(tls_infra, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    assert_refused(make_bus(tls_infra.settings(CLASSFORGE_KAFKA_SSL_CA=str(other_ca))))


def scram(tls_infra: TlsInfra, password: str) -> ServiceSettings:
    return tls_infra.settings(CLASSFORGE_KAFKA_BOOTSTRAP=tls_infra.sasl_bootstrap,
                              CLASSFORGE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                              CLASSFORGE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                              CLASSFORGE_KAFKA_SASL_USERNAME=tls_infra.credentials["CLASSFORGE_KAFKA_SASL_USERNAME"],
                              CLASSFORGE_KAFKA_SASL_PASSWORD=password)


def test_sasl_ssl_with_scram_delivers_with_the_right_password(tls_infra):
    assert_delivers(make_bus(scram(tls_infra, tls_infra.credentials["CLASSFORGE_KAFKA_SASL_PASSWORD"])))


def test_sasl_ssl_with_a_wrong_password_is_refused(tls_infra):
    assert_refused(make_bus(scram(tls_infra, "not-the-password")))


# MinIO

def test_objects_are_stored_and_read_over_https_with_the_ca_bundle(tls_infra):
    store = MinioObjectStore.from_settings(tls_infra.settings(), bucket=f"tls-{uuid.uuid4().hex[:8]}")
    store.ping()
    info = store.put_bytes("greeting.txt", b"over tls")
    assert store.get_bytes("greeting.txt") == b"over tls" and store.stat("greeting.txt") == info
    store.delete("greeting.txt")


def test_an_object_store_client_without_the_ca_or_without_tls_is_refused(tls_infra):
    without_ca = MinioObjectStore.from_settings(tls_infra.settings(CLASSFORGE_S3_CA_BUNDLE=""))
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        without_ca.ping()
    plain_http = MinioObjectStore.from_settings(tls_infra.settings(CLASSFORGE_S3_SECURE="false",
                                                                   CLASSFORGE_S3_CA_BUNDLE=""))
    with pytest.raises(Unavailable):
        plain_http.ping()


def test_minio_runs_with_generated_credentials_not_the_old_defaults(tls_infra):
    credentials = tls_infra.state / "credentials.env"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert "classforge-secret" not in credentials.read_text()
    old_defaults = MinioObjectStore.from_settings(tls_infra.settings(CLASSFORGE_S3_ACCESS_KEY="classforge",
                                                                     CLASSFORGE_S3_SECRET_KEY="classforge-secret"))
    with pytest.raises(Unavailable, match="refused access"):
        old_defaults.ping()


# Prometheus

def prometheus_query(url: str, context: ssl.SSLContext | None = None) -> dict:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': 'up'})}"
    with closing(urllib.request.urlopen(address, timeout=5, context=context)) as reply:
        return json.load(reply)


def test_prometheus_answers_queries_over_https_to_a_client_that_trusts_the_ca(tls_infra):
    url = tls_infra.client_env["CLASSFORGE_PROMETHEUS_URL"]
    assert prometheus_query(url, ssl.create_default_context(cafile=tls_infra.ca_file))["status"] == "success"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        prometheus_query(url, ssl.create_default_context())


def test_prometheus_refuses_plain_http(tls_infra):
    plain = tls_infra.client_env["CLASSFORGE_PROMETHEUS_URL"].replace("https://", "http://")
    # Go's TLS server answers a plaintext request with 400 "Client sent an HTTP request to an HTTPS server".
    with pytest.raises(urllib.error.HTTPError) as refused:
        prometheus_query(plain)
    assert refused.value.code == 400
