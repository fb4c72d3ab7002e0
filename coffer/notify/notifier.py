"""Webhook delivery: follow the node's event store, post what each subscription wants, in seq order.

Why the event store and not the apply loop: delivery waits on other people's servers; the write
path must never wait on them. The notifier reads events once they are stored (the store's writer
thread, behind the apply loop), on the node's event loop but with every disk read and write in a
worker thread.

Per subscription and shard, one task: read the shard's events after the subscription's cursor there, judge each with its filter
(:mod:`coffer.notify.matcher`), and post each wanted one — retrying with exponential backoff
until the receiver answers 2xx — before the next, so a receiver sees each shard's events in seq
order (a sharded node's router follows every shard's history; shards are independent). The cursor moves (durably) only after the receiver acknowledged: at least once, never
lost, also across restarts. Every attempt is logged with its outcome. A replay moves the cursor
back to a seq.

Each post is signed: ``X-Coffer-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
(:func:`signature`, :func:`verify`); ``X-Coffer-Delivery`` is ``<subscription>:<shard>:<seq>``, the
same on every attempt, so a receiver can drop duplicates.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import msgspec

from coffer.core.events import EventRecord
from coffer.http.views import event_view
from coffer.notify.matcher import Filter, Item, Threshold, matches
from coffer.notify.store import Cursor, NotifyStore


def item_of(record: EventRecord) -> Item:
    """An event of a node's own store, as the matcher and the receiver see it."""
    event = record.decode()
    return Item(record.seq, event.type, {account.account_id: account.available for account in event.accounts}, event_view(record, event))

logger = logging.getLogger(__name__)

backoff_s = 0.2  # the first retry's wait; it doubles per failed attempt
backoff_s_max = 30.0  # a receiver down for long is tried twice a minute
poll_s = 0.05  # how often a caught-up subscription looks for new events
read_batch_max = 500  # events read from the store at a time
signature_tolerance_ms = 5 * 60 * 1000  # verify(): a signature older than this is refused (replays)

_encode = msgspec.json.Encoder().encode


