"""The HTTP API of one node (docs/api.md), as an ASGI application.

Handlers never change state: commands go through the :class:`Pipeline` (log, then apply), and
reads look at the applied state between entries, or at the event store for history. Every answer
is JSON; errors have the documented shape ``{"error": {"code", "message", "account_id"?}}``.
"""

import asyncio
import contextlib
import contextvars
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, ClassVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from coffer import console
from coffer.cluster.checkpoints import CheckpointMonitor, checkpoint_interval_s
from coffer.core.accounts import Account, Effect
from coffer.core.commands import Command
from coffer.core.errors import ErrorCode
from coffer.core.events import Actor
from coffer.core.state_machine import protocol_version_max
from coffer.flows.http import FlowRoutes, FlowRunFastPath
from coffer.http import inputs
from coffer.http.auth import ApiKeys, Role
from coffer.http.inputs import query_parameters
from coffer.http.limits import commands_per_request_max, query_limit_max
from coffer.http.responses import HttpError, encoded_answer, json_response, read_body, retry_after
from coffer.http.views import account_view, command_answer, error_body, rejection_body, velocity_view
from coffer.notify.http import NodeHost, WebhookRoutes
from coffer.query import hierarchy, hierarchy_service, reads
from coffer.replica import RecoveryStopped, Replica
from coffer.server import requests as bodies
from coffer.server import transactions
from coffer.server.admission import Admission, Overloaded
from coffer.server.command_table import CommandRoute, routes_by_kind, routes_by_path, to_command
from coffer.server.feed import event_stream
from coffer.server.node_reads import NodeHierarchy, NodeReads
from coffer.server.openapi import openapi_document
from coffer.server.operator_api import HttpMetrics, NodeTools
from coffer.server.pipeline import DiskFull, FollowerPipeline, LogUnavailable, Outcome, Pipeline

logger = logging.getLogger(__name__)

store_wait_s_max = 5.0
submit_wait_s_max = 20.0
compaction_interval_s = 30.0  # cluster: how often a node tries to purge the stream below all snapshots  # no request hangs: past this the outcome is unknown (503, retry safely)  # a history read waits this long for the event store to catch up

# Who sent the request being handled (set by Api._role, read when its commands are submitted).
_caller: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("coffer_caller", default=None)

class _CommandsBody(msgspec.Struct, forbid_unknown_fields=True):
    commands: list[dict[str, Any]]


_commands_decoder = msgspec.json.Decoder(_CommandsBody)
_commands_msgpack_decoder = msgspec.msgpack.Decoder(_CommandsBody)
_log_level_decoder = msgspec.json.Decoder(dict[str, str])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter("coffer_commands", "Commands answered, by outcome code", ["code"], registry=self.registry)
        self.entries = Counter("coffer_log_entries", "Log entries appended and applied", registry=self.registry)
        self.entry_commands = Histogram(
            "coffer_entry_commands",
            "Commands per log entry (group commit size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, commands_per_request_max),
            registry=self.registry,
        )
        self.append_seconds = Histogram(
            "coffer_log_append_seconds",
            "Time from handing an entry to the log writer to durable",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
            registry=self.registry,
        )
        self.seq = Gauge("coffer_seq", "Last applied event seq", registry=self.registry)
        self.log_index = Gauge("coffer_log_index", "Last applied log index", registry=self.registry)
        self.stored_seq = Gauge("coffer_event_store_seq", "Last event seq in the event store", registry=self.registry)
        self.refused = Gauge("coffer_writes_refused", "Write requests refused with 503 by admission control", registry=self.registry)
        self._code_counters: dict[str, Any] = {}

    def count(self, code: str) -> None:
        counter = self._code_counters.get(code)
        if counter is None:
            counter = self._code_counters[code] = self.commands.labels(code)
        counter.inc()


def _parameters(request: Request) -> inputs.Parameters:
    parameters: inputs.Parameters = request.state.parameters  # the names its route accepts (Api.route)
    return parameters


def _int_param(request: Request, name: str, minimum: int = 0) -> int | None:
    return _parameters(request).integer(name, minimum)


