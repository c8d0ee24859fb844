"""gRPC TLS on 127.0.0.1 with CAs made here (trustme): real GrpcServer instances, real handshakes.

What must hold: a TLS call with the right CA works; plaintext, a certificate from another CA and an
expired certificate are refused; with mutual TLS a client without a certificate, or with one from a
foreign CA, is refused; rotated files are served to new connections without a restart; bad settings
are one line; plaintext is only ever explicit, and logged."""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import healthcheck
from services.common.channels import channel_from_args, open_channel, tls_from_args
from services.common.grpc_server import GrpcServer, wait_until_serving
from services.common.settings import GrpcTlsSettings, SettingsError
from services.common.tls import TlsConfig, client_tls, server_tls, ssl_config_text

# Each test channel its own connection: gRPC would otherwise share one between channels of a process.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def write_leaf(folder: Path, leaf: trustme.LeafCert, name: str) -> tuple[str, str]:
    """Writes a certificate chain and its key the way a rotation does (new files moved into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    for path, blob in ((cert, b"".join(p.bytes() for p in leaf.cert_chain_pems)), (key, leaf.private_key_pem.bytes())):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return str(cert), str(key)


def write_ca(folder: Path, ca: trustme.CA, name: str = "ca") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def serve():
    started: list[GrpcServer] = []

    def start(tls: TlsConfig | None, **kwargs) -> str:
        server = GrpcServer("tls-test", port=0, host="127.0.0.1", grace_seconds=0.2, tls=tls, **kwargs)
        started.append(server)
        server.start()
        return f"127.0.0.1:{server.port}"

    yield start
    for server in started:
        server.stop()


def call(address: str, tls: TlsConfig | None, *, server_name: str = "") -> None:
    """One health check over a new connection; raises grpc.RpcError when it is refused."""
    options = [*OWN_CONNECTION, *([("grpc.ssl_target_name_override", server_name)] if server_name else [])]
    with open_channel(address, tls, plaintext=tls is None, options=options) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


def refused(address: str, tls: TlsConfig | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(address, tls)
    return raised.value.code()


def server_config(tmp_path: Path, ca: trustme.CA, client_auth: str = "none", **issue) -> TlsConfig:
    cert, key = write_leaf(tmp_path / "server", ca.issue_cert("127.0.0.1", "localhost", **issue), "server")
    return TlsConfig.checked(cert, key, write_ca(tmp_path / "server", ca), client_auth, for_server=True)


def test_a_tls_call_with_the_right_ca_works_and_a_plaintext_client_is_refused(tmp_path, ca, serve):
    address = serve(server_config(tmp_path, ca))
    call(address, TlsConfig.checked(ca=write_ca(tmp_path, ca), for_server=False))
    assert refused(address, None) == grpc.StatusCode.UNAVAILABLE


def test_a_server_certificate_from_another_ca_is_refused(tmp_path, ca, serve):
    address = serve(server_config(tmp_path, trustme.CA()))
    assert refused(address, TlsConfig.checked(ca=write_ca(tmp_path, ca), for_server=False)) == \
        grpc.StatusCode.UNAVAILABLE


def test_an_expired_server_certificate_is_refused(tmp_path, ca, serve, caplog):
    now = datetime.datetime.now(datetime.UTC)
    caplog.set_level(logging.WARNING, logger="classforge.tls")
    address = serve(server_config(tmp_path, ca, not_before=now - datetime.timedelta(days=10),
                                  not_after=now - datetime.timedelta(days=1)))
    assert refused(address, TlsConfig.checked(ca=write_ca(tmp_path, ca), for_server=False)) == \
        grpc.StatusCode.UNAVAILABLE
    assert any("has expired" in r.getMessage() for r in caplog.records)  # the operator is told why


def _whoami_service():
    """A method answering with the client certificate's CN the server saw (what mTLS identities read)."""
    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b",".join(context.auth_context().get("x509_common_name", []))

    handler = grpc.method_handlers_generic_handler("test.WhoAmI", {"Get": grpc.unary_unary_rpc_method_handler(whoami)})
    return lambda _servicer, server: server.add_generic_rpc_handlers((handler,))


