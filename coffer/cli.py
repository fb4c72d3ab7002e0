"""The ``coffer`` command."""

import click


@click.group()
@click.version_option(package_name="coffer")
def main() -> None:
    """Coffer, a strongly consistent wallet ledger."""


@main.group()
def bench() -> None:
    """Benchmarks (speed targets live here, never in tests)."""


@bench.command("apply")
@click.option("--accounts", "account_count", default=100_000, show_default=True, help="accounts to create")
@click.option("--transfers", "transfer_count", default=1_000_000, show_default=True, help="transfers to apply")
@click.option("--entry-size", default=1_000, show_default=True, help="commands per log entry")
@click.option("--seed", default=1, show_default=True)
def bench_apply(account_count: int, transfer_count: int, entry_size: int, seed: int) -> None:
    """Apply random transfers to the core state machine, next to a bare loop doing the irreducible work."""
    from coffer.bench.apply import run

    run(account_count, transfer_count, entry_size, seed, echo=click.echo)
