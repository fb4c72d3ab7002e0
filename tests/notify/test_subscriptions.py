"""Creating a threshold subscription: its cursor and the balance it judges the next event against
come from one read, also when writes land between reading the shards' heads and the account (as
they can on a sharded node, where these are two requests)."""

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request

from coffer.notify.http import WebhookRoutes
from coffer.notify.store import Cursor


class Host:
    def __init__(self) -> None:
        self.data_dir = Path("/nonexistent")
        self.source: Any = None

    async def heads(self) -> dict[int, int]:
        return {0: 10, 1: 7}

    async def account(self, account_id: str) -> tuple[int, int, int, int]:
        return 1, 2, 4_000, 9  # two writes on shard 1 since its head was read: 40.00 as of seq 9


class Notifier:
    def __init__(self) -> None:
        self.added: dict[int, Cursor] = {}

    async def add(self, subscription_id: str, definition: dict[str, Any], cursors: dict[int, Cursor]) -> None:
        self.added = cursors


def post(body: dict[str, Any]) -> Request:
    data = msgspec.json.encode(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/webhooks", "headers": headers, "query_string": b""}, receive)


def test_a_threshold_starts_where_its_balance_was_read() -> None:
    routes = WebhookRoutes(Host(), None)  # type: ignore[arg-type]
    notifier = Notifier()
    routes.store, routes.notifier = object(), notifier  # type: ignore[assignment]
    body = {"url": "http://127.0.0.1:9/hook", "threshold": {"account_id": "alice", "amount": "50", "direction": "below"}}
    status, answer = asyncio.run(routes.create(post(body), None))  # type: ignore[arg-type]
    assert status == 200, answer
    assert notifier.added == {0: Cursor(10, None), 1: Cursor(9, 4_000)}
    assert answer["cursors"] == {"0": 10, "1": 9}
