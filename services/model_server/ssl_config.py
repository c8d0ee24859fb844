"""Writes TF Serving's `--ssl_config_file` from PEM files: the gRPC TLS of the real model server.

    python -m services.model_server.ssl_config --cert server.crt --key server.key [--ca ca.pem]
                                               [--client-verify] --out /run/tfs/ssl.conf

TF Serving reads a text-format tensorflow.serving.SSLConfig that holds the PEM *contents* (server_key,
server_cert, custom_ca, client_verify), not paths. `--client-verify` makes it require a client
certificate signed by --ca (mutual TLS, as CLASSFORGE_TLS_CLIENT_AUTH=require). The file holds the
private key: it is written with mode 0600. TF Serving reads it once at start; restart it after a
rotation. The classforge stand-in (services.model_server.main) uses CLASSFORGE_TLS_* instead.
Exit codes: 0 written, 2 unreadable or inconsistent files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.common.tls import InvalidPem, ssl_config_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.model_server.ssl_config",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cert", required=True, help="PEM certificate (chain) TF Serving serves")
    parser.add_argument("--key", required=True, help="PEM private key of --cert")
    parser.add_argument("--ca", default="", help="PEM CA bundle client certificates are verified against")
    parser.add_argument("--client-verify", action="store_true", help="require a client certificate (mutual TLS)")
    parser.add_argument("--out", required=True, help="file to write (replaced)")
    args = parser.parse_args(argv)
    try:
        text = ssl_config_text(Path(args.cert).read_bytes(), Path(args.key).read_bytes(),
                               Path(args.ca).read_bytes() if args.ca else None, args.client_verify)
    except (OSError, InvalidPem) as exc:
        print(f"ssl_config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
