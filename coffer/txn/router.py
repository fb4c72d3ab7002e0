"""The front of a sharded node: any request, to the shard (or shards) that own its accounts.

Job. Clients see one API, the same as a single-shard node's. A command whose accounts are all on
one shard is forwarded to that shard as it is (one hop on loopback, no extra round of a
protocol); a transfer or batch operation across shards runs as a cross-shard transaction
(:mod:`coffer.txn.coordinator`), and so does a TCC try across shards, which the client's later
confirm or cancel finishes; confirm, cancel and compensate, which name only ids, go to every
shard (and, for a try across shards, to its commit point). Reads of one account go to its shard; ``GET /v1/accounts?ids=`` spans shards; events, the
chain head and the feed are per shard (``shard=``); ``GET /v1/shards`` shows the map and each
shard's head and health; ``GET /v1/transactions/{id}`` a cross-shard transaction on every shard.
Reads take ``token=0:12,1:40`` (the per-shard seqs a cross-shard write answers; for a write on one
shard, its ``seq`` on the account's ``shard``) to read one's own writes on every shard they touched.

Over a cluster, a node may run only some shards (``--host-shards``): requests for the others go,
as they are, to a node that runs them (:mod:`coffer.txn.shards`), whose router takes them under
``/v1/internal/shards/<k>/…`` and hands them to its own shard process, never further.

The router checks API keys and roles; the shards listen on loopback only and trust it. It keeps
no state of its own beyond the recovery task's "first seen" times, so it may crash at any point:
a client retries with the same ``dedup_id`` (which replays every step of a cross-shard command),
and the recovery task finishes what no client comes back for.
"""

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.flows.sharded import RouterFlows
from coffer.http import inputs
from coffer.http.auth import ApiKeys, Role
from coffer.http.limits import commands_per_request_max
from coffer.http.responses import HttpError, encoded_answer, error_response, json_response, read_body
from coffer.notify.http import WebhookRoutes
from coffer.notify.sharded import RouterHost
from coffer.server import requests as bodies
from coffer.server.command_table import internal_kinds, routes_by_kind, routes_by_path
from coffer.server.openapi import openapi_document
from coffer.server.requests import RequestError, refuse_reserved_command_ids
from coffer.txn import coordinator, router_tools
from coffer.txn.coordinator import Coordinator, PlanError, txn_prefix
from coffer.txn.node_directory import NodeDirectory
from coffer.txn.scanners import RendezvousScope
from coffer.txn.shard_map import ShardMap
from coffer.txn.shards import ShardClients, ShardUnavailable, forward_token_header, not_hosted_header
from coffer.txn.stripes import StripeRefused, Stripes

logger = logging.getLogger(__name__)

_answer_headers = ("content-type", "retry-after")

# Where a command of a kind without path parameters is sent (one more hop: to its shard).
_path_of_kind = {route.kind: path for path, route in routes_by_path.items() if not route.path_account}
_broadcast_kinds = {"tcc_confirm", "tcc_cancel"}


