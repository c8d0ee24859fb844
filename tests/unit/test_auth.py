"""Authentication and authorisation (services/common/auth.py): tokens file, JWTs, mTLS identities, the policy
table, the gRPC interceptor on a real loopback server with the jobs servicer, job ownership, REST, the CLI."""

import dataclasses
import datetime
import importlib
import json
import logging
import os
import pkgutil
import threading
import types
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

import classforge
from classforge.v1 import common_pb2
from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services import cli
from services.common import auth
from services.common.auth import Authenticator, Identity, JwtVerifier, Role, token_sha256
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.events import InProcessEventBus
from services.common.grpc_server import ErrorMappingInterceptor, GrpcServer, wait_until_serving
from services.common.http_server import HttpServer
from services.common.settings import ServiceSettings, SettingsError
from services.common.storage import LocalObjectStore
from services.jobs.domain import JobsDomain
from services.jobs.main import SERVICE_NAME
from services.jobs.servicer import JobsServicer

TOKENS = {  # token -> (subject, role); every token at least 16 characters
    "alice-token-0123456789": ("alice", "submitter"),
    "bob-token-0123456789ab": ("bob", "submitter"),
    "vera-token-0123456789a": ("vera", "viewer"),
    "root-token-0123456789a": ("root", "admin"),
}
ALICE, BOB, VERA, ROOT = TOKENS


def write_tokens(path: Path, tokens: dict[str, tuple[str, str]], *, bump: int = 0) -> Path:
    entries = [{"subject": subject, "role": role, "token_sha256": token_sha256(token)}
               for token, (subject, role) in tokens.items()]
    path.write_text(json.dumps(entries))  # JSON is YAML
    if bump:  # a rewrite within the file system's timestamp granularity must still look changed
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))
    return path


def spec() -> common_pb2.JobSpec:
    return common_pb2.JobSpec(source=common_pb2.DataSource(local_path="/data"))


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# --------------------------------------------------------------------------- policy table


def _all_services():
    """Every gRPC service a classforge process serves: the generated classforge protos, plus TF Serving's."""
    services = []
    for module in pkgutil.walk_packages(classforge.__path__, "classforge."):
        if module.name.endswith("_pb2"):
            services += importlib.import_module(module.name).DESCRIPTOR.services_by_name.values()
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
    for module in (model_service_pb2, prediction_service_pb2):
        services += module.DESCRIPTOR.services_by_name.values()
    return services


def test_the_policy_names_every_rpc_and_nothing_else():
    methods = {f"/{s.full_name}/{m.name}" for s in _all_services() for m in s.methods}
    assert "/classforge.v1.JobsService/CancelJob" in methods and "/tensorflow.serving.ModelService/" \
        "HandleReloadConfigRequest" in methods  # the walk found the services
    forgotten = sorted(m for m in methods if m not in auth.POLICY and m not in auth.OPEN_METHODS)
    assert not forgotten, f"decide a role for these RPCs in services/common/auth.py POLICY: {forgotten}"
    stale = sorted(m for m in auth.POLICY if m not in methods)
    assert not stale, f"POLICY names RPCs that no longer exist: {stale}"


def test_the_roles_of_the_issue():
    assert auth.required_role("/classforge.v1.JobsService/GetJob") == Role.VIEWER
    assert auth.required_role("/classforge.v1.InferenceService/Classify") == Role.VIEWER
    assert auth.required_role("/classforge.v1.JobsService/SubmitJob") == Role.SUBMITTER
    assert auth.required_role("/classforge.v1.InferenceService/Rollback") == Role.ADMIN
    assert auth.required_role("/tensorflow.serving.ModelService/HandleReloadConfigRequest") == Role.ADMIN
    assert auth.required_role("/grpc.health.v1.Health/Check") is None
    assert auth.required_role("/some.New/Method") == Role.ADMIN  # deny by default


# --------------------------------------------------------------------------- tokens file


def test_static_tokens_name_their_subject_and_role(tmp_path):
    authenticator = Authenticator(tokens_file=str(write_tokens(tmp_path / "tokens.yaml", TOKENS)))
    assert authenticator.authenticate(f"Bearer {ALICE}") == Identity("alice", Role.SUBMITTER, "token")
    assert authenticator.authenticate(f"bearer {ROOT}").role == Role.ADMIN
    for bad in (None, "", f"Basic {ALICE}", "Bearer ", "Bearer not-a-known-token-at-all"):
        with pytest.raises(Unauthenticated) as caught:
            authenticator.authenticate(bad)
        assert ALICE not in caught.value.message


