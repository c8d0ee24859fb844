"""TLS for every gRPC server and client, from PEM files named by the settings.

    CLASSFORGE_TLS_CERT, CLASSFORGE_TLS_KEY   this process's certificate (chain) and private key: a server
                                              serves them, a client presents them (mutual TLS)
    CLASSFORGE_TLS_CA                         CA bundle: clients verify servers with it, servers verify
                                              client certificates with it
    CLASSFORGE_TLS_CLIENT_AUTH                none | require (require = mutual TLS). There is no "request"
                                              (ask for an optional certificate): grpcio can only ask for
                                              one it then requires
    CLASSFORGE_GRPC_PLAINTEXT                 allows a process without TLS files to serve and call in
                                              plaintext; without it such a process refuses to start

Server credentials are dynamic: gRPC asks `CertificateReloader` for the configuration at every new
handshake, and it re-reads the files when their size or mtime changed, so a rotated certificate (a
cert-manager Secret, a `mv` of new files) is served to new connections without a restart. A half-written
or mismatched set of files keeps the previous configuration and logs one warning.

Client credentials are read once, when the channel opens.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.settings import SettingsError

log = logging.getLogger("classforge.tls")

CLIENT_AUTH_MODES = ("none", "require")
PLAINTEXT_VARIABLE = "CLASSFORGE_GRPC_PLAINTEXT"
CERT_VARIABLE, KEY_VARIABLE, CA_VARIABLE = "CLASSFORGE_TLS_CERT", "CLASSFORGE_TLS_KEY", "CLASSFORGE_TLS_CA"
CLIENT_AUTH_VARIABLE = "CLASSFORGE_TLS_CLIENT_AUTH"


class InvalidPem(ValueError):
    """A PEM file does not hold what it should (no certificate, no key, a key not matching the certificate);
    `variable` names the setting of the file at fault."""

    def __init__(self, variable: str, message: str):
        super().__init__(message)
        self.variable = variable


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable}={path!r} cannot be read: {exc.strerror or exc}") from None


def check_pem(cert: bytes | None, key: bytes | None, ca: bytes | None) -> None:
    """Raises InvalidPem unless `cert` holds certificates, `key` a private key matching the first of
    them, and `ca` certificates (each only when given). Catches a half-written file before gRPC does."""
    leaf = None
    if cert is not None:
        try:
            leaf = x509.load_pem_x509_certificates(cert)[0]
        except ValueError as exc:
            raise InvalidPem(CERT_VARIABLE, f"no PEM certificate: {exc}") from None
    if key is not None:
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidPem(KEY_VARIABLE, f"no unencrypted PEM private key: {exc}") from None
        if leaf is not None and private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != leaf.public_key(
                ).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise InvalidPem(KEY_VARIABLE, "the private key does not belong to the certificate")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as exc:
            raise InvalidPem(CA_VARIABLE, f"no PEM CA certificate: {exc}") from None


@dataclass(frozen=True)
class TlsConfig:
    """Paths of the PEM files (empty: not given) and the client-certificate mode of a server.
    Build it with `server_tls` / `client_tls` (from settings) or `TlsConfig.checked` (anything else):
    both check the files once, so a misconfiguration is one SettingsError line at start-up."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    client_auth: str = "none"

    @classmethod
    def checked(cls, cert: str = "", key: str = "", ca: str = "", client_auth: str = "none", *,
                for_server: bool) -> TlsConfig:
        if client_auth == "request":
            raise SettingsError(f"{CLIENT_AUTH_VARIABLE}=request is not supported: grpcio cannot ask for an optional "
                                f"client certificate; use none (callers bring tokens) or require (mutual TLS)")
        if client_auth not in CLIENT_AUTH_MODES:
            raise SettingsError(f"{CLIENT_AUTH_VARIABLE}={client_auth!r} is not one of {', '.join(CLIENT_AUTH_MODES)}")
        if bool(cert) != bool(key):
            given, missing = (CERT_VARIABLE, KEY_VARIABLE) if cert else (KEY_VARIABLE, CERT_VARIABLE)
            raise SettingsError(f"{missing} is not set but {given} is: a certificate and its key come together")
        if for_server and not cert:
            raise SettingsError(f"{CERT_VARIABLE} and {KEY_VARIABLE} are not set: a gRPC server needs a certificate "
                                f"and key, or {PLAINTEXT_VARIABLE}=true to serve without TLS")
        if for_server and client_auth != "none" and not ca:
            raise SettingsError(f"{CA_VARIABLE} is not set but {CLIENT_AUTH_VARIABLE}={client_auth}: client "
                                f"certificates are verified against that CA")
        config = cls(cert, key, ca, client_auth)
        try:
            check_pem(*config.read())
        except InvalidPem as exc:
            path = {CERT_VARIABLE: cert, KEY_VARIABLE: key, CA_VARIABLE: ca}[exc.variable]
            raise SettingsError(f"{exc.variable}={path!r}: {exc}") from None
        return config

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(certificate chain, private key, CA bundle) as bytes, None for a file not given."""
        return (_read(self.cert, CERT_VARIABLE) if self.cert else None,
                _read(self.key, KEY_VARIABLE) if self.key else None,
                _read(self.ca, CA_VARIABLE) if self.ca else None)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that follow the files: see CertificateReloader."""
        reloader = CertificateReloader(self, self._grpc_configuration)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial, reloader.fetch, require_client_authentication=self.client_auth == "require")

    def _grpc_configuration(self, cert: bytes, key: bytes, ca: bytes | None):
        # The CA goes in only where client certificates are required; grpcio's Python API never asks for an
        # optional one.
        roots = ca if self.client_auth == "require" else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)

    def _https_configuration(self, cert: bytes, key: bytes, ca: bytes | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)  # ssl reads keys from files only; checked just before
        if self.client_auth == "require":
            context.load_verify_locations(cadata=ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def https_context(self) -> ssl.SSLContext:
        """The same TLS for an HTTPS server (the REST port), following the files like the gRPC credentials:
        Python calls the listening context's sni_callback at every ClientHello (with or without SNI), and it
        moves the connection to the context of the newest valid files."""
        reloader = CertificateReloader(self, self._https_configuration)
        listening = current = reloader.initial

        def newest(ssl_object: ssl.SSLObject, _server_name, _context) -> None:
            nonlocal current
            current = reloader.fetch() or current
            if current is not listening:
                ssl_object.context = current

        listening.sni_callback = newest
        return listening

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verifies the server with the CA bundle (the system's roots when none is given); presents this
        process's certificate when it has one (mutual TLS)."""
        cert, key, ca = self.read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class CertificateReloader:
    """gRPC calls `fetch` before each new TLS handshake; it answers None ("keep what you have") unless a
    file's size or mtime changed and the new set of files is valid. Existing connections keep the
    certificate they were made with."""

    def __init__(self, config: TlsConfig, build: Callable[[bytes, bytes, bytes | None], Any]):
        """`build(cert, key, ca)` makes what the server is given (a gRPC certificate configuration, an
        SSLContext) from a valid set of files."""
        self.config, self.build = config, build
        self._lock = threading.Lock()
        self._seen = self._signature()
        self.initial = self._checked(*config.read())
        self._rejected: tuple | None = None

    def _paths(self) -> list[str]:
        return [p for p in (self.config.cert, self.config.key, self.config.ca) if p]

    def _signature(self) -> tuple:
        signature = []
        for path in self._paths():
            try:
                st = os.stat(path)
                signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def _checked(self, cert: bytes, key: bytes, ca: bytes | None):
        leaf = x509.load_pem_x509_certificates(cert)[0]
        if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
            # Served anyway (refusing to start would not help the clients): they will refuse it.
            log.warning("the TLS certificate has expired; clients will refuse it", extra={
                "cert": self.config.cert, "not_after": leaf.not_valid_after_utc.isoformat()})
        return self.build(cert, key, ca)

    def fetch(self):
        try:
            with self._lock:
                signature = self._signature()
                if signature == self._seen or signature == self._rejected:
                    return None
                try:
                    cert, key, ca = self.config.read()
                    check_pem(cert, key, ca)
                except (SettingsError, InvalidPem) as exc:
                    # Often a rotation caught half-way (certificate replaced, key not yet): the next
                    # handshake looks again; warn once per state of the files.
                    self._rejected = signature
                    log.warning("TLS files changed but cannot be used; still serving the previous certificate",
                                extra={"problem": str(exc), "cert": self.config.cert})
                    return None
                self._seen, self._rejected = signature, None
                log.info("TLS certificate reloaded", extra={"cert": self.config.cert})
                return self._checked(cert, key, ca)
        except Exception:  # noqa: BLE001 - an exception here would fail the handshake; keep serving instead
            log.exception("TLS certificate reload failed; still serving the previous certificate")
            return None


def certificate_names(cert_pem: bytes) -> list[str]:
    """The names a certificate is valid for: DNS names, then IP addresses, then the subject CN."""
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    names += [str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    return names


def _settings_files(settings) -> dict:
    return {"cert": settings.tls_cert, "key": settings.tls_key, "ca": settings.tls_ca,
            "client_auth": settings.tls_client_auth}


def server_tls(settings) -> TlsConfig | None:
    """The server side of a service's settings: TLS when CLASSFORGE_TLS_CERT/KEY are set, None (plaintext)
    when they are not and CLASSFORGE_GRPC_PLAINTEXT=true; SettingsError otherwise. TLS files win over
    the plaintext permission: it allows plaintext, it never turns TLS off."""
    if not (settings.tls_cert or settings.tls_key) and settings.grpc_plaintext:
        return None
    return TlsConfig.checked(**_settings_files(settings), for_server=True)


def client_tls(settings) -> TlsConfig | None:
    """The client side (a service calling another, the health check): TLS when any of CLASSFORGE_TLS_CA/
    CERT/KEY is set, None (plaintext) when none is and CLASSFORGE_GRPC_PLAINTEXT=true; SettingsError
    otherwise."""
    files = _settings_files(settings)
    if not (files["cert"] or files["key"] or files["ca"]):
        if settings.grpc_plaintext:
            return None
        raise SettingsError(f"{CA_VARIABLE} is not set: a gRPC client verifies servers against it, or "
                            f"{PLAINTEXT_VARIABLE}=true to call without TLS")
    return TlsConfig.checked(**files, for_server=False)


def ssl_config_text(cert: bytes, key: bytes, ca: bytes | None = None, client_verify: bool = False) -> str:
    """TF Serving's `--ssl_config_file`: a text-format tensorflow.serving.SSLConfig holding the PEM contents
    (server_key, server_cert, custom_ca, client_verify)."""
    check_pem(cert, key, ca)
    if client_verify and not ca:
        raise InvalidPem(CA_VARIABLE, "client_verify needs a CA (custom_ca) to verify client certificates with")

    def quoted(pem: bytes) -> str:
        text = pem.decode("ascii")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"server_key: {quoted(key)}", f"server_cert: {quoted(cert)}"]
    if ca:
        lines.append(f"custom_ca: {quoted(ca)}")
    lines.append(f"client_verify: {'true' if client_verify else 'false'}")
    return "\n".join(lines) + "\n"