class Router:
    def __init__(
        self,
        shard_map: ShardMap,
        shards: ShardClients,
        keys: ApiKeys,
        directory: NodeDirectory | None = None,
        forward_token: str | None = None,
    ) -> None:
        self.shard_map = shard_map
        self.shards = shards
        self.keys = keys
        # The cluster's live routers (None on one machine): where shards hosted elsewhere are, and
        # which shards this router's recovery scans.
        self.directory = directory
        self.forward_token = forward_token  # what other nodes present to forward to this one's shards
        scope = RendezvousScope(directory.entry.router_id, directory.live_routers) if directory is not None else None
        self.coordinator = Coordinator(shards, shard_map, scope=scope)
        self.stripes = Stripes(shards, shard_map, self.coordinator)  # striped accounts: see coffer.txn.stripes
        self.data_dir: Path | None = None  # where the router keeps its own files (webhooks); set by the launcher

    # ------------------------------------------------------------------ plumbing

    def _role(self, request: Request) -> Role:
        if not self.keys:
            return Role.ADMIN
        presented = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization")
        if presented is None and authorization is not None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        role = self.keys.role_of(presented)
        if role is None:
            raise HttpError(401, ErrorCode.UNAUTHORIZED, "missing or unknown API key")
        return role

    def route(self, path: str, method: str, needed: Role, handler: Callable[[Request, Role], Awaitable[Response]]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                role = self._role(request)
                if role < needed:
                    raise HttpError(403, ErrorCode.FORBIDDEN, f"this route needs the {needed.name.lower()} role")
                return await handler(request, role)
            except HttpError as refused:
                return error_response(refused.status, refused.code, refused.message)
            except ShardUnavailable as error:
                return error_response(503, ErrorCode.NOT_AVAILABLE, f"{error}; retry with the same dedup_id")

        return Route(path, endpoint, methods=[method])

    @staticmethod
    def _answer(response: Any) -> Response:
        headers = {name: response.headers[name] for name in _answer_headers if name in response.headers}
        return Response(response.content, status_code=response.status_code, headers=headers)

    async def _forward(self, shard: int, request: Request, content: bytes | None = None, params: Any = None) -> Response:
        response = await self.shards.send(
            shard,
            request.method,
            request.url.path,
            content=content,
            params=request.query_params.multi_items() if params is None else params,
            content_type=request.headers.get("content-type") if content is not None else None,
        )
        return self._answer(response)

    def _shard_param(self, request: Request) -> tuple[int, list[tuple[str, str]]]:
        """The ``shard=`` of a per-shard read, and the other parameters (to forward)."""
        values = request.query_params.getlist("shard")
        if len(values) != 1 or not values[0].isdigit() or int(values[0]) >= self.shards.count:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, f"this node has {self.shards.count} shards: pass shard=0..{self.shards.count - 1}")
        rest = [(key, value) for key, value in request.query_params.multi_items() if key != "shard"]
        return int(values[0]), rest

    # ------------------------------------------------------------------ commands

    def command_handler(self, kind: str, path_account: bool) -> Callable[[Request, Role], Awaitable[Response]]:
        async def handle(request: Request, role: Role) -> Response:
            data = await read_body(request.headers, request.stream())
            try:
                body = msgspec.json.decode(data)
            except msgspec.DecodeError:
                return await self._forward(0, request, data)  # any shard answers the precise 422
            if not isinstance(body, dict):
                return await self._forward(0, request, data)
            if path_account:
                body = {**body, "account_id": request.path_params["account_id"]}
            _refuse_reserved_ids(body)
            status, answer = await self.command(kind, body, data if not path_account else None, request.url.path)
            return json_response(answer, status, {"Retry-After": "1"} if status == 503 else None)

        return handle

    async def command(self, kind: str, body: dict[str, Any], raw: bytes | None, path: str) -> tuple[int, dict[str, Any]]:
        """One command, wherever it belongs: (status, answer). Clients' ids are checked before."""
        if kind == "compensate":
            return await self._compensate(body)
        if kind in _broadcast_kinds:
            return await self._broadcast(kind, body)
        if kind == "create_account" and body.get("stripes") is not None:
            return await self.stripes.create(body)
        try:
            aimed = await self.stripes.prepare(kind, body)
        except StripeRefused as refused:
            return refused.status, refused.answer()
        if aimed is not body:  # a credit to a striped account, aimed at one of its stripes
            body, raw = aimed, None
        shards = self._shards_of(kind, body)
        if len(shards) > 1 and kind == "tcc_try":
            try:
                bodies.convert_body(routes_by_kind[kind].body_type, body)
                tcc = coordinator.plan_tcc(body, self.shard_map)
            except PlanError as error:
                raise HttpError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
            except (bodies.RequestError, KeyError, TypeError):
                tcc = None  # malformed: the shard below answers the precise 422
            if tcc is not None:
                outcome = await self.coordinator.tcc_try(tcc)
                return outcome.status, outcome.body
        elif len(shards) > 1:
            try:
                plan = coordinator.plan(kind, body, self.shard_map)
            except PlanError as error:
                raise HttpError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
            except (KeyError, TypeError):
                plan = None  # malformed: the shard below answers the precise 422
            if plan is not None:
                outcome = await self.coordinator.run(plan)
                return outcome.status, outcome.body
        shard = shards[0] if shards else 0
        content = raw if raw is not None else msgspec.json.encode(body)
        response = await self.shards.send(shard, "POST", path, content=content, content_type="application/json")
        if response.status_code >= 500:
            raise ShardUnavailable(shard, f"HTTP {response.status_code}")
        return response.status_code, msgspec.json.decode(response.content)

    def _shards_of(self, kind: str, body: dict[str, Any]) -> list[int]:
        """The shards that hold the command's accounts, in the command's order (malformed: none)."""
        ids: list[Any] = []
        if kind == "transfer":
            ids = [body.get("from_account_id"), body.get("to_account_id")]
        elif kind in ("batch_operation", "tcc_try"):
            for group in ("legs", "preconditions"):
                items = body.get(group)
                if isinstance(items, list):
                    ids.extend(item.get("account_id") for item in items if isinstance(item, dict))
        else:
            ids = [body.get("account_id")]
        found: list[int] = []
        for account_id in ids:
            if isinstance(account_id, str):
                shard = self.shard_map.shard_of(account_id)
                if shard not in found:
                    found.append(shard)
        return found

    async def _broadcast(self, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Confirm or cancel: the shard that holds the transaction answers; the others find nothing.

        When no shard holds it under the client's txn_id, it may be a try across shards: its
        commit point knows (a claim under the id derived from the client's txn_id).
        """
        path = _path_of_kind[kind]
        answers = await asyncio.gather(*(self.shards.post(shard, path, body) for shard in range(self.shards.count)))
        for status, answer in answers:
            if status == 200:
                return status, answer
        for status, answer in answers:
            if _code(answer) != ErrorCode.TXN_NOT_FOUND:
                return status, answer
        outcome = await self.coordinator.tcc_finish(body["txn_id"], commit=kind == "tcc_confirm")
        if outcome is not None:
            return outcome.status, outcome.body
        return answers[0]

    async def _compensate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        original = body.get("original_dedup_id")
        if not isinstance(original, str) or not isinstance(body.get("dedup_id"), str):
            return await self.shards.post(0, "/v1/compensations", body)  # the precise 422
        # A cross-shard original is decided at its commit point: an abort written first there
        # stops it for good (a null compensation); a commit written first cannot be undone here.
        commit_point = self.shard_map.shard_of(original)
        txn_id = coordinator.txn_id_of(original, commit_point)
        status, answer = await self.shards.post(
            commit_point,
            "/v1/commands",
            {
                "commands": [
                    {
                        "type": "decide",
                        "dedup_id": f"{txn_id}.compensated",
                        "txn_id": txn_id,
                        "commit": False,
                        "reason_code": ErrorCode.ALREADY_COMPENSATED.value,
                        "reason_message": f"compensated by {body['dedup_id']!r}",
                    }
                ]
            },
        )
        (result,) = answer["results"]
        if _code(result) in (ErrorCode.TXN_ALREADY_DECIDED, ErrorCode.DEDUP_ID_REUSED):
            status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
            decision = view.get("decision") if status == 200 else None
            if decision is not None and decision["commit"]:
                return await self._undo_across_shards(original, txn_id, decision["participants"], body["dedup_id"])
        answers = await asyncio.gather(*(self.shards.post(shard, "/v1/compensations", body) for shard in range(self.shards.count)))
        for status, answer in answers:
            if status == 200 and answer.get("compensation") == "COMPENSATED":
                return status, answer
        for status, answer in answers:
            if status != 200:
                return status, answer
        return answers[0]

    async def _undo_across_shards(self, original: str, txn_id: str, participants: list[int], dedup_id: str) -> tuple[int, dict[str, Any]]:
        """Compensate a committed cross-shard original: its legs reversed, as one cross-shard batch.

        The undo is claimed once at the original's commit point (``<txn_id>.undo``, the first claim
        wins), so a second compensation answers ``ALREADY_COMPENSATED`` and a retry of the first
        replays the same reversing transaction.
        """
        commit_point = coordinator.commit_point_of(txn_id)
        undo_id = f"{txn_id}.undo"
        claim = {"type": "decide", "dedup_id": undo_id, "txn_id": undo_id, "commit": True, "reason_message": f"compensated by {dedup_id!r}"}
        _, answer = await self.shards.post(commit_point, "/v1/commands", {"commands": [claim]})
        (result,) = answer["results"]
        if result["status"] != 200:
            if _code(result) != ErrorCode.DEDUP_ID_REUSED:
                raise ShardUnavailable(commit_point, f"the commit point refused the undo's claim: {result}")
            _, undo = await self.shards.get(commit_point, f"/v1/transactions/{undo_id}")
            by = (undo.get("decision") or {}).get("reason_message", "another compensation")
            return 409, {"error": {"code": ErrorCode.ALREADY_COMPENSATED.value, "message": f"{original!r} was already {by}"}}
        parts = await asyncio.gather(*(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in participants))
        legs = []
        for shard, (status, part) in zip(participants, parts, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"reading {txn_id} answered {status}")
            for leg in part["legs"]:
                amount = Decimal(leg["amount_out"]) - Decimal(leg["amount_in"])
                if amount:
                    legs.append({"account_id": leg["account_id"], "amount": str(amount), "asset": leg["asset"]})
        undo_body = {"dedup_id": undo_id, "legs": legs}
        plan = coordinator.plan("batch_operation", undo_body, self.shard_map)
        if plan is None:  # what it moved nets out on all shards but one
            shard = self.shard_map.shard_of(legs[0]["account_id"]) if legs else commit_point
            status, answer = await self.shards.post(shard, "/v1/batch-operations", undo_body)
        else:
            outcome = await self.coordinator.run(plan)
            status, answer = outcome.status, outcome.body
        if status == 200:
            answer["compensation"] = "COMPENSATED"
        return status, answer

    async def commands(self, request: Request, role: Role) -> Response:
        data = await read_body(request.headers, request.stream())
        binary = inputs.answers_msgpack(request.headers)
        if inputs.is_msgpack(request.headers.get("content-type")):
            # Read with the node's own rules, then sent on to the shards as JSON.
            try:
                envelope = inputs.decode_msgpack(data)
            except inputs.InputError as error:
                return _encoded(binary, {"error": {"code": error.code.value, "message": error.message}}, 422)
            if not isinstance(envelope, dict) or not isinstance(envelope.get("commands"), list) or set(envelope) != {"commands"}:
                return await self._forward(0, request, data)
            return await self._commands(envelope, role, binary)
        try:
            envelope = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return await self._forward(0, request, data)
        items = envelope.get("commands") if isinstance(envelope, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= commands_per_request_max or set(envelope) != {"commands"}:
            return await self._forward(0, request, data)
        return await self._commands(envelope, role, binary)

    async def _commands(self, envelope: dict[str, Any], role: Role, binary: bool) -> Response:
        items = envelope["commands"]
        if not 1 <= len(items) <= commands_per_request_max:
            message = f"commands must hold 1 to {commands_per_request_max} items"
            return _encoded(binary, {"error": {"code": ErrorCode.INVALID_REQUEST.value, "message": message}}, 422)
        results: list[dict[str, Any] | None] = [None] * len(items)
        per_shard: dict[int, list[int]] = {}
        singles: list[int] = []
        striped = await self.stripes.striped_in(items)
        for position, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if not isinstance(item, dict) or not isinstance(kind, str):
                per_shard.setdefault(0, []).append(position)  # malformed: shard 0 answers its 422
                continue
            needed = routes_by_kind[kind].role if kind in routes_by_kind else Role.OPERATOR  # unknown: shard 0 answers its 422
            if role < needed:
                message = f"{kind} needs the {needed.name.lower()} role"
                results[position] = {"status": 403, "error": {"code": ErrorCode.FORBIDDEN.value, "message": message}}
                continue
            try:
                _refuse_reserved_ids(item)
            except HttpError as refused:
                results[position] = {"status": refused.status, "error": {"code": refused.code, "message": refused.message}}
                continue
            shards = self._shards_of(kind, item)
            if (
                kind in _broadcast_kinds
                or kind == "compensate"
                or len(shards) > 1
                or kind in internal_kinds
                or self.stripes.needs_router(kind, item, striped)
            ):
                singles.append(position)
            else:
                per_shard.setdefault(shards[0] if shards else 0, []).append(position)

        async def on_shard(shard: int, positions: list[int]) -> None:
            status, answer = await self.shards.post(shard, "/v1/commands", {"commands": [items[p] for p in positions]})
            if status != 200:
                for position in positions:
                    results[position] = {"status": status, **answer}
                return
            for position, result in zip(positions, answer["results"], strict=True):
                results[position] = result

        async def alone(position: int) -> None:
            item = dict(items[position])
            kind = item.pop("type")
            if kind in internal_kinds:
                results[position] = {"status": 422, "error": {"code": ErrorCode.INVALID_REQUEST.value, "message": f"unknown command type {kind!r}"}}
                return
            try:
                status, answer = await self.command(kind, item, None, _path_of_kind.get(kind, "/v1/commands"))
            except HttpError as refused:
                status, answer = refused.status, {"error": {"code": refused.code, "message": refused.message}}
            except ShardUnavailable as error:
                status, answer = 503, {"error": {"code": ErrorCode.NOT_AVAILABLE.value, "message": str(error)}}
            results[position] = {"status": status, **answer}

        await asyncio.gather(*(on_shard(shard, positions) for shard, positions in per_shard.items()), *(alone(p) for p in singles))
        return _encoded(binary, {"results": results})

    # ------------------------------------------------------------------ reads

    def _token(self, request: Request) -> dict[int, int]:
        """``token=0:12,1:40``: the per-shard seqs a write answered, for reading one's own writes."""
        values = request.query_params.getlist("token")
        if not values:
            return {}
        seqs: dict[int, int] = {}
        try:
            for part in values[-1].split(","):
                shard, _, seq = part.partition(":")
                if not (shard.isdigit() and seq.isdigit() and len(seq) <= 19 and int(shard) < self.shards.count):
                    raise ValueError(part)
                seqs[int(shard)] = int(seq)
        except ValueError:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "token is shard:seq pairs, comma-separated, as a write answers it") from None
        if len(values) > 1 or "min_seq" in request.query_params:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "give one token, or min_seq, not both")
        return seqs

    def _with_min_seq(self, request: Request, shard: int, seqs: dict[int, int], drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        params = [(key, value) for key, value in request.query_params.multi_items() if key != "token" and key not in drop]
        if shard in seqs:
            params.append(("min_seq", str(seqs[shard])))
        return params

    async def by_account(self, request: Request, role: Role) -> Response:
        shard = self.shard_map.shard_of(request.path_params["account_id"])
        seqs = self._token(request)
        return await self._forward(shard, request, params=self._with_min_seq(request, shard, seqs) if seqs else None)

    async def per_shard(self, request: Request, role: Role) -> Response:
        shard, rest = self._shard_param(request)
        return await self._forward(shard, request, params=rest)

    async def stream(self, request: Request, role: Role) -> Response:
        shard, rest = self._shard_param(request)
        client, prefix = self.shards.stream_client(shard)
        upstream = client.build_request("GET", prefix + request.url.path, params=rest)
        response = await client.send(upstream, stream=True)
        return StreamingResponse(_relay(response), status_code=response.status_code, media_type=response.headers.get("content-type"))

    async def accounts(self, request: Request, role: Role) -> Response:
        params = request.query_params
        ids = [part for part in params.get("ids", "").split(",") if part]
        groups: dict[int, list[str]] = {}
        for account_id in ids:
            groups.setdefault(self.shard_map.shard_of(account_id), []).append(account_id)
        seqs = self._token(request)
        if len(groups) <= 1:
            shard = next(iter(groups), 0)
            return await self._forward(shard, request, params=self._with_min_seq(request, shard, seqs) if seqs else None)
        if "at_seq" in params or "min_seq" in params:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "at_seq and min_seq are per shard: these ids span shards (use at_time or token)")
        answers = await asyncio.gather(
            *(
                self.shards.get(shard, "/v1/accounts", [*self._with_min_seq(request, shard, seqs, ("ids",)), ("ids", ",".join(group))])
                for shard, group in groups.items()
            )
        )
        merged: dict[str, Any] = {}
        missing: set[str] = set()
        seqs: dict[str, int] = {}
        for shard, (status, answer) in zip(groups, answers, strict=True):
            if status != 200:
                return json_response(answer, status)
            merged.update(answer["accounts"])
            missing.update(answer["missing"])
            seqs[str(shard)] = answer["seq"]
        return json_response(
            {
                "seq": max(seqs.values()),
                "seqs": seqs,
                "accounts": {account_id: merged[account_id] for account_id in ids if account_id in merged},
                "missing": [account_id for account_id in ids if account_id in missing],
            }
        )

    async def transaction(self, request: Request, role: Role) -> Response:
        txn_id = request.path_params["txn_id"]
        claim = None
        if not txn_id.startswith(txn_prefix) and not await self._held_anywhere(txn_id):
            # A client's try across shards is kept under an id derived from the client's txn_id.
            claim = await self.coordinator.transaction_view(txn_id)
            if claim is not None:
                return await self._transaction(claim["txn_id"], txn_id, claim)
        return await self._transaction(txn_id, txn_id, None)

    async def _held_anywhere(self, txn_id: str) -> bool:
        answers = await asyncio.gather(*(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in range(self.shards.count)))
        return any(status == 200 for status, _ in answers)

    async def _transaction(self, txn_id: str, shown_id: str, claim: dict[str, Any] | None) -> Response:
        answers = await asyncio.gather(
            *(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in range(self.shards.count)), return_exceptions=True
        )
        parts: dict[str, Any] = {}
        decision = None
        for shard, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                parts[str(shard)] = {"error": str(answer)}
                continue
            status, view = answer
            if status == 200:
                parts[str(shard)] = view
                decision = decision or view.get("decision")
        found = {shard: view for shard, view in parts.items() if "error" not in view}
        if not found:
            raise HttpError(404, ErrorCode.TXN_NOT_FOUND, f"no shard holds transaction {txn_id}")
        states = {view["state"] for view in found.values() if view["state"] is not None}
        if decision is not None:
            state = "COMMITTED" if decision["commit"] else "ABORTED"
            if "TRIED" in states:
                state += "_IN_FLIGHT"  # decided; some participant has not finished yet
        else:
            state = "TRIED" if states == {"TRIED"} else "/".join(sorted(states)) or "UNKNOWN"
        view: dict[str, Any] = {"txn_id": shown_id, "state": state, "decision": decision, "shards": parts}
        if claim is not None:
            # A client-held try: its one deadline for every shard, and the id the shards hold it under.
            view.update(cross_shard_txn_id=txn_id, participants=claim["participants"], deadline=claim["deadline"])
        return json_response(view)

    async def list_shards(self, request: Request, role: Role) -> Response:
        async def one(shard: int) -> dict[str, Any]:
            entry: dict[str, Any] = {"shard": shard, "url": self.shards.urls[shard], "hosted_here": self.shards.hosted(shard)}
            try:
                _, entry["head"] = await self.shards.get(shard, "/v1/audit/head")
                response = await self.shards.send(shard, "GET", "/readyz")
                entry["ready"] = response.status_code == 200
            except ShardUnavailable as error:
                entry["ready"] = False
                entry["error"] = str(error)
            return entry

        shards = await asyncio.gather(*(one(shard) for shard in range(self.shards.count)))
        body: dict[str, Any] = {"map": self.shard_map.to_json(), "shards": list(shards)}
        # Which shards this router's recovery scans, and the live routers it chose them among.
        body["recovery_scans"] = self.coordinator.scope.shards_to_scan(self.shards.count)
        if self.directory is not None:
            live = self.directory.live_routers()
            body["router_id"] = self.directory.entry.router_id
            body["routers"] = None if live is None else {router_id: sorted(hosted or ()) for router_id, hosted in sorted(live.items())}
        return json_response(body)

    async def readyz(self, request: Request) -> Response:
        for shard in range(self.shards.count):
            try:
                response = await self.shards.send(shard, "GET", "/readyz")
            except ShardUnavailable as error:
                return error_response(503, ErrorCode.NOT_AVAILABLE, str(error))
            if response.status_code != 200:
                return error_response(503, ErrorCode.NOT_AVAILABLE, f"shard {shard} is not ready")
        return json_response({"status": "ready", "shards": self.shards.count})

    async def forwarded(self, request: Request) -> Response:
        """Another node's request for a shard this node hosts: to the shard process as it is.

        Only nodes of the cluster may: with API keys, the request must carry the cluster's
        forwarding token (a node without keys listens on loopback and trusts its callers, as its
        shard processes do). A shard not hosted here answers 503 with ``x-coffer-not-hosted``, so
        the sender tries another host; it is never sent on again from here (no forwarding loops).
        """
        if self.keys:
            presented = request.headers.get(forward_token_header, "")
            if self.forward_token is None or not hmac.compare_digest(presented.encode(), self.forward_token.encode()):
                return error_response(403, ErrorCode.FORBIDDEN, "forwarding between nodes needs the cluster's forwarding token")
        shard = request.path_params["shard"]
        if shard >= self.shards.count or not self.shards.hosted(shard):
            answer = error_response(503, ErrorCode.NOT_AVAILABLE, f"this node does not host shard {shard}")
            answer.headers[not_hosted_header] = "1"
            return answer
        path = "/" + request.path_params["path"]
        if request.method == "GET" and path == "/v1/events/stream":
            client, _ = self.shards.stream_client(shard)
            upstream = await client.send(client.build_request("GET", path, params=request.query_params.multi_items()), stream=True)
            return StreamingResponse(_relay(upstream), status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))
        try:
            content = await read_body(request.headers, request.stream()) if request.method == "POST" else None
        except HttpError as error:
            return error_response(error.status, error.code, error.message)
        try:
            response = await self.shards.send(
                shard,
                request.method,
                path,
                content=content,
                params=request.query_params.multi_items(),
                content_type=request.headers.get("content-type") if content is not None else None,
            )
        except ShardUnavailable as error:
            return error_response(503, ErrorCode.NOT_AVAILABLE, str(error))
        return self._answer(response)