def test_a_plain_token_entry_works_and_a_short_one_is_refused(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("- {subject: ci, role: admin, token: a-long-enough-ci-token}\n")
    assert Authenticator(tokens_file=str(path)).authenticate("Bearer a-long-enough-ci-token").subject == "ci"
    path.write_text("- {subject: ci, role: admin, token: short}\n")
    with pytest.raises(SettingsError, match="CLASSFORGE_AUTH_TOKENS_FILE.*at least 16"):
        Authenticator(tokens_file=str(path))
    path.write_text("- {subject: ci, role: root, token_sha256: " + "0" * 64 + "}\n")
    with pytest.raises(SettingsError, match="unknown role 'root'"):
        Authenticator(tokens_file=str(path))


def test_the_tokens_file_is_reread_when_it_changes_and_a_broken_edit_keeps_the_last_good(tmp_path, caplog):
    path = write_tokens(tmp_path / "tokens.yaml", {ALICE: TOKENS[ALICE]})
    authenticator = Authenticator(tokens_file=str(path))
    assert authenticator.authenticate(f"Bearer {ALICE}").subject == "alice"
    write_tokens(path, {BOB: TOKENS[BOB]}, bump=1)  # alice revoked, bob added
    assert authenticator.authenticate(f"Bearer {BOB}").subject == "bob"
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {ALICE}")
    path.write_text("- [this is: not, a token entry")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 2_000_000_000))
    with caplog.at_level(logging.ERROR, logger="classforge.auth"):
        assert authenticator.authenticate(f"Bearer {BOB}").subject == "bob"
    assert "cannot reload" in caplog.text


# --------------------------------------------------------------------------- JWT


@pytest.fixture(scope="module")
def rsa_keys():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwt(key, **claims) -> str:
    now = datetime.datetime.now(datetime.UTC)
    body = {"sub": "jo", "role": "submitter", "aud": "classforge", "iss": "https://idp.example",
            "exp": now + datetime.timedelta(minutes=5), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256")


@pytest.fixture
def jwt_auth(tmp_path, rsa_keys):
    (tmp_path / "jwt.pem").write_bytes(_public_pem(rsa_keys[0]))
    return Authenticator(jwt=JwtVerifier(str(tmp_path / "jwt.pem"), "RS256", "classforge", "https://idp.example"))


def test_a_valid_jwt_names_the_subject_and_the_highest_role(jwt_auth, rsa_keys):
    assert jwt_auth.authenticate(f"Bearer {_jwt(rsa_keys[0])}") == Identity("jo", Role.SUBMITTER, "jwt")
    token = _jwt(rsa_keys[0], role=None, roles=["viewer", "admin", "unknown"])
    assert jwt_auth.authenticate(f"Bearer {token}").role == Role.ADMIN


@pytest.mark.parametrize("claims, says", [
    ({"exp": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}, "expired"),
    ({"aud": "someone-else"}, "audience"),
    ({"iss": "https://evil.example"}, "issuer"),
    ({"exp": None}, "not valid"),  # expiry is required
    ({"role": "superuser"}, "no known role"),
])
def test_a_jwt_that_does_not_verify_is_unauthenticated(jwt_auth, rsa_keys, claims, says):
    with pytest.raises(Unauthenticated, match=says):
        jwt_auth.authenticate(f"Bearer {_jwt(rsa_keys[0], **claims)}")


def test_a_jwt_signed_with_another_key_or_hmac_is_refused(jwt_auth, rsa_keys):
    with pytest.raises(Unauthenticated, match="not valid"):
        jwt_auth.authenticate(f"Bearer {_jwt(rsa_keys[1])}")
    # Algorithm confusion: the public key's PEM used as an HMAC secret must not verify.
    forged = jwt.encode({"sub": "x", "role": "admin", "exp": 4102444800}, "x" * 40, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        jwt_auth.authenticate(f"Bearer {forged}")


def test_jwt_settings_are_checked_at_start(tmp_path, rsa_keys):
    (tmp_path / "jwt.pem").write_bytes(_public_pem(rsa_keys[0]))
    with pytest.raises(SettingsError, match="mixes HMAC"):
        JwtVerifier(str(tmp_path / "jwt.pem"), "RS256,HS256")
    with pytest.raises(SettingsError, match="CLASSFORGE_AUTH_JWT_KEY_FILE.*not a PEM public key"):
        (tmp_path / "bad.pem").write_text("hello")
        JwtVerifier(str(tmp_path / "bad.pem"), "RS256")
    (tmp_path / "secret").write_text("s" * 40)
    hmac_auth = Authenticator(jwt=JwtVerifier(str(tmp_path / "secret"), "HS256"))
    token = jwt.encode({"sub": "svc", "role": "viewer", "exp": 4102444800}, "s" * 40, algorithm="HS256")
    assert hmac_auth.authenticate(f"Bearer {token}").subject == "svc"


# --------------------------------------------------------------------------- mTLS identities


class FakeContext:
    """What AuthInterceptor reads from a grpc.ServicerContext: metadata and the TLS auth context."""

    def __init__(self, metadata=(), common_name: bytes | None = None):
        self.metadata = metadata
        self.common_name = common_name

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        if self.common_name is None:
            return {"transport_security_type": [b"insecure"]}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.common_name]}