class Api:
    """Routes and the state they read; ``pipeline`` is set when the app starts."""

    def __init__(self, replica: Replica, keys: ApiKeys) -> None:
        self.replica = replica
        self.keys = keys
        self.metrics = Metrics()
        self.pipeline: Pipeline | None = None
        self.ready = False
        self.checkpoints: CheckpointMonitor | None = None
        # A shard of a sharded node takes the ids its router derives; the router refuses them from clients.
        self.reserved_ids_allowed = False
        machine = replica.machine
        self.reads = NodeReads(
            replica.store, lambda: replica.machine.seq, lambda seq: self._pipeline().wait_for_seq(seq), self._store_reached
        )
        self.flows = FlowRoutes(self)
        self.webhooks = WebhookRoutes(NodeHost(self), self.route)
        self.hierarchy = NodeHierarchy(
            replica.data_dir, replica.store, lambda ids: {account_id for account_id in ids if account_id in machine.accounts}
        )
        self.admission = Admission()
        self.tools = NodeTools(self)
        self.fatal: str | None = None  # recovery failed for good: the server shuts down
        self.on_fatal: Callable[[], None] | None = None  # how to stop the server (serve sets it)

    # ------------------------------------------------------------------ plumbing

    def _role(self, headers: Mapping[str, str]) -> Role:
        """The caller's role; also notes who the caller is, for the events of its commands."""
        if not self.keys:
            _caller.set(None)  # loopback without keys: the operator of this machine, unnamed
            return Role.ADMIN
        presented = headers.get("x-api-key")
        authorization = headers.get("authorization")
        if presented is None and authorization is not None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        identity = self.keys.identify(presented)
        if identity is None:
            raise HttpError(401, ErrorCode.UNAUTHORIZED, "missing or unknown API key")
        role, key_id = identity
        _caller.set(Actor(key_id, role.name.lower()))
        return role

    async def guarded(self, needed: Role, headers: Mapping[str, str], work: Callable[[Role], Awaitable[Any]]) -> Any:
        """Check the node and the caller's role, run ``work``; map every failure to its answer.

        Returns what ``work`` returns, or an ``(status, error body)`` pair for a failure.
        """
        try:
            if not self.ready:
                # Recovery runs while the server answers /readyz: the state is not to be read yet.
                raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"the node is not ready: {self.replica.status}")
            if self.checkpoints is not None and self.checkpoints.diverged is not None:
                raise HttpError(503, ErrorCode.NOT_AVAILABLE, self.checkpoints.diverged)
            granted = self._role(headers)
            if granted < needed:
                raise HttpError(403, ErrorCode.FORBIDDEN, f"this route needs the {needed.name.lower()} role")
            return await work(granted)
        except HttpError as error:
            return error.status, error_body(error.code, error.message, error.account_id)
        except bodies.RequestError as error:
            return 422, error_body(error.code, error.message, error.account_id)
        except inputs.InputError as error:
            return 422, error_body(error.code, error.message)
        except LogUnavailable as error:
            return 503, error_body(ErrorCode.NOT_AVAILABLE, f"the command log is unavailable: {error}")
        except DiskFull as error:
            # 507 without Retry-After: it lasts until an operator frees space; nothing was stored.
            return 507, error_body(ErrorCode.NOT_AVAILABLE, str(error))
        except Overloaded as error:
            return 503, error_body(ErrorCode.NOT_AVAILABLE, f"overloaded: {error}")
        except reads.ReadError as error:
            return error.status, error_body(error.code, error.message, error.subject_id)
        except hierarchy.HierarchyError as error:
            return 409, error_body(error.code, error.message, error.subject_id)

    def route(
        self,
        path: str,
        method: str,
        role: Role,
        handler: Callable[[Request, Role], Awaitable[Response]],
        query: Collection[str] | None = None,
    ) -> Route:
        """A route answering ``method`` on ``path``; ``query`` names every query parameter it takes
        (by default, the ones its operation lists in the OpenAPI document: one declaration)."""
        if query is None:
            query = query_parameters(openapi_document(), path, method)

        async def work(request: Request, granted: Role) -> Response:
            request.state.parameters = inputs.Parameters(request.query_params.multi_items(), query)
            for name, value in request.path_params.items():
                inputs.refuse_reserved_id(value, name)
            return await handler(request, granted)

        async def endpoint(request: Request) -> Response:
            try:
                answer = await self.guarded(role, request.headers, lambda granted: work(request, granted))
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it; uvicorn drops it
            if isinstance(answer, Response):
                return answer
            status, body = answer
            return json_response(body, status, retry_after if status == 503 else None)

        route = Route(path, endpoint, methods=[method])
        route.query_parameters = frozenset(query)  # type: ignore[attr-defined]  # read by the OpenAPI agreement test
        return route

    async def _body(self, request: Request) -> bytes:
        return await read_body(request.headers, request.stream())

    def _scales(self) -> bodies.Scales:
        machine = self.replica.machine

        def account_scale(account_id: str) -> tuple[str, int] | None:
            account = machine.accounts.get(account_id)
            return None if account is None else (account.asset, account.scale)

        return bodies.Scales(account_scale, machine.asset_scales.get)

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None or not self.ready:
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, "the node is starting")
        return self.pipeline

    # ------------------------------------------------------------------ commands

    def _answer(self, outcome: Outcome) -> tuple[int, dict[str, Any]] | None:
        """The status and body for an outcome; ``None`` when only its event can tell (rare)."""
        result = outcome.result
        if not result.ok:
            self.metrics.count(result.code)
            return 409, rejection_body(result)
        if outcome.effect is None:
            return None
        self.metrics.count(result.code)
        return 200, command_answer(result, outcome.effect)

    async def _outcome_body(self, outcome: Outcome) -> tuple[int, dict[str, Any]]:
        answer = self._answer(outcome)
        if answer is not None:
            return answer
        result = outcome.result
        self.metrics.count(result.code)
        return 200, command_answer(result, await self._effect_from_event(result.seq))

    async def _effect_from_event(self, seq: int) -> Effect:
        """What an accepted command did, from its event: only for a command whose effect the state
        no longer keeps — older than the newest 100,000 accepted commands (see
        ``effects_generation_max``: the store holds its event by then), or from a snapshot of an
        older release — or one answered with an earlier command's event (a repeated decision or
        flow outcome, whose event changed no account)."""
        await self._store_reached(seq)
        record = await asyncio.to_thread(self.replica.store.event, seq)
        if record is None:
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"event {seq} is not in this node's event store: ask another node")
        event = record.decode()
        return Effect(event.log_index, event.accounts)

    async def _submit(self, commands: list[Command]) -> list[Outcome]:
        pipeline = self._pipeline()
        # A retry of an applied command is answered from the dedup store, without the log.
        machine = self.replica.machine
        if len(commands) == 1:
            record = machine.dedup.get(commands[0].dedup_id)
            if record is not None and record.command == commands[0]:
                result = record.result
                return [Outcome(result, 0, None, machine.effect_of(commands[0].dedup_id) if result.ok else None)]
        try:
            with self.admission.commands(len(commands)):
                return await asyncio.wait_for(pipeline.submit(commands, _caller.get()), submit_wait_s_max)
        except TimeoutError:
            raise LogUnavailable(f"no outcome within {submit_wait_s_max} s; retry with the same dedup_id") from None

    def command_handler(self, route: CommandRoute) -> Callable[[Request, Role], Awaitable[Response]]:
        kind, path_account = route.kind, route.path_account

        async def handle(request: Request, role: Role) -> Response:
            path_id = request.path_params["account_id"] if path_account else None
            status, answer = await self.run_command(kind, await self._body(request), path_id)
            return json_response(answer, status)

        return handle

    async def run_command(self, kind: str, data: bytes, path_id: str | None = None) -> tuple[int, dict[str, Any]]:
        """One command of type ``kind`` from its JSON body: decode, translate, submit, answer."""
        body_type = routes_by_kind[kind].body_type
        if path_id is not None:
            inputs.refuse_reserved_id(path_id)
            fields = inputs.decode_json(data)
            if not isinstance(fields, dict):
                raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "body must be a JSON object")
            if fields.setdefault("account_id", path_id) != path_id:
                raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "account_id in the body differs from the path")
            body = bodies.convert_body(body_type, fields)
        else:
            body = bodies.decode_body(body_type, data)
        if not self.reserved_ids_allowed:
            bodies.refuse_reserved_command_ids(body.dedup_id, getattr(body, "txn_id", None))
            bodies.refuse_reserved_account_ids(body)
        # An account this node has not seen still goes to the log: its outcome there is final.
        command = to_command(kind, body, self._scales())
        (outcome,) = await self._submit([command])
        return await self._outcome_body(outcome)

    async def sweep(self, request: Request, role: Role) -> Response:
        """A sweep empties a striped account's stripes; one ledger holds no striped account."""
        bodies.decode_body(bodies.SweepBody, await self._body(request))  # a malformed body: its precise 422 first
        account_id = request.path_params["account_id"]
        message = f"account {account_id} is not striped: striped accounts live on a sharded node (coffer serve --shards N)"
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, message, account_id)

    async def commands(self, request: Request, role: Role) -> Response:
        binary = inputs.is_msgpack(request.headers.get("content-type"))
        status, answer = await self.run_commands(role, await self._body(request), binary)
        encoded, media_type = encoded_answer(answer, inputs.answers_msgpack(request.headers))
        return Response(encoded, status_code=status, media_type=media_type.decode())

    async def run_commands(self, role: Role, data: bytes, binary: bool = False) -> tuple[int, dict[str, Any]]:
        """POST /v1/commands: each command answered on its own, in order; ``binary``: the body is MessagePack."""
        try:
            # The struct's one field holds plain dicts: the duplicate check counts on them as they are.
            if binary:
                batch = inputs.decode_msgpack(data, _commands_msgpack_decoder.decode, plain=lambda body: {"commands": body.commands})
            else:
                batch = inputs.decode_json(data, _commands_decoder.decode, plain=lambda body: {"commands": body.commands})
        except msgspec.ValidationError as error:
            raise bodies.RequestError(ErrorCode.INVALID_REQUEST, str(error)) from None
        if not 1 <= len(batch.commands) <= commands_per_request_max:
            raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"commands must hold 1 to {commands_per_request_max} items")
        scales = self._scales()
        answers: list[dict[str, Any] | None] = []
        to_send: list[Command] = []
        slots: list[int] = []
        for item in batch.commands:
            fields = dict(item)
            kind = fields.pop("type", None)
            try:
                route = routes_by_kind.get(kind) if isinstance(kind, str) else None
                if route is None:
                    raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"unknown command type {kind!r}")
                if role < route.role:
                    raise HttpError(403, ErrorCode.FORBIDDEN, f"{kind} needs the {route.role.name.lower()} role")
                body = bodies.convert_body(route.body_type, fields)
                if not self.reserved_ids_allowed:
                    bodies.refuse_reserved_command_ids(body.dedup_id, getattr(body, "txn_id", None))
                    bodies.refuse_reserved_account_ids(body)
                command = to_command(route.kind, body, scales)
            except bodies.RequestError as error:
                answers.append({"status": 422, **error_body(error.code, error.message, error.account_id)})
                continue
            except HttpError as error:
                answers.append({"status": error.status, **error_body(error.code, error.message, error.account_id)})
                continue
            slots.append(len(answers))
            answers.append(None)
            to_send.append(command)
        if to_send:
            try:
                with self.admission.commands(len(to_send)):
                    outcomes = await asyncio.wait_for(self._pipeline().submit(to_send), submit_wait_s_max)
            except TimeoutError:
                raise LogUnavailable(f"no outcome within {submit_wait_s_max} s; retry with the same dedup_ids") from None
            for slot, outcome in zip(slots, outcomes, strict=True):
                status, answer = self._answer(outcome) or await self._outcome_body(outcome)
                answers[slot] = {"status": status, **answer}
        return 200, {"results": answers}

    # ------------------------------------------------------------------ queries

    async def _at_least(self, request: Request) -> None:
        min_seq = _int_param(request, "min_seq")
        if min_seq is not None and not await self._pipeline().wait_for_seq(min_seq):
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"this node has not applied seq {min_seq} yet")

    async def get_account(self, request: Request, role: Role) -> Response:
        if reads.needs_history(request.query_params):
            return json_response(await reads.account_as_of(self.reads, request.path_params["account_id"], request.query_params))
        await self._at_least(request)
        account_id = inputs.refuse_reserved_id(request.path_params["account_id"])
        machine = self.replica.machine
        account = machine.accounts.get(account_id)
        if account is None:
            raise HttpError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
        view = account_view(account, machine.seq)
        if account_id in machine.velocity:
            view["velocity"] = velocity_view(machine.velocity[account_id], account.scale, machine.time_ms)
        return json_response(view)

    async def get_accounts(self, request: Request, role: Role) -> Response:
        if request.query_params.get("at_time"):
            return json_response(await reads.accounts_as_of(self.reads, request.query_params))
        await self._at_least(request)
        ids = [inputs.refuse_reserved_id(part) for part in (_parameters(request).text("ids") or "").split(",") if part]
        if not ids:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "ids must name at least one account")
        if len(ids) > query_limit_max:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, f"ids names at most {query_limit_max} accounts")
        machine = self.replica.machine
        at_seq = _int_param(request, "at_seq")
        found: dict[str, Account]
        if at_seq is None or at_seq == machine.seq:
            seq = machine.seq
            found = {account_id: machine.accounts[account_id] for account_id in ids if account_id in machine.accounts}
        else:
            if at_seq > machine.seq:
                raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"this node has not applied seq {at_seq} yet")
            await self._store_reached(at_seq)
            seq = at_seq
            found = await asyncio.to_thread(self.replica.store.accounts_at, ids, at_seq)
        views = {account_id: account_view(account, seq) for account_id, account in found.items()}
        return json_response(
            {"seq": seq, "accounts": views, "missing": [account_id for account_id in ids if account_id not in found]}
        )

    async def _store_reached(self, seq: int) -> None:
        writer = self.replica.writer
        deadline = time.monotonic() + store_wait_s_max
        while writer is not None and writer.stored_seq < seq:
            if time.monotonic() > deadline:
                raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"the event store has not reached seq {seq} yet")
            await asyncio.sleep(0.005)

    async def history(self, request: Request, role: Role) -> Response:
        return json_response(await reads.history_page(self.reads, request.path_params["account_id"], request.query_params))

    async def events(self, request: Request, role: Role) -> Response:
        return json_response(await reads.events_page(self.reads, request.query_params))

    async def statement(self, request: Request, role: Role) -> Response:
        return json_response(await reads.statement(self.reads, request.path_params["account_id"], request.query_params))

    # ------------------------------------------------------------------ hierarchy (the query side's, on this node)

    async def put_node(self, request: Request, role: Role) -> Response:
        body = hierarchy_service.decode_node(await self._body(request))
        return json_response(await asyncio.to_thread(hierarchy_service.put_node, self.hierarchy, body))

    async def get_node(self, request: Request, role: Role) -> Response:
        found = await asyncio.to_thread(hierarchy_service.forest, self.hierarchy)
        return json_response(hierarchy_service.node_view(found, request.path_params["node_id"]))

    async def node_balance(self, request: Request, role: Role) -> Response:
        params = request.query_params
        root_only = reads.bool_param(params, "root_only", default=False)
        at_seq = reads.int_param(params, "at_seq")
        seq = await self.reads.settle(None, None)
        if at_seq is not None and at_seq > seq:
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"this node has not applied seq {at_seq} yet")
        node_id = request.path_params["node_id"]
        balance = await asyncio.to_thread(
            hierarchy_service.node_balance, self.hierarchy, node_id, root_only, seq if at_seq is None else at_seq
        )
        return json_response(balance)

    async def get_transaction(self, request: Request, role: Role) -> Response:
        await self._at_least(request)
        txn_id = request.path_params["txn_id"]
        view = transactions.transaction_view(self.replica.machine, txn_id)
        if view is None:
            raise HttpError(404, ErrorCode.TXN_NOT_FOUND, f"transaction {txn_id} not found on this shard")
        return json_response(view)

    async def list_transactions(self, request: Request, role: Role) -> Response:
        """The tries still open (``open=true``, the only listing), oldest first, by id prefix."""
        params = request.query_params
        if not reads.bool_param(params, "open", default=False):
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "only open transactions are listed: pass open=true")
        limit = min(reads.limit_param(params), transactions.open_transactions_limit_max)
        machine = self.replica.machine
        found = transactions.open_transactions(machine, params.get("prefix", ""), limit)
        return json_response({"seq": machine.seq, "transactions": found})

    async def audit_head(self, request: Request, role: Role) -> Response:
        machine = self.replica.machine
        return json_response({"seq": machine.seq, "hash": machine.head.hex(), "log_index": machine.log_index})

    # ------------------------------------------------------------------ operations

    async def healthz(self, request: Request, role: Role) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request, role: Role) -> Response:
        """200 ``{"ready": true, ...}``, or 503 ``{"ready": false, "waiting_for": ...}`` saying why not."""
        pipeline = self.pipeline
        waiting_for = None
        if self.fatal is not None:
            waiting_for = f"nothing: recovery failed ({self.fatal})"
        elif not self.ready or pipeline is None:
            waiting_for = self.replica.status
        elif pipeline.broken is not None:
            waiting_for = f"a restart: the write path stopped ({pipeline.broken})"
        elif self.checkpoints is not None and self.checkpoints.diverged is not None:
            waiting_for = self.checkpoints.diverged
        elif self.replica.disk_space.full is not None:
            waiting_for = f"free disk space: {self.replica.disk_space.full}"
        if waiting_for is not None:
            body = {"ready": False, "waiting_for": waiting_for, **error_body(ErrorCode.NOT_AVAILABLE, f"not ready: {waiting_for}")}
            return json_response(body, 503, retry_after)
        ready: dict[str, Any] = {
            "status": "ready",
            "ready": True,
            "seq": self.replica.machine.seq,
            "protocol_version": self.replica.machine.protocol_version,
            "protocol_version_max": protocol_version_max,
        }
        if self.checkpoints is not None and self.checkpoints.mixed_protocols():
            ready["peers_on_other_protocols"] = self.checkpoints.mixed_protocols()
        return json_response(ready)

    async def metrics_endpoint(self, request: Request, role: Role) -> Response:
        machine = self.replica.machine
        self.metrics.seq.set(machine.seq)
        self.metrics.log_index.set(machine.log_index)
        self.metrics.refused.set(self.admission.refused)
        if self.replica.writer is not None:
            self.metrics.stored_seq.set(self.replica.writer.stored_seq)
        await self.tools.refresh_metrics()
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def log_level(self, request: Request, role: Role) -> Response:
        data = await self._body(request)
        try:
            level = inputs.decode_json(data, _log_level_decoder.decode).get("level", "")
        except msgspec.ValidationError as error:
            raise bodies.RequestError(ErrorCode.INVALID_REQUEST, str(error)) from None
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "level is one of debug, info, warning, error, critical")
        logging.getLogger("coffer").setLevel(numeric)
        return json_response({"level": level.lower()})

    async def openapi(self, request: Request, role: Role) -> Response:
        return json_response(openapi_document())

    def on_entry(self, commands: int, append_s: float, events: int) -> None:
        self.metrics.entries.inc()
        self.metrics.entry_commands.observe(commands)
        self.metrics.append_seconds.observe(append_s)

    def routes(self) -> list[Route]:
        reader, operator, admin = Role.READER, Role.OPERATOR, Role.ADMIN
        return [
            *(self.route(path, route.method, route.role, self.command_handler(route)) for path, route in routes_by_path.items()),
            self.route("/v1/accounts", "GET", reader, self.get_accounts),
            self.route("/v1/accounts/{account_id}", "GET", reader, self.get_account),
            self.route("/v1/accounts/{account_id}/history", "GET", reader, self.history),
            self.route("/v1/accounts/{account_id}/statement", "GET", reader, self.statement),
            self.route("/v1/accounts/{account_id}/sweep", "POST", operator, self.sweep),
            self.route("/v1/commands", "POST", operator, self.commands),
            self.route("/v1/events", "GET", reader, self.events),
            self.route("/v1/events/stream", "GET", reader, lambda request, role: event_stream(request, self)),
            self.route("/v1/audit/head", "GET", reader, self.audit_head),
            self.route("/v1/transactions", "GET", reader, self.list_transactions),
            self.route("/v1/transactions/{txn_id}", "GET", reader, self.get_transaction),
            self.route("/v1/hierarchy/nodes", "POST", admin, self.put_node),
            self.route("/v1/hierarchy/nodes/{node_id}", "GET", reader, self.get_node),
            self.route("/v1/hierarchy/nodes/{node_id}/balance", "GET", reader, self.node_balance),
            self.route("/admin/log-level", "PUT", admin, self.log_level),
            self.route("/metrics", "GET", reader, self.metrics_endpoint),
            *self.tools.routes(),
            *self.flows.routes(),
            *self.webhooks.routes(),
        ]