def test_mutual_tls_refuses_clients_without_a_certificate_or_with_a_foreign_one(tmp_path, ca, serve):
    config = server_config(tmp_path, ca, client_auth="require")
    server = GrpcServer("tls-test", port=0, host="127.0.0.1", grace_seconds=0.2, tls=config)
    server.add_service(_whoami_service(), None, "test.WhoAmI")
    server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        ca_file = write_ca(tmp_path, ca)
        assert refused(address, TlsConfig.checked(ca=ca_file, for_server=False)) == grpc.StatusCode.UNAVAILABLE
        foreign = write_leaf(tmp_path / "foreign", trustme.CA().issue_cert(common_name="intruder"), "client")
        assert refused(address, TlsConfig.checked(*foreign, ca_file, for_server=False)) == grpc.StatusCode.UNAVAILABLE
        good = TlsConfig.checked(*write_leaf(tmp_path / "good", ca.issue_cert(common_name="inference"), "client"),
                                 ca_file, for_server=False)
        call(address, good)
        with open_channel(address, good, options=OWN_CONNECTION) as channel:
            assert channel.unary_unary("/test.WhoAmI/Get")(b"", timeout=10) == b"inference"
    finally:
        server.stop()


def test_request_mode_is_refused_because_grpcio_cannot_ask_for_an_optional_certificate(tmp_path, ca):
    with pytest.raises(SettingsError, match="CLASSFORGE_TLS_CLIENT_AUTH=request is not supported"):
        server_config(tmp_path, ca, client_auth="request")


