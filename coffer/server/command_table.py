"""The command catalogue of the HTTP API: one declaration per command kind.

Why: a command's kind, route, role, body and converter used to be spelled out in every place that
needed one of them (the node's routes and its fast path, the sharded router, the OpenAPI document,
the dispatch of ``POST /v1/commands``), and they could drift apart. Each is now declared once in
:data:`COMMAND_ROUTES`; the routes of the node and of the router, the OpenAPI paths and request
schemas, and the kind-to-converter dispatch are generated from it. The client and the CLI live
outside the server and do not import it: a test checks them against this table.

A kind is also the core command's tag (:mod:`coffer.core.commands`) and the ``type`` of an item of
``POST /v1/commands``. Kinds without a path are internal: the layers above a shard (cross-shard
transactions, flow runs) record their own steps with them, only through ``POST /v1/commands``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coffer.core import commands as core
from coffer.http.auth import Role
from coffer.server import requests as bodies


@dataclass(frozen=True)
class CommandRoute:
    """One command kind: where it is sent, who may send it, its body and how that becomes a command."""

    kind: str
    method: str
    path: str | None  # None: internal, only an item of POST /v1/commands
    role: Role
    body_type: type[bodies.CommandBody]
    to_command: Callable[[Any, bodies.Scales], core.Command]  # takes a body_type
    summary: str = ""  # the OpenAPI operation's summary

    @property
    def path_account(self) -> bool:
        """The account comes from the path; the body may repeat it, but only the same."""
        return self.path is not None and "{account_id}" in self.path


_admin, _operator = Role.ADMIN, Role.OPERATOR

COMMAND_ROUTES: tuple[CommandRoute, ...] = (
    CommandRoute(
        "create_account",
        "POST",
        "/v1/accounts",
        _admin,
        bodies.CreateAccountBody,
        bodies.create_account_command,
        "Create an account",
    ),
    CommandRoute(
        "update_limits",
        "POST",
        "/v1/accounts/{account_id}/limits",
        _admin,
        bodies.UpdateLimitsBody,
        bodies.update_limits_command,
        "Change limits",
    ),
    CommandRoute(
        "lock_account",
        "POST",
        "/v1/accounts/{account_id}/lock",
        _admin,
        bodies.AccountBody,
        bodies.account_command(core.LockAccount),
        "Lock an account",
    ),
    CommandRoute(
        "unlock_account",
        "POST",
        "/v1/accounts/{account_id}/unlock",
        _admin,
        bodies.AccountBody,
        bodies.account_command(core.UnlockAccount),
        "Unlock an account",
    ),
    CommandRoute(
        "delete_account",
        "POST",
        "/v1/accounts/{account_id}/delete",
        _admin,
        bodies.AccountBody,
        bodies.account_command(core.DeleteAccount),
        "Delete an empty account",
    ),
    CommandRoute(
        "set_velocity_limits",
        "POST",
        "/v1/accounts/{account_id}/velocity-limits",
        _admin,
        bodies.VelocityLimitsBody,
        bodies.velocity_limits_command,
        "Set (replace) an account's velocity caps: money and debits leaving it per UTC hour and day",
    ),
    CommandRoute(
        "transfer",
        "POST",
        "/v1/transfers",
        _operator,
        bodies.TransferBody,
        bodies.transfer_command,
        "Move money between two accounts",
    ),
    CommandRoute(
        "batch_operation",
        "POST",
        "/v1/batch-operations",
        _operator,
        bodies.BatchOperationBody,
        bodies.batch_operation_command,
        "Signed legs on many accounts, all or nothing",
    ),
    CommandRoute("reserve", "POST", "/v1/reservations", _operator, bodies.ReserveBody, bodies.reserve_command, "Freeze money"),
    CommandRoute("release", "POST", "/v1/releases", _operator, bodies.ReleaseBody, bodies.release_command, "Unfreeze money"),
    CommandRoute("tcc_try", "POST", "/v1/tcc/try", _operator, bodies.TccTryBody, bodies.tcc_try_command, "Two-phase: hold"),
    CommandRoute(
        "tcc_confirm",
        "POST",
        "/v1/tcc/confirm",
        _operator,
        bodies.TxnBody,
        bodies.txn_command(core.TccConfirm),
        "Two-phase: confirm",
    ),
    CommandRoute(
        "tcc_cancel",
        "POST",
        "/v1/tcc/cancel",
        _operator,
        bodies.TxnBody,
        bodies.txn_command(core.TccCancel),
        "Two-phase: cancel",
    ),
    CommandRoute(
        "compensate",
        "POST",
        "/v1/compensations",
        _operator,
        bodies.CompensateBody,
        bodies.compensate_command,
        "Undo a command by its dedup_id",
    ),
    # Internal: the decision of a cross-shard transaction at its commit point, a flow run's start and end.
    CommandRoute("decide", "POST", None, _admin, bodies.DecideBody, bodies.decide_command),
    CommandRoute("start_flow_run", "POST", None, _admin, bodies.StartFlowRunBody, bodies.start_flow_run_command),
    CommandRoute("finish_flow_run", "POST", None, _admin, bodies.FinishFlowRunBody, bodies.finish_flow_run_command),
)

routes_by_kind: dict[str, CommandRoute] = {route.kind: route for route in COMMAND_ROUTES}
# The kinds with a route of their own, by path, in the table's order (the order of the OpenAPI paths).
routes_by_path: dict[str, CommandRoute] = {route.path: route for route in COMMAND_ROUTES if route.path is not None}
internal_kinds = frozenset(route.kind for route in COMMAND_ROUTES if route.path is None)
admin_kinds = frozenset(route.kind for route in COMMAND_ROUTES if route.role >= Role.ADMIN)

assert len(routes_by_kind) == len(COMMAND_ROUTES), "a kind is declared twice"
assert len(routes_by_path) == len(COMMAND_ROUTES) - len(internal_kinds), "a path is declared twice"


def to_command(kind: str, body: bodies.CommandBody, scales: bodies.Scales) -> core.Command:
    """The core command for ``body``, decoded as the body of ``kind`` (a key of :data:`routes_by_kind`)."""
    route = routes_by_kind[kind]
    assert isinstance(body, route.body_type), (kind, type(body).__name__)
    command = route.to_command(body, scales)
    assert command.__struct_config__.tag == kind, (kind, type(command).__name__)
    return command
