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


class InvalidArgument(ClassforgeError):
    """The request itself is wrong; `field` names the offending field (dotted path)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(ClassforgeError):
    """No object with that id or key exists."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(ClassforgeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ClassforgeError):
    """The request is well formed but the system is not in a state to do it (empty dataset …)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ClassforgeError):
    """A dependency (Kafka, object store, model server) cannot be reached right now; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ClassforgeError):
    """The request is larger than a configured limit (message size, image pixels …)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(ClassforgeError):
    """Stored data is damaged (a checksum does not match); it must be written again."""

    code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(ClassforgeError):
    """The caller's deadline passed before the work (or a downstream call) finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
