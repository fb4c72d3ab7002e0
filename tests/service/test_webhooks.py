"""Webhooks against a real node and a real HTTP receiver on loopback that fails, times out and
recovers: every wanted event arrives, signed, in seq order, nothing lost — also across a kill -9
of the node — with every attempt in the delivery log; filters by account, type and threshold;
replay from a seq."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coffer import Client
from coffer.client import CofferError, Leg
from coffer.notify.notifier import verify
from tests.service.server_process import CofferServer

wait_s_max = 30.0


class Receiver:
    """A webhook receiver: answers per a script ("fail": 500, "hang": no answer in time), then 200."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.received: list[dict] = []  # acknowledged deliveries: body, headers, signature check
        self.attempts = 0
        self.lock = threading.Lock()
        self.secret = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.attempts += 1
                    action = receiver.script.pop(0) if receiver.script else "ok"
                if action == "hang":
                    time.sleep(1.0)
                    return
                if action == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append(
                        {
                            "body": json.loads(body),
                            "delivery": self.headers["x-coffer-delivery"],
                            "signed": verify(receiver.secret, self.headers["x-coffer-signature"], body),
                        }
                    )
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seqs(self) -> list[int]:
        with self.lock:
            return [item["body"]["event"]["seq"] for item in self.received]

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + wait_s_max
        while len(set(self.seqs())) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(set(self.seqs())) >= count, (self.seqs(), count)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_delivery_survives_failures_timeouts_and_a_kill_9(server: CofferServer, receiver: Receiver) -> None:
    alice, bob, other = fresh("alice"), fresh("bob"), fresh("other")
    with Client(server.url) as api:
        for account_id in (alice, bob, other):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=alice, amount="100", asset="USD"), Leg(account_id=other, amount="100", asset="USD")])
        created = api.request("POST", "/v1/webhooks", json={"url": receiver.url, "account_ids": [alice], "timeout_ms": 300})
        receiver.secret = created["secret"]
        receiver.script = ["fail", "fail", "hang", "fail"]
        expected = []
        for _ in range(12):
            expected.append(api.transfer(alice, bob, "1", "USD").seq)
            api.transfer(other, bob, "1", "USD")  # not alice's: never delivered
        receiver.wait_for(6)
    server.kill()  # mid-stream: the cursor on disk says where to go on
    server.start()
    with Client(server.url) as api:
        for _ in range(3):
            expected.append(api.transfer(alice, bob, "1", "USD").seq)
        receiver.wait_for(len(expected))
        seqs = receiver.seqs()
        # At least once, in order: the first time each seq arrives follows the history's order.
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == expected
        assert all(item["signed"] for item in receiver.received)
        assert all(item["delivery"] == f"{created['id']}:0:{item['body']['event']['seq']}" for item in receiver.received)
        assert all(alice in [account["account_id"] for account in item["body"]["event"]["accounts"]] for item in receiver.received)
        log = api.request("GET", f"/v1/webhooks/{created['id']}/deliveries", params={"limit": 1000})["deliveries"]
        failed = [row for row in log if row["outcome"] == "failed"]
        assert [row["http_status"] for row in failed[::-1][:4]] == [500, 500, None, 500]
        assert "no answer within 300 ms" in failed[::-1][2]["error"]
        assert [row["attempt"] for row in log[::-1][:5]] == [1, 2, 3, 4, 5]  # the first event took five attempts
        assert {row["seq"] for row in log if row["outcome"] == "delivered"} == set(expected)
        assert api.request("GET", f"/v1/webhooks/{created['id']}")["cursor_seq"] >= expected[-1]
        # Replay from the fourth event: they come again, in order.
        delivered_before = len(receiver.received)
        api.request("POST", f"/v1/webhooks/{created['id']}/replay", json={"from_seq": expected[3]})
        deadline = time.monotonic() + wait_s_max
        while len(receiver.received) < delivered_before + len(expected) - 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.seqs()[delivered_before:] == expected[3:]
        api.request("DELETE", f"/v1/webhooks/{created['id']}")
        with pytest.raises(CofferError) as gone:
            api.request("GET", f"/v1/webhooks/{created['id']}")
        assert (gone.value.status, gone.value.code) == (404, "WEBHOOK_NOT_FOUND")


