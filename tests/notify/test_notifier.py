"""The notifier against an in-memory event source, its real SQLite store and a real HTTP receiver on
loopback: signatures, retries with a doubling backoff up to its cap, the delivery log, the place
kept across a restart in the middle of retries, and no cursor left behind by a removal."""

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coffer.notify import notifier as notifier_module
from coffer.notify.matcher import Filter, Item, Threshold, matches
from coffer.notify.notifier import Notifier, signature, verify
from coffer.notify.store import Cursor, NotifyStore

secret = "s3cret"


class Source:
    """One shard of events, all of them touching ``alice``."""

    def __init__(self, count: int) -> None:
        self.shards = [0]
        self.items = [Item(seq, "transferred", {"alice": 100 - seq}, {"seq": seq, "type": "transferred"}) for seq in range(1, count + 1)]

    async def read(self, shard: int, from_seq: int, limit: int) -> list[Item]:
        return [item for item in self.items if item.seq >= from_seq][:limit]

    async def available_at(self, shard: int, account_id: str, seq: int) -> int | None:
        return 100 - seq


class Receiver:
    """Fails the first ``failures`` posts with 500, then acknowledges; keeps what it acknowledged."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[int, bool]] = []  # (seq, signature valid)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    failing = receiver.failures > 0
                    receiver.failures -= 1
                    if not failing:
                        receiver.received.append((json.loads(body)["event"]["seq"], verify(secret, self.headers["x-coffer-signature"], body)))
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seqs(self) -> list[int]:
        with self.lock:
            return [seq for seq, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(0)
    yield found
    found.server.shutdown()
    found.server.server_close()


def definition(url: str) -> dict:
    return {"url": url, "secret": secret, "account_ids": ["alice"], "event_types": [], "timeout_ms": 1000, "threshold": None}


async def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_signatures_refuse_another_body_secret_or_time() -> None:
    body = b'{"seq": 1}'
    header = signature(secret, 1_700_000_000_000, body)
    assert verify(secret, header, body, now_ms=1_700_000_000_000 + 1000)
    assert not verify(secret, header, b'{"seq": 2}', now_ms=1_700_000_000_000)
    assert not verify("other", header, body, now_ms=1_700_000_000_000)
    assert not verify(secret, header, body, now_ms=1_700_000_000_000 + notifier_module.signature_tolerance_ms + 1)  # a replayed old post
    assert not verify(secret, "t=abc,v1=00", body) and not verify(secret, "", body)


@pytest.mark.parametrize(
    ("direction", "previous", "current", "crossed"),
    [
        ("below", 60, 40, True),
        ("below", 50, 49, True),
        ("below", 49, 40, False),  # already below
        ("below", 40, 60, False),
        ("above", 40, 60, True),
        ("above", 50, 51, True),
        ("above", 51, 60, False),
        ("below", None, 40, False),  # no previous balance known: no crossing claimed
    ],
)
def test_threshold_crossings(direction: str, previous: int | None, current: int, crossed: bool) -> None:
    wanted = Filter(threshold=Threshold("alice", 50, direction))
    assert matches(Item(7, "transferred", {"alice": current}, {}), wanted, previous) == (crossed, current)
    assert matches(Item(8, "transferred", {"bob": 1}, {}), wanted, previous) == (False, previous)  # alice untouched: state kept


def test_retries_back_off_doubling_up_to_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier_module, "backoff_s_max", 0.2)
    receiver = Receiver(4)

    async def scenario() -> list[dict]:
        store = NotifyStore(tmp_path / "webhooks.sqlite")
        notifier = Notifier(store, Source(2), first_backoff_s=0.05)
        await notifier.start()
        await notifier.add("wh-1", definition(receiver.url), {0: Cursor(0, None)})
        await wait_until(lambda: store.cursors("wh-1") == {0: Cursor(2, None)})  # the cursor moves once acknowledged
        assert receiver.seqs() == [1, 2]
        await notifier.close()
        rows = store.deliveries("wh-1", 100)
        store.close()
        return rows[::-1]

    try:
        rows = asyncio.run(scenario())
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert [(row["seq"], row["attempt"], row["outcome"], row["http_status"]) for row in rows] == [
        (1, 1, "failed", 500),
        (1, 2, "failed", 500),
        (1, 3, "failed", 500),
        (1, 4, "failed", 500),
        (1, 5, "delivered", 200),
        (2, 1, "delivered", 200),
    ]
    waits_ms = [later["time_ms"] - earlier["time_ms"] for earlier, later in itertools.pairwise(rows[:5])]
    # 50, 100, 200, then the 200 ms cap (times are whole ms; a post itself takes a little).
    for waited, planned in zip(waits_ms, (50, 100, 200, 200), strict=True):
        assert planned - 1 <= waited < planned + 150, waits_ms
    assert all(valid for _, valid in receiver.received)


def test_a_restart_in_the_middle_of_retries_keeps_the_place(tmp_path: Path) -> None:
    receiver = Receiver(10**6)  # down until told otherwise

    async def scenario() -> None:
        store = NotifyStore(tmp_path / "webhooks.sqlite")
        first = Notifier(store, Source(3), first_backoff_s=0.01)
        await first.start()
        await first.add("wh-1", definition(receiver.url), {0: Cursor(0, None)})
        await wait_until(lambda: len(store.deliveries("wh-1", 100)) >= 3)
        await first.close()  # the node stops while event 1 is still being retried
        store.close()
        assert NotifyStore(tmp_path / "webhooks.sqlite").cursors("wh-1") == {0: Cursor(0, None)}
        with receiver.lock:
            receiver.failures = 0  # the receiver recovers
        store = NotifyStore(tmp_path / "webhooks.sqlite")
        second = Notifier(store, Source(3), first_backoff_s=0.01)
        await second.start()  # picks the subscription and its cursor up from disk
        await wait_until(lambda: len(receiver.seqs()) >= 3)
        await wait_until(lambda: store.cursors("wh-1") == {0: Cursor(3, None)})
        await second.close()
        store.close()

    try:
        asyncio.run(scenario())
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert receiver.seqs() == [1, 2, 3]


class SlowStore(NotifyStore):
    """A store whose first cursor write after ``hold`` is set waits for ``release`` (a slow disk)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    def save_cursor(self, subscription_id: str, shard: int, cursor: Cursor) -> None:
        if self.hold.is_set() and not self.held.is_set():
            self.held.set()
            self.release.wait(10)
        super().save_cursor(subscription_id, shard, cursor)


def test_a_removal_waits_for_a_cursor_write_under_way(tmp_path: Path, receiver: Receiver) -> None:
    async def scenario() -> dict:
        store = SlowStore(tmp_path / "webhooks.sqlite")
        notifier = Notifier(store, Source(1), first_backoff_s=0.01)
        await notifier.start()
        store.hold.set()
        await notifier.add("wh-1", definition(receiver.url), {0: Cursor(0, None)})
        await wait_until(store.held.is_set)  # event 1 delivered, its cursor write under way
        removing = asyncio.get_running_loop().create_task(notifier.remove("wh-1"))
        await asyncio.sleep(0.1)
        store.release.set()
        assert await removing
        await asyncio.sleep(0.1)  # a write still under way would land by now
        cursors = store.cursors("wh-1")
        await notifier.close()
        store.close()
        return cursors

    assert asyncio.run(scenario()) == {}  # no cursor of a removed subscription is written back
