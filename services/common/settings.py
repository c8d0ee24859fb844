"""Service settings from environment variables.

One frozen settings object per service, read once at start-up. A missing or malformed
variable raises SettingsError whose message is one line naming the variable; a service's
main prints it and exits 2, so a misconfigured container fails fast instead of crash-looping
with a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

REQUIRED: Any = object()  # sentinel default: the variable must be set

# Default (gRPC port, metrics port) per service; the Prometheus configs in deploy/ use these.
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "jobs": (50051, 9101),
    "ingest": (50052, 9102),
    "tfrecords": (50053, 9103),
    "trainer": (50054, 9104),
    "evaluator": (50055, 9105),
    "inference": (50056, 9106),
    "model-server": (8500, 9107),
}
# Default REST port of the services that also answer HTTP (CLASSFORGE_HTTP_PORT).
DEFAULT_HTTP_PORTS: dict[str, int] = {
    "inference": 8086,
}


class SettingsError(ValueError):
    """A required variable is missing or a value cannot be parsed."""


def env(name: str, default: Any = REQUIRED, help: str = "", *, secret: bool = False) -> Any:
    """Declares a settings field read from the environment variable `name`. A `secret` field (a password,
    a key) is left out of the settings object's repr, so logging the settings never shows it."""
    return field(default=None, repr=not secret, metadata={"env": name, "default": default, "help": help})


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