def signature(secret: str, time_ms: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{time_ms}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={time_ms},v1={digest}"


def verify(secret: str, header: str, body: bytes, now_ms: int | None = None) -> bool:
    """A receiver's check of ``X-Coffer-Signature`` (constant time; refuses stale signatures)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "t" not in fields or "v1" not in fields or not fields["t"].isdigit():
        return False
    time_ms = int(fields["t"])
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - time_ms) > signature_tolerance_ms:
        return False
    return hmac.compare_digest(signature(secret, time_ms, body), header)


class EventSource(Protocol):
    """Where the events come from: a node's own store (one shard), or every shard of a sharded node."""

    shards: list[int]

    async def read(self, shard: int, from_seq: int, limit: int) -> list[Item]: ...

    async def available_at(self, shard: int, account_id: str, seq: int) -> int | None: ...


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    url: str
    secret: str
    filter: Filter
    timeout_ms: int

    @staticmethod
    def from_definition(subscription_id: str, definition: dict[str, Any]) -> "Subscription":
        threshold = definition.get("threshold")
        return Subscription(
            subscription_id,
            definition["url"],
            definition["secret"],
            Filter(
                frozenset(definition.get("account_ids", [])),
                frozenset(definition.get("event_types", [])),
                None if threshold is None else Threshold(threshold["account_id"], int(threshold["amount_minor"]), threshold["direction"]),
            ),
            definition["timeout_ms"],
        )


class Notifier:
    def __init__(self, store: NotifyStore, source: EventSource, *, first_backoff_s: float = backoff_s) -> None:
        self.store = store
        self.source = source
        self.first_backoff_s = first_backoff_s
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient()
        for subscription_id, definition, _ in await asyncio.to_thread(self.store.subscriptions):
            self._spawn(Subscription.from_definition(subscription_id, definition))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._http.aclose()

    def _spawn(self, subscription: Subscription) -> None:
        for shard in self.source.shards:
            name = f"coffer-webhook-{subscription.subscription_id}-{shard}"
            self._tasks[(subscription.subscription_id, shard)] = asyncio.get_running_loop().create_task(self._follow(subscription, shard), name=name)

    async def add(self, subscription_id: str, definition: dict[str, Any], cursors: dict[int, Cursor]) -> None:
        await asyncio.to_thread(self.store.add, subscription_id, definition, int(time.time() * 1000), cursors)
        self._spawn(Subscription.from_definition(subscription_id, definition))

    async def _stop(self, subscription_id: str) -> None:
        for key in [key for key in self._tasks if key[0] == subscription_id]:
            task = self._tasks.pop(key)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def remove(self, subscription_id: str) -> bool:
        await self._stop(subscription_id)
        return await asyncio.to_thread(self.store.remove, subscription_id)

    async def replay(self, subscription_id: str, definition: dict[str, Any], shard: int, from_seq: int) -> Cursor:
        """Deliver a shard's events again from ``from_seq`` on (a threshold restarts from the balance before it)."""
        await self._stop(subscription_id)
        subscription = Subscription.from_definition(subscription_id, definition)
        state = None
        if subscription.filter.threshold is not None and from_seq > 1:
            state = await self.source.available_at(shard, subscription.filter.threshold.account_id, from_seq - 1)
        cursor = Cursor(from_seq - 1, state)
        await asyncio.to_thread(self.store.save_cursor, subscription_id, shard, cursor)
        self._spawn(subscription)
        return cursor

    async def _follow(self, subscription: Subscription, shard: int) -> None:
        cursor = (await asyncio.to_thread(self.store.cursors, subscription.subscription_id)).get(shard, Cursor(0, None))
        while True:
            try:
                records = await self.source.read(shard, cursor.seq + 1, read_batch_max)
            except Exception as error:  # the store is busy or closing: try again
                logger.warning("webhook %s: reading events failed: %s", subscription.subscription_id, error)
                await asyncio.sleep(backoff_s_max / 10)
                continue
            if not records:
                await asyncio.sleep(poll_s)
                continue
            for item in records:
                wanted, state = matches(item, subscription.filter, cursor.state)
                cursor = Cursor(item.seq, state)
                if wanted:
                    await self._deliver(subscription, shard, item)
                    await self._save_cursor(subscription.subscription_id, shard, cursor)
            await self._save_cursor(subscription.subscription_id, shard, cursor)

    async def _save_cursor(self, subscription_id: str, shard: int, cursor: Cursor) -> None:
        """Write a cursor; a cancel (a replay, a removal, a stop) waits until the write has landed.

        The write runs in a worker thread that a cancel cannot stop: were the cancelled task to end
        first, the write could land after the replay's or the removal's own, and move the cursor
        back past the replayed events, or bring a removed subscription's cursor back.
        """
        saving = asyncio.ensure_future(asyncio.to_thread(self.store.save_cursor, subscription_id, shard, cursor))
        try:
            await asyncio.shield(saving)
        except asyncio.CancelledError:
            await asyncio.wait([saving])
            raise

    async def _deliver(self, subscription: Subscription, shard: int, item: Item) -> None:
        assert self._http is not None
        delivery_id = f"{subscription.subscription_id}:{shard}:{item.seq}"
        body = _encode({"subscription_id": subscription.subscription_id, "delivery_id": delivery_id, "shard": shard, "event": item.view})
        wait_s = self.first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            now_ms = int(time.time() * 1000)
            headers = {
                "content-type": "application/json",
                "x-coffer-signature": signature(subscription.secret, now_ms, body),
                "x-coffer-delivery": delivery_id,
                "x-coffer-attempt": str(attempt),
            }
            status: int | None = None
            error: str | None = None
            try:
                response = await self._http.post(subscription.url, content=body, headers=headers, timeout=subscription.timeout_ms / 1000)
                status = response.status_code
                if 200 <= status < 300:
                    await asyncio.to_thread(self.store.log, subscription.subscription_id, shard, item.seq, attempt, "delivered", status, None, now_ms)
                    return
                error = f"HTTP {status}"
            except httpx.TimeoutException:
                error = f"no answer within {subscription.timeout_ms} ms"
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"
            await asyncio.to_thread(self.store.log, subscription.subscription_id, shard, item.seq, attempt, "failed", status, error, now_ms)
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, backoff_s_max)
