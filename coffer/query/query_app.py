"""The query server: history, balances in the past, statements and the hierarchy, served from the SQL store.

Job: ``coffer query serve --store DSN --port P`` answers the read side of the API (docs/api.md)
that needs history — ``GET /v1/accounts/{id}?at_seq=|at_time=``, ``GET /v1/accounts?ids=…``,
``GET /v1/accounts/{id}/history``, ``GET /v1/accounts/{id}/statement``, ``GET /v1/events``,
``GET /v1/audit/head`` — and owns an account hierarchy (``POST /v1/hierarchy/nodes``, ``GET
/v1/hierarchy/nodes/{id}``, ``GET /v1/hierarchy/nodes/{id}/balance``). It publishes its own
OpenAPI document at ``/openapi.json``. Nodes keep serving the latest state; this serves the past.

Method: the answers are :mod:`coffer.query.reads` and :mod:`coffer.query.hierarchy_service`, the
same code the node runs against its own event store; this module only says how far the store is
complete. A question about a seq the store has not reached yet (``at_seq``, ``min_seq``,
``to_seq``) waits up to ``store_wait_s_max`` (``--wait-s``) for the projector, then answers 503
``NOT_AVAILABLE``: never an older answer presented as the asked one. A question by time
(``at_time``, ``from_time``, ``to_time``) is answered from the events the store holds, and the
answer's ``seq`` says which; pass ``min_seq`` to be sure it holds what you wrote. Keys and roles
are the node's (``--keys-file``, ``COFFER_API_KEYS``); changing the hierarchy needs admin.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.http import inputs
from coffer.http.auth import ApiKeys, Role
from coffer.http.inputs import query_parameters
from coffer.http.responses import HttpError, error_response, json_response, read_body
from coffer.query import hierarchy, hierarchy_service, reads
from coffer.query.sql_store import SqlStore

request_bytes_max = 4 * 1024 * 1024  # a hierarchy node of 10,000 children of 128 characters fits
store_wait_s_max = 2.0  # how long a question about a seq waits for the projector
store_poll_s = 0.02


class QueryApi:
    def __init__(self, store: SqlStore, keys: ApiKeys, document: dict[str, Any], store_wait_s: float = store_wait_s_max) -> None:
        self.store = store
        self.keys = keys
        self.document = document
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
        query: Collection[str] | None = None,
    ) -> Route:
        """A route answering ``method`` on ``path``; ``query`` names every query parameter it takes
        (by default, the ones its operation lists in the query server's OpenAPI document, ``document``)."""
        if query is None:
            query = query_parameters(self.document, path, method)

        async def endpoint(request: Request) -> Response:
            try:
                if role is not None and self._role(request) < role:
                    raise HttpError(403, ErrorCode.FORBIDDEN, f"this route needs the {role.name.lower()} role")
                request.state.parameters = inputs.Parameters(request.query_params.multi_items(), query)
                for name, value in request.path_params.items():
                    inputs.refuse_reserved_id(value, name)
                return await handler(request)
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it; uvicorn drops it
            except inputs.InputError as error:
                return error_response(422, error.code, error.message)
            except HttpError as error:
                return error_response(error.status, error.code, error.message, error.account_id)
            except reads.ReadError as error:
                return error_response(error.status, error.code, error.message, error.subject_id)
            except hierarchy.HierarchyError as error:
                return error_response(409, error.code, error.message, error.subject_id)

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

    # ------------------------------------------------------------------ history

    async def settle(self, min_seq: int | None, range_end_seq: int | None) -> int:
        """The :class:`coffer.query.reads.ReadSource` promise: the store's seq, once it holds both."""
        return await self._reached(max(min_seq or 0, range_end_seq or 0) or None)

    async def run(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return await self._store(function, *arguments)

    async def history(self, request: Request) -> Response:
        return json_response(await reads.history_page(self, request.path_params["account_id"], request.query_params))

    async def events(self, request: Request) -> Response:
        return json_response(await reads.events_page(self, request.query_params))

    async def statement(self, request: Request) -> Response:
        return json_response(await reads.statement(self, request.path_params["account_id"], request.query_params))

    async def account(self, request: Request) -> Response:
        return json_response(await reads.account_as_of(self, request.path_params["account_id"], request.query_params))

    async def accounts(self, request: Request) -> Response:
        return json_response(await reads.accounts_as_of(self, request.query_params))

    async def audit_head(self, request: Request) -> Response:
        seq, hash_ = await self._store(self.store.head)
        return json_response({"seq": seq, "hash": hash_.hex()})

    # ------------------------------------------------------------------ hierarchy

    async def put_node(self, request: Request) -> Response:
        body = hierarchy_service.decode_node(await read_body(request.headers, request.stream(), request_bytes_max))
        return json_response(await self._store(hierarchy_service.put_node, self.store, body))

    async def get_node(self, request: Request) -> Response:
        found = await self._store(hierarchy_service.forest, self.store)
        return json_response(hierarchy_service.node_view(found, request.path_params["node_id"]))

    async def node_balance(self, request: Request) -> Response:
        params = request.query_params
        root_only = reads.bool_param(params, "root_only", default=False)
        at_seq = reads.int_param(params, "at_seq")
        last_seq = await self._reached(at_seq)
        seq = last_seq if at_seq is None else at_seq
        node_id = request.path_params["node_id"]
        return json_response(await self._store(hierarchy_service.node_balance, self.store, node_id, root_only, seq))

    # ------------------------------------------------------------------ operations

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            seq = await self._store(self.store.last_seq)
        except Exception as error:  # any database failure means: not ready
            raise HttpError(503, ErrorCode.NOT_AVAILABLE, f"the query store is unreachable: {error}") from None
        return json_response({"status": "ready", "seq": seq})

    async def openapi(self, request: Request) -> Response:
        return json_response(self.document)

    def routes(self) -> list[Route]:
        reader, admin = Role.READER, Role.ADMIN
        return [
            self.route("/healthz", "GET", None, self.healthz),
            self.route("/readyz", "GET", None, self.readyz),
            self.route("/openapi.json", "GET", None, self.openapi),
            self.route("/v1/accounts", "GET", reader, self.accounts),
            self.route("/v1/accounts/{account_id}", "GET", reader, self.account),
            self.route("/v1/accounts/{account_id}/history", "GET", reader, self.history),
            self.route("/v1/accounts/{account_id}/statement", "GET", reader, self.statement),
            self.route("/v1/events", "GET", reader, self.events),
            self.route("/v1/audit/head", "GET", reader, self.audit_head),
            self.route("/v1/hierarchy/nodes", "POST", admin, self.put_node),
            self.route("/v1/hierarchy/nodes/{node_id}", "GET", reader, self.get_node),
            self.route("/v1/hierarchy/nodes/{node_id}/balance", "GET", reader, self.node_balance),
        ]


def create_query_app(store: SqlStore, keys: ApiKeys, document: dict[str, Any], store_wait_s: float = store_wait_s_max) -> Starlette:
    """The query server on ``store``; ``document`` is its OpenAPI document
    (:func:`coffer.server.openapi.query_openapi_document`, handed in by ``coffer query serve``):
    it answers ``GET /openapi.json`` and says which query parameters each route takes."""
    api = QueryApi(store, keys, document, store_wait_s)

    async def http_error(request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 500)
        # An unknown route or method is a malformed request in the contract's terms.
        message = f"{request.method} {request.url.path}: {getattr(error, 'detail', 'error')}"
        response = error_response(status, ErrorCode.INVALID_REQUEST, message)
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
