"""The ``coffer`` command.

``serve`` and ``bench`` run things; the other commands are for people working with a running
node. Those are thin over :class:`coffer.client.Client`: they print aligned plain-text tables (or
JSON with ``--json``), report errors on stderr as ``error: CODE: message``, and turn the client's
error types into the exit codes listed in ``coffer --help``.
"""

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coffer.bench.figures import Recorder, json_option
from coffer.cli_node import (
    Output,
    account_card,
    accounts_table,
    dedup_option,
    exit_not_found,
    print_result,
    table,
    talks_to_node,
    total,
)
from coffer.core.commands import stripes_max
from coffer.nats_options import nats_sign_in_options
from coffer.tls_options import server_tls_options

if TYPE_CHECKING:
    from coffer.client import Client



_negative_number = re.compile(r"-(\d+(\.\d*)?|\.\d+)")
_value_mark = "\x1f"  # prefixed to a negative number while click parses, taken off after


class _SignedValuesCommand(click.Command):
    """A command that reads negative numbers (``-5``, ``-0.50``) as values, never as options.

    click takes every token that starts with "-" for an option, so ``coffer transfer A B -5``
    said "No such option: -5". Such tokens are marked before parsing (unless they are the value
    of an option that takes one, which click already reads right) and unmarked after.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in (*param.opts, *param.secondary_opts)
        }
        marked = []
        previous = None
        for token in args:
            if previous not in takes_value and _negative_number.fullmatch(token):
                token = _value_mark + token
            marked.append(token)
            previous = token
        rest = super().parse_args(ctx, marked)
        for name, value in ctx.params.items():
            if isinstance(value, str):
                ctx.params[name] = value.removeprefix(_value_mark)
            elif isinstance(value, tuple):
                ctx.params[name] = tuple(item.removeprefix(_value_mark) if isinstance(item, str) else item for item in value)
        return [token.removeprefix(_value_mark) for token in rest]


class _Group(click.Group):
    command_class = _SignedValuesCommand
    group_class = type  # subgroups are _Group too, and so their commands read negative numbers alike


@click.group(cls=_Group)
@click.version_option(package_name="coffer")
def main() -> None:
    """Coffer, a strongly consistent wallet ledger.

    The commands that talk to a node take --url (env COFFER_URL, default
    http://127.0.0.1:8080; several comma-separated URLs are tried in turn),
    --api-key (env COFFER_API_KEY), --ca-file (env COFFER_CA_FILE: the CA of
    https nodes) and --json (print JSON for scripts).
    Errors go to stderr as "error: CODE: message".

    \b
    Exit codes:
      0  done
      1  rejected by a ledger rule (HTTP 409), e.g. LOWER_LIMIT_EXCEEDED; nothing changed
      2  usage error, a malformed request (HTTP 422), e.g. INVALID_AMOUNT, or a
         configuration a server cannot start with (keys file, key too short)
      3  not found (HTTP 404), e.g. ACCOUNT_NOT_FOUND
      4  unavailable (HTTP 503) or no answer (network); retrying a command
         with the same --dedup-id is safe and answers its outcome
      5  missing or wrong API key, or a role not allowed (HTTP 401/403)
      6  any other error answered by the server
      7  a server cannot start: its data directory or port is in use
      8  a server stopped: its data directory cannot be recovered (it says why)

    Each error code maps to one exit code, whatever the command.
    """


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="address to bind; other than loopback needs API keys and TLS"
)
@click.option("--port", default=8080, show_default=True, help="TCP port of the HTTP API, the console (/console) and the API docs (/docs)")
@click.option("--data-dir", default="./data", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--keys-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="lines of 'ROLE sha256:HASH' (coffer keys add); re-read when it changes",
)
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--snapshot-entries", default=20_000, show_default=True, help="log entries between snapshots")
@click.option("--log", "log_url", help="nats://host:port,... to join a JetStream cluster [default: local WAL in --data-dir]")
@click.option("--node-name", help="this node's name in a cluster [default: host:port]")
@click.option("--stream", default="coffer-shard-0", show_default=True, help="the shard's JetStream stream")
@click.option("--replicas", default=3, show_default=True, type=click.Choice(["1", "3", "5"]), help="stream replicas (R)")
@click.option("--compaction-interval-s", default=30.0, show_default=True, help="cluster: how often to purge the stream below all snapshots")
@click.option(
    "--shards",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="shards, each in its own process with its own log (a local WAL, or with --log the stream coffer-shard-K); "
    "a data directory, or a cluster's shard map, keeps its number",
)
@click.option(
    "--host-shards",
    help="with --shards and --log: the shards this node runs, comma-separated (such as 0,1) [default: all]; "
    "requests for the others go to a node that runs them",
)
@click.option(
    "--advertise-url",
    help="with --host-shards: this node's API address as other nodes reach it [default: http://HOST:PORT]",
)
@click.option("--shard-id", type=click.IntRange(0, 1023), hidden=True, help="run as shard K of a sharded node (started by --shards)")
@click.option("--shard-ports", hidden=True, help="with --shards: the shards' loopback ports, comma-separated [default: any free]")
@click.option(
    "--router-processes", default=1, show_default=True, type=click.IntRange(1, 64), help="with --shards: processes serving the API in front of the shards"
)
@click.option("--idle-timeout-s", default=5.0, show_default=True, help="close a connection without a request after this")
@click.option("--header-timeout-s", default=10.0, show_default=True, help="a request's head must arrive within this (else 408)")
@click.option("--body-timeout-s", default=30.0, show_default=True, help="a request's body must arrive within this")
@click.option("--connections-max", default=4096, show_default=True, help="open connections, at most (also kept below the fd limit)")
@click.option(
    "--write-requests-waiting-max", default=1024, show_default=True, help="write requests in the node, at most; past it 503 at once"
)
@click.option("--disk-budget-mb", type=click.IntRange(min=1), help="refuse writes (507, disk full) when --data-dir holds more")
@click.option(
    "--cluster-secret-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="with --log: the cluster's secret (coffer cluster up writes one); checkpoints are signed with it, others ignored",
)
@nats_sign_in_options("--log", " (coffer cluster up writes one a node)")
@server_tls_options
def serve(
    host: str,
    port: int,
    data_dir: Path,
    keys_file: Path | None,
    log_level: str,
    snapshot_entries: int,
    log_url: str | None,
    node_name: str | None,
    stream: str,
    replicas: str,
    compaction_interval_s: float,
    shards: int,
    host_shards: str | None,
    advertise_url: str | None,
    shard_id: int | None,
    shard_ports: str | None,
    router_processes: int,
    idle_timeout_s: float,
    header_timeout_s: float,
    body_timeout_s: float,
    connections_max: int,
    write_requests_waiting_max: int,
    disk_budget_mb: int | None,
    cluster_secret_file: Path | None,
    nats_credentials: Path | None,
    nats_ca_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_allow_plaintext: bool,
) -> None:
    """Run a node: on the local write-ahead log (the embedded default), or on a JetStream cluster."""
    from coffer.server.connections import ConnectionLimits
    from coffer.server.serve import ServeError
    from coffer.server.serve import serve as run_server

    if shards > 1:
        if tls_cert is not None or tls_key is not None:
            raise click.UsageError("--shards serves plain HTTP for now: put a TLS proxy in front (and --insecure-allow-plaintext)")
        from coffer.server.serve import is_loopback

        if not is_loopback(host) and not insecure_allow_plaintext:
            raise click.UsageError(f"refusing to bind {host} without TLS: --shards needs --insecure-allow-plaintext behind a TLS proxy")
        from coffer.txn.launcher import ClusterLog, default_node_name, serve_sharded

        cluster_log = None
        if log_url is not None:
            cluster_log = ClusterLog(
                log_url,
                node_name or default_node_name(port),
                int(replicas),
                compaction_interval_s,
                cluster_secret_file=cluster_secret_file,
                nats_credentials=nats_credentials,
                nats_ca_file=nats_ca_file,
            )
        elif cluster_secret_file is not None or nats_credentials is not None or nats_ca_file is not None:
            raise click.UsageError("--cluster-secret-file, --nats-credentials and --nats-ca-file go with --log (a JetStream cluster)")
        try:
            ports = [int(part) for part in shard_ports.split(",")] if shard_ports else None
            serve_sharded(
                host, port, data_dir, keys_file, log_level, snapshot_entries, shards, router_processes, cluster_log, ports,
                host_shards=host_shards, advertise_url=advertise_url,
            )  # fmt: skip
        except ServeError as error:
            click.echo(f"error: {error.message}", err=True)
            raise SystemExit(error.exit_code) from None
        return
    if host_shards is not None or advertise_url is not None:
        raise click.UsageError("--host-shards and --advertise-url go with --shards (a sharded node)")
    if shard_id is None and (data_dir / "shardmap.json").exists():
        raise click.UsageError(f"{data_dir} holds a sharded ledger: start it with --shards (the number it was created with)")
    if shard_id is None and log_url is not None:
        _refuse_a_sharded_cluster(log_url, nats_credentials, nats_ca_file)
    limits = ConnectionLimits(
        idle_timeout_s=idle_timeout_s,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        connections_max=connections_max,
    )
    try:
        run_server(
            host,
            port,
            data_dir,
            keys_file,
            log_level,
            snapshot_entries,
            log_url,
            node_name,
            stream,
            int(replicas),
            compaction_interval_s,
            limits,
            write_requests_waiting_max,
            shard_id=shard_id,
            disk_budget_mb=disk_budget_mb,
            cluster_secret_file=cluster_secret_file,
            nats_credentials=nats_credentials,
            nats_ca_file=nats_ca_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            allow_plaintext=insecure_allow_plaintext,
        )
    except ServeError as error:
        click.echo(f"error: {error.message}", err=True)
        raise SystemExit(error.exit_code) from None


def _refuse_a_sharded_cluster(log_url: str, nats_credentials: Path | None, nats_ca_file: Path | None) -> None:
    """A node without --shards on a cluster whose shard map has several would serve shard 0's
    stream as the whole ledger: refuse it. An unreachable bucket does not stop the start (the node
    waits for NATS in /readyz, as it always did)."""
    from coffer.log.jetstream import connect_options
    from coffer.txn.shard_map_store import ShardMapUnavailable, read_shared, shard_map_bucket

    servers = [part.strip() for part in log_url.split(",") if part.strip()]
    try:
        shard_map = read_shared(servers, wait_s_max=shard_map_check_s_max, connect_options=connect_options(nats_credentials, nats_ca_file))
    except ShardMapUnavailable:
        return
    if shard_map is not None and shard_map.shards != 1:
        click.echo(
            f"error: the cluster's ledger has {shard_map.shards} shards (shard map version {shard_map.version} in the "
            f"JetStream bucket {shard_map_bucket}), not 1: start this node with --shards {shard_map.shards}",
            err=True,
        )
        raise SystemExit(2)


shard_map_check_s_max = 5.0  # a single-shard node's look at the cluster's shard map; NATS may be down


@main.group()
def cluster() -> None:
    """A local cluster: NATS JetStream servers and Coffer nodes on loopback ports."""


def _port_range(context: click.Context, parameter: click.Parameter, value: str | None) -> object:
    if value is None:
        return None
    from coffer.ports import PortRange

    try:
        return PortRange.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@cluster.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.Choice(["1", "3", "5"]), help="NATS servers and Coffer nodes")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--ports", callback=_port_range, help="take every port from this range, e.g. 24000-24100 [default: any free]")
@click.option(
    "--disk-budget-mb",
    type=click.IntRange(min=64),
    help="split between the processes: each NATS server and each node refuses writes beyond its share",
)
@click.option(
    "--shards", default=1, show_default=True, type=click.IntRange(1, 1024), help="shards (a stream each, R = nodes)"
)
@click.option(
    "--placement",
    default="all",
    show_default=True,
    type=click.Choice(["all", "spread"]),
    help="with --shards: every node runs every shard (all), or each shard runs on two nodes (spread); any node takes any request",
)
@click.option("--nats-tls", is_flag=True, help="NATS clients and routes speak TLS (a private CA made in the data directory)")
def cluster_up(nodes: str, data_dir: Path, ports: object, disk_budget_mb: int | None, shards: int, placement: str, nats_tls: bool) -> None:
    """Start the servers and nodes, print the nodes' URLs, and leave them running."""
    from coffer.cluster.local import LocalCluster

    budget = disk_budget_mb * 1024 * 1024 if disk_budget_mb is not None else None
    local = LocalCluster(
        data_dir, int(nodes), ports=ports, disk_budget_bytes=budget, shards=shards, nats_tls=nats_tls, placement=placement  # type: ignore[arg-type]
    )
    local.up()
    click.echo(f"NATS JetStream: {','.join(local.nats.plain_urls)} (credentials in {local.nats.directory})")
    for node in local.nodes:
        hosts = f"  shards {','.join(map(str, local.hosted_shards(node.number, len(local.nodes)))) or 'none'}" if shards > 1 else ""
        click.echo(f"{node.name}  {node.url}{hosts}")
    click.echo(f"COFFER_URL={','.join(local.urls)}")
    click.echo(f"stop with: coffer cluster down --data-dir {data_dir}")


@cluster.command("down")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
def cluster_down(data_dir: Path) -> None:
    """Stop what 'coffer cluster up' started in that directory (by the PIDs it recorded)."""
    from coffer.cluster.local import stop_recorded_cluster

    stopped = stop_recorded_cluster(data_dir)
    click.echo(f"stopped {len(stopped)} processes")


@main.command()
@click.option("--minutes", default=2.0, show_default=True, help="how long the nemesis works")
@click.option("--nodes", default="3", show_default=True, type=click.Choice(["3", "5"]), help="NATS servers and Coffer nodes")
@click.option("--threads", default=6, show_default=True, help="client threads")
@click.option("--seed", default=1, show_default=True, help="drives the nemesis and the clients")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="keep the cluster's files here")
@click.option("--ports", callback=_port_range, help="take every port from this range, e.g. 24000-24100 [default: any free]")
@click.option(
    "--disk-budget-mb",
    default=4096,
    show_default=True,
    type=click.IntRange(min=64),
    help="faults stop and the run ends with its verdict when the cluster reaches it",
)
@click.option("--faults", "fault_names", help="comma-separated fault kinds [default: all]")
@click.option(
    "--shards",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=8),
    help="shards (a stream each); with more than one, commands cross shards and kill-leaders joins the faults",
)
def chaos(
    minutes: float,
    nodes: str,
    threads: int,
    seed: int,
    data_dir: Path | None,
    ports: object,
    disk_budget_mb: int,
    fault_names: str | None,
    shards: int,
) -> None:
    """Faults on a real local cluster under mixed load, then a check of everything acknowledged.

    Last line: chaos: requests= faults= lost= duplicated= invariant_violations= nodes_not_back=
    verdict=ok|ended-early|problems shards=N. It is printed also when the run is interrupted (SIGINT, SIGTERM) or a node does
    not come back. Exit 1 on a problem.
    """
    from coffer.cluster.chaos import fault_kinds, run, shard_faults

    known = fault_kinds + (shard_faults if shards > 1 else ())
    kinds = None
    if fault_names:
        kinds = tuple(name.strip() for name in fault_names.split(",") if name.strip())
        unknown = [name for name in kinds if name not in known]
        if unknown or not kinds:
            raise click.BadParameter(f"unknown fault kinds {unknown}; known: {', '.join(known)}", param_hint="--faults")
    ran = run(minutes, int(nodes), threads, seed, data_dir, click.echo, ports=ports, disk_budget_mb=disk_budget_mb, kinds=kinds, shards=shards)  # type: ignore[arg-type]
    if not ran:
        raise SystemExit(1)


