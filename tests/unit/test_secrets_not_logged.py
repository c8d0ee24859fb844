"""Secrets never reach a log (issue #16): every distributed service is started as its own process with
known, distinctive secrets (object-store keys, the Kafka SASL password, a static token, a JWT HMAC key, a
TLS private key), DEBUG logging, and Kafka and the object store unreachable, so that the failure paths
(readiness checks, retries, library exceptions) all log. Once each has logged its readiness failure it is
stopped, and its whole output is searched for every secret, raw and base64-encoded at any alignment.

The variables of the TLS, auth and Kafka-security work are passed even where a branch does not know them
yet (unknown variables are ignored), with files that are valid for them, so this keeps testing the same
thing once they are read."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
import trustme

from tests.conftest import REPO_ROOT, ServiceProcess

SERVICES = ("jobs", "ingest", "tfrecords", "trainer", "evaluator", "inference", "model_server")
# Nothing listens on the discard port: every connection to Kafka, the object store and the model server fails.
UNREACHABLE = "127.0.0.1:9"
# What each log shows once the failure paths have run: a service's readiness check found its dependencies
# down (services/common/grpc_server.py); the model server, which has none, has started.
READY_TO_JUDGE = {name: "dependencies unreachable" for name in SERVICES} | {"model_server": '"started"'}
START_SECONDS = 240  # seven processes importing TensorFlow at once on a loaded two-core machine


# --------------------------------------------------------------------------- the leak check


def encodings(secret: str) -> set[str]:
    """`secret` as it could appear in a log: itself, and base64 (standard and URL-safe) of it at each of
    the three alignments it can have inside a longer encoded value (as in `user:password` of HTTP Basic
    or SASL PLAIN's `\\0user\\0password`): only the characters fully determined by the secret's bytes."""
    data = secret.encode()
    forms = {secret}
    for offset, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.b64encode(b"\0" * offset + data).decode().rstrip("=")
        core = encoded[skip:len(encoded) - 1]  # the last character may mix in padding bits
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return {form for form in forms if len(form) >= 12}


def pem_secret_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM private key: any one of them in a log gives part of the key away."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----") and len(line) >= 16]


def leaks(text: str, secrets: dict[str, list[str]]) -> list[str]:
    """The names of the secrets found in `text` in any form."""
    return sorted(name for name, values in secrets.items()
                  if any(form in text for value in values for form in encodings(value)))


# --------------------------------------------------------------------------- the services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def secrets_env(tmp_path_factory) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The services' environment, and the secrets in it by name."""
    root = tmp_path_factory.mktemp("secrets")
    marker = uuid.uuid4().hex
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    key_pem = cert.private_key_pem.bytes()
    (root / "key.pem").write_bytes(key_pem)
    token = f"tok-{marker}-bearer-Zq7"
    (root / "tokens.yaml").write_text(f"- subject: leak-test\n  role: admin\n  token: {token}\n")
    jwt_key = f"jwt-hmac-{marker}-{uuid.uuid4().hex}"
    (root / "jwt.key").write_text(jwt_key)
    secrets = {
        "CLASSFORGE_S3_ACCESS_KEY": [f"s3-access-{marker}-AK"],
        "CLASSFORGE_S3_SECRET_KEY": [f"s3-secret-{marker}-SK9"],
        "CLASSFORGE_KAFKA_SASL_PASSWORD": [f"sasl-password-{marker}-PW"],
        "token in CLASSFORGE_AUTH_TOKENS_FILE": [token],
        "key in CLASSFORGE_AUTH_JWT_KEY_FILE": [jwt_key],
        "key in CLASSFORGE_TLS_KEY": pem_secret_lines(key_pem),
    }
    env = {
        "CLASSFORGE_KAFKA_BOOTSTRAP": UNREACHABLE, "CLASSFORGE_S3_ENDPOINT": UNREACHABLE,
        "CLASSFORGE_MODEL_SERVER": UNREACHABLE,
        "CLASSFORGE_S3_ACCESS_KEY": secrets["CLASSFORGE_S3_ACCESS_KEY"][0],
        "CLASSFORGE_S3_SECRET_KEY": secrets["CLASSFORGE_S3_SECRET_KEY"][0],
        "CLASSFORGE_S3_SECURE": "true", "CLASSFORGE_S3_CA_BUNDLE": str(root / "ca.pem"),
        "CLASSFORGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CLASSFORGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CLASSFORGE_KAFKA_SASL_USERNAME": "leak-test",
        "CLASSFORGE_KAFKA_SASL_PASSWORD": secrets["CLASSFORGE_KAFKA_SASL_PASSWORD"][0],
        "CLASSFORGE_TLS_CERT": str(root / "cert.pem"), "CLASSFORGE_TLS_KEY": str(root / "key.pem"),
        "CLASSFORGE_TLS_CA": str(root / "ca.pem"), "CLASSFORGE_GRPC_PLAINTEXT": "true",
        # The tokens and the JWT key are read only with authentication on: the valid tokens file turns it on.
        "CLASSFORGE_AUTH_TOKENS_FILE": str(root / "tokens.yaml"),
        "CLASSFORGE_AUTH_JWT_KEY_FILE": str(root / "jwt.key"), "CLASSFORGE_AUTH_JWT_ALGORITHMS": "HS256",
        "CLASSFORGE_LOG_LEVEL": "DEBUG", "CLASSFORGE_LISTEN_HOST": "127.0.0.1", "CLASSFORGE_GRACE_SECONDS": "2",
        "CLASSFORGE_MODEL_BASE_PATH": str(root / "serving"),
        "CLASSFORGE_TRAINER_WORK_DIR": str(root / "trainer"), "CLASSFORGE_EVALUATOR_WORK_DIR": str(root / "evaluator"),
        "CLASSFORGE_TFRECORDS_SCRATCH_DIR": str(root / "tfrecords"),
        "CLASSFORGE_INGEST_WORK_DIR": str(root / "ingest"), "CLASSFORGE_INGEST_LOCAL_ROOTS": str(root / "data"),
        "CLASSFORGE_HTTP_PORT": "-1", "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    (root / "serving").mkdir()
    return env, secrets


def wait_for_logs(services: dict[str, ServiceProcess], deadline: float) -> None:
    waiting = set(services)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            service = services[name]
            if READY_TO_JUDGE[name] in service.log():
                waiting.discard(name)
            elif not service.alive():
                pytest.fail(f"{name} exited ({service.proc.returncode}) before logging "
                            f"{READY_TO_JUDGE[name]!r}:\n{service.log()[-5000:]}")
        if waiting:
            time.sleep(0.25)  # polling the logs for the condition above
    assert not waiting, "never logged their readiness failure: " + ", ".join(
        f"{name}:\n{services[name].log()[-3000:]}" for name in sorted(waiting))


def test_no_service_logs_a_secret_on_its_failure_paths(secrets_env, tmp_path):
    env, secrets = secrets_env
    services: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:  # all at once: the slow imports overlap
            ports = {"CLASSFORGE_GRPC_PORT": str(free_port()), "CLASSFORGE_METRICS_PORT": str(free_port())}
            services[name] = ServiceProcess(name, {**env, **ports}, tmp_path)
        wait_for_logs(services, time.monotonic() + START_SECONDS)
    finally:
        for service in services.values():
            service.terminate(timeout=30)
    found = {name: leaks(service.log(), secrets) for name, service in services.items()}
    assert not any(found.values()), f"secrets in the logs: {found}"
    for name, service in services.items():
        if name != "model_server":  # DEBUG was on: the quiet lines were written too
            assert '"level": "DEBUG"' in service.log(), f"{name} wrote no DEBUG line:\n{service.log()[-2000:]}"


@pytest.mark.parametrize(("variable", "value"), [("CLASSFORGE_GRPC_PORT", "not-a-port"),
                                                  ("CLASSFORGE_KAFKA_BOOTSTRAP", "")])
def test_a_settings_error_beside_the_secrets_does_not_print_them(secrets_env, variable, value):
    env, secrets = secrets_env
    run_env = {**os.environ, **env, variable: value}
    if not value:
        del run_env[variable]  # a required variable missing
    result = subprocess.run([sys.executable, "-m", "services.jobs.main"], cwd=REPO_ROOT, env=run_env,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and variable in output, output
    assert leaks(output, secrets) == [], output


# --------------------------------------------------------------------------- the check can fail


def test_the_check_catches_a_service_log_line_that_leaks(secrets_env, tmp_path):
    """A process that logs through the services' own JSON logging, leaking each secret in one of its forms,
    is caught by the same check, secret by secret; a log without them is not."""
    env, secrets = secrets_env
    script = (
        "import base64, os, sys\n"
        "from pathlib import Path\n"
        "from services.common.logs import configure_logging\n"
        "import logging\n"
        "configure_logging('leaky', 'DEBUG')\n"
        "log = logging.getLogger('classforge.leaky')\n"
        "log.info('connecting', extra={'access_key': os.environ['CLASSFORGE_S3_ACCESS_KEY']})\n"
        "log.debug('auth header', extra={'basic': base64.b64encode(b'leak-test:' + "
        "os.environ['CLASSFORGE_KAFKA_SASL_PASSWORD'].encode()).decode()})\n"
        "log.warning('bad key %s', Path(os.environ['CLASSFORGE_TLS_KEY']).read_text())\n"
        "print('token', base64.urlsafe_b64encode(b'x' + Path(os.environ['CLASSFORGE_AUTH_TOKENS_FILE'])"
        ".read_bytes()).decode(), file=sys.stderr)\n"
        "log.error('nothing secret here')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "nothing secret here" in output, output
    assert leaks(output, secrets) == sorted(["CLASSFORGE_S3_ACCESS_KEY", "CLASSFORGE_KAFKA_SASL_PASSWORD",
                                             "key in CLASSFORGE_TLS_KEY", "token in CLASSFORGE_AUTH_TOKENS_FILE"])
    assert leaks(output.replace(env["CLASSFORGE_S3_ACCESS_KEY"], "<redacted>"), secrets) == sorted(
        ["CLASSFORGE_KAFKA_SASL_PASSWORD", "key in CLASSFORGE_TLS_KEY", "token in CLASSFORGE_AUTH_TOKENS_FILE"])


def test_encodings_cover_every_alignment_of_a_secret_inside_base64():
    secret = "s3cr3t-value-0123456789abcdef"
    for prefix in (b"", b"u", b"us", b"user:", b"\0user\0"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = f"header={encode(prefix + secret.encode() + b'tail').decode()}"
            assert leaks(text, {"s": [secret]}) == ["s"], (prefix, encode)
    assert leaks("s3cr3t-value-0123456789abcde", {"s": [secret]}) == []  # one character short is not it
