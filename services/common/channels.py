"""The one way a classforge process opens a gRPC channel: TLS unless plaintext is asked for by name.

    open_channel(target, tls)                       TLS (services.common.tls.TlsConfig: CA, and the
                                                    process's own certificate for mutual TLS)
    open_channel(target, None, plaintext=True)      plaintext: tests, embedded mode, CLASSFORGE_GRPC_PLAINTEXT

The command line adds --tls-ca/--tls-cert/--tls-key/--plaintext with `add_tls_flags` (defaults from
CLASSFORGE_TLS_CA/CERT/KEY and CLASSFORGE_GRPC_PLAINTEXT) and opens with `channel_from_args`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import grpc

from services.common.settings import GrpcTlsSettings, SettingsError
from services.common.tls import TlsConfig, client_tls

ChannelOptions = Sequence[tuple[str, object]]


def open_channel(target: str, tls: TlsConfig | None, *, plaintext: bool = False,
                 options: ChannelOptions = ()) -> grpc.Channel:
    """A channel to `target`: TLS with `tls`; without it, plaintext only when `plaintext` says so (a
    missing TLS config is a bug, never a quiet downgrade)."""
    if tls is not None:
        return grpc.secure_channel(target, tls.channel_credentials(), options=list(options))
    if not plaintext:
        raise ValueError(f"open_channel({target!r}): no TLS config and plaintext not asked for")
    return grpc.insecure_channel(target, options=list(options))


def channel_for_settings(target: str, settings: GrpcTlsSettings, options: ChannelOptions = ()) -> grpc.Channel:
    """A service's channel to another service, as its settings say (SettingsError when they say neither
    TLS nor CLASSFORGE_GRPC_PLAINTEXT=true)."""
    return open_channel(target, client_tls(settings), plaintext=settings.grpc_plaintext, options=options)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert, --tls-key, --plaintext. Unset flags leave no attribute (SUPPRESS), so the
    same flags on the main parser and on a subcommand do not overwrite each other; channel_from_args
    falls back to the environment."""
    group = parser.add_argument_group("TLS (defaults: CLASSFORGE_TLS_CA, CLASSFORGE_TLS_CERT, CLASSFORGE_TLS_KEY, "
                                      "CLASSFORGE_GRPC_PLAINTEXT)")
    group.add_argument("--tls-ca", default=argparse.SUPPRESS, metavar="PEM",
                       help="CA bundle the server's certificate is verified against")
    group.add_argument("--tls-cert", default=argparse.SUPPRESS, metavar="PEM",
                       help="client certificate, for servers that require mutual TLS")
    group.add_argument("--tls-key", default=argparse.SUPPRESS, metavar="PEM", help="private key of --tls-cert")
    group.add_argument("--plaintext", action="store_true", default=argparse.SUPPRESS,
                       help="talk to the server without TLS (a local or test deployment)")


def tls_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TlsConfig | None:
    """The client TLS config the flags (else the environment) describe; None for plaintext. SettingsError
    when they describe neither. An explicit --plaintext wins over TLS files in the environment."""
    if getattr(args, "plaintext", False):
        return None
    overrides = {field: getattr(args, attr) for attr, field in (
        ("tls_ca", "tls_ca"), ("tls_cert", "tls_cert"), ("tls_key", "tls_key"), ("plaintext", "grpc_plaintext"))
        if hasattr(args, attr)}
    settings = GrpcTlsSettings.load(os.environ if environ is None else environ, **overrides)
    try:
        return client_tls(settings)
    except SettingsError as exc:
        raise SettingsError(f"{exc} (or --tls-ca / --plaintext)") from None


def channel_from_args(target: str, args: argparse.Namespace, options: ChannelOptions = ()) -> grpc.Channel:
    """The command line's channel to `target`; exits with one line when TLS is neither configured nor
    declined with --plaintext."""
    try:
        tls = tls_from_args(args)
    except SettingsError as exc:
        raise SystemExit(f"classforge: {exc}") from None
    return open_channel(target, tls, plaintext=tls is None, options=options)