@main.group()
def bench() -> None:
    """Benchmarks (speed targets live here, never in tests)."""


@bench.command("apply")
@click.option("--accounts", "account_count", default=100_000, show_default=True, help="accounts to create")
@click.option("--transfers", "transfer_count", default=1_000_000, show_default=True, help="transfers to apply")
@click.option("--entry-size", default=1_000, show_default=True, help="commands per log entry")
@click.option("--seed", default=1, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="rounds per side; medians are reported")
@json_option("bench apply")
def bench_apply(account_count: int, transfer_count: int, entry_size: int, seed: int, repeat: int, recorder: Recorder) -> None:
    """Apply random transfers to the core state machine, next to a bare loop doing the irreducible work."""
    from coffer.bench.apply import run

    run(account_count, transfer_count, entry_size, seed, repeat, echo=recorder.echo)


@bench.command("load")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="the node to load")
@click.option("--mode", type=click.Choice(["single", "batch"]), default="single", show_default=True)
@click.option("--concurrency", default=64, show_default=True, help="requests in flight (single mode)")
@click.option("--batch", "batch_size", default=1000, show_default=True, help="transfers per request (batch mode)")
@click.option("--duration", default=10.0, show_default=True, help="seconds of load")
@click.option("--hot", default=0.0, show_default=True, help="share of transfers through one shared account")
@click.option("--accounts", "account_count", default=10_000, show_default=True)
@click.option("--processes", default=2, show_default=True, help="load generator processes")
@click.option("--seed", default=1, show_default=True)
@click.option("--cross-shard", default=0.0, show_default=True, help="sharded node: share of transfers between two shards")
@click.option("--rate", type=float, help="open loop: requests per second started on a fixed schedule [default: closed loop]")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="draw latency percentiles and throughput over time (PNG)")
@click.option("--no-floor", is_flag=True, help="skip the floor (a minimal ASGI app under the same load) and its ratio")
@click.option("--msgpack", is_flag=True, help="batch mode: send and receive the batches in MessagePack")
@json_option("bench load")
def bench_load(
    url: str,
    mode: str,
    concurrency: int,
    batch_size: int,
    duration: float,
    hot: float,
    account_count: int,
    processes: int,
    seed: int,
    cross_shard: float,
    rate: float | None,
    plot_path: Path | None,
    no_floor: bool,
    msgpack: bool,
    recorder: Recorder,
) -> list[dict[str, Any]]:
    """Drive a running node with transfers, then a minimal ASGI app (the floor) the same way; last line:
    mode= tps= p50_ms= p99_ms= p999_ms= errors= floor_tps= ratio= (tps / floor_tps).

    With --rate also: rate= refused= (503s) accepted_p50_ms= accepted_p99_ms= late= (latency from each
    request's scheduled start). Against a sharded node a last line: shards= cross_shard= tps= p50_ms=
    p99_ms= errors=.
    """
    from coffer.bench.figures import plot_load
    from coffer.bench.load import BenchError, run

    try:
        samples = run(
            url, mode, concurrency, batch_size, duration, hot, account_count, processes, seed, recorder.echo, rate, cross_shard,
            floor=not no_floor,
            msgpack=msgpack,
        )
    except BenchError as error:
        raise click.UsageError(str(error)) from error
    if plot_path is not None:
        plot_load(plot_path, recorder.figure(samples))
        click.echo(f"plot: {plot_path}")
    return samples


