"""Container health check: exits 0 when the local gRPC server's grpc.health.v1 says SERVING.

    python -m services.common.healthcheck (--port PORT | --of SERVICE) [--service NAME] [--timeout SECONDS]

The port is --port, else CLASSFORGE_GRPC_PORT when set and not 0, else the default gRPC port of
`--of SERVICE` (services.common.settings.DEFAULT_PORTS: jobs, ingest, …). Used by docker-compose.yml
(`grpc_health_probe` is not installed in the image); Kubernetes uses its native `grpc:` probes.
Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, unreachable, timeout), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import DEFAULT_PORTS


def default_port(of: str = "", environ=os.environ) -> int | None:
    raw = environ.get("CLASSFORGE_GRPC_PORT", "").strip()
    if raw and raw != "0":
        return int(raw)
    return DEFAULT_PORTS[of][0] if of in DEFAULT_PORTS else None


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving, status name) of `service` ("" = the whole server) at `address`."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, exc.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--of", default="", choices=["", *DEFAULT_PORTS], help="service whose default port to use")
    parser.add_argument("--service", default="", help="health service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        port = args.port if args.port is not None else default_port(args.of)
    except ValueError:
        port = None
    if port is None:
        print("healthcheck: no port (give --port or --of SERVICE, or set CLASSFORGE_GRPC_PORT)", file=sys.stderr)
        return 2
    serving, status = check(f"{args.host}:{port}", args.service, args.timeout)
    print(f"{args.host}:{port} {status}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
