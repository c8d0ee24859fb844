"""Readiness probe for the local Kafka broker: one real Metadata request, stdlib only.

A TCP connect succeeds before the broker has joined the KRaft quorum and registered;
a Metadata response that lists at least one broker means clients can produce and
consume. Exit 0 when ready, 1 otherwise. Usage: python3 probe.py HOST PORT [CAFILE]
With CAFILE the listener is spoken to over TLS, the broker's certificate verified against CAFILE
(host name included).
"""

import socket
import ssl
import struct
import sys

API_METADATA = 3
VERSION = 4  # oldest Metadata version Kafka 4.x still serves (KIP-896), non-flexible


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def main(host: str, port: int, cafile=None) -> int:
    client_id = b"classforge-probe"
    # Request header v1 (api_key, api_version, correlation_id, client_id) + Metadata v4 body
    # (topics = null, i.e. all topics; allow_auto_topic_creation = false).
    body = struct.pack(">hhih", API_METADATA, VERSION, 7, len(client_id)) + client_id
    body += struct.pack(">ib", -1, 0)
    sock = socket.create_connection((host, port), timeout=5)
    if cafile:
        sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
    with sock:
        sock.settimeout(5)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", read_exact(sock, 4))[0]
        resp = read_exact(sock, size)
    # Response header v0 (correlation_id), then throttle_time_ms and the brokers array.
    correlation_id, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    if correlation_id != 7:
        print(f"unexpected correlation id {correlation_id}", file=sys.stderr)
        return 1
    if n_brokers < 1:
        print("broker up, but no broker registered yet", file=sys.stderr)
        return 1
    print(f"metadata ok: {n_brokers} broker(s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
    except (OSError, struct.error) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        sys.exit(1)
