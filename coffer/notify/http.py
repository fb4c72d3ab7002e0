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
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from coffer.core.amounts import AmountError, format_amount, parse_amount
from coffer.core.errors import ErrorCode
from coffer.core.events import EventRecord, EventType
from coffer.notify.notifier import Notifier
from coffer.notify.store import Cursor, NotifyStore
from coffer.server import requests as bodies
from coffer.server.auth import Role
from coffer.server.views import error_body

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


def _decode(body_type: type[Any], data: bytes) -> Any:
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, str(error)) from None
    except msgspec.DecodeError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {error}") from None


class StoreSource:
    """The node's event store, read in a worker thread, up to what its writer has stored."""

    def __init__(self, api: "Api") -> None:
        self.replica = api.replica

    async def read(self, from_seq: int, limit: int) -> list[EventRecord]:
        writer = self.replica.writer
        if writer is not None and from_seq > writer.stored_seq:
            return []
        return await asyncio.to_thread(self.replica.store.events, from_seq, None, None, None, limit)

    async def available_at(self, account_id: str, seq: int) -> int | None:
        found = await asyncio.to_thread(self.replica.store.accounts_at, [account_id], seq)
        return found[account_id].available if account_id in found else None


class WebhookRoutes:
    def __init__(self, api: "Api") -> None:
        self.api = api
        self.store: NotifyStore | None = None
        self.notifier: Notifier | None = None

    async def start(self) -> None:
        self.store = NotifyStore(self.api.replica.data_dir / store_file)
        self.notifier = Notifier(self.store, StoreSource(self.api))
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
    def _view(subscription_id: str, definition: dict[str, Any], cursor: Cursor | None, with_secret: bool = False) -> dict[str, Any]:
        view = {key: value for key, value in definition.items() if key not in ("secret", "threshold")}
        view["id"] = subscription_id
        if definition.get("threshold") is not None:
            threshold = definition["threshold"]
            view["threshold"] = {key: threshold[key] for key in ("account_id", "amount", "direction")}
        view["cursor_seq"] = None if cursor is None else cursor.seq
        if with_secret:
            view["secret"] = definition["secret"]
        return view

    async def create(self, request: Request, role: Role) -> Answer:
        _, notifier = self._ready()
        body: SubscriptionBody = _decode(SubscriptionBody, await self.api._body(request))
        try:
            host = urlsplit(body.url).hostname
        except ValueError as error:
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"url: {error}")
        if not host:
            return 422, error_body(ErrorCode.INVALID_REQUEST, "url names no host")
        allowed = [name.strip() for name in os.environ.get(hosts_variable, "*").split(",") if name.strip()]
        if "*" not in allowed and host not in allowed:
            return 422, error_body(ErrorCode.INVALID_REQUEST, f"webhooks may post to {', '.join(allowed) or 'no host'} only ({hosts_variable})")
        machine = self.api.replica.machine
        definition: dict[str, Any] = {
            "url": body.url,
            "secret": body.secret or secrets.token_hex(32),
            "account_ids": sorted(set(body.account_ids)),
            "event_types": sorted(set(body.event_types)),
            "timeout_ms": body.timeout_ms,
            "threshold": None,
        }
        state = None
        start_seq = machine.seq + 1 if body.from_seq is None else body.from_seq
        if body.threshold is not None:
            account = machine.accounts.get(body.threshold.account_id)
            if account is None:
                return 422, error_body(ErrorCode.ACCOUNT_NOT_FOUND, "the threshold's account is not on this node", body.threshold.account_id)
            try:
                amount = parse_amount(body.threshold.amount, account.scale, signed=True)
            except AmountError as error:
                return 422, error_body(ErrorCode.INVALID_AMOUNT, str(error))
            definition["threshold"] = {
                "account_id": account.account_id,
                "amount": format_amount(amount, account.scale),
                "amount_minor": str(amount),
                "direction": body.threshold.direction,
            }
            if body.from_seq is None:
                state = account.available
            elif start_seq > 1:
                state = await notifier.source.available_at(account.account_id, start_seq - 1)
        subscription_id = f"wh-{secrets.token_hex(8)}"
        cursor = Cursor(start_seq - 1, state)
        await notifier.add(subscription_id, definition, cursor)
        return 200, self._view(subscription_id, definition, cursor, with_secret=True)

    async def list_all(self, request: Request, role: Role) -> Answer:
        store, _ = self._ready()
        found = await asyncio.to_thread(store.subscriptions)
        views = []
        for subscription_id, definition, created_ms in found:
            cursor = await asyncio.to_thread(store.cursor, subscription_id)
            views.append(self._view(subscription_id, {**definition, "created_ms": created_ms}, cursor))
        return 200, {"webhooks": views}

    async def get(self, request: Request, role: Role) -> Answer:
        store, _ = self._ready()
        subscription_id = request.path_params["subscription_id"]
        definition = await asyncio.to_thread(self._find, subscription_id)
        if definition is None:
            return 404, error_body(ErrorCode.WEBHOOK_NOT_FOUND, f"no webhook {subscription_id}")
        return 200, self._view(subscription_id, definition, await asyncio.to_thread(store.cursor, subscription_id))

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
        body: ReplayBody = _decode(ReplayBody, await self.api._body(request))
        definition = await asyncio.to_thread(self._find, subscription_id)
        if definition is None:
            return 404, error_body(ErrorCode.WEBHOOK_NOT_FOUND, f"no webhook {subscription_id}")
        cursor = await notifier.replay(subscription_id, definition, body.from_seq)
        return 200, self._view(subscription_id, definition, cursor)

    def routes(self) -> list[Route]:
        api = self.api
        reader, admin = Role.READER, Role.ADMIN
        # Handlers answer (status, body), which Api.route encodes like a Response.
        return [
            api.route("/v1/webhooks", "POST", admin, self.create),  # type: ignore[arg-type]
            api.route("/v1/webhooks", "GET", reader, self.list_all),  # type: ignore[arg-type]
            api.route("/v1/webhooks/{subscription_id}", "GET", reader, self.get),  # type: ignore[arg-type]
            api.route("/v1/webhooks/{subscription_id}", "DELETE", admin, self.delete),  # type: ignore[arg-type]
            api.route("/v1/webhooks/{subscription_id}/deliveries", "GET", reader, self.deliveries),  # type: ignore[arg-type]
            api.route("/v1/webhooks/{subscription_id}/replay", "POST", admin, self.replay),  # type: ignore[arg-type]
        ]