def test_rotated_certificate_files_are_served_to_new_connections_without_a_restart(tmp_path, ca, serve, caplog):
    config = server_config(tmp_path, ca)
    address = serve(config)
    old_ca = TlsConfig.checked(ca=write_ca(tmp_path, ca, "old"), for_server=False)
    call(address, old_ca)

    # A rotation caught half-way (new certificate, old key): the previous certificate stays in service.
    new_ca = trustme.CA()
    new_leaf = new_ca.issue_cert("127.0.0.1")
    Path(config.cert).write_bytes(b"".join(p.bytes() for p in new_leaf.cert_chain_pems))
    with caplog.at_level(logging.WARNING, logger="classforge.tls"):
        call(address, old_ca)
    assert any("cannot be used" in r.getMessage() for r in caplog.records)

    write_leaf(Path(config.cert).parent, new_leaf, "server")
    call(address, TlsConfig.checked(ca=write_ca(tmp_path, new_ca, "new"), for_server=False))
    assert refused(address, old_ca) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_explicit_and_logged_at_start(caplog, serve):
    with pytest.raises(ValueError, match="tls= or plaintext=True"):
        GrpcServer("tls-test", port=0, host="127.0.0.1")
    with pytest.raises(ValueError, match="plaintext not asked for"):
        open_channel("127.0.0.1:1", None)
    caplog.set_level(logging.WARNING, logger="classforge.grpc")
    serve(None, plaintext=True, warn_plaintext=False)  # embedded mode: loopback, on purpose, quiet
    assert not [r for r in caplog.records if "CLASSFORGE_GRPC_PLAINTEXT" in r.getMessage()]
    address = serve(None, plaintext=True)
    warnings = [r for r in caplog.records if "CLASSFORGE_GRPC_PLAINTEXT=true" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    call(address, None)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_settings_errors_are_one_line_naming_the_variable(tmp_path, ca):
    leaf = write_leaf(tmp_path, ca.issue_cert("localhost"), "server")
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({}))
    assert "CLASSFORGE_GRPC_PLAINTEXT=true" in _one_line(exc)
    with pytest.raises(SettingsError) as exc:
        client_tls(GrpcTlsSettings.load({}))
    assert "CLASSFORGE_TLS_CA" in _one_line(exc)
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": leaf[0]}))
    assert _one_line(exc).startswith("CLASSFORGE_TLS_KEY is not set")
    missing = str(tmp_path / "nowhere.crt")
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": missing, "CLASSFORGE_TLS_KEY": leaf[1]}))
    assert _one_line(exc).startswith(f"CLASSFORGE_TLS_CERT={missing!r} cannot be read")
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": leaf[0], "CLASSFORGE_TLS_KEY": leaf[1],
                                         "CLASSFORGE_TLS_CLIENT_AUTH": "require"}))
    assert _one_line(exc).startswith("CLASSFORGE_TLS_CA is not set")
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": leaf[0], "CLASSFORGE_TLS_KEY": leaf[1],
                                         "CLASSFORGE_TLS_CLIENT_AUTH": "optional"}))
    assert _one_line(exc).startswith("CLASSFORGE_TLS_CLIENT_AUTH='optional'")
    other_key = write_leaf(tmp_path / "other", ca.issue_cert("localhost"), "server")[1]
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": leaf[0], "CLASSFORGE_TLS_KEY": other_key}))
    assert _one_line(exc) == f"CLASSFORGE_TLS_KEY={other_key!r}: the private key does not belong to the certificate"
    half_written = tmp_path / "half.crt"
    half_written.write_bytes(Path(leaf[0]).read_bytes()[:40])
    with pytest.raises(SettingsError) as exc:
        server_tls(GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": str(half_written), "CLASSFORGE_TLS_KEY": leaf[1]}))
    assert _one_line(exc).startswith(f"CLASSFORGE_TLS_CERT={str(half_written)!r}: no PEM certificate")
    # The plaintext permission never turns TLS off: with files set, TLS it is.
    both = GrpcTlsSettings.load({"CLASSFORGE_TLS_CERT": leaf[0], "CLASSFORGE_TLS_KEY": leaf[1],
                                 "CLASSFORGE_GRPC_PLAINTEXT": "true"})
    assert server_tls(both) == TlsConfig(*leaf)
    assert server_tls(GrpcTlsSettings.load({"CLASSFORGE_GRPC_PLAINTEXT": "true"})) is None


def test_a_service_without_tls_or_plaintext_refuses_to_start_with_one_line(monkeypatch, capsys):
    from services.common.runtime import run_service

    for name, value in {"CLASSFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CLASSFORGE_S3_ENDPOINT": "127.0.0.1:9",
                        "CLASSFORGE_S3_ACCESS_KEY": "a", "CLASSFORGE_S3_SECRET_KEY": "b"}.items():
        monkeypatch.setenv(name, value)
    for name in ("CLASSFORGE_TLS_CERT", "CLASSFORGE_TLS_KEY", "CLASSFORGE_TLS_CA", "CLASSFORGE_GRPC_PLAINTEXT"):
        monkeypatch.delenv(name, raising=False)
    assert run_service("jobs", lambda context: pytest.fail("must not get as far as build")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jobs: configuration error: CLASSFORGE_TLS_CERT and ")


def test_cli_flags_and_environment(tmp_path, ca, serve, capsys):
    import argparse

    from services.common.channels import add_tls_flags

    parser = argparse.ArgumentParser()
    add_tls_flags(parser)
    sub = parser.add_subparsers(dest="command")
    add_tls_flags(sub.add_parser("call"))  # the same flags on a subcommand must not undo the main parser's
    ca_file = write_ca(tmp_path, ca)
    address = serve(server_config(tmp_path, ca))
    args = parser.parse_args(["--tls-ca", ca_file, "call"])
    assert tls_from_args(args, environ={}) == TlsConfig(ca=ca_file)
    with channel_from_args(address, args, options=OWN_CONNECTION) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert tls_from_args(parser.parse_args(["call"]), environ={"CLASSFORGE_TLS_CA": ca_file}) == TlsConfig(ca=ca_file)
    assert tls_from_args(parser.parse_args(["call", "--plaintext"]), environ={"CLASSFORGE_TLS_CA": ca_file}) is None
    with pytest.raises(SettingsError, match="--tls-ca / --plaintext"):
        tls_from_args(parser.parse_args(["call"]), environ={})


def test_healthcheck_uses_the_services_own_tls_settings(tmp_path, ca, serve, capsys):
    # A certificate for the service's DNS name only, as in a cluster; the check dials 127.0.0.1.
    cert, key = write_leaf(tmp_path, ca.issue_cert("jobs.classforge.svc", common_name="jobs"), "jobs")
    ca_file = write_ca(tmp_path, ca)
    server = TlsConfig.checked(cert, key, ca_file, "require", for_server=True)
    address = serve(server)
    with open_channel(address, server, options=[("grpc.ssl_target_name_override", "jobs.classforge.svc")]) as channel:
        wait_until_serving(channel, timeout=30)
    port = address.rsplit(":", 1)[1]
    own = {"CLASSFORGE_TLS_CERT": cert, "CLASSFORGE_TLS_KEY": key, "CLASSFORGE_TLS_CA": ca_file}
    assert healthcheck.main(["--port", port], environ=own) == 0
    assert healthcheck.main(["--port", port, "--timeout", "2"], environ={"CLASSFORGE_GRPC_PLAINTEXT": "true"}) == 1
    assert healthcheck.main(["--port", port], environ={}) == 2
    assert "CLASSFORGE_TLS_CA is not set" in capsys.readouterr().err


def test_model_server_client_over_mutual_tls(tmp_path, ca):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from services.inference.model_server_client import ModelServerClient, ModelServerError

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            reply = get_model_status_pb2.GetModelStatusResponse()
            reply.model_version_status.add(version=3, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return reply

    server = GrpcServer("model-server-test", port=0, host="127.0.0.1", grace_seconds=0.2,
                        tls=server_config(tmp_path, ca, client_auth="require"))
    server.add_service(model_service_pb2_grpc.add_ModelServiceServicer_to_server, Models(),
                       "tensorflow.serving.ModelService")
    server.start()
    target = f"127.0.0.1:{server.port}"
    own = TlsConfig.checked(*write_leaf(tmp_path / "inference", ca.issue_cert(common_name="inference"), "inference"),
                            write_ca(tmp_path, ca), for_server=False)
    clients = [ModelServerClient(target, tls=own), ModelServerClient(target, plaintext=True)]
    try:
        assert [s.version for s in clients[0].status("digits")] == [3]
        with pytest.raises(ModelServerError) as exc:
            clients[1].status("digits", timeout=5)
        assert exc.value.status == "UNAVAILABLE"
        with pytest.raises(ValueError, match="plaintext not asked for"):
            ModelServerClient(target)
    finally:
        for client in clients:
            client.close()
        server.stop()


def _ssl_config_message():
    """tensorflow.serving.SSLConfig (tensorflow_serving/config/ssl_config.proto), built here: the
    tensorflow-serving-api wheel does not ship ssl_config_pb2."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="classforge_test/ssl_config.proto", package="tensorflow.serving",
                                               syntax="proto3")
    message = proto.message_type.add(name="SSLConfig")
    string, boolean = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
    for number, (name, kind) in enumerate([("server_key", string), ("server_cert", string), ("custom_ca", string),
                                           ("client_verify", boolean)], start=1):
        message.field.add(name=name, number=number, type=kind, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def test_tf_serving_ssl_config_holds_the_pem_contents(tmp_path, ca):
    from google.protobuf import text_format

    from services.model_server import ssl_config

    leaf = ca.issue_cert("model-server")
    cert, key = write_leaf(tmp_path, leaf, "model-server")
    ca_file = write_ca(tmp_path, ca)
    out = tmp_path / "ssl.conf"
    assert ssl_config.main(["--cert", cert, "--key", key, "--ca", ca_file, "--client-verify", "--out", str(out)]) == 0
    parsed = text_format.Parse(out.read_text(), _ssl_config_message()())
    assert parsed.server_cert == Path(cert).read_text() and parsed.server_key == Path(key).read_text()
    assert parsed.custom_ca == Path(ca_file).read_text() and parsed.client_verify is True
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # it holds the private key
    plain = text_format.Parse(ssl_config_text(Path(cert).read_bytes(), Path(key).read_bytes()),
                              _ssl_config_message()())
    assert plain.custom_ca == "" and plain.client_verify is False
    assert ssl_config.main(["--cert", cert, "--key", key, "--client-verify", "--out", str(tmp_path / "x")]) == 2


def test_the_plaintext_health_port_answers_health_and_nothing_else(tmp_path, ca):
    import socket

    with socket.socket() as s:  # a free port for the health server
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    server = GrpcServer("tls-test", port=0, host="127.0.0.1", grace_seconds=0.2, tls=server_config(tmp_path, ca),
                        plaintext_health_port=health_port)
    server.add_service(_whoami_service(), None, "test.WhoAmI")
    server.start()
    try:
        with open_channel(f"127.0.0.1:{health_port}", None, plaintext=True, options=OWN_CONNECTION) as channel:
            wait_until_serving(channel, timeout=30)  # the statuses of the TLS port
            with pytest.raises(grpc.RpcError) as exc:
                channel.unary_unary("/test.WhoAmI/Get")(b"", timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert refused(f"127.0.0.1:{server.port}", None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_the_rest_port_serves_https_with_the_same_files_and_follows_a_rotation(tmp_path, ca):
    """The inference service's REST port (services.common.http_server) takes TlsConfig.https_context: the
    gRPC port's certificate, refused to plain HTTP and to clients that do not trust the CA, and rotated files
    are served to new connections without a restart."""
    import http.client
    import ssl

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from services.common.http_server import HttpServer

    config = server_config(tmp_path, ca)
    app = Starlette(routes=[Route("/ping", lambda request: PlainTextResponse("pong"))])
    server = HttpServer("tls-test", app, port=0, host="127.0.0.1", grace_seconds=0.2,
                        ssl_context=config.https_context())
    port = server.start()

    def get(trusted: trustme.CA | None) -> str:
        context = ssl.create_default_context()
        if trusted is not None:
            trusted.configure_trust(context)
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    try:
        assert get(ca) == "pong"
        with pytest.raises(ssl.SSLCertVerificationError):
            get(None)  # the system's roots do not know the test CA
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/ping")
            plain.getresponse()  # the TLS server answers no plain HTTP
        plain.close()

        new_ca = trustme.CA()
        write_leaf(Path(config.cert).parent, new_ca.issue_cert("127.0.0.1"), "server")
        assert get(new_ca) == "pong"
        with pytest.raises(ssl.SSLCertVerificationError):
            get(ca)  # new connections get the rotated certificate
    finally:
        server.stop()
