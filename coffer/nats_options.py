"""NATS sign-in on the command line, declared once for the commands that reach NATS.

Job. ``coffer serve --log`` (the replicated log) and ``coffer project --nats`` (the projector's
publishing) take the same ``--nats-credentials`` and ``--nats-ca-file`` and hand both to
:func:`coffer.log.jetstream.connect_options`; each command only says which of its options they go
with, and what writes the credentials file for it.

Like :mod:`coffer.tls_options`, this imports click and the standard library only, so the node's and
the query side's command modules can both use it without importing each other.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_existing_file = click.Path(dir_okay=False, exists=True, path_type=Path)


def nats_sign_in_options(with_option: str, credentials_source: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--nats-credentials`` and ``--nats-ca-file`` to a command, valid with ``with_option`` (such as
    ``--log``); it gets ``nats_credentials`` and ``nats_ca_file``. ``credentials_source``, if given, is
    said after the credentials file (such as `` (coffer cluster up writes one)``)."""

    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option(
            "--nats-ca-file",
            type=_existing_file,
            help=f"with {with_option}: speak TLS to NATS and trust this CA (PEM) for the servers' certificates",
        )(function)
        return click.option(
            "--nats-credentials",
            type=_existing_file,
            help=f"with {with_option}: sign in to NATS with this 'user:password' file{credentials_source} or a .creds file",
        )(function)

    return add