def _intercepted(authenticator, method: str, behaviour):
    interceptor = auth.AuthInterceptor(authenticator)
    details = types.SimpleNamespace(method=method, invocation_metadata=())
    return interceptor.intercept_service(lambda _: grpc.unary_unary_rpc_method_handler(behaviour), details)


def test_a_verified_certificate_common_name_maps_to_its_role(tmp_path):
    (tmp_path / "mtls.yaml").write_text("inference: admin\nprometheus: viewer\n")
    authenticator = Authenticator(mtls_identities_file=str(tmp_path / "mtls.yaml"))
    handler = _intercepted(authenticator, "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
                           lambda request, context: auth.current_identity())
    assert handler.unary_unary(None, FakeContext(common_name=b"inference")) == Identity("inference", Role.ADMIN,
                                                                                       "mtls")
    with pytest.raises(PermissionDenied, match="needs the admin role; 'prometheus' has viewer"):
        handler.unary_unary(None, FakeContext(common_name=b"prometheus"))
    with pytest.raises(Unauthenticated, match="'stranger' is not a known identity"):
        handler.unary_unary(None, FakeContext(common_name=b"stranger"))
    with pytest.raises(Unauthenticated, match="credentials are required"):
        handler.unary_unary(None, FakeContext())
    assert auth.current_identity() is None  # nothing leaks out of the call


def test_mtls_identities_need_verified_client_certificates():
    settings = types.SimpleNamespace(auth_disabled=False, auth_tokens_file="", auth_jwt_key_file="",
                                     auth_mtls_identities="/etc/mtls.yaml", tls_client_auth="none")
    with pytest.raises(SettingsError, match="CLASSFORGE_TLS_CLIENT_AUTH=require"):
        Authenticator.from_settings(settings)


# --------------------------------------------------------------------------- start-up


REQUIRED_ENV = {"CLASSFORGE_KAFKA_BOOTSTRAP": "k:9092", "CLASSFORGE_S3_ENDPOINT": "s:9000",
                "CLASSFORGE_S3_ACCESS_KEY": "a", "CLASSFORGE_S3_SECRET_KEY": "s"}


def test_no_auth_source_refuses_to_start_and_disabled_warns(caplog):
    with pytest.raises(SettingsError, match="no authentication configured: set CLASSFORGE_AUTH_TOKENS_FILE"):
        Authenticator.from_settings(ServiceSettings.load(REQUIRED_ENV))
    with caplog.at_level(logging.WARNING, logger="classforge.auth"):
        disabled = ServiceSettings.load({**REQUIRED_ENV, "CLASSFORGE_AUTH_DISABLED": "true"})
        assert Authenticator.from_settings(disabled) is None
    assert "authentication is DISABLED" in caplog.text


def test_run_service_exits_2_with_one_line_when_no_auth_source_is_set(monkeypatch, capsys):
    from services.common import runtime

    for name in list(os.environ):
        if name.startswith("CLASSFORGE_"):
            monkeypatch.delenv(name)
    for name, value in REQUIRED_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLASSFORGE_GRPC_PLAINTEXT", "true")  # so that only the missing auth source can refuse
    monkeypatch.setattr(runtime, "configure_logging", lambda *a: None)
    monkeypatch.setattr(runtime, "connect", lambda *a: pytest.fail("must refuse before connecting"))
    assert runtime.run_service("jobs", lambda context: None) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jobs: configuration error: no authentication configured")