@bench.command("servers")
@click.option("--duration", default=10.0, show_default=True, help="seconds of load per server and app")
@click.option("--concurrency", default=64, show_default=True, help="requests in flight")
@click.option("--accounts", "account_count", default=10_000, show_default=True)
@click.option("--processes", default=2, show_default=True, help="load generator processes")
@click.option("--seed", default=1, show_default=True)
@json_option("bench servers")
def bench_servers(duration: float, concurrency: int, account_count: int, processes: int, seed: int, recorder: Recorder) -> None:
    """Serve the floor app and a node under uvicorn + httptools and under granian, load each the same way;
    a line per server and app: server= app= tps= p50_ms= p99_ms= errors=, then fastest_on_node= by=."""
    from coffer.bench.servers import run

    run(duration, concurrency, account_count, processes, seed, recorder.echo)


@bench.command("failover")
@click.option("--runs", default=5, show_default=True, help="leader kills, one after the other")
@click.option("--nodes", default="3", show_default=True, type=click.Choice(["3", "5"]))
@click.option("--threads", default=6, show_default=True, help="client threads sending transfers")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="keep the cluster's files here")
@json_option("bench failover")
def bench_failover(runs: int, nodes: str, threads: int, data_dir: Path | None, recorder: Recorder) -> None:
    """Kill -9 the stream leader under load; last line: rto_ms=<worst run> lost= duplicated=."""
    from coffer.bench.failover import run

    run(runs, int(nodes), threads, data_dir, recorder.echo)


