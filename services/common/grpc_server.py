"""gRPC server bootstrap shared by every service.

What each service gets from here, written once:
- grpc.health.v1 with real readiness: NOT_SERVING until every dependency check passes,
  re-checked in the background with backoff (an unreachable Kafka or MinIO never crashes the
  process; it just keeps the service out of rotation);
- server reflection, maximum message sizes;
- ErrorMappingInterceptor: domain exceptions (services.common.errors) -> status codes;
- AuthInterceptor (services.common.auth), when given an authenticator: credentials and roles checked before
  any handler runs, inside the error mapping (UNAUTHENTICATED, PERMISSION_DENIED);
- MetricsInterceptor: request counter and latency histogram by method and code;
- graceful stop on SIGTERM: health goes NOT_SERVING, in-flight calls get a grace period,
  then the stop hooks run (flush the producer, close consumers).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import metrics
from services.common.auth import Authenticator, AuthInterceptor
from services.common.errors import ClassforgeError, caller_message, log_only
from services.common.tls import PLAINTEXT_VARIABLE, TlsConfig

log = logging.getLogger("classforge.grpc")

ReadinessCheck = Callable[[], None]  # raises when the dependency is not reachable


def _method_name(full_method: str) -> str:
    return full_method.rsplit("/", 1)[-1]


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_stream) -> grpc.RpcMethodHandler:
    """Rebuilds `handler` with its behaviour wrapped; unary responses use wrap_unary, streamed ones wrap_stream."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str):
    if isinstance(exc, ClassforgeError):
        if log_only(exc):  # addresses and library errors are for the operator's log, not for the caller
            log.warning("dependency unavailable in %s: %s", method, exc.message, extra={"method": method})
        context.abort(exc.code, caller_message(exc, method))
    log.exception("unhandled error in %s", method, extra={"method": method})
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}; see the service log")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """The one place where exceptions become gRPC statuses (the KServe habit): servicers
    raise domain errors and never touch status codes themselves."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)

        def wrap_unary(behaviour):
            def call(request, context):
                try:
                    return behaviour(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped, never swallowed
                    if _is_abort(exc):
                        raise
                    _abort_for(exc, context, method)
            return call

        def wrap_stream(behaviour):
            def call(request, context):
                try:
                    yield from behaviour(request, context)
                except Exception as exc:  # noqa: BLE001
                    if _is_abort(exc):
                        raise
                    _abort_for(exc, context, method)
            return call

        return _wrap_handler(handler, wrap_unary, wrap_stream)


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises a plain Exception subclass private to grpc; let it through untouched.
    return type(exc).__module__.startswith("grpc")


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts requests and records latency by method and final status code."""

    def __init__(self, service: str):
        self.service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)

        def record(context: grpc.ServicerContext, started: float, failed: bool):
            code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.GRPC_REQUESTS.labels(self.service, method, name).inc()
            metrics.GRPC_LATENCY.labels(self.service, method, name).observe(time.perf_counter() - started)

        def wrap_unary(behaviour):
            def call(request, context):
                started, failed = time.perf_counter(), True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    record(context, started, failed)
            return call

        def wrap_stream(behaviour):
            def call(request, context):
                started, failed = time.perf_counter(), True
                try:
                    yield from behaviour(request, context)
                    failed = False
                finally:
                    record(context, started, failed)
            return call

        return _wrap_handler(handler, wrap_unary, wrap_stream)


class GrpcServer:
    """A configured grpc.Server plus health, reflection, readiness and graceful stop."""

    def __init__(
        self,
        service: str,
        *,
        port: int,
        host: str = "0.0.0.0",
        max_message_bytes: int = 64 * 1024 * 1024,
        worker_threads: int = 16,
        grace_seconds: float = 10.0,
        readiness_checks: dict[str, ReadinessCheck] | None = None,
        recheck_seconds: float = 5.0,
        authenticator: Authenticator | None = None,
        tls: TlsConfig | None = None,
        plaintext: bool = False,
        warn_plaintext: bool = True,
        plaintext_health_port: int = 0,
    ):
        """Serves TLS with `tls`; without it, plaintext only when `plaintext` is true, logged as a WARNING
        at start unless `warn_plaintext` is false (embedded mode on 127.0.0.1 and tests, on purpose).
        `plaintext_health_port` > 0 also serves grpc.health.v1, and nothing else, without TLS on that port:
        Kubernetes' native gRPC probes cannot speak TLS."""
        if tls is None and not plaintext:
            raise ValueError(f"{service}: GrpcServer needs tls= or plaintext=True")
        self.service = service
        self.tls = tls
        self._warn_plaintext = tls is None and warn_plaintext
        self.grace_seconds = grace_seconds
        self.readiness_checks = dict(readiness_checks or {})
        self.recheck_seconds = recheck_seconds
        self._stop_hooks: list[Callable[[], None]] = []
        self._ready_hooks: list[Callable[[], None]] = []
        self._service_names: list[str] = []
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=worker_threads, thread_name_prefix=f"{service}-grpc"),
            # Outermost first: metrics see every final code, auth errors go through the error mapping.
            interceptors=[MetricsInterceptor(service), ErrorMappingInterceptor(),
                          *([AuthInterceptor(authenticator)] if authenticator is not None else [])],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.health_server: grpc.Server | None = None
        if plaintext_health_port > 0:
            self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                                        thread_name_prefix=f"{service}-health"))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)  # the same statuses
            if self.health_server.add_insecure_port(f"{host}:{plaintext_health_port}") == 0:
                raise RuntimeError(f"{service}: cannot bind the health port {host}:{plaintext_health_port}")
        address = f"{host}:{port}"
        self.port = (self.server.add_secure_port(address, tls.server_credentials()) if tls is not None
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise RuntimeError(f"{service}: cannot bind gRPC port {host}:{port}")
        self._set_health(False)
        for name in self.readiness_checks:  # "not known to be up" until a check says otherwise
            metrics.DEPENDENCY_UP.labels(service, name).set(0)

    def add_service(self, add_to_server: Callable, servicer, full_name: str) -> None:
        """Registers a servicer, e.g. add_service(add_JobsServiceServicer_to_server, servicer,
        jobs_service_pb2.DESCRIPTOR.services_by_name['JobsService'].full_name)."""
        add_to_server(servicer, self.server)
        self._service_names.append(full_name)

    def on_stop(self, hook: Callable[[], None]) -> None:
        """Runs after in-flight calls finished (flush producers, close consumers, …)."""
        self._stop_hooks.append(hook)

    def on_ready(self, hook: Callable[[], None]) -> None:
        """Runs once, the first time every dependency is reachable, before health says SERVING
        (restore state, start consuming events). A failing hook is retried with the checks."""
        self._ready_hooks.append(hook)

    def _run_ready_hooks(self) -> list[str]:
        while self._ready_hooks:
            try:
                self._ready_hooks[0]()
            except Exception as exc:  # noqa: BLE001 - retried on the next readiness round
                log.exception("start-up step failed; will retry")
                return [f"start-up: {exc}"]
            self._ready_hooks.pop(0)
        return []

    def start(self) -> int:
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        threading.Thread(target=self._watch_readiness, name=f"{self.service}-readiness", daemon=True).start()
        if self._warn_plaintext:
            log.warning(f"gRPC without TLS ({PLAINTEXT_VARIABLE}=true): anyone on the network can read and send "
                        f"calls; set CLASSFORGE_TLS_CERT and CLASSFORGE_TLS_KEY", extra={"port": self.port})
        log.info("gRPC server listening", extra={
            "port": self.port, "services": self._service_names,
            "tls": "off" if self.tls is None else f"on, client certificates: {self.tls.client_auth}"})
        return self.port

    def _set_health(self, serving: bool) -> None:
        self.serving = serving  # what grpc.health.v1 says; other protocols' readiness endpoints read it
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names]:
            self.health.set(name, status)
        metrics.SERVICE_READY.labels(self.service).set(1 if serving else 0)

    def check_dependencies(self) -> list[str]:
        """Runs every readiness check once; returns the problems, empty when all are reachable."""
        problems = []
        for name, check in self.readiness_checks.items():
            try:
                check()
                metrics.DEPENDENCY_UP.labels(self.service, name).set(1)
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                metrics.DEPENDENCY_UP.labels(self.service, name).set(0)
                problems.append(f"{name}: {exc}")
        return problems

    def _watch_readiness(self) -> None:
        backoff, ready = 0.5, None
        while not self._stopping.is_set():
            problems = self.check_dependencies() or self._run_ready_hooks()
            now_ready = not problems
            if now_ready != ready:
                self._set_health(now_ready)
                if now_ready:
                    log.info("dependencies reachable; SERVING")
                ready = now_ready
            backoff = self.recheck_seconds if now_ready else min(backoff * 2, 10.0)
            if problems:
                log.warning("dependencies unreachable; NOT_SERVING, retrying", extra={
                    "problems": problems, "retry_in_seconds": backoff})
            self._stopping.wait(backoff)

    def stop(self) -> None:
        """Graceful stop; safe to call more than once."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        log.info("stopping: NOT_SERVING, draining in-flight calls", extra={"grace_seconds": self.grace_seconds})
        self._set_health(False)
        if self.health_server is not None:
            self.health_server.stop(0)
        self.server.stop(self.grace_seconds).wait()
        for hook in reversed(self._stop_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                log.exception("stop hook failed")
        self._stopped.set()
        log.info("stopped")

    def serve_until_signalled(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Blocks until SIGTERM/SIGINT, then stops gracefully. Call from the main thread."""
        for sig in signals:
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        self._stopped.wait()


def wait_until_serving(channel: grpc.Channel, timeout: float = 30.0, service: str = "") -> None:
    """Client helper (tests, CLI): blocks until the server's health says SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            last = exc.code().name
        time.sleep(0.2)
    raise TimeoutError(f"service not SERVING after {timeout:.0f}s (last status: {last})")