# --------------------------------------------------------------------------- a real gRPC server


@pytest.fixture
def jobs(tmp_path):
    """The jobs service on loopback with the tokens file, and a channel per token (plus one with none)."""
    tokens = write_tokens(tmp_path / "tokens.yaml", TOKENS)
    bus = InProcessEventBus()
    server = GrpcServer("jobs", port=0, host="127.0.0.1", grace_seconds=1, plaintext=True, warn_plaintext=False,
                        authenticator=Authenticator(tokens_file=str(tokens)))
    server.add_service(pb_grpc.add_JobsServiceServicer_to_server,
                       JobsServicer(JobsDomain(bus, LocalObjectStore(tmp_path / "store"))), SERVICE_NAME)
    server.add_service(lambda servicer, grpc_server: grpc_server.add_generic_rpc_handlers([servicer]),
                       grpc.method_handlers_generic_handler("test.Probe", {
                           "Who": grpc.unary_stream_rpc_method_handler(_who_streams),
                           "Endless": grpc.unary_stream_rpc_method_handler(_endless)}), "test.Probe")
    server.start()
    address = f"127.0.0.1:{server.port}"
    channels = []

    def stub(token: str | None):
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return pb_grpc.JobsServiceStub(auth.with_token(channel, token))

    wait_until_serving(grpc.insecure_channel(address), timeout=10)
    yield types.SimpleNamespace(address=address, stub=stub, tokens=tokens)
    for channel in channels:
        channel.close()
    server.stop()
    bus.close()


STREAM_CLOSED = threading.Event()


def _endless(request, context):
    try:
        while True:
            yield auth.current_identity().subject.encode()
    finally:  # must run, with the identity still set, when the client cancels
        if auth.current_identity() is not None:
            STREAM_CLOSED.set()


def _who_streams(request, context):
    for _ in range(3):  # the identity holds across the stream's messages
        yield (auth.current_identity().subject if auth.current_identity() else "").encode()


