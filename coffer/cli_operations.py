"""The rest of the API on the command line, for people who live in the shell.

Job: every operation of the node's API has a ``coffer`` command (``tests/service/test_cli_covers_api``
derives the list from the OpenAPI document). This module holds the commands beyond accounts,
transfers, reservations and history reads (:mod:`coffer.cli`): deposits and withdrawals and any
batch operation, two-phase transactions, compensations, many commands from a JSON-lines file,
account search, shards, the hierarchy, the node's own chain check, health, metrics and the log level.

Method: the same conventions as :mod:`coffer.cli` (``--url``, ``--api-key``, ``--json``, the exit
codes of ``coffer --help``), through :class:`coffer.client.Client`; routes the client has no method
for go through its ``request`` (raw JSON, the same errors and retries).
"""

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from coffer import cli_node
from coffer.cli_node import Output, dedup_option, print_result, table, talks_to_node
from coffer.http.limits import commands_per_request_max

if TYPE_CHECKING:
    from coffer.client import Client, Leg



def _legs(entries: Sequence[str], asset: str, option: str = "--leg") -> list["Leg"]:
    """``ACCOUNT=AMOUNT`` entries (signed amounts) as legs of one asset."""
    from coffer.client import Leg

    legs = []
    for entry in entries:
        account_id, separator, amount = entry.rpartition("=")
        if not separator or not account_id or not amount:
            raise click.BadParameter(f"{entry!r} is not ACCOUNT=AMOUNT", param_hint=option)
        legs.append(Leg(account_id=account_id, amount=amount, asset=asset))
    return legs


def _conditions(**given: Sequence[str]) -> list[Any]:
    """Preconditions from ``ACCOUNT=VALUE`` entries of each kind, one per account."""
    from coffer.client import Precondition

    by_account: dict[str, dict[str, Any]] = {}
    for field, entries in given.items():
        for entry in entries:
            account_id, separator, value = entry.rpartition("=")
            if not separator or not account_id or not value:
                raise click.BadParameter(f"{entry!r} is not ACCOUNT=VALUE", param_hint="--" + field.replace("_", "-"))
            if field == "expected_version":
                if not value.isdigit():
                    raise click.BadParameter(f"{value!r} is not a version number", param_hint="--expected-version")
                by_account.setdefault(account_id, {})[field] = int(value)
            else:
                by_account.setdefault(account_id, {})[field] = value
    return [Precondition(account_id=account_id, **fields) for account_id, fields in by_account.items()]


def _echo_json(output: Output, value: Any, text: str | None = None) -> None:
    if output.as_json or text is None:
        output.json(value)
    else:
        click.echo(text)


# -------------------------------------------------------------------------------- money in and out


def _one_leg_command(name: str, sign: str, summary: str) -> click.Command:
    @click.command(name, help=summary)
    @click.argument("account_id")
    @click.argument("amount")
    @click.option("--asset", required=True, help="the account's asset, e.g. USD")
    @dedup_option
    @talks_to_node
    def command(client: "Client", output: Output, account_id: str, amount: str, asset: str, dedup_id: str | None) -> None:
        if amount.startswith(("-", "+")):
            raise click.BadParameter("give the amount without a sign", param_hint="AMOUNT")
        (leg,) = _legs([f"{account_id}={sign}{amount}"], asset)
        print_result(output, client.batch_operation([leg], dedup_id=dedup_id))

    return command


deposit = _one_leg_command("deposit", "", "Put AMOUNT into ACCOUNT_ID from outside the ledger (a batch operation of one leg).")
withdraw = _one_leg_command("withdraw", "-", "Take AMOUNT out of ACCOUNT_ID, out of the ledger (a batch operation of one leg).")