class FastCommandRoutes:
    """An ASGI front for the hot command routes: the operators' POSTs without path parameters.

    They are answered here, without the framework's routing, request and response objects,
    middleware and exception layers (a third of the CPU a small request costs); everything else
    goes to the Starlette app. Behaviour is the same as through :meth:`Api.route`.
    """

    # path -> the command kind it takes ("" for POST /v1/commands, whose items name their own)
    routes: ClassVar[dict[str, str]] = {
        **{path: route.kind for path, route in routes_by_path.items() if not route.path_account and route.role is Role.OPERATOR},
        "/v1/commands": "",
    }

    def __init__(self, api: Api, app: Starlette) -> None:
        self.api = api
        self.app = app
        self.state = app.state

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        kind = self.routes.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect  # half a body is no request: never decode it
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        async def work(role: Role) -> tuple[int, dict[str, Any]]:
            if scope.get("query_string"):
                inputs.Parameters(QueryParams(scope["query_string"]).multi_items(), ())
            data = await read_body(headers, chunks())
            if kind == "":
                return await self.api.run_commands(role, data, inputs.is_msgpack(headers.get("content-type")))
            return await self.api.run_command(kind, data)

        try:
            status, body = await self.api.guarded(routes_by_kind[kind].role if kind else Role.OPERATOR, headers, work)
        except ClientDisconnect:
            return  # nobody is left to answer
        encoded, media_type = encoded_answer(body, kind == "" and inputs.answers_msgpack(headers))
        response_headers = [(b"content-type", media_type), (b"content-length", str(len(encoded)).encode())]
        if status == 503:
            response_headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": encoded})