def test_no_token_is_unauthenticated_and_health_stays_open(jobs):
    code, details = code_of(lambda: jobs.stub(None).ListJobs(pb.ListJobsRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    code, _ = code_of(lambda: jobs.stub("Bearer-less-garbage-token").GetJob(pb.GetJobRequest(job_id="x"), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: list(jobs.stub(None).WatchJob(pb.WatchJobRequest(job_id="x"), timeout=5)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(jobs.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_wrong_role_is_permission_denied_naming_the_role_needed(jobs):
    code, details = code_of(lambda: jobs.stub(VERA).SubmitJob(pb.SubmitJobRequest(spec=spec()), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "SubmitJob needs the submitter role; 'vera' has viewer"


def test_an_unlisted_method_needs_admin_and_the_identity_holds_through_a_stream(jobs):
    with grpc.insecure_channel(jobs.address) as channel:
        def who(token):
            call = auth.with_token(channel, token).unary_stream("/test.Probe/Who")
            return [m.decode() for m in call(b"", timeout=5)]
        code, _ = code_of(lambda: who(ALICE))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert who(ROOT) == ["root", "root", "root"]


def test_jobs_record_their_owner_and_only_the_owner_or_an_admin_may_cancel(jobs):
    job_id = jobs.stub(ALICE).SubmitJob(pb.SubmitJobRequest(spec=spec()), timeout=5).job_id
    assert jobs.stub(VERA).GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).job.owner == "alice"
    assert [j.owner for j in jobs.stub(VERA).ListJobs(pb.ListJobsRequest(), timeout=5).jobs] == ["alice"]

    code, details = code_of(lambda: jobs.stub(BOB).CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith(f"job '{job_id}' is not 'bob''s (it belongs to 'alice')")
    assert jobs.stub(ALICE).CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=5).job.job_id == job_id

    other = jobs.stub(BOB).SubmitJob(pb.SubmitJobRequest(spec=spec()), timeout=5).job_id
    assert jobs.stub(ROOT).CancelJob(pb.CancelJobRequest(job_id=other, reason="ops"), timeout=5).job.owner == "bob"


def test_one_users_request_id_never_returns_another_users_job(jobs):
    request = pb.SubmitJobRequest(spec=spec(), request_id="nightly")
    alices = jobs.stub(ALICE).SubmitJob(request, timeout=5).job_id
    assert jobs.stub(ALICE).SubmitJob(request, timeout=5).job_id == alices  # still idempotent per user
    assert jobs.stub(BOB).SubmitJob(request, timeout=5).job_id != alices


def test_without_auth_jobs_have_no_owner_and_anyone_may_cancel(bus, store):
    domain = JobsDomain(bus, store)
    job = domain.submit(spec())
    assert job.owner == ""
    assert domain.cancel(job.job_id).job_id == job.job_id
    with pytest.raises(PermissionDenied, match="submitted without authentication"):
        domain.cancel(domain.submit(spec()).job_id, caller=Identity("bob", Role.SUBMITTER, "token"))


def test_a_second_replica_learns_the_owner_from_the_submitted_event(bus, store, tmp_path):
    seen = []
    bus.subscribe("observer", seen.append)
    JobsDomain(bus, store).submit(spec(), owner="alice")
    bus.drain(5)
    replica = JobsDomain(bus, LocalObjectStore(tmp_path / "replica"))
    replica.apply(seen[0])
    assert replica.get(seen[0].job_id).owner == "alice"


def test_the_cli_sends_the_token_from_a_file_or_the_environment_and_shows_the_owner(jobs, tmp_path, monkeypatch,
                                                                                  capsys):
    job_id = jobs.stub(ALICE).SubmitJob(pb.SubmitJobRequest(spec=spec()), timeout=5).job_id
    (tmp_path / "token").write_text(VERA + "\n")
    monkeypatch.delenv("CLASSFORGE_TOKEN", raising=False)
    monkeypatch.delenv("CLASSFORGE_TOKEN_FILE", raising=False)
    token_file = str(tmp_path / "token")
    status = ["--jobs", jobs.address, "--plaintext", "--token-file", token_file, "--json", "status", job_id]
    assert cli.main(status) == 0
    assert json.loads(capsys.readouterr().out)["owner"] == "alice"

    assert cli.main(["--jobs", jobs.address, "--plaintext", "list"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("CLASSFORGE_TOKEN_FILE", str(tmp_path / "token"))
    assert cli.main(["--jobs", jobs.address, "--plaintext", "list"]) == 0
    assert "alice" in capsys.readouterr().out
    monkeypatch.setenv("CLASSFORGE_TOKEN", BOB)  # the variable wins over the file
    assert cli.main(["--jobs", jobs.address, "--plaintext", "cancel", job_id]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="the token file .*missing is empty|cannot read the token file"):
        cli.main(["--jobs", jobs.address, "--plaintext", "--token-file", str(tmp_path / "missing"), "list"])


# --------------------------------------------------------------------------- REST


@pytest.fixture
def rest(tmp_path):
    from services.inference.http_api import build_app

    authenticator = Authenticator(tokens_file=str(write_tokens(tmp_path / "tokens.yaml", TOKENS)))
    # /v2 (server metadata), /v2/health/* never reach the domain: none is needed here.
    http = HttpServer("rest", build_app(None, ready=lambda: True, max_body_bytes=1024, authenticator=authenticator),
                      port=0, host="127.0.0.1", grace_seconds=1)
    port = http.start()

    def get(path: str, token: str | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())

    yield get
    http.stop()


def test_rest_401_403_200_with_the_same_policy(rest, monkeypatch):
    status, headers, body = rest("/v2")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert body["code"] == "UNAUTHENTICATED" and "Bearer" in body["error"]
    assert rest("/v2", "an-unknown-token-of-some-length")[0] == 401
    status, _, body = rest("/v2", VERA)
    assert status == 200 and body["name"]
    status, _, body = rest("/v2/health/live")  # open, like grpc.health.v1
    assert (status, body) == (200, {"live": True})
    assert rest("/v2/health/ready")[0] == 200
    # Every REST route is a viewer's today; raising the mirrored gRPC method's role in the one table moves REST too.
    monkeypatch.setitem(auth.POLICY, "/inference.GRPCInferenceService/ServerMetadata", Role.ADMIN)
    status, _, body = rest("/v2", VERA)
    assert status == 403 and body == {"error": "ServerMetadata needs the admin role; 'vera' has viewer",
                                      "code": "PERMISSION_DENIED"}
    assert rest("/v2", ROOT)[0] == 200


def test_every_rest_operation_mirrors_a_method_of_the_policy():
    from services.inference.http_api import MIRRORED_METHOD

    for operation, method in MIRRORED_METHOD.items():
        assert method in auth.POLICY or method in auth.OPEN_METHODS, operation


# --------------------------------------------------------------------------- client helper


def test_client_token_precedence(tmp_path):
    (tmp_path / "t").write_text(" from-file \n")
    assert auth.client_token(environ={}) is None
    assert auth.client_token(environ={"CLASSFORGE_TOKEN_FILE": str(tmp_path / "t")}) == "from-file"
    assert auth.client_token(environ={"CLASSFORGE_TOKEN": "env", "CLASSFORGE_TOKEN_FILE": str(tmp_path / "t")}) \
        == "env"
    assert auth.client_token(str(tmp_path / "t"), environ={"CLASSFORGE_TOKEN": "env"}) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        auth.client_token(str(tmp_path / "empty"), environ={})


def test_settings_fields_are_the_agreed_variables():
    names = {f.metadata["env"] for f in dataclasses.fields(ServiceSettings) if "env" in f.metadata}
    assert {"CLASSFORGE_AUTH_TOKENS_FILE", "CLASSFORGE_AUTH_JWT_KEY_FILE", "CLASSFORGE_AUTH_JWT_ALGORITHMS",
            "CLASSFORGE_AUTH_JWT_AUDIENCE", "CLASSFORGE_AUTH_JWT_ISSUER", "CLASSFORGE_AUTH_MTLS_IDENTITIES",
            "CLASSFORGE_AUTH_DISABLED"} <= names


def test_tokens_never_reach_the_log_or_the_callers_message(jobs, caplog):
    wrong = "a-wrong-token-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        code, details = code_of(lambda: jobs.stub(wrong).ListJobs(pb.ListJobsRequest(), timeout=5))
        jobs.stub(ALICE).ListJobs(pb.ListJobsRequest(), timeout=5)
        code_of(lambda: jobs.stub(VERA).SubmitJob(pb.SubmitJobRequest(spec=spec()), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED and wrong not in details
    for secret in (wrong, ALICE, VERA):
        assert secret not in caplog.text


def test_a_cancelled_stream_closes_its_handler_inside_the_call(jobs):
    STREAM_CLOSED.clear()
    with grpc.insecure_channel(jobs.address) as channel:
        call = auth.with_token(channel, ROOT).unary_stream("/test.Probe/Endless")(b"", timeout=30)
        assert next(call) == b"root"
        call.cancel()
    assert STREAM_CLOSED.wait(10), "the handler's finally never ran with the caller's identity"


def test_a_real_mutual_tls_client_certificate_names_the_caller(tmp_path):
    """The CN gRPC reports in auth_context() for a certificate it verified is what the identities file maps.
    (A bare grpc.server: GrpcServer's TLS port is the TLS change's; the interceptor is the same.)"""
    from concurrent import futures

    import trustme

    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    (tmp_path / "mtls.yaml").write_text("inference: admin\nprometheus: viewer\n")
    authenticator = Authenticator(mtls_identities_file=str(tmp_path / "mtls.yaml"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ErrorMappingInterceptor(), auth.AuthInterceptor(authenticator)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Probe", {
        "Who": grpc.unary_stream_rpc_method_handler(_who_streams)})])
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(), require_client_auth=True))
    server.start()
    try:
        def who(common_name: str) -> list[str]:
            client = ca.issue_cert(f"{common_name}.test", common_name=common_name)
            credentials = grpc.ssl_channel_credentials(ca.cert_pem.bytes(), client.private_key_pem.bytes(),
                                                       client.cert_chain_pems[0].bytes())
            with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
                return [m.decode() for m in channel.unary_stream("/test.Probe/Who")(b"", timeout=10)]

        assert who("inference") == ["inference"] * 3
        code, details = code_of(lambda: who("prometheus"))  # /test.Probe/Who is in no table: admin
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'prometheus' has viewer" in details
        code, _ = code_of(lambda: who("stranger"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)