@click.command("batch")
@click.option("--leg", "legs", multiple=True, required=True, metavar="ACCOUNT=AMOUNT", help="a signed amount (repeatable)")
@click.option("--asset", required=True, help="the legs' asset, e.g. USD")
@click.option("--expected-balance", multiple=True, metavar="ACCOUNT=AMOUNT", help="only if available is exactly this")
@click.option("--min-balance", multiple=True, metavar="ACCOUNT=AMOUNT", help="only if available is at least this")
@click.option("--max-balance", multiple=True, metavar="ACCOUNT=AMOUNT", help="only if available is at most this")
@click.option("--expected-version", multiple=True, metavar="ACCOUNT=N", help="only if the account's version is N")
@dedup_option
@talks_to_node
def batch(
    client: "Client",
    output: Output,
    legs: tuple[str, ...],
    asset: str,
    expected_balance: tuple[str, ...],
    min_balance: tuple[str, ...],
    max_balance: tuple[str, ...],
    expected_version: tuple[str, ...],
    dedup_id: str | None,
) -> None:
    """Signed legs on many accounts, all or nothing: deposits, withdrawals, fees, with conditions.

    Example: coffer batch --asset USD --leg alice=-1.50 --leg fees=1.50 --min-balance alice=100
    """
    preconditions = _conditions(
        expected_balance=expected_balance, min_balance=min_balance, max_balance=max_balance, expected_version=expected_version
    )
    result = client.batch_operation(_legs(legs, asset), preconditions=preconditions or None, dedup_id=dedup_id)
    print_result(output, result)


@click.command("compensate")
@click.argument("original_dedup_id")
@dedup_option
@talks_to_node
def compensate(client: "Client", output: Output, original_dedup_id: str, dedup_id: str | None) -> None:
    """Undo the transfer, batch operation or reservation sent with ORIGINAL_DEDUP_ID.

    If it was never seen, a null compensation is recorded and the original is refused if it comes later.
    """
    print_result(output, client.compensate(original_dedup_id, dedup_id=dedup_id))


# ------------------------------------------------------------------------------------ two-phase


@click.group("tcc")
def tcc() -> None:
    """Two-phase (TCC) transactions: try, confirm, cancel; show one, list the open ones."""


@tcc.command("try")
@click.argument("txn_id")
@click.option("--leg", "legs", multiple=True, required=True, metavar="ACCOUNT=AMOUNT", help="negative: held out; positive: booked in")
@click.option("--asset", required=True, help="the legs' asset, e.g. USD")
@click.option("--timeout-s", type=click.IntRange(min=1), help="cancel by itself this many seconds (log time) later")
@dedup_option
@talks_to_node
def tcc_try(
    client: "Client", output: Output, txn_id: str, legs: tuple[str, ...], asset: str, timeout_s: int | None, dedup_id: str | None
) -> None:
    """Hold TXN_ID's money: negative legs move available to pending_out, positive legs book pending_in."""
    print_result(output, client.tcc_try(txn_id, _legs(legs, asset), timeout_s=timeout_s, dedup_id=dedup_id))


@tcc.command("confirm")
@click.argument("txn_id")
@dedup_option
@talks_to_node
def tcc_confirm(client: "Client", output: Output, txn_id: str, dedup_id: str | None) -> None:
    """Confirm TXN_ID: pending_out leaves, pending_in becomes available."""
    print_result(output, client.tcc_confirm(txn_id, dedup_id=dedup_id))


@tcc.command("cancel")
@click.argument("txn_id")
@dedup_option
@talks_to_node
def tcc_cancel(client: "Client", output: Output, txn_id: str, dedup_id: str | None) -> None:
    """Cancel TXN_ID: pending_out goes back to available, pending_in is dropped."""
    print_result(output, client.tcc_cancel(txn_id, dedup_id=dedup_id))