T = TypeVar("T", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Base for settings classes. Fields declared with env() are read by load()."""

    @classmethod
    def load(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            name = f.metadata.get("env")
            if name is None:
                continue
            kind = {"int": int, "float": float, "bool": bool}.get(str(hints[f.name]), str)
            if name in environ:
                values[f.name] = _parse(name, environ[name], kind)
            elif f.metadata["default"] is REQUIRED:
                raise SettingsError(f"{name} is required but not set ({f.metadata['help'] or f.name})")
            else:
                values[f.name] = f.metadata["default"]
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, help) rows: the configuration reference in the docs comes from here."""
        rows = []
        for f in dataclasses.fields(cls):
            if "env" in f.metadata:
                default = f.metadata["default"]
                rows.append((f.metadata["env"], "(required)" if default is REQUIRED else repr(default),
                             f.metadata["help"]))
        return rows


@dataclass(frozen=True)
class AuthSettings(Settings):
    """Who may call a server (services/common/auth.py): the base of ServiceSettings and of the model server's
    settings. With no source set a server refuses to start, unless auth is explicitly disabled."""

    auth_tokens_file: str = env("CLASSFORGE_AUTH_TOKENS_FILE", "",
                                "YAML list of {subject, role, token_sha256 | token}; re-read when it changes")
    auth_jwt_key_file: str = env("CLASSFORGE_AUTH_JWT_KEY_FILE", "",
                                 "PEM public key (RS*/ES*/PS*/EdDSA) or shared secret (HS*) verifying bearer JWTs")
    auth_jwt_algorithms: str = env("CLASSFORGE_AUTH_JWT_ALGORITHMS", "RS256",
                                   "comma-separated JWT algorithms accepted (one family: HS* or public-key)")
    auth_jwt_audience: str = env("CLASSFORGE_AUTH_JWT_AUDIENCE", "", "required JWT `aud`; empty: not checked")
    auth_jwt_issuer: str = env("CLASSFORGE_AUTH_JWT_ISSUER", "", "required JWT `iss`; empty: not checked")
    auth_mtls_identities: str = env("CLASSFORGE_AUTH_MTLS_IDENTITIES", "",
                                    "YAML mapping: verified client-certificate subject CN -> role")
    auth_disabled: bool = env("CLASSFORGE_AUTH_DISABLED", False,
                              "serve every caller without credentials (tests only); logs a warning at start")


@dataclass(frozen=True)
class GrpcTlsSettings(Settings):
    """gRPC TLS of a process that serves or calls gRPC; services.common.tls.server_tls / client_tls
    check the files at start-up. The base of ServiceSettings and of the model server's settings."""

    tls_cert: str = env("CLASSFORGE_TLS_CERT", "",
                        "PEM certificate (chain) this process serves gRPC with and presents as a client (mTLS)")
    tls_key: str = env("CLASSFORGE_TLS_KEY", "", "PEM private key of CLASSFORGE_TLS_CERT")
    tls_ca: str = env("CLASSFORGE_TLS_CA", "",
                      "PEM CA bundle: clients verify servers with it, servers verify client certificates with it")
    tls_client_auth: str = env("CLASSFORGE_TLS_CLIENT_AUTH", "none",
                               "client certificates a gRPC server asks for: none, request or require (mutual TLS)")
    grpc_plaintext: bool = env("CLASSFORGE_GRPC_PLAINTEXT", False,
                               "allow gRPC without TLS when no TLS files are set (logged as a warning at start); "
                               "otherwise such a service refuses to start")
    grpc_health_port: int = env("CLASSFORGE_GRPC_HEALTH_PORT", 0,
                                "also serve grpc.health.v1 alone, without TLS, on this port (Kubernetes' gRPC probes "
                                "cannot speak TLS); 0: off")


@dataclass(frozen=True)
class ServerSecuritySettings(GrpcTlsSettings, AuthSettings):
    """Who may connect (TLS) and who may call what (auth): the base of ServiceSettings and of the model
    server's settings."""


@dataclass(frozen=True)
class ServiceSettings(ServerSecuritySettings):
    """What every distributed service needs: its ports, Kafka and the object store, and who may call it."""

    kafka_bootstrap: str = env("CLASSFORGE_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers, host:port[,…]")
    s3_endpoint: str = env("CLASSFORGE_S3_ENDPOINT", help="MinIO/S3 endpoint, host:port")
    s3_access_key: str = env("CLASSFORGE_S3_ACCESS_KEY", help="object store access key")
    s3_secret_key: str = env("CLASSFORGE_S3_SECRET_KEY", help="object store secret key", secret=True)
    s3_bucket: str = env("CLASSFORGE_S3_BUCKET", "classforge", "bucket holding every artefact")
    s3_secure: bool = env("CLASSFORGE_S3_SECURE", False, "use TLS to reach the object store")
    s3_ca_bundle: str = env("CLASSFORGE_S3_CA_BUNDLE", "",
                            "PEM file of the CAs that sign the object store's certificate (needs "
                            "CLASSFORGE_S3_SECURE); empty means the system's CAs")
    kafka_topic: str = env("CLASSFORGE_KAFKA_TOPIC", "classforge.events",
                           "the event topic (its dead letters go to <topic>.dlq); one per deployment sharing a cluster")
    kafka_max_poll_interval_ms: int = env(
        "CLASSFORGE_KAFKA_MAX_POLL_INTERVAL_MS", 30 * 60 * 1000,
        "longest one event handler may run (a records build) before Kafka reassigns its partitions")
    kafka_security_protocol: str = env("CLASSFORGE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
                                       "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_ssl_ca: str = env("CLASSFORGE_KAFKA_SSL_CA", "",
                            "PEM file of the CAs that sign the brokers' certificates (SSL, SASL_SSL)")
    kafka_ssl_cert: str = env("CLASSFORGE_KAFKA_SSL_CERT", "",
                              "PEM client certificate for brokers that require one (with CLASSFORGE_KAFKA_SSL_KEY)")
    kafka_ssl_key: str = env("CLASSFORGE_KAFKA_SSL_KEY", "", "PEM private key of CLASSFORGE_KAFKA_SSL_CERT")
    kafka_sasl_mechanism: str = env("CLASSFORGE_KAFKA_SASL_MECHANISM", "",
                                    "SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT, SASL_SSL)")
    kafka_sasl_username: str = env("CLASSFORGE_KAFKA_SASL_USERNAME", "", "SASL/SCRAM user")
    kafka_sasl_password: str = env("CLASSFORGE_KAFKA_SASL_PASSWORD", "", "SASL/SCRAM password", secret=True)
    grpc_port: int = env("CLASSFORGE_GRPC_PORT", 0, "gRPC listen port; 0 means the service's default")
    metrics_port: int = env("CLASSFORGE_METRICS_PORT", 0,
                            "Prometheus /metrics port; 0 means the service's default, -1 disables")
    metrics_tls: bool = env("CLASSFORGE_METRICS_TLS", False,
                            "serve /metrics over HTTPS with CLASSFORGE_TLS_CERT and CLASSFORGE_TLS_KEY")
    listen_host: str = env("CLASSFORGE_LISTEN_HOST", "0.0.0.0", "address the gRPC and metrics servers bind")
    max_message_bytes: int = env("CLASSFORGE_MAX_MESSAGE_BYTES", 64 * 1024 * 1024,
                                 "largest gRPC message accepted or sent, and largest HTTP request body accepted")
    grace_seconds: float = env("CLASSFORGE_GRACE_SECONDS", 10.0,
                               "how long in-flight calls may finish after SIGTERM")
    worker_threads: int = env("CLASSFORGE_WORKER_THREADS", 16, "gRPC server thread pool size")
    log_level: str = env("CLASSFORGE_LOG_LEVEL", "INFO", "logging level")
    outage_window_seconds: float = env(
        "CLASSFORGE_OUTAGE_WINDOW_SECONDS", 180.0,
        "how long work is retried while Kafka or the object store is unreachable before the stage fails")
    heartbeat_seconds: float = env("CLASSFORGE_HEARTBEAT_SECONDS", 30.0,
                                   "how often a stage says it is still working on a job (stage_heartbeat)")

    def ports_for(self, service: str) -> tuple[int, int]:
        grpc_default, metrics_default = DEFAULT_PORTS[service]
        return (self.grpc_port or grpc_default, self.metrics_port or metrics_default)


def check_readable_file(name: str, path: str) -> None:
    """Raises SettingsError (one line naming the variable) unless `path` is a file this process can read:
    a certificate or key that is missing is reported at start, not at the first connection."""
    if not os.path.isfile(path):
        raise SettingsError(f"{name}={path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{name}={path!r} is not readable by this process")
