"""The query server: history, snapshots at a seq and hierarchy balances, served from the SQL store.

Job: ``coffer query serve --store DSN --port P`` answers the read side of shared/API.md that
needs history — ``GET /v1/accounts/{id}/history``, ``GET /v1/events``, ``GET
/v1/accounts?ids=…&at_seq=N``, ``GET /v1/audit/head`` — and owns the account hierarchy
(``POST /v1/hierarchy/nodes``, ``GET /v1/hierarchy/nodes/{id}``, ``GET
/v1/hierarchy/nodes/{id}/balance``). Nodes keep serving the latest state; this serves the past.

Method: every answer reads the store (in worker threads) and has the JSON shapes and errors of
the node (:mod:`coffer.server.views`). A question about a seq the store has not reached yet
(``at_seq``, ``min_seq``, ``to_seq``) waits up to ``store_wait_s_max`` (``--wait-s``) for the projector, then
answers 503 ``NOT_AVAILABLE``: never an older answer presented as the asked one. Keys and roles
are the node's (``--keys-file``, ``COFFER_API_KEYS``); changing the hierarchy needs admin.
"""

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.query import hierarchy
from coffer.query.sql_store import SqlStore
from coffer.server import inputs
from coffer.server.auth import ApiKeys, Role
from coffer.server.views import account_view, error_body, event_view, time_text

query_limit_default = 1000  # API.md: limit defaults to 1000, at most 10000
query_limit_max = 10_000
request_bytes_max = 4 * 1024 * 1024  # a hierarchy node of 10,000 children of 128 characters fits
store_wait_s_max = 2.0  # how long a question about a seq waits for the projector
store_poll_s = 0.02
id_pattern = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_json = msgspec.json.Encoder()


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, subject_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.subject_id = subject_id