async def _relay(response: Any) -> Any:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


def _encoded(binary: bool, body: Any, status: int = 200) -> Response:
    encoded, media_type = encoded_answer(body, binary)
    return Response(encoded, status_code=status, media_type=media_type.decode())
def _refuse_reserved_ids(body: dict[str, Any]) -> None:
    """A client's command with an id that flow runs or cross-shard transactions derive: refused."""
    try:
        refuse_reserved_command_ids(body.get("dedup_id"), body.get("txn_id"))
    except RequestError as error:
        raise HttpError(422, error.code.value, error.message) from None


def _code(answer: dict[str, Any]) -> str | None:
    error = answer.get("error") if isinstance(answer, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def create_router_app(router: Router) -> Starlette:
    reader, operator = Role.READER, Role.OPERATOR
    routes = []
    for path, route in routes_by_path.items():
        routes.append(router.route(path, route.method, route.role, router.command_handler(route.kind, route.path_account)))
    routes += [
        router.route("/v1/commands", "POST", operator, router.commands),
        router.route("/v1/accounts", "GET", reader, router.stripes.reading(router.accounts)),
        router.route("/v1/accounts/{account_id}", "GET", reader, router.stripes.reading(router.by_account)),
        router.route("/v1/accounts/{account_id}/sweep", "POST", operator, router.stripes.sweep_handler),
        router.route("/v1/accounts/{account_id}/history", "GET", reader, router.by_account),
        router.route("/v1/accounts/{account_id}/statement", "GET", reader, router.by_account),
        router.route("/v1/events", "GET", reader, router.per_shard),
        router.route("/v1/events/stream", "GET", reader, router.stream),
        router.route("/v1/audit/head", "GET", reader, router.per_shard),
        router.route("/v1/transactions", "GET", reader, router.per_shard),
        router.route("/v1/transactions/{txn_id}", "GET", reader, router.transaction),
        router.route("/v1/shards", "GET", reader, router.list_shards),
        Route("/v1/internal/shards/{shard:int}/{path:path}", router.forwarded, methods=["GET", "POST"]),
        Route("/healthz", lambda request: json_response({"status": "ok"}), methods=["GET"]),
        Route("/readyz", router.readyz, methods=["GET"]),
        Route("/openapi.json", lambda request: json_response(openapi_document()), methods=["GET"]),
        *router_tools.routes(router),
    ]
    flows = RouterFlows(router)
    routes += flows.routes()
    webhooks = None
    if router.data_dir is not None:
        webhooks = WebhookRoutes(RouterHost(router, router.data_dir), router.route)
        routes += webhooks.routes()

    async def lifespan(app: Starlette) -> Any:
        task = asyncio.get_running_loop().create_task(router.coordinator.run_recovery(), name="coffer-txn-recovery")
        directory_task = None
        if router.directory is not None:
            directory_task = asyncio.get_running_loop().create_task(router.directory.run(), name="coffer-node-directory")
        flow_task = asyncio.get_running_loop().create_task(flows.runner.recover(), name="coffer-flow-recovery")
        if webhooks is not None:
            await webhooks.start()
        try:
            yield
        finally:
            task.cancel()
            flow_task.cancel()
            if directory_task is not None:
                directory_task.cancel()
                await router.directory.leave()  # type: ignore[union-attr]
            if webhooks is not None:
                await webhooks.close()
            await router.shards.close()

    return Starlette(routes=routes, lifespan=lifespan)


router_config_variable = "COFFER_ROUTER_CONFIG"  # JSON: shard urls, shard map, keys file (router worker processes)
