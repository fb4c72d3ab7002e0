"""Every API operation has a ``coffer`` command, and the commands beyond accounts and transfers work.

The list of operations comes from the node's OpenAPI document: a new route without a command
fails here until one is named below.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from coffer.cli import main
from coffer.client import Client
from coffer.server.openapi import openapi_document
from tests.service.server_process import CofferServer

# (method, path) -> the command that sends it (its words after "coffer").
command_of_operation = {
    ("POST", "/v1/accounts"): "account create",
    ("GET", "/v1/accounts"): "account show",  # several ids: all as of one seq
    ("GET", "/v1/accounts/{account_id}"): "account show",
    ("GET", "/v1/accounts/{account_id}/history"): "history",
    ("GET", "/v1/accounts/{account_id}/statement"): "statement",
    ("POST", "/v1/accounts/{account_id}/limits"): "account limits",
    ("POST", "/v1/accounts/{account_id}/lock"): "account lock",
    ("POST", "/v1/accounts/{account_id}/unlock"): "account unlock",
    ("POST", "/v1/accounts/{account_id}/delete"): "account delete",
    ("POST", "/v1/accounts/{account_id}/sweep"): "account sweep",
    ("POST", "/v1/transfers"): "transfer",
    ("POST", "/v1/batch-operations"): "batch",  # also deposit and withdraw
    ("POST", "/v1/reservations"): "reserve",
    ("POST", "/v1/releases"): "release",
    ("POST", "/v1/tcc/try"): "tcc try",
    ("POST", "/v1/tcc/confirm"): "tcc confirm",
    ("POST", "/v1/tcc/cancel"): "tcc cancel",
    ("POST", "/v1/compensations"): "compensate",
    ("POST", "/v1/commands"): "commands",
    ("GET", "/v1/events"): "events",
    ("GET", "/v1/events/stream"): "project",  # follows the feed into a SQL store
    ("GET", "/v1/audit/head"): "audit head",
    ("GET", "/v1/audit/verify"): "audit check",
    ("GET", "/v1/search/accounts"): "account search",
    ("GET", "/v1/whoami"): "whoami",
    ("GET", "/v1/shards"): "shards",
    ("GET", "/v1/transactions"): "tcc list",
    ("GET", "/v1/transactions/{txn_id}"): "tcc show",
    ("POST", "/v1/hierarchy/nodes"): "hierarchy put",
    ("GET", "/v1/hierarchy/nodes/{node_id}"): "hierarchy show",
    ("GET", "/v1/hierarchy/nodes/{node_id}/balance"): "hierarchy balance",
    ("GET", "/healthz"): "status",
    ("GET", "/readyz"): "status",
    ("GET", "/openapi.json"): "openapi",
    ("GET", "/metrics"): "metrics",
    ("PUT", "/admin/log-level"): "log-level",
    ("POST", "/v1/accounts/{account_id}/velocity-limits"): "account velocity",
    ("GET", "/v1/flows"): "flows list",
    ("PUT", "/v1/flows/{name}"): "flows apply",
    ("GET", "/v1/flows/{name}"): "flows show",
    ("POST", "/v1/flows/{name}/runs"): "flows run",
    ("GET", "/v1/flows/runs"): "flows run-status",
    ("GET", "/v1/flows/runs/{run_id}"): "flows run-status",
    ("POST", "/v1/webhooks"): "webhooks add",
    ("GET", "/v1/webhooks"): "webhooks list",
    ("GET", "/v1/webhooks/{subscription_id}"): "webhooks list",
    ("DELETE", "/v1/webhooks/{subscription_id}"): "webhooks remove",
    ("GET", "/v1/webhooks/{subscription_id}/deliveries"): "webhooks deliveries",
    ("POST", "/v1/webhooks/{subscription_id}/replay"): "webhooks replay",
}


def test_every_operation_of_the_openapi_document_has_a_command() -> None:
    operations = {(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item}
    assert operations - set(command_of_operation) == set(), "add a command for these operations"
    assert set(command_of_operation) - operations == set(), "these operations are gone from the document"
    for words in set(command_of_operation.values()):
        command: click.Command | None = main
        for word in words.split():
            assert isinstance(command, click.Group), words
            command = command.get_command(click.Context(command), word)
        assert command is not None and command.help, words


@pytest.fixture
def coffer(server: CofferServer) -> Callable[..., Result]:
    runner = CliRunner()

    def run(*arguments: str, exit_code: int = 0, stdin: str | None = None) -> Result:
        done = runner.invoke(main, list(arguments), env={"COFFER_URL": server.url}, input=stdin, catch_exceptions=False)
        assert done.exit_code == exit_code, (arguments, done.stdout, done.stderr)
        return done

    return run


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_deposit_withdraw_and_a_batch_with_conditions(coffer: Callable[..., Result], server: CofferServer) -> None:
    coffer("account", "create", "cli-ops-a", "--asset", "USD")
    coffer("account", "create", "cli-ops-fees", "--asset", "USD")
    assert "applied" in coffer("deposit", "cli-ops-a", "100.00", "--asset", "USD").stdout
    coffer("withdraw", "cli-ops-a", "30", "--asset", "USD")
    coffer("withdraw", "cli-ops-a", "-3", "--asset", "USD", exit_code=2)  # the sign is the command's
    coffer("withdraw", "cli-ops-a", "500", "--asset", "USD", exit_code=1)  # LOWER_LIMIT_EXCEEDED
    legs = ["--leg", "cli-ops-a=-1.50", "--leg", "cli-ops-fees=1.50"]
    coffer("batch", "--asset", "USD", *legs, "--min-balance", "cli-ops-a=100", exit_code=1)  # PRECONDITION_FAILED
    done = _json(coffer("batch", "--asset", "USD", *legs, "--expected-version", "cli-ops-a=3", "--min-balance", "cli-ops-a=70", "--json"))
    assert [view["available"] for view in done["accounts"]] == ["68.50", "1.50"]
    with Client(server.url) as client:
        assert client.get_account("cli-ops-a").available == "68.50"


def test_two_phase_from_the_shell(coffer: Callable[..., Result]) -> None:
    coffer("account", "create", "cli-tcc-a", "--asset", "USD")
    coffer("account", "create", "cli-tcc-b", "--asset", "USD")
    coffer("deposit", "cli-tcc-a", "50", "--asset", "USD")
    for txn_id in ("cli-txn-1", "cli-txn-2"):
        coffer("tcc", "try", txn_id, "--asset", "USD", "--leg", "cli-tcc-a=-10", "--leg", "cli-tcc-b=10", "--timeout-s", "600")
    assert _json(coffer("tcc", "list", "--prefix", "cli-txn-", "--json"))["transactions"] == ["cli-txn-1", "cli-txn-2"]
    shown = coffer("tcc", "show", "cli-txn-1").stdout
    assert "state TRIED" in shown and "cli-tcc-a" in shown and "10.00" in shown
    coffer("tcc", "confirm", "cli-txn-1")
    coffer("tcc", "cancel", "cli-txn-2")
    coffer("tcc", "cancel", "cli-txn-1", exit_code=1)  # TXN_ALREADY_CONFIRMED
    assert _json(coffer("tcc", "list", "--prefix", "cli-txn-", "--json"))["transactions"] == []
    account = _json(coffer("account", "show", "cli-tcc-b", "--json"))
    assert account["available"] == "10.00" and account["pending_in"] == {}


def test_compensation_and_commands_from_a_json_lines_file(coffer: Callable[..., Result], tmp_path: Path) -> None:
    coffer("account", "create", "cli-cmd-a", "--asset", "USD")
    coffer("account", "create", "cli-cmd-b", "--asset", "USD")
    lines = [
        {"type": "batch_operation", "dedup_id": "cli-cmd-deposit", "legs": [{"account_id": "cli-cmd-a", "amount": "20", "asset": "USD"}]},
        {"type": "transfer", "from_account_id": "cli-cmd-a", "to_account_id": "cli-cmd-b", "amount": "5", "asset": "USD", "dedup_id": "cli-cmd-move"},
        {"type": "transfer", "from_account_id": "cli-cmd-a", "to_account_id": "cli-cmd-b", "amount": "500", "asset": "USD"},
        {"type": "reserve", "account_id": "cli-cmd-a", "reservation_id": "r1", "amount": "1.5"},
    ]
    file = tmp_path / "commands.jsonl"
    file.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    done = coffer("commands", str(file), exit_code=1)  # one of them was rejected
    assert "3 applied, 1 not applied" in done.stdout and "LOWER_LIMIT_EXCEEDED" in done.stdout
    outcomes = _json(coffer("commands", "-", "--json", stdin=json.dumps(lines[0]) + "\n"))  # a retry, from stdin
    assert outcomes[0]["status"] == 200 and outcomes[0]["line"] == 1
    coffer("commands", "-", stdin="not json\n", exit_code=2)
    assert "COMPENSATED" in coffer("compensate", "cli-cmd-move").stdout
    account = _json(coffer("account", "show", "cli-cmd-a", "--json"))
    assert account["available"] == "18.50" and account["reservations"] == {"r1": "1.50"}


def test_events_last_search_shards_and_the_rest(coffer: Callable[..., Result]) -> None:
    for account_id in ("cli-find-1", "cli-find-2", "cli-find-3"):
        coffer("account", "create", account_id, "--asset", "EUR")
    last = _json(coffer("events", "--last", "2", "--json"))
    assert [event["accounts"][0]["account_id"] for event in last] == ["cli-find-2", "cli-find-3"]
    coffer("events", "--last", "2", "--limit", "5", exit_code=2)
    page = coffer("account", "search", "cli-find-", "--limit", "2")
    assert "cli-find-1" in page.stdout and "cli-find-3" not in page.stdout and "--after cli-find-2" in page.stderr
    found = _json(coffer("account", "search", "cli-find-", "--limit", "2", "--all", "--json"))
    assert [view["account_id"] for view in found] == ["cli-find-1", "cli-find-2", "cli-find-3"]
    assert "ready" in coffer("shards").stdout
    assert "admin (this node has no keys)" in coffer("whoami").stdout
    assert "verdict=OK" in coffer("audit", "check").stdout.splitlines()[-1]
    assert "ready: " in coffer("status").stdout
    assert "\ncoffer_seq " in coffer("metrics", "--grep", "coffer_seq ").stdout
    assert "log level info" in coffer("log-level", "info").stdout


def test_the_hierarchy_from_the_shell(coffer: Callable[..., Result]) -> None:
    coffer("account", "create", "cli-tree-a", "--asset", "USD")
    coffer("deposit", "cli-tree-a", "7", "--asset", "USD")
    coffer("hierarchy", "put", "cli-team", "cli-tree-a")
    coffer("hierarchy", "put", "cli-root", "cli-team")
    coffer("hierarchy", "put", "cli-team", "cli-tree-a", "--parent", "cli-root")  # replaced, same place
    assert "cli-tree-a" in coffer("hierarchy", "show", "cli-team").stdout
    balance = coffer("hierarchy", "balance", "cli-root").stdout
    assert "cli-root" in balance and "  cli-team" in balance and "7.00" in balance
