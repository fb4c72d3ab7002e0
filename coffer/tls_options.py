"""TLS on the command line, declared once for every command that serves or calls HTTP.

Job. ``coffer serve`` and ``coffer query serve`` take the same ``--tls-cert``, ``--tls-key`` and
``--insecure-allow-plaintext`` and hand the files to uvicorn the same way; the commands that call a
node (``coffer account …``, ``coffer project``, ``coffer audit``) take the same ``--ca-file``
(env ``COFFER_CA_FILE``). The rule those server options feed — plain HTTP only on loopback unless
told otherwise — is :func:`coffer.server.serve.check_tls`, run by both servers.

This module imports click and the standard library only, so the node's and the query side's
command modules can both use it without importing each other.
"""

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_pem_file = click.Path(dir_okay=False, exists=True, path_type=Path)


def server_tls_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--tls-cert``, ``--tls-key`` and ``--insecure-allow-plaintext`` to a server command; it
    gets ``tls_cert``, ``tls_key`` and ``insecure_allow_plaintext``."""
    function = click.option(
        "--insecure-allow-plaintext",
        is_flag=True,
        help="allow plain HTTP on an address other than loopback (a proxy in front terminates TLS)",
    )(function)
    function = click.option("--tls-key", type=_pem_file, help="serve HTTPS: the certificate's key (PEM)")(function)
    return click.option("--tls-cert", type=_pem_file, help="serve HTTPS: the certificate (PEM, chain)")(function)


def uvicorn_tls(tls_cert: Path | None, tls_key: Path | None) -> dict[str, str]:
    """uvicorn's settings for the certificate and key: none for plain HTTP."""
    if tls_cert is None or tls_key is None:
        return {}
    return {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}


ca_file_option = click.option(
    "--ca-file",
    envvar="COFFER_CA_FILE",
    type=_pem_file,
    help="for https URLs: trust this CA (PEM) instead of the system's [env COFFER_CA_FILE]",
)


def ca_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """What an HTTPS client verifies the node with: only ``ca_file`` when given (None: the system's
    CAs); a file that holds no certificate is a usage error naming it."""
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as error:
        raise click.BadParameter(f"cannot use {ca_file} as a CA file: {error}", param_hint="--ca-file") from None
