"""The client and the CLI agree with the command table (:mod:`coffer.server.command_table`).

The table declares every command kind once, and the server's routes come from it; the client and
the CLI are written by hand, outside the server, so this checks them against it: every kind has a
method of the same name in :class:`Client` and :class:`AsyncClient`, that method sends the kind's
method and path, every command path the client's source names is a path of the table, and some
``coffer`` command calls the method. A kind left out on purpose is in an exception list below,
with its reason. The checks are functions of the table, so a table with a kind nobody offers, or a
path the client does not send to, is shown to be reported.
"""

import ast
import asyncio
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import click

from coffer import client as client_module
from coffer.cli import main
from coffer.client import AsyncClient, Client
from coffer.core import commands as core
from coffer.http.auth import Role
from coffer.server import requests as bodies
from coffer.server.command_table import COMMAND_ROUTES, CommandRoute, routes_by_kind

# Kinds the client and the CLI do not offer, on purpose.
not_in_client = {
    # Internal steps: the layers above a shard (the cross-shard coordinator, the flow runner) record
    # them through POST /v1/commands; a client that sent one would impersonate those layers.
    "decide": "the decision of a cross-shard transaction, written by its coordinator",
    "start_flow_run": "a flow run's start record, written by the flow runner (clients call run_flow)",
    "finish_flow_run": "a flow run's end record, written by the flow runner",
}
not_in_cli = dict(not_in_client)  # the same: the CLI speaks through the client
# Core commands that are no kind of the table: a flow's registration is PUT /v1/flows/{name}, whose
# body the flows' compiler turns into the command (coffer.flows.http), never an item of /v1/commands.
core_commands_without_kind = {"put_flow"}
# Paths the client posts to that are no command of the core: a sharded node's router runs them.
router_operation_paths = {
    "/v1/accounts/{account_id}/sweep": "a striped account's sweep, one cross-shard transaction (coffer.txn.stripes)",
}


def _kinds(routes: Iterable[CommandRoute], exceptions: dict[str, str]) -> list[str]:
    return [route.kind for route in routes if route.kind not in exceptions]


def missing_client_methods(routes: Iterable[CommandRoute], client_class: type) -> list[str]:
    """The kinds without a method of that name on ``client_class``."""
    return [kind for kind in _kinds(routes, not_in_client) if not callable(getattr(client_class, kind, None))]


def _sample_arguments(method: Callable[..., Any]) -> list[Any]:
    """Values for the required parameters of a client method: ids and amounts are text, legs a list."""
    values: list[Any] = []
    for parameter in inspect.signature(method).parameters.values():  # a bound method: no self
        if parameter.default is not inspect.Parameter.empty or parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            continue
        values.append([{"account_id": "a", "amount": "1", "asset": "USD"}] if "Sequence" in str(parameter.annotation) else "x")
    return values


class _RecordingClient(Client):
    """Builds each request as the real client does, and keeps it instead of sending it."""

    def _run(self, call: Any) -> Any:
        self.sent = call


class _RecordingAsyncClient(AsyncClient):
    async def _run(self, call: Any) -> Any:
        self.sent = call


def _sent(client_class: type, kind: str) -> tuple[str, str]:
    """The (method, path) that ``client_class``'s method ``kind`` sends."""
    if issubclass(client_class, AsyncClient):
        async def run() -> Any:
            async with _RecordingAsyncClient("http://127.0.0.1:9") as recorder:
                method = getattr(recorder, kind)
                await method(*_sample_arguments(method))
                return recorder.sent

        call = asyncio.run(run())
    else:
        with _RecordingClient("http://127.0.0.1:9") as recorder:
            method = getattr(recorder, kind)
            method(*_sample_arguments(method))
            call = recorder.sent
    return call.method, call.path


def _template(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)))


def misrouted_kinds(routes: Iterable[CommandRoute], client_class: type) -> list[str]:
    """The kinds whose client method sends elsewhere than the table's method and path."""
    wrong = []
    for route in routes:
        if route.kind in not_in_client or route.path is None or not callable(getattr(client_class, route.kind, None)):
            continue
        method, path = _sent(client_class, route.kind)
        if method != route.method or not _template(route.path).fullmatch(path):
            wrong.append(route.kind)
    return wrong