@tcc.command("show")
@click.argument("txn_id")
@talks_to_node
def tcc_show(client: "Client", output: Output, txn_id: str) -> None:
    """TXN_ID as the node holds it: state, deadline, legs, and its decision at a commit point."""
    view = client.request("GET", f"/v1/transactions/{txn_id}")
    if output.as_json:
        output.json(view)
        return
    parts = view["shards"].items() if "shards" in view else [(None, view)]
    click.echo(f"txn {txn_id}  state {view['state']}")
    for shard, part in parts:
        where = f"shard {shard}: " if shard is not None else ""
        click.echo(f"{where}state {part['state']}, deadline {part['deadline'] or 'none'}")
        rows = [[leg["account_id"], leg["asset"], leg["amount_out"], leg["amount_in"]] for leg in part["legs"]]
        if rows:
            click.echo(table(("ACCOUNT", "ASSET", "OUT", "IN"), rows, frozenset({2, 3})))
        if part.get("decision"):
            decision = part["decision"]
            click.echo(f"decision: {'commit' if decision['commit'] else 'abort'} at seq {decision['seq']} ({decision['time']})")


@tcc.command("list")
@click.option("--prefix", default="", help="only ids that start with this")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--shard", type=click.IntRange(min=0), help="a sharded node: which shard")
@talks_to_node
def tcc_list(client: "Client", output: Output, prefix: str, limit: int, shard: int | None) -> None:
    """The tries still open, oldest first."""
    params: dict[str, Any] = {"open": "true", "prefix": prefix, "limit": limit}
    if shard is not None:
        params["shard"] = shard
    found = client.request("GET", "/v1/transactions", params=params)
    _echo_json(output, found, "\n".join([f"open tries as of seq {found['seq']}: {len(found['transactions'])}", *found["transactions"]]))


# -------------------------------------------------------------------------------- many commands


def _read_lines(source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"line {number} is not JSON: {error}", param_hint="FILE") from None
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise click.BadParameter(f'line {number} is not an object with a "type"', param_hint="FILE")
        yield number, item


@click.command("commands")
@click.argument("file", type=click.File("r"))
@talks_to_node
def commands(client: "Client", output: Output, file: Any) -> None:
    """Send the commands of FILE (JSON lines, '-' for stdin) through POST /v1/commands, in order.

    Each line is {"type": T, ...the fields of T's own endpoint}, T one of create_account,
    update_limits, lock_account, unlock_account, delete_account, transfer, batch_operation,
    reserve, release, tcc_try, tcc_confirm, tcc_cancel, compensate. A line without a dedup_id gets
    one (printed, so a retry can reuse it). Requests carry at most 8190 commands each. Exit 1 if
    any command was not applied; every outcome is printed either way.
    """
    lines = list(_read_lines(file))
    if not lines:
        raise click.BadParameter("no command in the file", param_hint="FILE")
    outcomes = []
    for start in range(0, len(lines), commands_per_request_max):
        chunk = lines[start : start + commands_per_request_max]
        for (number, _), outcome in zip(chunk, client.commands([item for _, item in chunk]), strict=True):
            outcomes.append((number, outcome))
    failed = sum(1 for _, outcome in outcomes if not outcome.ok)
    if output.as_json:
        output.json([{"line": number, **_outcome_json(outcome)} for number, outcome in outcomes])
    else:
        rows = [
            [
                str(number),
                str(outcome.status),
                outcome.dedup_id,
                f"seq {outcome.result.seq}" if outcome.result is not None else f"{outcome.error.code}: {outcome.error.message}" if outcome.error else "",
            ]
            for number, outcome in outcomes
        ]
        click.echo(table(("LINE", "STATUS", "DEDUP_ID", "OUTCOME"), rows, frozenset({0, 1})))
        click.echo(f"{len(outcomes) - failed} applied, {failed} not applied")
    if failed:
        click.get_current_context().exit(cli_node.exit_rejected)


