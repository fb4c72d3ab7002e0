"""The webhooks' routes on a node, and its event source (the node's own event store).

``POST /v1/webhooks`` (admin) subscribes a URL — with filters by account, by event type, or a
balance threshold crossing — and answers its id and its signing secret (only then);
``GET /v1/webhooks``, ``GET /v1/webhooks/{id}``, ``DELETE /v1/webhooks/{id}`` (admin),
``GET /v1/webhooks/{id}/deliveries`` (the delivery log, newest first) and ``POST
/v1/webhooks/{id}/replay`` (admin: deliver again from a seq). Subscriptions belong to the node they
were made on (its data directory), as its event store does.
"""

import asyncio
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coffer.core.amounts import AmountError, format_amount, parse_amount
from coffer.core.errors import ErrorCode
from coffer.core.events import EventType
from coffer.http.auth import Role
from coffer.http.responses import read_body
from coffer.http.views import error_body
from coffer.notify.matcher import Item
from coffer.notify.notifier import EventSource, Notifier, item_of
from coffer.notify.store import Cursor, NotifyStore
from coffer.server import requests as bodies

if TYPE_CHECKING:
    from coffer.server.app import Api

store_file = "webhooks.sqlite3"
# Which hosts a webhook may post to: comma-separated names, or "*" for any (the default). A node
# whose callers should not reach its own network through it (SSRF) names the receivers' hosts.
hosts_variable = "COFFER_WEBHOOK_HOSTS"
url_length_max = 2048
account_ids_max = 1000
timeout_ms_min, timeout_ms_max = 100, 30_000
deliveries_limit_max = 1000
Answer = tuple[int, dict[str, Any]]
EventTypeName = Literal[tuple(event_type.value for event_type in EventType)]  # type: ignore[valid-type]


class ThresholdBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account_id: bodies.Id
    amount: bodies.AmountText
    direction: Literal["below", "above"]


class SubscriptionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str, msgspec.Meta(max_length=url_length_max, pattern=r"^https?://[!-~]+$")]
    secret: Annotated[str, msgspec.Meta(min_length=16, max_length=256)] | None = None
    account_ids: Annotated[list[bodies.Id], msgspec.Meta(max_length=account_ids_max)] = []
    event_types: list[EventTypeName] = []
    threshold: ThresholdBody | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=timeout_ms_min, le=timeout_ms_max)] = 5000
    from_seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


class ReplayBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    from_seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    shard: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0


def _decode(body_type: type[Any], data: bytes) -> Any:
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, str(error)) from None
    except msgspec.DecodeError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {error}") from None


class StoreSource:
    """The node's event store (one shard), read in a worker thread, up to what its writer has stored."""

    def __init__(self, api: "Api") -> None:
        self.replica = api.replica
        self.shards = [0]

    async def read(self, shard: int, from_seq: int, limit: int) -> list[Item]:
        writer = self.replica.writer
        if writer is not None and from_seq > writer.stored_seq:
            return []
        store = self.replica.store
        return await asyncio.to_thread(lambda: [item_of(record) for record in store.events(from_seq, None, None, None, limit)])

    async def available_at(self, shard: int, account_id: str, seq: int) -> int | None:
        found = await asyncio.to_thread(self.replica.store.accounts_at, [account_id], seq)
        return found[account_id].available if account_id in found else None


class Host(Protocol):
    """What the routes need from the process they run in: a single node, or a sharded node's router."""

    data_dir: Path
    source: EventSource

    async def heads(self) -> dict[int, int]:
        """The last seq of every shard."""
        ...

    async def account(self, account_id: str) -> tuple[int, int, int, int] | None:
        """(shard, scale, available, the shard's seq that available is as of) of an account, or None."""
        ...


class NodeHost:
    def __init__(self, api: "Api") -> None:
        self.api = api
        self.data_dir = api.replica.data_dir
        self.source: EventSource = StoreSource(api)

    async def heads(self) -> dict[int, int]:
        return {0: self.api.replica.machine.seq}

    async def account(self, account_id: str) -> tuple[int, int, int, int] | None:
        machine = self.api.replica.machine
        account = machine.accounts.get(account_id)
        return None if account is None else (0, account.scale, account.available, machine.seq)