def client_command_paths() -> set[str]:
    """Every path the client's source hands to ``_command``, with ``{account_id}`` for an account's."""
    tree = ast.parse(Path(client_module.__file__).read_text())
    paths = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_command" and node.args):
            continue
        target = node.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            paths.add(target.value)
        elif isinstance(target, ast.Call) and getattr(target.func, "id", None) == "_account_path":
            action = target.args[1].value if len(target.args) > 1 and isinstance(target.args[1], ast.Constant) else ""
            paths.add("/v1/accounts/{account_id}" + (f"/{action}" if action else ""))
        else:
            paths.add(ast.unparse(target))  # a path the check cannot read: shown as code, never in the table
    return paths


def _leaf_commands(group: click.Group, words: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*words, name))
        elif command is not None and command.callback is not None:
            yield " ".join((*words, name)), command


def client_methods_called(callback: Callable[..., Any]) -> set[str]:
    """The client methods a CLI command's function calls: ``client.NAME(...)``, or
    ``getattr(client, NAME)`` with NAME a variable of the function that made it."""
    function = inspect.unwrap(callback)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    closure = inspect.getclosurevars(function).nonlocals
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "client":
            called.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2:
            owner, name = node.args[0], node.args[1]
            if isinstance(owner, ast.Name) and owner.id == "client" and isinstance(name, ast.Name):
                value = closure.get(name.id)
                if isinstance(value, str):
                    called.add(value)
    return called


def cli_commands_by_kind() -> dict[str, list[str]]:
    """For each client method, the ``coffer`` commands that call it (their words after ``coffer``)."""
    found: dict[str, list[str]] = {}
    for words, command in _leaf_commands(main):
        assert command.callback is not None
        for name in client_methods_called(command.callback):
            found.setdefault(name, []).append(words)
    return found


def missing_cli_commands(routes: Iterable[CommandRoute], commands_by_kind: dict[str, list[str]]) -> list[str]:
    """The kinds no ``coffer`` command sends."""
    return [kind for kind in _kinds(routes, not_in_cli) if not commands_by_kind.get(kind)]


# ------------------------------------------------------------------------------------- the checks


def test_the_exceptions_name_kinds_of_the_table() -> None:
    assert set(not_in_client) <= set(routes_by_kind), "an exception for a kind the table no longer has"
    assert set(not_in_cli) <= set(routes_by_kind), "an exception for a kind the table no longer has"


def test_every_core_command_is_a_kind_of_the_table() -> None:
    tags = {command.__struct_config__.tag for command in get_args(core.Command)}
    assert tags - core_commands_without_kind == set(routes_by_kind)


def test_every_kind_has_a_method_in_both_clients() -> None:
    assert missing_client_methods(COMMAND_ROUTES, Client) == []
    assert missing_client_methods(COMMAND_ROUTES, AsyncClient) == []


def test_each_client_method_sends_its_kinds_method_and_path() -> None:
    assert misrouted_kinds(COMMAND_ROUTES, Client) == []
    assert misrouted_kinds(COMMAND_ROUTES, AsyncClient) == []


def test_every_command_path_of_the_client_is_a_path_of_the_table() -> None:
    table_paths = {route.path for route in COMMAND_ROUTES}
    assert client_command_paths() - table_paths == set(router_operation_paths)
    assert client_command_paths(), "the scan found no path: the client's request builders changed shape"


def test_every_kind_has_a_cli_command() -> None:
    by_kind = cli_commands_by_kind()
    assert missing_cli_commands(COMMAND_ROUTES, by_kind) == []
    # The scan reads what it should: commands written out, and ones a factory makes.
    assert "transfer" in by_kind["transfer"]
    assert "account lock" in by_kind["lock_account"]
    assert {"batch", "deposit", "withdraw"} <= set(by_kind["batch_operation"])


def test_a_kind_nobody_offers_is_reported() -> None:
    fake = CommandRoute("levitate", "POST", "/v1/levitations", Role.OPERATOR, bodies.TxnBody, lambda body, scales: None)  # type: ignore[arg-type,return-value]
    table = (*COMMAND_ROUTES, fake)
    assert missing_client_methods(table, Client) == ["levitate"]
    assert missing_client_methods(table, AsyncClient) == ["levitate"]
    assert missing_cli_commands(table, cli_commands_by_kind()) == ["levitate"]


def test_a_path_the_client_does_not_send_to_is_reported() -> None:
    moved = tuple(
        dataclasses.replace(route, path="/v1/money-moves") if route.kind == "transfer" else route for route in COMMAND_ROUTES
    )
    assert misrouted_kinds(moved, Client) == ["transfer"]
    assert misrouted_kinds(moved, AsyncClient) == ["transfer"]
    assert "/v1/transfers" in client_command_paths() - {route.path for route in moved}
