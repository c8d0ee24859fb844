"""The security settings of the infrastructure clients (issue #16): Kafka SSL and SASL/SCRAM, the object
store's CA bundle, /metrics over TLS. Checked at start with one-line errors naming the variable; the
passwords never show in a repr or a log line. Nothing here reaches a broker or a store."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaConfigurationError

from services.common.events.kafka import KafkaBusConfig, KafkaSecurity
from services.common.metrics import metrics_tls_files, serve_metrics
from services.common.settings import ServiceSettings, SettingsError
from services.common.storage.minio import MinioObjectStore

REPO_ROOT = Path(__file__).resolve().parents[2]
SASL_PASSWORD = "scram-pw-4f1c9a"  # distinctive, so finding it in text means it leaked
S3_SECRET = "s3-secret-8d2e7b"
BASE = {"CLASSFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CLASSFORGE_S3_ENDPOINT": "127.0.0.1:9",
        "CLASSFORGE_S3_ACCESS_KEY": "ak", "CLASSFORGE_S3_SECRET_KEY": S3_SECRET}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def settings(**env: str) -> ServiceSettings:
    return ServiceSettings.load({**BASE, **env})


def sasl_ssl(ca_file: str, **more: str) -> dict[str, str]:
    return {"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CLASSFORGE_KAFKA_SSL_CA": ca_file,
            "CLASSFORGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "CLASSFORGE_KAFKA_SASL_USERNAME": "classforge",
            "CLASSFORGE_KAFKA_SASL_PASSWORD": SASL_PASSWORD, **more}


def test_plaintext_stays_the_default_and_adds_no_tls_or_sasl_options():
    config = KafkaBusConfig.from_settings(settings(), client_id="jobs")
    assert config.security.client_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_every_kafka_client_the_same_tls_and_scram_options(ca_file):
    config = KafkaBusConfig.from_settings(settings(**sasl_ssl(ca_file, CLASSFORGE_KAFKA_SECURITY_PROTOCOL="sasl_ssl",
                                                              CLASSFORGE_KAFKA_SASL_MECHANISM="scram-sha-256")),
                                          client_id="jobs")
    options = config.security.client_options()
    assert options == {"security_protocol": "SASL_SSL", "ssl_cafile": ca_file, "ssl_certfile": None,
                       "ssl_keyfile": None, "ssl_check_hostname": True, "sasl_mechanism": "SCRAM-SHA-256",
                       "sasl_plain_username": "classforge", "sasl_plain_password": SASL_PASSWORD}
    # The names are kafka-python's own: each client class accepts every one of them.
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(options) <= set(client.DEFAULT_CONFIG), client.__name__


def test_ssl_with_a_client_certificate_passes_both_files(ca, ca_file, tmp_path):
    cert = ca.issue_cert("jobs")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    security = KafkaSecurity.from_settings(settings(
        CLASSFORGE_KAFKA_SECURITY_PROTOCOL="SSL", CLASSFORGE_KAFKA_SSL_CA=ca_file,
        CLASSFORGE_KAFKA_SSL_CERT=str(tmp_path / "client.pem"), CLASSFORGE_KAFKA_SSL_KEY=str(tmp_path / "client.key")))
    options = security.client_options()
    assert (options["ssl_certfile"], options["ssl_keyfile"]) == (str(tmp_path / "client.pem"),
                                                                 str(tmp_path / "client.key"))
    assert "sasl_mechanism" not in options


@pytest.mark.parametrize(("env", "variable"), [
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "CLASSFORGE_KAFKA_SECURITY_PROTOCOL"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "CLASSFORGE_KAFKA_SSL_CA"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SSL", "CLASSFORGE_KAFKA_SSL_CA": "/nonexistent/ca.pem"},
     "CLASSFORGE_KAFKA_SSL_CA"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SSL", "CLASSFORGE_KAFKA_SSL_CA": "{ca}",
      "CLASSFORGE_KAFKA_SSL_CERT": "{ca}"}, "CLASSFORGE_KAFKA_SSL_KEY"),
    ({"CLASSFORGE_KAFKA_SSL_CA": "{ca}"}, "CLASSFORGE_KAFKA_SSL_CA"),  # set, but PLAINTEXT would ignore it
    ({"CLASSFORGE_KAFKA_SASL_PASSWORD": "x"}, "CLASSFORGE_KAFKA_SASL_PASSWORD"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CLASSFORGE_KAFKA_SASL_MECHANISM": "PLAIN",
      "CLASSFORGE_KAFKA_SASL_USERNAME": "u", "CLASSFORGE_KAFKA_SASL_PASSWORD": "p"}, "CLASSFORGE_KAFKA_SASL_MECHANISM"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CLASSFORGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
      "CLASSFORGE_KAFKA_SASL_PASSWORD": "p"}, "CLASSFORGE_KAFKA_SASL_USERNAME"),
    ({"CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CLASSFORGE_KAFKA_SSL_CA": "{ca}",
      "CLASSFORGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "CLASSFORGE_KAFKA_SASL_USERNAME": "u"},
     "CLASSFORGE_KAFKA_SASL_PASSWORD"),
])
def test_an_inconsistent_kafka_security_configuration_is_one_line_naming_the_variable(env, variable, ca_file):
    env = {name: value.format(ca=ca_file) for name, value in env.items()}
    with pytest.raises(SettingsError) as raised:
        KafkaBusConfig.from_settings(settings(**env), client_id="jobs")
    message = str(raised.value)
    assert variable in message and "\n" not in message


def test_passwords_are_not_in_the_repr_of_the_settings_or_the_bus_config(ca_file):
    loaded = settings(**sasl_ssl(ca_file))
    config = KafkaBusConfig.from_settings(loaded, client_id="jobs")
    for text in (repr(loaded), repr(config), repr(config.security), str(config)):
        assert SASL_PASSWORD not in text and S3_SECRET not in text
    assert "kafka_sasl_username='classforge'" in repr(loaded)  # the rest is still there to debug with


def test_kafka_pythons_debug_log_of_the_admin_configuration_does_not_show_the_password(ca_file, caplog):
    """KafkaAdminClient logs every option it is given at DEBUG before checking them; an unknown option
    makes it stop right after that line, before it touches the network."""
    options = KafkaSecurity.from_settings(settings(**sasl_ssl(ca_file))).client_options()
    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        with pytest.raises(KafkaConfigurationError):
            KafkaAdminClient(bootstrap_servers="127.0.0.1:9", not_an_option=1, **options)
    assert "sasl_plain_username" in caplog.text  # the line was logged...
    assert SASL_PASSWORD not in caplog.text  # ...without the password


def test_the_object_store_repr_shows_no_secret_and_its_ca_bundle_needs_tls(ca_file):
    store = MinioObjectStore.from_settings(settings(CLASSFORGE_S3_SECURE="true", CLASSFORGE_S3_CA_BUNDLE=ca_file))
    assert S3_SECRET not in repr(store) and "127.0.0.1:9" in repr(store)
    with pytest.raises(SettingsError, match="CLASSFORGE_S3_CA_BUNDLE.*CLASSFORGE_S3_SECURE"):
        MinioObjectStore.from_settings(settings(CLASSFORGE_S3_CA_BUNDLE=ca_file))
    with pytest.raises(SettingsError, match="CLASSFORGE_S3_CA_BUNDLE='/nonexistent/ca.pem' is not a file"):
        MinioObjectStore.from_settings(settings(CLASSFORGE_S3_SECURE="true",
                                                CLASSFORGE_S3_CA_BUNDLE="/nonexistent/ca.pem"))


@pytest.mark.parametrize(("env", "variable"), [
    ({}, "CLASSFORGE_TLS_CERT"),
    ({"CLASSFORGE_TLS_CERT": "{ca}"}, "CLASSFORGE_TLS_KEY"),
    ({"CLASSFORGE_TLS_CERT": "/nonexistent/cert.pem", "CLASSFORGE_TLS_KEY": "{ca}"}, "CLASSFORGE_TLS_CERT"),
])
def test_metrics_over_tls_needs_the_certificate_and_key_files(env, variable, ca_file):
    loaded = settings(CLASSFORGE_METRICS_TLS="true", **{name: value.format(ca=ca_file) for name, value in env.items()})
    with pytest.raises(SettingsError, match=variable):
        metrics_tls_files(loaded)
    assert metrics_tls_files(settings(**{name: value.format(ca=ca_file) for name, value in env.items()})) == {}


def test_metrics_are_served_over_https_to_a_client_that_trusts_the_ca_and_not_over_http(ca, ca_file, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    files = metrics_tls_files(settings(CLASSFORGE_METRICS_TLS="1", CLASSFORGE_TLS_CERT=str(tmp_path / "server.pem"),
                                       CLASSFORGE_TLS_KEY=str(tmp_path / "server.key")))
    server = serve_metrics(0, "127.0.0.1", **files)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=5,
                                    context=ssl.create_default_context(cafile=ca_file)) as reply:
            assert b"classforge_grpc_requests_total" in reply.read()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # a CA it does not trust
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=5,
                                   context=ssl.create_default_context(cafile=_other_ca(tmp_path)))
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext HTTP gets no metrics
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
        server.server_close()


def _other_ca(tmp_path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_a_renewed_metrics_certificate_is_served_from_the_next_connection_without_a_restart(ca, ca_file, tmp_path):
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"

    def install(issuer: trustme.CA) -> None:
        issued = issuer.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert_path))
        issued.private_key_pem.write_to_path(str(key_path))

    def fetch(trusted_ca: str) -> bytes:
        with urllib.request.urlopen(f"https://127.0.0.1:{server.server_port}/metrics", timeout=5,
                                    context=ssl.create_default_context(cafile=trusted_ca)) as reply:
            return reply.read()

    install(ca)
    server = serve_metrics(0, "127.0.0.1", certfile=str(cert_path), keyfile=str(key_path))
    try:
        assert fetch(ca_file)
        renewed_by = trustme.CA()
        renewed_ca = tmp_path / "renewed-ca.pem"
        renewed_by.cert_pem.write_to_path(str(renewed_ca))
        install(renewed_by)
        assert b"classforge_grpc_requests_total" in fetch(str(renewed_ca))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # the old one is gone
            fetch(ca_file)
        key_path.write_text("half-written")  # a pair that does not load yet keeps the current certificate
        assert fetch(str(renewed_ca))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("broken", "variable"), [
    ({"CLASSFORGE_KAFKA_SSL_CA": "/nonexistent/ca.pem"}, "CLASSFORGE_KAFKA_SSL_CA"),
    ({"CLASSFORGE_KAFKA_SASL_MECHANISM": "PLAIN"}, "CLASSFORGE_KAFKA_SASL_MECHANISM"),
    ({"CLASSFORGE_METRICS_TLS": "true"}, "CLASSFORGE_TLS_CERT"),
])
def test_a_service_with_broken_security_settings_exits_2_with_one_line_and_no_secret(broken, variable, ca_file):
    """The whole start-up path: the service's main, not only the settings classes. The switches of the other
    #16 checks (gRPC TLS, auth) are set so that only the setting under test can stop the service."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                                                      str(REPO_ROOT / "gen/python")]),
           **BASE, **sasl_ssl(ca_file), "CLASSFORGE_METRICS_PORT": "-1", "CLASSFORGE_GRPC_PORT": "1",
           "CLASSFORGE_GRPC_PLAINTEXT": "true", "CLASSFORGE_AUTH_DISABLED": "true", **broken}
    result = subprocess.run([sys.executable, "-m", "services.jobs.main"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    for secret in (SASL_PASSWORD, S3_SECRET):
        assert secret not in result.stdout + result.stderr