def _outcome_json(outcome: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(outcome)


# ------------------------------------------------------------------------------------- reading


@click.command("search")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="accounts per page")
@click.option("--after", help="continue after this account id (the next of a page)")
@click.option("--all", "all_pages", is_flag=True, help="follow the pages to the end")
@talks_to_node
def account_search(client: "Client", output: Output, prefix: str, limit: int, after: str | None, all_pages: bool) -> None:
    """The accounts whose id starts with PREFIX, in id order (all accounts without PREFIX)."""
    found: list[dict[str, Any]] = []
    while True:
        params = {"prefix": prefix, "limit": limit} | ({"after": after} if after else {})
        page = client.request("GET", "/v1/search/accounts", params=params)
        found.extend(page["accounts"])
        after = page["next"]
        if after is None:
            break
        if not all_pages:
            click.echo(f"more: --after {after} (or --all)", err=True)
            break
    if output.as_json:
        output.json(found)
        return
    rows = [[view["account_id"], view["asset"], view["state"], view["available"], str(view["version"])] for view in found]
    click.echo(table(("ACCOUNT", "ASSET", "STATE", "AVAILABLE", "VERSION"), rows, frozenset({3, 4})))


@click.command("shards")
@talks_to_node
def shards(client: "Client", output: Output) -> None:
    """The node's shards: each one's chain head and readiness (one shard on a node that is not sharded)."""
    found = client.request("GET", "/v1/shards")
    if output.as_json:
        output.json(found)
        return
    rows = [
        [
            str(entry["shard"]),
            "ready" if entry["ready"] else "NOT READY",
            str(entry.get("head", {}).get("seq", "-")),
            entry.get("head", {}).get("hash", "-"),
            entry.get("url") or "-",
        ]
        for entry in found["shards"]
    ]
    click.echo(table(("SHARD", "STATE", "SEQ", "HEAD HASH", "URL"), rows, frozenset({0, 2})))
    if found["map"] is not None:
        click.echo(f"shard map version {found['map'].get('version', '?')}")


@click.command("whoami")
@talks_to_node
def whoami(client: "Client", output: Output) -> None:
    """The role and key id of your API key on this node."""
    who = client.request("GET", "/v1/whoami")
    if who["role"] is None:
        _echo_json(output, who, "no role: no API key given, or not one of this node's keys")
        click.get_current_context().exit(cli_node.exit_auth)
    _echo_json(output, who, f"{who['role']} (key {who['key_id']})" if who["key_id"] else f"{who['role']} (this node has no keys)")


@click.command("check")
@click.option("--shard", type=click.IntRange(min=0), help="a sharded node: which shard")
@talks_to_node
def audit_check(client: "Client", output: Output, shard: int | None) -> None:
    """Ask the node to re-verify its own stored chain up to its head (GET /v1/audit/verify).

    Every hash, seq and link, and the accounts the events fold to against the live ones. Last
    line: verdict=OK seq= hash= or verdict=FAILED first_bad_seq=. Exit 1 when it fails.
    """
    verdict = client.request("GET", "/v1/audit/verify", params={} if shard is None else {"shard": shard})
    if output.as_json:
        output.json(verdict)
    else:
        for note in verdict["notes"]:
            click.echo(note)
        if verdict["ok"]:
            click.echo(f"OK: {verdict['events']} events from seq {verdict['from_seq']} verified in {verdict['elapsed_ms']} ms")
            click.echo(f"verdict=OK seq={verdict['seq']} hash={verdict['hash']}")
        else:
            click.echo(f"FAILED at seq {verdict['first_bad_seq']}: {verdict['problem']}")
            click.echo(f"verdict=FAILED first_bad_seq={verdict['first_bad_seq'] or 0}")
    if not verdict["ok"]:
        click.get_current_context().exit(cli_node.exit_rejected)


@click.command("status")
@talks_to_node
def status(client: "Client", output: Output) -> None:
    """Is the node alive (GET /healthz) and ready (GET /readyz)? Exit 4 when not ready."""
    from coffer.client import NotAvailableError

    alive = client.request("GET", "/healthz")
    try:
        ready = client.request("GET", "/readyz", retry=False)
    except NotAvailableError as error:
        ready = {"status": f"not ready: {error}"}
    _echo_json(output, {"health": alive, "ready": ready}, f"alive: {alive['status']}\nready: {json.dumps(ready)}")
    if ready.get("status") != "ready":
        click.get_current_context().exit(cli_node.exit_unavailable)


