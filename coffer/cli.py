"""The ``coffer`` command."""

from pathlib import Path

import click


@click.group()
@click.version_option(package_name="coffer")
def main() -> None:
    """Coffer, a strongly consistent wallet ledger."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind; other than loopback needs API keys")
@click.option("--port", default=8080, show_default=True)
@click.option("--data-dir", default="./data", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keys-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="lines of 'ROLE KEY'")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--snapshot-entries", default=20_000, show_default=True, help="log entries between snapshots")
def serve(host: str, port: int, data_dir: Path, keys_file: Path | None, log_level: str, snapshot_entries: int) -> None:
    """Run a node on the local write-ahead log (the embedded default)."""
    from coffer.server.serve import serve as run_server

    run_server(host, port, data_dir, keys_file, log_level, snapshot_entries)


@main.group()
def bench() -> None:
    """Benchmarks (speed targets live here, never in tests)."""


@bench.command("apply")
@click.option("--accounts", "account_count", default=100_000, show_default=True, help="accounts to create")
@click.option("--transfers", "transfer_count", default=1_000_000, show_default=True, help="transfers to apply")
@click.option("--entry-size", default=1_000, show_default=True, help="commands per log entry")
@click.option("--seed", default=1, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="rounds per side; medians are reported")
def bench_apply(account_count: int, transfer_count: int, entry_size: int, seed: int, repeat: int) -> None:
    """Apply random transfers to the core state machine, next to a bare loop doing the irreducible work."""
    from coffer.bench.apply import run

    run(account_count, transfer_count, entry_size, seed, repeat, echo=click.echo)