def test_threshold_crossing_and_event_type_filters(server: CofferServer, receiver: Receiver) -> None:
    alice, bob = fresh("alice"), fresh("bob")
    with Client(server.url) as api:
        api.create_account(alice, "USD")
        api.create_account(bob, "USD")
        api.batch_operation([Leg(account_id=alice, amount="100", asset="USD")])
        low = api.request("POST", "/v1/webhooks", json={"url": receiver.url, "threshold": {"account_id": alice, "amount": "50", "direction": "below"}})
        locks = api.request("POST", "/v1/webhooks", json={"url": receiver.url, "event_types": ["account_locked"], "account_ids": [bob]})
        assert low["threshold"] == {"account_id": alice, "amount": "50.00", "direction": "below"} and "secret" in low
        crossings = []
        for amount, crosses in (("40", False), ("20", True), ("10", False), ("-", False), ("-", False), ("45", True)):
            if amount == "-":
                api.transfer(bob, alice, "30", "USD")  # 30 -> 60 (up: not "below"), then 60 -> 90
                continue
            result = api.transfer(alice, bob, amount, "USD")
            if crosses:
                crossings.append(result.seq)
        locked = api.lock_account(bob).seq
        receiver.wait_for(3)
        time.sleep(0.3)  # nothing else may come
        by_subscription: dict[str, list[int]] = {}
        for item in receiver.received:
            by_subscription.setdefault(item["body"]["subscription_id"], []).append(item["body"]["event"]["seq"])
        assert by_subscription[low["id"]] == crossings
        assert by_subscription[locks["id"]] == [locked]
        with pytest.raises(CofferError) as bad:
            api.request("POST", "/v1/webhooks", json={"url": "ftp://x", "account_ids": [alice]})
        assert bad.value.status == 422


def test_webhooks_through_the_client_and_the_cli(server: CofferServer, receiver: Receiver) -> None:
    from click.testing import CliRunner

    from coffer.cli import main

    alice = fresh("alice")
    with Client(server.url) as api:
        api.create_account(alice, "USD")
        api.batch_operation([Leg(account_id=alice, amount="10", asset="USD")])
    runner = CliRunner()
    added = runner.invoke(main, ["webhooks", "add", "--url", server.url, receiver.url, "--below", alice, "5", "--json"])
    assert added.exit_code == 0, added.output
    created = json.loads(added.stdout)
    receiver.secret = created["secret"]
    with Client(server.url) as api:
        crossing = api.batch_operation([Leg(account_id=alice, amount="-6", asset="USD")]).seq
        receiver.wait_for(1)
        assert receiver.seqs() == [crossing]
        assert [item["id"] for item in api.list_webhooks()].count(created["id"]) == 1
        assert api.webhook_deliveries(created["id"])[0]["outcome"] == "delivered"
        api.replay_webhook(created["id"], crossing)
        receiver.wait_for(1)
    listed = runner.invoke(main, ["webhooks", "list", "--url", server.url])
    assert listed.exit_code == 0 and created["id"] in listed.stdout
    log = runner.invoke(main, ["webhooks", "deliveries", "--url", server.url, created["id"]])
    assert log.exit_code == 0 and "delivered" in log.stdout
    removed = runner.invoke(main, ["webhooks", "remove", "--url", server.url, created["id"]])
    assert removed.exit_code == 0
    missing = runner.invoke(main, ["webhooks", "deliveries", "--url", server.url, "wh-0000000000000000"])
    assert missing.exit_code == 0 and "seq" in missing.stdout  # an unknown id has an empty log
