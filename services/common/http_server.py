"""HTTP (ASGI) serving shared by services that also answer REST, written once:

- `HttpServer`: uvicorn serving an ASGI app from a thread of its own, beside the gRPC server. The port is
  bound in the caller's thread (a port in use fails start-up at once, port 0 picks a free one); `stop()`
  sets uvicorn's `should_exit`, so it stops accepting, lets in-flight requests finish within the grace
  period and returns. uvicorn's own logging set-up and signal handlers stay off: logs go through the
  service's JSON logging, and SIGTERM belongs to GrpcServer, which stops this server from a stop hook.
- `error_response`: the one mapping from domain errors (services.common.errors) to HTTP, the REST twin of
  the gRPC ErrorMappingInterceptor: the status code below and a JSON body
  `{"error": "<the same message gRPC sends>", "code": "<the gRPC status code name>"}` (both transports take
  the message from errors.caller_message). A 401 (errors.Unauthenticated) also says
  `WWW-Authenticate: Bearer` (RFC 6750): the scheme the caller must use.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import grpc
import uvicorn
from starlette.responses import JSONResponse

from services.common.errors import ClassforgeError, Unauthenticated, caller_message, log_only

log = logging.getLogger("classforge.http")

# gRPC status code -> HTTP status. RESOURCE_EXHAUSTED is 413: the domain raises it for a request larger
# than a configured limit (body, image bytes), not for a quota.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_body(code: grpc.StatusCode, message: str) -> dict:
    return {"error": message, "code": code.name}


def error_response(exc: BaseException, method: str) -> JSONResponse:
    """The response for an exception raised by `method` (the operation a route performs, named like the gRPC
    method it mirrors: Classify, ModelInfer …). A domain error gets the message gRPC sends for it
    (services.common.errors.caller_message: an Unavailable's details go to the log, not to the caller) and
    its code; anything else is logged with its traceback and answered 500, as gRPC answers INTERNAL."""
    if isinstance(exc, ClassforgeError):
        if log_only(exc):
            log.warning("dependency unavailable in %s: %s", method, exc.message, extra={"method": method})
        headers = {"WWW-Authenticate": 'Bearer realm="classforge"'} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(error_body(exc.code, caller_message(exc, method)), status_code=http_status(exc.code),
                            headers=headers)
    log.error("unhandled error in %s", method, exc_info=exc, extra={"method": method})
    return JSONResponse(error_body(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}; "
                                                             f"see the service log"), status_code=500)


class HttpServer:
    """An ASGI app served by uvicorn from its own thread; start() binds and returns the port."""

    def __init__(self, name: str, app, *, port: int, host: str = "0.0.0.0", grace_seconds: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None):
        """`ssl_context`: HTTPS (tls.TlsConfig.https_context, the gRPC port's certificate); None: plain HTTP."""
        self.name, self.app, self.host, self.requested_port = name, app, host, port
        self.ssl_context = ssl_context
        self.grace_seconds = grace_seconds
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Binds the port and starts serving; returns once uvicorn accepts connections."""
        if self._thread is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.requested_port), family=family)
        except OSError as exc:
            raise RuntimeError(f"{self.name}: cannot bind HTTP port {self.host}:{self.requested_port}: "
                               f"{exc.strerror}") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none",
                                timeout_graceful_shutdown=self.grace_seconds, server_header=False)
        config.load()
        config.ssl = self.ssl_context  # after load(), which would otherwise build its own from file settings
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(server, sock), name=f"{self.name}-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                self._thread.join(timeout)
                self._server = self._thread = None  # a later start() tries again from scratch
                raise RuntimeError(f"{self.name}: the HTTP server on port {self.port} did not start")
            time.sleep(0.01)
        log.info("HTTP server listening", extra={"port": self.port, "tls": self.ssl_context is not None})
        return self.port

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException:  # noqa: BLE001 - uvicorn exits with SystemExit on start-up failures
            log.exception("HTTP server stopped with an error")
        finally:
            sock.close()

    def stop(self) -> None:
        """Graceful: stops accepting, lets in-flight requests finish (at most the grace period). Idempotent."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(self.grace_seconds + 5)
        if self._thread.is_alive():
            log.warning("HTTP server did not stop within the grace period")
        else:
            log.info("HTTP server stopped")
