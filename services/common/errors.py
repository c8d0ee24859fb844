"""Domain exceptions. Services raise these; the one error-mapping interceptor in
services.common.grpc_server turns each into the matching gRPC status code with its message.

Messages are written for a person: say what was wrong, where (field, id, path), and what to do.
"""

from __future__ import annotations

import grpc


class ClassforgeError(Exception):
    """Base of every error a service raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code numbered `number` (UNKNOWN when none is): code-agnostic layers carry that number,
    e.g. the model server's core, whose errors are TensorFlow's, numbered like gRPC's (error_codes.proto)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


class InvalidArgument(ClassforgeError):
    """The request itself is wrong; `field` names the offending field (dotted path)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


def shown(value: object, limit: int = 80) -> str:
    """repr() of a user's value for a message, cut to at most `limit` characters ("…" marks the cut),
    so that an error never echoes a huge input back."""
    if isinstance(value, str | bytes):
        value = value[: limit + 1]  # enough to know it needs cutting, without repr() of megabytes
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NotFound(ClassforgeError):
    """No object with that id or key exists."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {shown(ident)} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(ClassforgeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ClassforgeError):
    """The request is well formed but the system is not in a state to do it (empty dataset …)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ClassforgeError):
    """The caller sent no credentials, or credentials this service cannot verify (unknown or expired token,
    wrong signature, audience or issuer). The message says what to send; it never echoes the token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClassforgeError):
    """The caller may not do this: its role or ownership does not allow the call, or the request names a place the
    service may not read (a path outside the ingest roots). The message says what is needed, never what lies beyond."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ClassforgeError):
    """A dependency (Kafka, object store, model server) cannot be reached right now; retry later.
    Its message names addresses and library errors for the log; a gRPC client gets a generic one."""

    code = grpc.StatusCode.UNAVAILABLE


class RetryLater(Unavailable):
    """Unavailable with a message written for the client (what to retry and how); sent as it is."""


class ResourceExhausted(ClassforgeError):
    """The request is larger than a configured limit (message size, image pixels …)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(ClassforgeError):
    """Stored data is damaged (a checksum does not match); it must be written again."""

    code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(ClassforgeError):
    """The caller's deadline passed before the work (or a downstream call) finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


MAX_ERROR_CHARS = 1000


def caller_message(exc: ClassforgeError, where: str) -> str:
    """The message a caller gets for `exc`, the same over every transport (gRPC details, the REST body):
    an Unavailable that is not RetryLater says only that a dependency of `where` (the method) cannot be
    reached (its message, with addresses and library errors, is for the log); any message is capped at
    MAX_ERROR_CHARS."""
    if isinstance(exc, Unavailable) and not isinstance(exc, RetryLater):
        return f"{where}: a dependency of this service cannot be reached right now; retry later"
    message = exc.message
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS - 1] + "…"


def log_only(exc: ClassforgeError) -> bool:
    """Whether the caller does not see `exc`'s own message (it should be logged instead)."""
    return isinstance(exc, Unavailable) and not isinstance(exc, RetryLater)