def create_app(
    replica: Replica,
    keys: ApiKeys,
    node_name: str | None = None,
    compaction_interval: float = compaction_interval_s,
    cluster_secret: bytes | None = None,
) -> FlowRunFastPath:
    """The ASGI app; it recovers the replica and starts the pipeline when the server starts.

    With ``node_name`` the node is one of several on a shared log (a cluster): it applies the
    log as it reads it back and compares checkpoints with its peers, signed with
    ``cluster_secret`` when there is one (see :mod:`coffer.cluster.checkpoints`).
    """
    api = Api(replica, keys)

    background: list[asyncio.Task[None]] = []

    async def start() -> None:
        """Recover, then take traffic; meanwhile the server answers /readyz with the progress."""
        try:
            await asyncio.to_thread(replica.recover)
        except RecoveryStopped:
            return
        except BaseException as error:
            logger.critical("recovery failed: %r", error, exc_info=error)
            api.fatal = repr(error)
            if api.on_fatal is not None:
                api.on_fatal()  # the server stops; serve() exits non-zero
            else:
                signal.raise_signal(signal.SIGTERM)
            return
        if node_name is None:
            api.pipeline = Pipeline(replica, on_entry=api.on_entry)
        else:
            api.pipeline = FollowerPipeline(replica, node_name, on_entry=api.on_entry)
            watch = _watch_checkpoints(api, node_name, compaction_interval, cluster_secret)
            background.append(asyncio.get_running_loop().create_task(watch))
        api.pipeline.start()
        background.append(asyncio.get_running_loop().create_task(api.flows.runner.recover(), name="coffer-flow-recovery"))
        await api.webhooks.start()
        api.ready = True

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.get_running_loop().create_task(start(), name="coffer-recovery")
        try:
            yield
        finally:
            api.ready = False
            replica.status = "stopping"
            replica.stop_recovery()
            with contextlib.suppress(BaseException):
                await starting  # the recovery thread notices the stop within a read of the log
            api.ready = False
            await api.webhooks.close()
            for task in background:
                task.cancel()
            if api.pipeline is not None:
                await api.pipeline.close()
            api.hierarchy.close()
            replica.close()

    public = [
        Route("/healthz", _unauthenticated(api.healthz), methods=["GET"]),
        Route("/readyz", _unauthenticated(api.readyz), methods=["GET"]),
        Route("/openapi.json", _unauthenticated(api.openapi), methods=["GET"]),
        *api.tools.public_routes(),
        *console.routes(),
    ]

    async def http_error(request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 500)
        # An unknown route or method is a malformed request in the contract's terms.
        message = f"{request.method} {request.url.path}: {getattr(error, 'detail', 'error')}"
        headers = {"Allow": inputs.allowed_methods(app.routes, request.scope)} if status == 405 else None
        return json_response(error_body(ErrorCode.INVALID_REQUEST, message), status, headers)

    app = Starlette(routes=[*public, *api.routes()], lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.api = api
    return HttpMetrics(FlowRunFastPath(api, FastCommandRoutes(api, app)), api.tools.metrics)  # type: ignore[return-value]


def _unauthenticated(handler: Callable[[Request, Role], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            inputs.Parameters(request.query_params.multi_items(), ())
        except inputs.InputError as error:
            return json_response(error_body(error.code, error.message), 422)
        return await handler(request, Role.READER)

    return endpoint


async def _watch_checkpoints(api: "Api", node_name: str, compaction_interval: float, cluster_secret: bytes | None) -> None:
    """Publish this replica's checkpoint every second and judge the peers' (cluster mode)."""
    log = api.replica.log
    subject = f"coffer.checkpoints.{getattr(log, 'stream', 'log')}"
    monitor = CheckpointMonitor(node_name, subject, cluster_secret)
    if cluster_secret is None:
        logger.warning(
            "checkpoints on %s are not authenticated: whoever may publish there can stop this node; "
            "give every node the cluster's --cluster-secret-file",
            subject,
        )
    monitor.protocol_version_max = protocol_version_max
    api.checkpoints = monitor
    machine = api.replica.machine
    monitor.record(machine.log_index, machine.seq, machine.head)
    assert api.pipeline is not None
    api.pipeline.applied_hooks.append(monitor.record)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(log.listen, subject, lambda data: loop.call_soon_threadsafe(monitor.receive, data))  # type: ignore[attr-defined]
    last_compaction = time.monotonic()
    while True:
        await asyncio.sleep(checkpoint_interval_s)
        latest = monitor.latest()
        if latest is None:
            continue
        latest.snapshot_index = api.replica.snapshot_index
        latest.protocol_version = api.replica.machine.protocol_version
        latest.protocol_version_max = protocol_version_max
        try:
            await asyncio.to_thread(log.broadcast, subject, monitor.encode(latest))  # type: ignore[attr-defined]
        except Exception as error:  # the log is failing over; the next second tries again
            logger.debug("checkpoint not published: %s", error)
        if time.monotonic() - last_compaction >= compaction_interval:
            last_compaction = time.monotonic()
            await _compact(api, monitor)


async def _compact(api: "Api", monitor: CheckpointMonitor) -> None:
    """Purge the shared stream below what every live replica and the shared store have."""
    log = api.replica.log
    try:
        shared = await asyncio.to_thread(log.shared_snapshot_index)  # type: ignore[attr-defined]
        index = monitor.compaction_index(api.replica.snapshot_index, shared)
        if index > 0 and index + 1 > await asyncio.to_thread(lambda: log.first_index):
            await asyncio.to_thread(log.truncate_before, index + 1)
            logger.info("compacted the stream below log index %d", index + 1)
    except Exception as error:  # compaction is housekeeping: the next round tries again
        logger.warning("stream compaction failed: %s", error)