class WebhookRoutes:
    def __init__(self, host: Host, route: Any) -> None:
        self.host = host
        self._route = route  # Api.route or Router.route: (path, method, role, handler) -> Route
        self.store: NotifyStore | None = None
        self.notifier: Notifier | None = None

    async def start(self) -> None:
        self.store = NotifyStore(self.host.data_dir / store_file)
        self.notifier = Notifier(self.store, self.host.source)
        await self.notifier.start()

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
        if self.store is not None:
            self.store.close()

    def _ready(self) -> tuple[NotifyStore, Notifier]:
        if self.store is None or self.notifier is None:
            raise bodies.RequestError(ErrorCode.NOT_AVAILABLE, "the node is starting")
        return self.store, self.notifier

    def _find(self, subscription_id: str) -> dict[str, Any] | None:
        store, _ = self._ready()
        for found_id, definition, created_ms in store.subscriptions():
            if found_id == subscription_id:
                return {**definition, "created_ms": created_ms}
        return None

    @staticmethod
    def _view(subscription_id: str, definition: dict[str, Any], cursors: dict[int, Cursor], with_secret: bool = False) -> dict[str, Any]:
        view = {key: value for key, value in definition.items() if key not in ("secret", "threshold")}
        view["id"] = subscription_id
        if definition.get("threshold") is not None:
            threshold = definition["threshold"]
            view["threshold"] = {key: threshold[key] for key in ("account_id", "amount", "direction")}
        view["cursor_seq"] = cursors[0].seq if list(cursors) == [0] else None
        view["cursors"] = {str(shard): cursor.seq for shard, cursor in sorted(cursors.items())}
        if with_secret:
            view["secret"] = definition["secret"]
        return view

    async def create(self, request: Request, role: Role) -> Answer:
        _, notifier = self._ready()
        body: SubscriptionBody = _decode(SubscriptionBody, await read_body(request.headers, request.stream()))
        try:
            host = urlsplit(body.url).hostname
        except ValueError as error:
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"url: {error}")
        if not host:
            return 422, error_body(ErrorCode.INVALID_REQUEST, "url names no host")
        allowed = [name.strip() for name in os.environ.get(hosts_variable, "*").split(",") if name.strip()]
        if "*" not in allowed and host not in allowed:
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"webhooks may post to {', '.join(allowed) or 'no host'} only ({hosts_variable})")
        heads = await self.host.heads()
        definition: dict[str, Any] = {
            "url": body.url,
            "secret": body.secret or secrets.token_hex(32),
            "account_ids": sorted(set(body.account_ids)),
            "event_types": sorted(set(body.event_types)),
            "timeout_ms": body.timeout_ms,
            "threshold": None,
        }
        # Every shard starts after its head (or at from_seq, on a node with one shard).
        cursors = {shard: Cursor(head if body.from_seq is None else body.from_seq - 1, None) for shard, head in heads.items()}
        if body.threshold is not None:
            found = await self.host.account(body.threshold.account_id)
            if found is None:
                return 422, error_body(ErrorCode.ACCOUNT_NOT_FOUND, "the threshold's account is not on this node", body.threshold.account_id)
            shard, scale, available, available_seq = found
            try:
                amount = parse_amount(body.threshold.amount, scale, signed=True)
            except AmountError as error:
                return 422, error_body(ErrorCode.INVALID_AMOUNT, str(error))
            definition["threshold"] = {
                "account_id": body.threshold.account_id,
                "amount": format_amount(amount, scale),
                "amount_minor": str(amount),
                "direction": body.threshold.direction,
            }
            if body.from_seq is None:
                # The balance and the cursor from one read: on a sharded node writes may come between
                # the heads and this read, and a crossing among them would be judged from the wrong side.
                cursors[shard] = Cursor(max(cursors[shard].seq, available_seq), available)
            else:
                state = None if body.from_seq <= 1 else await notifier.source.available_at(shard, body.threshold.account_id, body.from_seq - 1)
                cursors[shard] = Cursor(cursors[shard].seq, state)
        subscription_id = f"wh-{secrets.token_hex(8)}"
        await notifier.add(subscription_id, definition, cursors)
        return 200, self._view(subscription_id, definition, cursors, with_secret=True)

    async def list_all(self, request: Request, role: Role) -> Answer:
        store, _ = self._ready()
        found = await asyncio.to_thread(store.subscriptions)
        views = []
        for subscription_id, definition, created_ms in found:
            cursors = await asyncio.to_thread(store.cursors, subscription_id)
            views.append(self._view(subscription_id, {**definition, "created_ms": created_ms}, cursors))
        return 200, {"webhooks": views}

    async def get(self, request: Request, role: Role) -> Answer:
        store, _ = self._ready()
        subscription_id = request.path_params["subscription_id"]
        definition = await asyncio.to_thread(self._find, subscription_id)
        if definition is None:
            return 404, error_body(ErrorCode.WEBHOOK_NOT_FOUND, f"no webhook {subscription_id}")
        return 200, self._view(subscription_id, definition, await asyncio.to_thread(store.cursors, subscription_id))

    async def delete(self, request: Request, role: Role) -> Answer:
        _, notifier = self._ready()
        subscription_id = request.path_params["subscription_id"]
        if not await notifier.remove(subscription_id):
            return 404, error_body(ErrorCode.WEBHOOK_NOT_FOUND, f"no webhook {subscription_id}")
        return 200, {"id": subscription_id, "deleted": True}

    async def deliveries(self, request: Request, role: Role) -> Answer:
        store, _ = self._ready()
        subscription_id = request.path_params["subscription_id"]
        params = request.query_params
        limit_text, before_text = params.get("limit", "100"), params.get("before_id")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= deliveries_limit_max or (before_text is not None and not before_text.isdigit()):
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"limit is 1..{deliveries_limit_max}; before_id a delivery id")
        if before_text is not None and int(before_text) > 2**63 - 1:
            return 422, error_body(ErrorCode.INVALID_REQUEST, "before_id is a delivery id")
        rows = await asyncio.to_thread(store.deliveries, subscription_id, int(limit_text), None if before_text is None else int(before_text))
        return 200, {"deliveries": rows}

    async def replay(self, request: Request, role: Role) -> Answer:
        _, notifier = self._ready()
        subscription_id = request.path_params["subscription_id"]
        body: ReplayBody = _decode(ReplayBody, await read_body(request.headers, request.stream()))
        definition = await asyncio.to_thread(self._find, subscription_id)
        if definition is None:
            return 404, error_body(ErrorCode.WEBHOOK_NOT_FOUND, f"no webhook {subscription_id}")
        if body.shard not in notifier.source.shards:
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"shard is one of {notifier.source.shards}")
        await notifier.replay(subscription_id, definition, body.shard, body.from_seq)
        return 200, self._view(subscription_id, definition, await asyncio.to_thread(self.store_ready().cursors, subscription_id))

    def store_ready(self) -> NotifyStore:
        return self._ready()[0]

    def routes(self) -> list[Route]:
        reader, admin = Role.READER, Role.ADMIN

        def respond(handler: Any) -> Any:
            async def endpoint(request: Request, role: Role) -> Response:
                try:
                    status, answer = await handler(request, role)
                except bodies.RequestError as error:
                    status, answer = (503 if error.code == ErrorCode.NOT_AVAILABLE else 422), error_body(error.code, error.message)
                headers = {"Retry-After": "1"} if status == 503 else None
                return Response(_encode(answer), status_code=status, media_type="application/json", headers=headers)

            return endpoint

        return [
            self._route("/v1/webhooks", "POST", admin, respond(self.create)),
            self._route("/v1/webhooks", "GET", reader, respond(self.list_all)),
            self._route("/v1/webhooks/{subscription_id}", "GET", reader, respond(self.get)),
            self._route("/v1/webhooks/{subscription_id}", "DELETE", admin, respond(self.delete)),
            self._route("/v1/webhooks/{subscription_id}/deliveries", "GET", reader, respond(self.deliveries)),
            self._route("/v1/webhooks/{subscription_id}/replay", "POST", admin, respond(self.replay)),
        ]


_encode = msgspec.json.Encoder().encode

