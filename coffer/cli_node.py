"""What every ``coffer`` command that talks to a node shares: its options, its output, its exit codes.

Job: ``--url``, ``--api-key``, ``--ca-file`` and ``--json`` on every such command, plain aligned
tables for people (JSON for scripts), and one exit code per error code (``coffer --help`` lists
them). The main command (:mod:`coffer.cli`) and the command groups that join it
(:mod:`coffer.cli_operations`, :mod:`coffer.flows.cli`, :mod:`coffer.notify.cli`) import this
module; it imports none of them, so commands register from the main command downward.
"""

import functools
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coffer import exit_codes
from coffer.core.errors import ErrorCode
from coffer.tls_options import ca_file_option

if TYPE_CHECKING:
    from coffer.client import AccountView, CommandResult

default_url = "http://127.0.0.1:8080"  # coffer.client.default_url, without importing httpx for `coffer serve`

exit_rejected = exit_codes.rejected
exit_invalid = exit_codes.invalid  # the same code as click's usage errors: the request itself is wrong
exit_not_found = exit_codes.not_found
exit_unavailable = exit_codes.unavailable
exit_auth = exit_codes.auth
exit_other = exit_codes.other

# ------------------------------------------------------------------------------ talking to a node


class Output:
    """Where a command prints: a table for people, or JSON for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def json(self, value: Any) -> None:
        import msgspec

        click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2))


# One exit code per error code, whatever the command: ACCOUNT_NOT_FOUND is a 404 for a read and a
# 409 for a command, and is "not found" (3) for both. Codes not listed map by their HTTP status.
exit_codes_by_error_code: dict[str, int] = {
    **{code.value: exit_rejected for code in ErrorCode},
    ErrorCode.ACCOUNT_NOT_FOUND: exit_not_found,
    ErrorCode.FLOW_NOT_FOUND: exit_not_found,
    ErrorCode.FLOW_RUN_NOT_FOUND: exit_not_found,
    ErrorCode.WEBHOOK_NOT_FOUND: exit_not_found,
    ErrorCode.INVALID_AMOUNT: exit_invalid,
    ErrorCode.INVALID_REQUEST: exit_invalid,
    ErrorCode.NOT_AVAILABLE: exit_unavailable,
    ErrorCode.UNAUTHORIZED: exit_auth,
    ErrorCode.FORBIDDEN: exit_auth,
    "TRANSPORT_ERROR": exit_unavailable,  # coffer.client.transport_error_code: no answer
}


def exit_code(error: Exception) -> int:
    from coffer import client

    by_code = exit_codes_by_error_code.get(getattr(error, "code", ""))
    if by_code is not None:
        return by_code
    codes: list[tuple[type[Exception], int]] = [
        (client.RejectedError, exit_rejected),
        (client.InvalidRequestError, exit_invalid),
        (client.NotFoundError, exit_not_found),
        (client.NotAvailableError, exit_unavailable),
        (client.TransportError, exit_unavailable),
        (client.AuthError, exit_auth),
    ]
    return next((code for error_type, code in codes if isinstance(error, error_type)), exit_other)


def talks_to_node(function: Callable[..., None]) -> Callable[..., None]:
    """Add --url, --api-key and --json; call ``function(client, output, **arguments)``; errors to exit codes."""

    @click.option(
        "--url",
        envvar="COFFER_URL",
        default=default_url,
        show_default=True,
        help="node base URL; several comma-separated are tried in turn [env COFFER_URL]",
    )
    @click.option("--api-key", envvar="COFFER_API_KEY", help="API key [env COFFER_API_KEY]")
    @ca_file_option
    @click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
    @functools.wraps(function)
    def command(url: str, api_key: str | None, ca_file: Path | None, as_json: bool, **arguments: Any) -> None:
        from coffer.client import Client, CofferError, NotAvailableError, TransportError

        urls = [part.strip() for part in url.split(",") if part.strip()]
        if not urls:
            raise click.UsageError("--url names no URL")
        try:
            with Client(urls, api_key=api_key or None, ca_file=ca_file) as client:
                function(client, Output(as_json), **arguments)
        except CofferError as error:
            if as_json:  # a script reads the outcome on stdout, success or not
                detail = {"code": error.code, "message": error.message, "status": error.status}
                if error.account_id is not None:
                    detail["account_id"] = error.account_id
                if error.dedup_id is not None:
                    detail["dedup_id"] = error.dedup_id
                Output(as_json).json({"error": detail})
            click.echo(f"error: {error}", err=True)
            if error.dedup_id and isinstance(error, NotAvailableError | TransportError):
                click.echo(f"the command may or may not be applied: retry it with --dedup-id {error.dedup_id}", err=True)
            click.get_current_context().exit(exit_code(error))

    return command


def dedup_option(function: Callable[..., None]) -> Callable[..., None]:
    return click.option("--dedup-id", help="idempotency key: resending it never applies twice [default: a fresh one]")(function)


# ------------------------------------------------------------------------------------ formatting


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Plain aligned columns; the columns in ``right`` (amounts, numbers) align right."""
    widths = [max([len(header), *(len(row[column]) for row in rows)]) for column, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def total(amounts: dict[str, str], scale: int) -> str:
    return f"{sum((Decimal(amount) for amount in amounts.values()), Decimal(0)):.{scale}f}"


def entries(amounts: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in amounts.items())


account_headers = (
    "ACCOUNT",
    "ASSET",
    "STATE",
    "AVAILABLE",
    "RESERVED",
    "PENDING_IN",
    "PENDING_OUT",
    "LOWER",
    "UPPER",
    "VERSION",
)
account_numbers = frozenset({3, 4, 5, 6, 7, 8, 9})


def account_row(account: "AccountView") -> list[str]:
    return [
        account.account_id,
        account.asset,
        account.state,
        account.available,
        total(account.reservations, account.scale),
        total(account.pending_in, account.scale),
        total(account.pending_out, account.scale),
        account.lower_limit,
        "-" if account.upper_limit is None else account.upper_limit,
        str(account.version),
    ]


def accounts_table(accounts: Sequence["AccountView"]) -> str:
    return table(account_headers, [account_row(account) for account in accounts], account_numbers)


def account_card(account: "AccountView") -> str:
    """One account, field by field, with every reservation and pending entry."""

    def section(amounts: dict[str, str]) -> str:
        summed = total(amounts, account.scale)
        return f"{summed}  ({entries(amounts)})" if amounts else summed

    fields = [
        ("account_id", account.account_id),
        ("asset", f"{account.asset} (scale {account.scale})"),
        ("state", account.state),
        ("available", account.available),
        ("reserved", section(account.reservations)),
        ("pending_in", section(account.pending_in)),
        ("pending_out", section(account.pending_out)),
        ("lower_limit", account.lower_limit),
        ("upper_limit", "none" if account.upper_limit is None else account.upper_limit),
        ("version", str(account.version)),
        ("seq", str(account.seq)),
    ]
    if account.metadata:
        fields.append(("metadata", entries(account.metadata)))
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in fields)


def print_result(output: Output, result: "CommandResult") -> None:
    if output.as_json:
        output.json(result)
        return
    click.echo(f"applied: seq {result.seq}, log index {result.log_index}, dedup_id {result.dedup_id}")
    if result.compensation is not None:
        click.echo(f"compensation: {result.compensation}")
    if result.accounts:
        click.echo(accounts_table(result.accounts))