class _NodeBody(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str
    children: list[str]
    parent_id: str | None = None


_node_decoder = msgspec.json.Decoder(_NodeBody)


def json_response(body: Any, status: int = 200) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(_json.encode(body), status_code=status, media_type="application/json", headers=headers)


def _parameters(request: Request) -> inputs.Parameters:
    parameters: inputs.Parameters = request.state.parameters  # the names its route accepts (QueryApi.route)
    return parameters


def _int_param(request: Request, name: str, minimum: int = 0) -> int | None:
    return _parameters(request).integer(name, minimum)


def _time_param(request: Request, name: str) -> int | None:
    return _parameters(request).time_ms(name)


def _limit(request: Request) -> int:
    limit = _parameters(request).integer("limit", minimum=1, maximum=query_limit_max)
    return query_limit_default if limit is None else limit


def _bool_param(request: Request, name: str, default: bool) -> bool:
    return _parameters(request).boolean(name, default)


def _checked_id(value: str, name: str) -> str:
    if not id_pattern.fullmatch(value) or value in inputs.reserved_ids:
        raise HttpError(422, ErrorCode.INVALID_REQUEST, f"{name} must be 1-128 characters of A-Za-z0-9._:-")
    return value


class QueryApi:
    def __init__(self, store: SqlStore, keys: ApiKeys, store_wait_s: float = store_wait_s_max) -> None:
        self.store = store
        self.keys = keys
        self.store_wait_s = store_wait_s

    # ------------------------------------------------------------------ plumbing

    def _role(self, request: Request) -> Role:
        if not self.keys:
            return Role.ADMIN  # loopback without keys: the operator of this machine
        presented = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization")
        if presented is None and authorization is not None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        role = self.keys.role_of(presented)
        if role is None:
            raise HttpError(401, ErrorCode.UNAUTHORIZED, "missing or unknown API key")
        return role

    def route(
        self,
        path: str,
        method: str,
        role: Role | None,
        handler: Callable[[Request], Awaitable[Response]],
        query: Collection[str] = (),
    ) -> Route:
        """A route answering ``method`` on ``path``; ``query`` names every query parameter it takes."""

        async def endpoint(request: Request) -> Response:
            try:
                if role is not None and self._role(request) < role:
                    raise HttpError(403, ErrorCode.FORBIDDEN, f"this route needs the {role.name.lower()} role")
                request.state.parameters = inputs.Parameters(request.query_params.multi_items(), query)
                return await handler(request)
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it; uvicorn drops it
            except inputs.InputError as error:
                return json_response(error_body(error.code, error.message), 422)
            except HttpError as error:
                return json_response(error_body(error.code, error.message, error.subject_id), error.status)
            except hierarchy.HierarchyError as error:
                return json_response(error_body(error.code, error.message, error.subject_id), 409)

        return Route(path, endpoint, methods=[method])

    async def _store(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return await asyncio.to_thread(function, *arguments)

    async def _reached(self, seq: int | None) -> int:
        """The store's last seq, once it is at least ``seq`` (503 if it does not get there in time)."""
        deadline = time.monotonic() + self.store_wait_s
        while True:
            last_seq = await self._store(self.store.last_seq)
            if seq is None or last_seq >= seq:
                return int(last_seq)
            if time.monotonic() > deadline:
                raise HttpError(
                    503, ErrorCode.NOT_AVAILABLE, f"the query store has not reached seq {seq} yet (it holds {last_seq})"
                )
            await asyncio.sleep(store_poll_s)

    async def _body(self, request: Request) -> bytes:
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > request_bytes_max:
                raise HttpError(413, ErrorCode.INVALID_REQUEST, f"request body is larger than {request_bytes_max} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ history

    async def history(self, request: Request) -> Response:
        account_id = inputs.refuse_reserved_id(request.path_params["account_id"])
        to_seq = _int_param(request, "to_seq", minimum=1)
        await self._reached(max(_int_param(request, "min_seq") or 0, (to_seq or 1) - 1))
        rows = await self._store(
            self.store.history,
            account_id,
            _int_param(request, "from_seq"),
            to_seq,
            _time_param(request, "from_time"),
            _time_param(request, "to_time"),
            _limit(request),
        )
        if not rows and not await self._store(self.store.known_accounts, [account_id]):
            raise HttpError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
        versions = [{**account_view(account, seq), "time": time_text(time_ms)} for seq, time_ms, account in rows]
        return json_response({"versions": versions})

    async def events(self, request: Request) -> Response:
        to_seq = _int_param(request, "to_seq", minimum=1)
        await self._reached(max(_int_param(request, "min_seq") or 0, (to_seq or 1) - 1))
        records = await self._store(
            self.store.events,
            _int_param(request, "from_seq"),
            to_seq,
            _time_param(request, "from_time"),
            _time_param(request, "to_time"),
            _limit(request),
        )
        return json_response({"events": [event_view(record) for record in records]})

    async def accounts(self, request: Request) -> Response:
        ids = [inputs.refuse_reserved_id(part) for part in (_parameters(request).text("ids") or "").split(",") if part]
        if not ids:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "ids must name at least one account")
        if len(ids) > query_limit_max:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, f"ids names at most {query_limit_max} accounts")
        at_seq = _int_param(request, "at_seq")
        last_seq = await self._reached(max(at_seq or 0, _int_param(request, "min_seq") or 0))
        seq = last_seq if at_seq is None else at_seq
        found = await self._store(self.store.accounts_at, ids, seq)
        views = {account_id: account_view(account, seq) for account_id, account in found.items()}
        return json_response(
            {"seq": seq, "accounts": views, "missing": [account_id for account_id in ids if account_id not in found]}
        )

    async def audit_head(self, request: Request) -> Response:
        seq, hash_ = await self._store(self.store.head)
        return json_response({"seq": seq, "hash": hash_.hex()})

    # ------------------------------------------------------------------ hierarchy

    async def put_node(self, request: Request) -> Response:
        try:
            body = inputs.decode_json(await self._body(request), _node_decoder.decode)
        except msgspec.ValidationError as error:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
        node_id = _checked_id(body.node_id, "node_id")
        if body.parent_id is not None:
            _checked_id(body.parent_id, "parent_id")
        for child_id in body.children:
            _checked_id(child_id, "each child")
        if len(body.children) > hierarchy.children_per_node_max:
            raise HttpError(422, ErrorCode.INVALID_REQUEST, f"a node has at most {hierarchy.children_per_node_max} children")
        if len(set(body.children)) != len(body.children):
            raise HttpError(422, ErrorCode.INVALID_REQUEST, "children lists an id twice")
        known = await self._store(self.store.known_accounts, [node_id, *body.children])

        def change(nodes: list[str], rows: list[Any]) -> tuple[list[str], list[Any]]:
            return hierarchy.plan_change(hierarchy.Forest.from_rows(nodes, rows), node_id, body.parent_id, body.children, known)

        await self._store(self.store.change_hierarchy, change)
        return await self._node_answer(node_id)

    async def _forest(self) -> hierarchy.Forest:
        nodes, rows = await self._store(self.store.hierarchy_rows)
        return hierarchy.Forest.from_rows(nodes, rows)

    def _node_view(self, forest: hierarchy.Forest, node_id: str) -> dict[str, Any]:
        if node_id not in forest.children:
            raise HttpError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"hierarchy node {node_id} not found", node_id)
        return {
            "node_id": node_id,
            "parent_id": forest.parent_of(node_id),
            "children": [{"id": child_id, "kind": kind} for child_id, kind in forest.children[node_id]],
        }

    async def _node_answer(self, node_id: str) -> Response:
        return json_response(self._node_view(await self._forest(), node_id))

    async def get_node(self, request: Request) -> Response:
        return await self._node_answer(inputs.refuse_reserved_id(request.path_params["node_id"], "node_id"))

    async def node_balance(self, request: Request) -> Response:
        node_id = inputs.refuse_reserved_id(request.path_params["node_id"], "node_id")
        root_only = _bool_param(request, "root_only", default=False)
        at_seq = _int_param(request, "at_seq")
        last_seq = await self._reached(at_seq)
        seq = last_seq if at_seq is None else at_seq
        forest = await self._forest()
        self._node_view(forest, node_id)  # 404 for an unknown node
        available = await self._store(self.store.available_at, forest.accounts_under(node_id), seq)
        balances, nodes = hierarchy.subtree_balances(forest, node_id, available, root_only)
        return json_response({"seq": seq, "node_id": node_id, "available": balances, "nodes": nodes})

    # ------------------------------------------------------------------ operations

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            seq = await self._store(self.store.last_seq)
        except Exception as error:  # any database failure means: not ready
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"the query store is unreachable: {error}") from None
        return json_response({"status": "ready", "seq": seq})

    def routes(self) -> list[Route]:
        reader, admin = Role.READER, Role.ADMIN
        ranges = ("from_seq", "to_seq", "from_time", "to_time", "limit", "min_seq")
        return [
            self.route("/healthz", "GET", None, self.healthz),
            self.route("/readyz", "GET", None, self.readyz),
            self.route("/v1/accounts", "GET", reader, self.accounts, query=("ids", "at_seq", "min_seq")),
            self.route("/v1/accounts/{account_id}/history", "GET", reader, self.history, query=ranges),
            self.route("/v1/events", "GET", reader, self.events, query=ranges),
            self.route("/v1/audit/head", "GET", reader, self.audit_head),
            self.route("/v1/hierarchy/nodes", "POST", admin, self.put_node),
            self.route("/v1/hierarchy/nodes/{node_id}", "GET", reader, self.get_node),
            self.route("/v1/hierarchy/nodes/{node_id}/balance", "GET", reader, self.node_balance, query=("root_only", "at_seq")),
        ]


def create_query_app(store: SqlStore, keys: ApiKeys, store_wait_s: float = store_wait_s_max) -> Starlette:
    api = QueryApi(store, keys, store_wait_s)

    async def http_error(request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 500)
        # An unknown route or method is a malformed request in the contract's terms.
        message = f"{request.method} {request.url.path}: {getattr(error, 'detail', 'error')}"
        response = json_response(error_body(ErrorCode.INVALID_REQUEST, message), status)
        if status == 405:
            response.headers["Allow"] = inputs.allowed_methods(app.routes, request.scope)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(store.migrate)
        try:
            yield
        finally:
            store.close()

    app = Starlette(routes=api.routes(), exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.api = api
    return app