@click.command("metrics")
@click.option("--shard", type=click.IntRange(min=0), help="a sharded node: which shard")
@click.option("--grep", "pattern", help="only the lines that contain this")
@talks_to_node
def metrics(client: "Client", output: Output, shard: int | None, pattern: str | None) -> None:
    """The node's Prometheus metrics (text format)."""
    text = client.metrics() if shard is None else client.request("GET", "/metrics", params={"shard": shard})
    for line in text.splitlines():
        if pattern is None or pattern in line:
            click.echo(line)


@click.command("log-level")
@click.argument("level", type=click.Choice(["debug", "info", "warning", "error", "critical"]))
@talks_to_node
def log_level(client: "Client", output: Output, level: str) -> None:
    """Change the node's log level now (admin); a restart goes back to --log-level."""
    _echo_json(output, {"level": client.set_log_level(level)}, f"log level {level}")


# ------------------------------------------------------------------------------------ hierarchy


@click.group("hierarchy")
def hierarchy() -> None:
    """The account hierarchy: nodes over accounts, and their balances (sums over the subtree)."""


@hierarchy.command("put")
@click.argument("node_id")
@click.argument("children", nargs=-1, required=True)
@click.option("--parent", "parent_id", help="the node above this one")
@talks_to_node
def hierarchy_put(client: "Client", output: Output, node_id: str, children: tuple[str, ...], parent_id: str | None) -> None:
    """Create or replace NODE_ID with exactly these CHILDREN (account ids or node ids) (admin)."""
    body: dict[str, Any] = {"node_id": node_id, "children": list(children)}
    if parent_id is not None:
        body["parent_id"] = parent_id
    node = client.request("POST", "/v1/hierarchy/nodes", json=body, retry=True)
    _echo_json(output, node, f"{node['node_id']}: {len(node['children'])} children")


@hierarchy.command("show")
@click.argument("node_id")
@talks_to_node
def hierarchy_show(client: "Client", output: Output, node_id: str) -> None:
    """NODE_ID's parent and children."""
    node = client.request("GET", f"/v1/hierarchy/nodes/{node_id}")
    rows = [[child["id"], child["kind"]] for child in node["children"]]
    _echo_json(output, node, f"node {node['node_id']} (parent {node['parent_id'] or 'none'})\n" + table(("CHILD", "KIND"), rows))


@hierarchy.command("balance")
@click.argument("node_id")
@click.option("--root-only", is_flag=True, help="only NODE_ID itself, not every node below it")
@click.option("--at-seq", type=click.IntRange(min=0), help="as of this seq")
@talks_to_node
def hierarchy_balance(client: "Client", output: Output, node_id: str, root_only: bool, at_seq: int | None) -> None:
    """Available balance per asset of NODE_ID (the sum over its subtree) and of the nodes below it."""
    params: dict[str, Any] = {"root_only": "true" if root_only else "false"}
    if at_seq is not None:
        params["at_seq"] = at_seq
    balance = client.request("GET", f"/v1/hierarchy/nodes/{node_id}/balance", params=params)
    nodes = balance.get("nodes") or [{"node_id": balance["node_id"], "depth": 0, "available": balance["available"]}]
    rows = [
        ["  " * node.get("depth", 0) + node["node_id"], asset, amount]
        for node in nodes
        for asset, amount in sorted(node["available"].items())
    ]
    _echo_json(output, balance, f"as of seq {balance['seq']}\n" + table(("NODE", "ASSET", "AVAILABLE"), rows, frozenset({2})))


def register(main: click.Group, account: click.Group, audit: click.Group) -> None:
    """Attach this module's commands to the ``coffer`` command's groups."""
    for command in (deposit, withdraw, batch, compensate, tcc, commands, shards, whoami, status, metrics, log_level, hierarchy):
        main.add_command(command)
    account.add_command(account_search)
    audit.add_command(audit_check)
