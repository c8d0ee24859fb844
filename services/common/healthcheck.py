"""Container health check: exits 0 when the local gRPC server's grpc.health.v1 says SERVING.

    python -m services.common.healthcheck (--port PORT | --of SERVICE) [--service NAME] [--timeout SECONDS]
                                          [--server-name NAME]

The port is --port, else CLASSFORGE_GRPC_PORT when set and not 0, else the default gRPC port of
`--of SERVICE` (services.common.settings.DEFAULT_PORTS: jobs, ingest, …). Used by docker-compose.yml
(`grpc_health_probe` is not installed in the image); Kubernetes uses its native `grpc:` probes.

It runs in the service's own container with the service's own environment, so it talks to the server
the way the service is configured: TLS with CLASSFORGE_TLS_CA, presenting CLASSFORGE_TLS_CERT/KEY (a
server requiring mutual TLS accepts it), or plaintext where CLASSFORGE_GRPC_PLAINTEXT=true and no TLS
files are set. It connects to 127.0.0.1 but checks the server's certificate for the first name in the
service's own certificate (the server serves that same file), or --server-name.
Exit codes: 0 SERVING, 1 anything else (NOT_SERVING, unreachable, timeout), 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import open_channel
from services.common.settings import DEFAULT_PORTS, GrpcTlsSettings, SettingsError
from services.common.tls import TlsConfig, certificate_names, client_tls


def default_port(of: str = "", environ=os.environ) -> int | None:
    raw = environ.get("CLASSFORGE_GRPC_PORT", "").strip()
    if raw and raw != "0":
        return int(raw)
    return DEFAULT_PORTS[of][0] if of in DEFAULT_PORTS else None


def check(address: str, service: str = "", timeout: float = 3.0, *, tls: TlsConfig | None = None,
          server_name: str = "") -> tuple[bool, str]:
    """(serving, status name) of `service` ("" = the whole server) at `address`; TLS with `tls`, else
    plaintext. `server_name`: the name the server's certificate must hold (default: from the address)."""
    options = [("grpc.ssl_target_name_override", server_name)] if tls is not None and server_name else []
    with open_channel(address, tls, plaintext=tls is None, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, exc.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def own_tls(environ: Mapping[str, str]) -> tuple[TlsConfig | None, str]:
    """The service's client TLS from its environment, and the name its own certificate is for."""
    tls = client_tls(GrpcTlsSettings.load(environ))
    names = certificate_names(Path(tls.cert).read_bytes()) if tls is not None and tls.cert else []
    return tls, names[0] if names else ""


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--of", default="", choices=["", *DEFAULT_PORTS], help="service whose default port to use")
    parser.add_argument("--service", default="", help="health service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--server-name", default="",
                        help="name the server's certificate must hold (default: the first name of CLASSFORGE_TLS_CERT)")
    args = parser.parse_args(argv)
    try:
        port = args.port if args.port is not None else default_port(args.of, environ)
    except ValueError:
        port = None
    if port is None:
        print("healthcheck: no port (give --port or --of SERVICE, or set CLASSFORGE_GRPC_PORT)", file=sys.stderr)
        return 2
    try:
        tls, own_name = own_tls(environ)
    except SettingsError as exc:
        print(f"healthcheck: configuration error: {exc}", file=sys.stderr)
        return 2
    serving, status = check(f"{args.host}:{port}", args.service, args.timeout, tls=tls,
                            server_name=args.server_name or own_name)
    print(f"{args.host}:{port} {status}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