@bench.command("restart")
@click.option("--accounts", "account_count", default=100_000, show_default=True)
@click.option("--transfers", "transfer_count", default=1_000_000, show_default=True)
@click.option("--entry-size", default=1_000, show_default=True)
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="built if empty, reused otherwise"
)
@json_option("bench restart")
def bench_restart(account_count: int, transfer_count: int, entry_size: int, data_dir: Path, recorder: Recorder) -> None:
    """Time a node's restart (snapshot + log replay) after a long history; last line: restart_s=."""
    from coffer.bench.restart import run

    run(account_count, transfer_count, entry_size, data_dir, recorder.echo)


def _meta_option(function: Callable[..., None]) -> Callable[..., None]:
    return click.option("--meta", "metadata", multiple=True, metavar="KEY=VALUE", help="metadata entry (repeatable)")(function)


def _metadata(entries: Sequence[str]) -> dict[str, str] | None:
    if not entries:
        return None
    pairs = {}
    for entry in entries:
        key, separator, value = entry.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{entry!r} is not KEY=VALUE", param_hint="--meta")
        pairs[key] = value
    return pairs


def _range_options(function: Callable[..., None]) -> Callable[..., None]:
    seq = click.IntRange(min=0)
    options = [
        click.option("--from-seq", type=seq, help="first seq (inclusive)"),
        click.option("--to-seq", type=seq, help="end seq (exclusive)"),
        click.option("--from-time", help="first time (inclusive): RFC 3339 or Unix seconds"),
        click.option("--to-time", help="end time (exclusive): RFC 3339 or Unix seconds"),
        click.option("--limit", type=click.IntRange(min=1), help="at most this many per page [server default 1000]"),
        click.option("--cursor", help="continue where a page ended (its next cursor), with the same other options"),
        click.option("--all", "all_pages", is_flag=True, help="follow the pages to the end of the range"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _pages(fetch: "Callable[[str | None], tuple[Sequence[Any], str | None]]", cursor: str | None, all_pages: bool) -> list[Any]:
    """One page, or every page with ``all_pages``; a next cursor left unfollowed goes to stderr."""
    items: list[Any] = []
    while True:
        page, cursor = fetch(cursor)
        items.extend(page)
        if cursor is None:
            return items
        if not all_pages:
            click.echo(f"more: --cursor {cursor} (or --all)", err=True)
            return items


# -------------------------------------------------------------------------------------- accounts


@main.group()
def account() -> None:
    """Create, show, lock, unlock and delete accounts; change their limits."""


@account.command("create")
@click.argument("account_id")
@click.option("--asset", required=True, help="currency or asset class, e.g. USD")
@click.option("--scale", type=click.IntRange(0, 18), default=2, show_default=True, help="digits after the point")
@click.option("--lower-limit", help="lowest available balance [default: 0]")
@click.option("--upper-limit", help="highest total balance [default: none]")
@click.option(
    "--stripes",
    type=click.IntRange(2, stripes_max),
    help="sharded nodes: a credit-only account spread over this many shards, read as one balance",
)
@_meta_option
@dedup_option
@talks_to_node
def account_create(
    client: "Client",
    output: Output,
    account_id: str,
    asset: str,
    scale: int,
    lower_limit: str | None,
    upper_limit: str | None,
    stripes: int | None,
    metadata: tuple[str, ...],
    dedup_id: str | None,
) -> None:
    """Open ACCOUNT_ID (admin)."""
    result = client.create_account(
        account_id,
        asset,
        scale=scale,
        lower_limit=lower_limit,
        upper_limit=upper_limit,
        metadata=_metadata(metadata),
        dedup_id=dedup_id,
        stripes=stripes,
    )
    print_result(output, result)


@account.command("sweep")
@click.argument("account_id")
@click.option("--to", "to_account_id", required=True, help="the ordinary account that receives the money")
@dedup_option
@talks_to_node
def account_sweep(client: "Client", output: Output, account_id: str, to_account_id: str, dedup_id: str | None) -> None:
    """Move every stripe's available of striped ACCOUNT_ID to another account, all or nothing."""
    result = client.sweep(account_id, to_account_id, dedup_id=dedup_id)
    print_result(output, result)
    if not output.as_json:
        click.echo(f"swept: {result.swept}")


@account.command("show")
@click.argument("account_ids", metavar="ACCOUNT_ID...", nargs=-1, required=True)
@click.option("--min-seq", type=click.IntRange(min=0), help="fail (exit 4) rather than show a state older than this seq")
@click.option("--at-seq", type=click.IntRange(min=0), help="show the accounts as of this seq")
@click.option("--at-time", help="show the accounts as of the last event at or before this time (RFC 3339 or Unix seconds)")
@talks_to_node
def account_show(
    client: "Client",
    output: Output,
    account_ids: tuple[str, ...],
    min_seq: int | None,
    at_seq: int | None,
    at_time: str | None,
) -> None:
    """Show one account in full, or several as a table, all as of the same seq."""
    if at_seq is not None and at_time is not None:
        raise click.UsageError("give --at-seq or --at-time, not both")
    if len(account_ids) == 1 and at_seq is None:
        view = client.get_account(account_ids[0], min_seq=min_seq, at_time=at_time)
        if output.as_json:
            output.json(view)
        else:
            click.echo(account_card(view))
        return
    if min_seq is not None:
        raise click.UsageError("--min-seq takes one account; use --at-seq for several")
    accounts = client.get_accounts(list(account_ids), at_seq=at_seq, at_time=at_time)
    if output.as_json:
        output.json(accounts)
    else:
        click.echo(f"as of seq {accounts.seq}")
        click.echo(accounts_table([accounts.accounts[key] for key in account_ids if key in accounts.accounts]))
    if accounts.missing:
        click.echo(f"error: ACCOUNT_NOT_FOUND: no account {', '.join(accounts.missing)}", err=True)
        click.get_current_context().exit(exit_not_found)


def _account_command(name: str, method: str, summary: str) -> None:
    @account.command(name, help=summary)
    @click.argument("account_id")
    @dedup_option
    @talks_to_node
    def command(client: "Client", output: Output, account_id: str, dedup_id: str | None) -> None:
        print_result(output, getattr(client, method)(account_id, dedup_id=dedup_id))


_account_command("lock", "lock_account", "Lock ACCOUNT_ID: no balance operation until unlocked (admin).")
_account_command("unlock", "unlock_account", "Unlock ACCOUNT_ID (admin).")
_account_command("delete", "delete_account", "Delete ACCOUNT_ID, forever; it must be empty (admin).")


@account.command("limits")
@click.argument("account_id")
@click.option("--lower-limit", help="new lowest available balance")
@click.option("--upper-limit", help="new highest total balance")
@click.option("--no-upper-limit", is_flag=True, help="remove the upper limit")
@dedup_option
@talks_to_node
def account_limits(
    client: "Client",
    output: Output,
    account_id: str,
    lower_limit: str | None,
    upper_limit: str | None,
    no_upper_limit: bool,
    dedup_id: str | None,
) -> None:
    """Change the limits of ACCOUNT_ID (admin); limits not given stay as they are."""
    import msgspec

    if upper_limit is not None and no_upper_limit:
        raise click.UsageError("--upper-limit and --no-upper-limit exclude each other")
    if lower_limit is None and upper_limit is None and not no_upper_limit:
        raise click.UsageError("give --lower-limit, --upper-limit or --no-upper-limit")
    upper: str | msgspec.UnsetType | None = None if no_upper_limit else (msgspec.UNSET if upper_limit is None else upper_limit)
    print_result(output, client.update_limits(account_id, lower_limit=lower_limit, upper_limit=upper, dedup_id=dedup_id))


# ------------------------------------------------------------------------------------ money moves


@main.command("transfer")
@click.argument("from_account_id")
@click.argument("to_account_id")
@click.argument("amount")
@click.option("--asset", required=True, help="asset of both accounts, e.g. USD")
@click.option("--expected-from-balance", help="only if FROM_ACCOUNT_ID's available balance is exactly this")
@click.option("--expected-to-balance", help="only if TO_ACCOUNT_ID's available balance is exactly this")
@_meta_option
@dedup_option
@talks_to_node
def transfer(
    client: "Client",
    output: Output,
    from_account_id: str,
    to_account_id: str,
    amount: str,
    asset: str,
    expected_from_balance: str | None,
    expected_to_balance: str | None,
    metadata: tuple[str, ...],
    dedup_id: str | None,
) -> None:
    """Move AMOUNT (a decimal such as 10.50) from one account to another."""
    result = client.transfer(
        from_account_id,
        to_account_id,
        amount,
        asset,
        metadata=_metadata(metadata),
        expected_from_balance=expected_from_balance,
        expected_to_balance=expected_to_balance,
        dedup_id=dedup_id,
    )
    print_result(output, result)


@main.command("reserve")
@click.argument("account_id")
@click.argument("reservation_id")
@click.argument("amount")
@dedup_option
@talks_to_node
def reserve(client: "Client", output: Output, account_id: str, reservation_id: str, amount: str, dedup_id: str | None) -> None:
    """Freeze AMOUNT of ACCOUNT_ID's available balance under RESERVATION_ID (adds to it if it exists)."""
    print_result(output, client.reserve(account_id, reservation_id, amount, dedup_id=dedup_id))


@main.command("release")
@click.argument("account_id")
@click.argument("reservation_id")
@click.argument("amount", required=False)
@dedup_option
@talks_to_node
def release(
    client: "Client", output: Output, account_id: str, reservation_id: str, amount: str | None, dedup_id: str | None
) -> None:
    """Unfreeze AMOUNT of RESERVATION_ID back to available; all of it without AMOUNT."""
    print_result(output, client.release(account_id, reservation_id, amount, dedup_id=dedup_id))


# ---------------------------------------------------------------------------------------- reading


@main.command("events")
@_range_options
@click.option("--last", type=click.IntRange(1, 10_000), help="the last N events, up to the chain head")
@talks_to_node
def events(
    client: "Client",
    output: Output,
    from_seq: int | None,
    to_seq: int | None,
    from_time: str | None,
    to_time: str | None,
    limit: int | None,
    cursor: str | None,
    all_pages: bool,
    last: int | None,
) -> None:
    """The event history, oldest first (ranges: from inclusive, to exclusive), a page at a time or --all."""
    if last is not None:
        if from_seq is not None or to_seq is not None or from_time or to_time or cursor or limit:
            raise click.UsageError("--last takes no range, --limit or --cursor")
        from_seq, limit = max(1, client.audit_head().seq - last + 1), last

    def fetch(cursor: str | None) -> tuple[Sequence[Any], str | None]:
        page = client.events_page(
            from_seq=from_seq, to_seq=to_seq, from_time=from_time, to_time=to_time, limit=limit, cursor=cursor
        )
        return page.events, page.next

    found = _pages(fetch, cursor, all_pages)
    if output.as_json:
        output.json(found)
        return
    rows = [
        [
            str(event.seq),
            event.time,
            event.type,
            "-" if event.dedup_id is None else event.dedup_id,
            ", ".join(f"{account.account_id} {account.available}" for account in event.accounts),
        ]
        for event in found
    ]
    click.echo(table(("SEQ", "TIME", "TYPE", "DEDUP_ID", "ACCOUNTS (AVAILABLE)"), rows, frozenset({0})))


@main.command("history")
@click.argument("account_id")
@_range_options
@talks_to_node
def history(
    client: "Client",
    output: Output,
    account_id: str,
    from_seq: int | None,
    to_seq: int | None,
    from_time: str | None,
    to_time: str | None,
    limit: int | None,
    cursor: str | None,
    all_pages: bool,
) -> None:
    """Every version of ACCOUNT_ID, oldest first, a page at a time or --all."""

    def fetch(cursor: str | None) -> tuple[Sequence[Any], str | None]:
        page = client.history_page(
            account_id, from_seq=from_seq, to_seq=to_seq, from_time=from_time, to_time=to_time, limit=limit, cursor=cursor
        )
        return page.versions, page.next

    versions = _pages(fetch, cursor, all_pages)
    if output.as_json:
        output.json(versions)
        return
    rows = [
        [
            str(version.seq),
            version.time or "",
            str(version.version),
            version.state,
            version.available,
            total(version.reservations, version.scale),
            total(version.pending_in, version.scale),
            total(version.pending_out, version.scale),
        ]
        for version in versions
    ]
    headers = ("SEQ", "TIME", "VERSION", "STATE", "AVAILABLE", "RESERVED", "PENDING_IN", "PENDING_OUT")
    click.echo(table(headers, rows, frozenset({0, 2, 4, 5, 6, 7})))


@main.command("statement")
@click.argument("account_id")
@click.option("--from", "from_time", help="period start (inclusive): RFC 3339 or Unix seconds")
@click.option("--to", "to_time", help="period end (exclusive): RFC 3339 or Unix seconds")
@click.option("--from-seq", type=click.IntRange(min=0), help="period start as a seq (inclusive)")
@click.option("--to-seq", type=click.IntRange(min=0), help="period end as a seq (exclusive)")
@click.option("--limit", type=click.IntRange(min=1), help="changes per request [server default 1000]")
@talks_to_node
def statement(
    client: "Client",
    output: Output,
    account_id: str,
    from_time: str | None,
    to_time: str | None,
    from_seq: int | None,
    to_seq: int | None,
    limit: int | None,
) -> None:
    """ACCOUNT_ID's statement for a period: opening balance, every change, closing balance.

    Every page of changes is fetched. Without bounds the period is the whole history.
    """
    import msgspec

    first = client.statement(account_id, from_seq=from_seq, to_seq=to_seq, from_time=from_time, to_time=to_time, limit=limit)
    changes = list(first.changes)
    page = first
    while page.next is not None:
        page = client.statement(
            account_id, from_seq=from_seq, to_seq=to_seq, from_time=from_time, to_time=to_time, limit=limit, cursor=page.next
        )
        changes.extend(page.changes)
    # Pages repeat the opening; the closing of the last page is the latest one.
    whole = msgspec.structs.replace(first, changes=changes, closing=page.closing, seq=page.seq, to_seq=page.to_seq, next=None)
    if output.as_json:
        output.json(whole)
        return
    zero = total({}, whole.scale)
    click.echo(f"statement of {whole.account_id} ({whole.asset}), seqs {whole.from_seq} to {whole.to_seq} (exclusive)")
    opening = zero if whole.opening is None else whole.opening.available
    click.echo(f"opening available  {opening}" + ("  (the account did not exist yet)" if whole.opening is None else ""))
    rows = [
        [
            str(change.seq),
            change.time,
            change.type,
            "-" if change.dedup_id is None else change.dedup_id,
            change.available_delta,
            change.available,
            total(change.reservations, whole.scale),
            total(change.pending_in, whole.scale),
            total(change.pending_out, whole.scale),
        ]
        for change in changes
    ]
    headers = ("SEQ", "TIME", "TYPE", "DEDUP_ID", "CHANGE", "AVAILABLE", "RESERVED", "PENDING_IN", "PENDING_OUT")
    click.echo(table(headers, rows, frozenset({0, 4, 5, 6, 7, 8})))
    closing = zero if whole.closing is None else whole.closing.available
    click.echo(f"closing available  {closing}")


@main.command("openapi")
@click.option("--markdown", is_flag=True, help="the contract as Markdown (docs/api.md), not JSON")
@click.option("--query-server", is_flag=True, help="the query server's document (coffer query serve), not the node's")
def openapi(markdown: bool, query_server: bool) -> None:
    """Print the API's OpenAPI document, as the servers publish it at /openapi.json."""
    import msgspec

    from coffer.server import api_markdown
    from coffer.server.openapi import openapi_document, query_openapi_document

    document = query_openapi_document() if query_server else openapi_document()
    if markdown:
        click.echo(api_markdown.markdown(document), nl=False)
    else:
        click.echo(msgspec.json.format(msgspec.json.encode(document), indent=2))


@main.group()
def audit() -> None:
    """The hash chain of the event history."""


@audit.command("head")
@talks_to_node
def audit_head(client: "Client", output: Output) -> None:
    """The chain head: the last event seq and its hash. Anyone holding it can verify the history."""
    head = client.audit_head()
    if output.as_json:
        output.json(head)
    else:
        click.echo(f"seq   {head.seq}\nhash  {head.hash}")


def _register_query_commands() -> None:
    # The query side's and the simulator's commands live with them; they join the groups here.
    from coffer import cli_operations
    from coffer.flows.cli import register as register_flows
    from coffer.notify.cli import register as register_webhooks
    from coffer.query.cli import register
    from coffer.server.keys_cli import register as register_keys
    from coffer.sim.cli import sim

    register(main, audit, bench)
    register_flows(main, account, bench)
    register_webhooks(main)
    main.add_command(sim)
    register_keys(main)
    cli_operations.register(main, account, audit)


_register_query_commands()
