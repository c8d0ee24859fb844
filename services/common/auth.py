"""Who is calling, and may they: authentication and authorisation for every gRPC server (and the REST app).

Roles, lowest first: `viewer` (get, list, watch, classify) < `submitter` (start work: submit jobs, create datasets;
cancel its own jobs) < `admin` (cancel anyone's job, publish, rollback, stop training, reload the model server).

Identity sources (any combination; a service with none refuses to start unless CLASSFORGE_AUTH_DISABLED=true):
- static tokens, CLASSFORGE_AUTH_TOKENS_FILE: a YAML list, re-read when the file changes (a broken edit keeps the
  previous tokens and logs an error):
      - subject: alice
        role: submitter
        token_sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8   # sha256sum of the token
      - subject: ci
        role: admin
        token: a-long-random-string     # accepted, but prefer token_sha256: the file then holds no secret
- JWTs (RFC 7519), verified with pyjwt against CLASSFORGE_AUTH_JWT_KEY_FILE (a PEM public key for RS*/ES*/PS*/EdDSA,
  the raw shared secret for HS*; re-read when it changes) and CLASSFORGE_AUTH_JWT_ALGORITHMS (comma-separated,
  default RS256; HMAC and public-key algorithms cannot be mixed). `exp` (30 s leeway for clock skew) and `sub` are
  required; `aud` and `iss`
  are checked when CLASSFORGE_AUTH_JWT_AUDIENCE / _ISSUER are set. The role is the `role` claim, or the highest
  known role in a `roles` list.
- mutual-TLS identities, CLASSFORGE_AUTH_MTLS_IDENTITIES: a YAML mapping from a verified client certificate's
  subject CN to a role (`{inference: viewer, ops-robot: admin}`), re-read when it changes. Only meaningful when
  the server verifies client certificates (CLASSFORGE_TLS_CLIENT_AUTH=require).
A call that carries `authorization: Bearer <token>` is judged by the token alone (a bad token is refused even
on a connection with a known certificate); a call without one by its certificate.

Policy: POLICY gives the minimum role of every RPC by full method name; OPEN_METHODS (health, reflection, the
Open Inference Protocol's liveness and readiness probes) need nothing; a method in neither needs admin, so a new
RPC is closed until someone decides. REST routes are checked against the same table through the gRPC method they
mirror (services/inference/http_api.py).

Tokens are never logged, and are compared in constant time (hmac.compare_digest over SHA-256 digests).
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.settings import SettingsError

log = logging.getLogger("classforge.auth")


class Role(enum.IntEnum):
    VIEWER = 1
    SUBMITTER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: Any, where: str) -> Role:
        """The role called `name` (case-insensitive); ValueError naming `where` otherwise."""
        try:
            return cls[str(name).strip().upper()]
        except KeyError:
            known = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"{where}: unknown role {name!r} (known: {known})") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Identity:
    subject: str  # who: the token's subject, the JWT's `sub`, the certificate's CN
    role: Role
    source: str  # "token", "jwt" or "mtls": how the caller proved it

    def may(self, needed: Role) -> bool:
        return self.role >= needed


# ---------------------------------------------------------------------------------------------------- policy

OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    # Probes, like grpc.health.v1 and the REST /v2/health/*: they say whether the server is up, nothing more.
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})


def _methods(service: str, role: Role, *names: str) -> dict[str, Role]:
    return {f"/{service}/{name}": role for name in names}


V, S, A = Role.VIEWER, Role.SUBMITTER, Role.ADMIN
POLICY: dict[str, Role] = {
    **_methods("classforge.v1.JobsService", V, "GetJob", "ListJobs", "WatchJob"),
    # CancelJob: a submitter only its own jobs, an admin any (the jobs domain checks ownership).
    **_methods("classforge.v1.JobsService", S, "SubmitJob", "CancelJob"),
    **_methods("classforge.v1.IngestService", V, "GetDataset", "ListDatasets", "GetDatasetReport"),
    **_methods("classforge.v1.IngestService", S, "CreateDataset", "RelabelDataset"),
    **_methods("classforge.v1.TFRecordsService", V, "GetBuild"),
    **_methods("classforge.v1.TFRecordsService", S, "BuildRecords"),
    **_methods("classforge.v1.TrainerService", V, "GetTraining"),
    **_methods("classforge.v1.TrainerService", S, "StartTraining"),
    # Trainings carry no owner: stopping one may stop someone else's work.
    **_methods("classforge.v1.TrainerService", A, "StopTraining"),
    **_methods("classforge.v1.EvaluatorService", V, "GetReport", "CompareEvaluations"),
    **_methods("classforge.v1.EvaluatorService", S, "Evaluate"),
    **_methods("classforge.v1.InferenceService", V, "Classify", "ClassifyStream", "ListModels"),
    **_methods("classforge.v1.InferenceService", A, "Rollback"),
    **_methods("inference.GRPCInferenceService", V, "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"),
    **_methods("tensorflow.serving.PredictionService", V, "Classify", "Regress", "Predict", "MultiInference",
               "GetModelMetadata"),
    **_methods("tensorflow.serving.ModelService", V, "GetModelStatus"),
    **_methods("tensorflow.serving.ModelService", A, "HandleReloadConfigRequest"),
}
del V, S, A


def required_role(full_method: str) -> Role | None:
    """The least role `full_method` ("/package.Service/Method") needs; None when it is open to anyone.
    A method the table does not name needs admin: deny by default."""
    if full_method in OPEN_METHODS:
        return None
    return POLICY.get(full_method, Role.ADMIN)


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("classforge_identity", default=None)


def current_identity() -> Identity | None:
    """The caller of the call being served; None when auth is disabled (embedded mode, tests) or the method is
    open. Set by AuthInterceptor for exactly the duration of one call, streaming calls included."""
    return _current.get()


# ---------------------------------------------------------------------------------------------------- sources


class _WatchedFile:
    """A file parsed again whenever its (mtime, size, inode) changes. A parse failure at start is a
    SettingsError naming `variable`; later, the previous contents stay in force and the error is logged
    (without the file's contents, which may be secrets)."""

    def __init__(self, variable: str, path: str, parse: Callable[[bytes, str], Any]):
        self.variable, self.path, self._parse = variable, path, parse
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        try:
            self._value = self._read(self._stat())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{variable}={path!r}: {exc}") from None

    def _stat(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self, stamp: tuple) -> Any:
        value = self._parse(Path(self.path).read_bytes(), self.path)
        self._stamp = stamp
        return value

    def get(self) -> Any:
        try:
            stamp = self._stat()
        except OSError as exc:
            log.error("cannot stat %s (%s); keeping the last good contents", self.path, exc.strerror,
                      extra={"variable": self.variable})
            return self._value
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._value = self._read(stamp)
                        log.info("reloaded %s", self.path, extra={"variable": self.variable})
                    except (OSError, ValueError) as exc:
                        self._stamp = stamp  # do not retry the same broken version on every call
                        log.error("cannot reload %s: %s; keeping the last good contents", self.path, exc,
                                  extra={"variable": self.variable})
        return self._value


def token_sha256(token: str) -> str:
    """The hex digest a tokens file stores for `token` (what `printf %s TOKEN | sha256sum` prints)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _yaml(data: bytes, path: str) -> Any:
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"not valid YAML: {type(exc).__name__}") from None  # no excerpt: it may hold a secret


def parse_tokens_file(data: bytes, path: str) -> list[tuple[bytes, str, Role]]:
    """[(sha256 digest, subject, role)] from a tokens file (format in the module docstring)."""
    entries = _yaml(data, path)
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ValueError("must be a YAML list of {subject, role, token_sha256 | token}")
    parsed = []
    for number, entry in enumerate(entries, 1):
        where = f"entry {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a mapping with subject, role and token_sha256 (or token)")
        subject = str(entry.get("subject") or "").strip()
        if not subject:
            raise ValueError(f"{where}: subject is required")
        role = Role.parse(entry.get("role"), f"{where} ({subject})")
        if ("token" in entry) == ("token_sha256" in entry):
            raise ValueError(f"{where} ({subject}): give exactly one of token_sha256 and token")
        if "token" in entry:
            token = str(entry["token"])
            if len(token) < 16:
                raise ValueError(f"{where} ({subject}): a token must be at least 16 characters")
            digest = hashlib.sha256(token.encode()).digest()
        else:
            try:
                digest = bytes.fromhex(str(entry["token_sha256"]).strip())
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"{where} ({subject}): token_sha256 must be 64 hex digits")
        parsed.append((digest, subject, role))
    return parsed


def parse_mtls_identities(data: bytes, path: str) -> dict[str, Role]:
    mapping = _yaml(data, path) or {}
    if not isinstance(mapping, dict):
        raise ValueError("must be a YAML mapping from certificate common name to role")
    return {str(cn): Role.parse(role, f"common name {cn!r}") for cn, role in mapping.items()}


def _role_of_claims(claims: Mapping[str, Any]) -> Role | None:
    names = []
    if isinstance(claims.get("role"), str):
        names.append(claims["role"])
    if isinstance(claims.get("roles"), list):
        names.extend(r for r in claims["roles"] if isinstance(r, str))
    roles = [Role[n.strip().upper()] for n in names if n.strip().upper() in Role.__members__]
    return max(roles) if roles else None


class JwtVerifier:
    def __init__(self, key_file: str, algorithms: str, audience: str = "", issuer: str = ""):
        self.algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
        if not self.algorithms:
            raise SettingsError("CLASSFORGE_AUTH_JWT_ALGORITHMS is empty; name at least one, e.g. RS256")
        import jwt

        unknown = [a for a in self.algorithms if a not in jwt.algorithms.get_default_algorithms()]
        if unknown or "none" in self.algorithms:
            raise SettingsError(f"CLASSFORGE_AUTH_JWT_ALGORITHMS={algorithms!r}: unsupported {unknown or ['none']}")
        self.hmac = all(a.startswith("HS") for a in self.algorithms)
        if not self.hmac and any(a.startswith("HS") for a in self.algorithms):
            # One key file read both as a public key and as a shared secret invites algorithm confusion.
            raise SettingsError(f"CLASSFORGE_AUTH_JWT_ALGORITHMS={algorithms!r} mixes HMAC (HS*) with "
                                f"public-key algorithms; use one family")
        self.audience, self.issuer = audience or None, issuer or None
        self._key = _WatchedFile("CLASSFORGE_AUTH_JWT_KEY_FILE", key_file, self._parse_key)

    def _parse_key(self, data: bytes, path: str) -> Any:
        if self.hmac:
            secret = data.strip()
            if len(secret) < 32:
                raise ValueError("an HMAC secret must be at least 32 bytes")
            return secret
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            return load_pem_public_key(data)
        except ValueError:
            raise ValueError("not a PEM public key") from None

    def verify(self, token: str) -> Identity:
        import jwt

        try:
            claims = jwt.decode(token, self._key.get(), algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "sub"]}, leeway=30)
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired; get a new one") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token was issued by an issuer this service does not trust") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the token is not valid here ({type(exc).__name__})") from None
        role = _role_of_claims(claims)
        if role is None:
            raise Unauthenticated("the token names no known role (claim 'role' or 'roles': viewer, submitter, admin)")
        return Identity(str(claims["sub"]), role, "jwt")


class Authenticator:
    """Turns a call's credentials into an Identity, and decides whether it may call a method."""

    def __init__(self, *, tokens_file: str = "", jwt: JwtVerifier | None = None, mtls_identities_file: str = ""):
        self._tokens = _WatchedFile("CLASSFORGE_AUTH_TOKENS_FILE", tokens_file, parse_tokens_file) \
            if tokens_file else None
        self._jwt = jwt
        self._mtls = _WatchedFile("CLASSFORGE_AUTH_MTLS_IDENTITIES", mtls_identities_file, parse_mtls_identities) \
            if mtls_identities_file else None
        self.sources = [name for name, on in (("tokens", self._tokens), ("jwt", jwt), ("mtls", self._mtls)) if on]

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator | None:
        """The authenticator `settings` (a ServiceSettings or ModelServerSettings) configure; None when auth is
        disabled. SettingsError when no source is configured and auth is not explicitly disabled, or when a
        source's file is unusable."""
        if settings.auth_disabled:
            log.warning("authentication is DISABLED (CLASSFORGE_AUTH_DISABLED=true): every caller may call every "
                        "method; never do this outside a test or a private machine")
            return None
        jwt = None
        if settings.auth_jwt_key_file:
            jwt = JwtVerifier(settings.auth_jwt_key_file, settings.auth_jwt_algorithms,
                              settings.auth_jwt_audience, settings.auth_jwt_issuer)
        if settings.auth_mtls_identities:
            client_auth = getattr(settings, "tls_client_auth", "require")
            if client_auth != "require":
                # Unless the server verifies client certificates, a certificate's CN is only a claim.
                raise SettingsError(f"CLASSFORGE_AUTH_MTLS_IDENTITIES needs CLASSFORGE_TLS_CLIENT_AUTH=require "
                                    f"(it is {client_auth!r}): only verified certificates can name a caller")
        if not (settings.auth_tokens_file or jwt or settings.auth_mtls_identities):
            raise SettingsError("no authentication configured: set CLASSFORGE_AUTH_TOKENS_FILE, "
                                "CLASSFORGE_AUTH_JWT_KEY_FILE or CLASSFORGE_AUTH_MTLS_IDENTITIES "
                                "(or CLASSFORGE_AUTH_DISABLED=true for a test)")
        auth = cls(tokens_file=settings.auth_tokens_file, jwt=jwt, mtls_identities_file=settings.auth_mtls_identities)
        log.info("authentication on", extra={"sources": auth.sources})
        return auth

    def authenticate(self, authorization: str | None, peer_common_name: str | None = None) -> Identity:
        """The caller, from the `authorization` header/metadata value ("Bearer <token>") or, without one, the
        verified client certificate's CN. Unauthenticated when neither names a known caller."""
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the authorization must be 'Bearer <token>'")
            return self._token_identity(token)
        if peer_common_name and self._mtls is not None:
            role = self._mtls.get().get(peer_common_name)
            if role is not None:
                return Identity(peer_common_name, role, "mtls")
            raise Unauthenticated(f"the client certificate {peer_common_name!r} is not a known identity here; "
                                  f"send a token instead")
        raise Unauthenticated("credentials are required: send 'authorization: Bearer <token>' "
                              "(classforge reads CLASSFORGE_TOKEN or CLASSFORGE_TOKEN_FILE)")

    def _token_identity(self, token: str) -> Identity:
        if self._tokens is not None:
            digest = hashlib.sha256(token.encode()).digest()
            found = None
            for known, subject, role in self._tokens.get():  # every entry compared: time does not tell which
                if hmac.compare_digest(known, digest):
                    found = Identity(subject, role, "token")
            if found is not None:
                return found
        if self._jwt is not None and token.count(".") == 2:
            return self._jwt.verify(token)
        raise Unauthenticated("the token is not valid here (unknown, revoked or malformed)")

    def authorize(self, full_method: str, authorization: str | None,
                  peer_common_name: str | None = None) -> Identity | None:
        """The caller of `full_method` when it may call it; None for an open method (nothing is checked).
        Unauthenticated without valid credentials, PermissionDenied when the role is too low."""
        needed = required_role(full_method)
        if needed is None:
            return None
        identity = self.authenticate(authorization, peer_common_name)
        if not identity.may(needed):
            method = full_method.rsplit("/", 1)[-1]
            raise PermissionDenied(f"{method} needs the {needed} role; {identity.subject!r} has {identity.role}")
        return identity


# ---------------------------------------------------------------------------------------------------- gRPC server


def _metadata_value(metadata, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The subject CN of the client certificate the TLS handshake verified (gRPC's `x509_common_name`)."""
    try:
        names = (context.auth_context() or {}).get("x509_common_name") or []
    except (AttributeError, ValueError):
        return None
    return names[0].decode("utf-8", "replace") if names else None


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates and authorises every call before its handler runs (installed by GrpcServer inside the
    ErrorMappingInterceptor, which turns Unauthenticated/PermissionDenied into their status codes), and runs the
    handler with current_identity() set. Streaming handlers are driven step by step inside one private
    contextvars.Context, so the identity holds for every message and never leaks into the worker thread."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method
        if required_role(full_method) is None:
            return handler

        def identify(context: grpc.ServicerContext) -> contextvars.Context:
            identity = self.authenticator.authorize(
                full_method, _metadata_value(context.invocation_metadata(), "authorization"),
                peer_common_name(context))
            call_context = contextvars.copy_context()
            call_context.run(_current.set, identity)
            return call_context

        def wrap_unary(behaviour):
            def call(request, context):
                return identify(context).run(behaviour, request, context)
            return call

        def wrap_stream(behaviour):
            def call(request, context):
                call_context = identify(context)
                responses = call_context.run(behaviour, request, context)
                try:
                    while True:
                        try:
                            item = call_context.run(next, responses)
                        except StopIteration:
                            return
                        yield item
                finally:  # the client went away (GeneratorExit here): the handler's own clean-up runs now
                    close = getattr(responses, "close", None)
                    if close is not None:
                        call_context.run(close)
            return call

        from services.common.grpc_server import _wrap_handler  # grpc_server imports this module at start-up

        return _wrap_handler(handler, wrap_unary, wrap_stream)


# ---------------------------------------------------------------------------------------------------- clients


def client_token(token_file: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The token a client sends: from `token_file` (a --token-file flag), else CLASSFORGE_TOKEN, else the file
    named by CLASSFORGE_TOKEN_FILE; None when none is given. A named file that cannot be read, or is empty, is a
    ValueError naming it (never the token)."""
    environ = os.environ if environ is None else environ
    path = token_file or ("" if environ.get("CLASSFORGE_TOKEN") else environ.get("CLASSFORGE_TOKEN_FILE", ""))
    if path:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise ValueError(f"the token file {path} is empty")
        return token
    token = environ.get("CLASSFORGE_TOKEN", "").strip()
    return token or None


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                         grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(self._header)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel` sending `authorization: Bearer <token>` on every call (TLS or plaintext alike); `channel` itself
    when there is no token."""
    return grpc.intercept_channel(channel, _BearerInterceptor(token)) if token else channel


def cli_token(args: Any) -> str | None:
    """The token for a command line's calls: its --token-file flag (args.token_file, where the parser has one),
    else CLASSFORGE_TOKEN, else CLASSFORGE_TOKEN_FILE. An unreadable or empty file ends the command with one line."""
    try:
        return client_token(getattr(args, "token_file", None))
    except ValueError as exc:
        raise SystemExit(f"classforge: {exc}") from None


def add_token_flag(parser: Any) -> None:
    """`--token-file PATH` on a command line parser (the global options of `classforge`)."""
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="file holding the bearer token sent to the services (default: env CLASSFORGE_TOKEN, "
                             "or the file named by CLASSFORGE_TOKEN_FILE)")
