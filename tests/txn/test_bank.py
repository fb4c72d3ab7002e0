"""A bank test in the Jepsen style, across shards.

Writers move money between a fixed set of accounts on two shards (mostly across them) while a
reader reads every balance again and again. Reads of two shards are not one snapshot: a transfer
in flight may have left one shard and not yet arrived on the other. So each read's total may
differ from the bank's total by at most the money of the transfers in flight while it was read
(known from the writers' own request intervals), its ``pending_in`` never holds more than that,
and once the writers stop and nothing is in flight, the total is exact.
"""

import random
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx

from tests.txn.sharded_process import ShardedServer

opening = Decimal(500)
run_s = 4.0


def _money(view: dict) -> Decimal:
    return Decimal(view["available"]) + sum(Decimal(value) for section in ("reservations", "pending_out") for value in view[section].values())


def test_the_bank_total_holds_across_shards_while_money_moves(tmp_path: Path) -> None:
    node = ShardedServer(tmp_path / "data", 2)
    node.start()
    try:
        accounts = node.ids_on(0, 4, "bank0") + node.ids_on(1, 4, "bank1")
        ids = ",".join(accounts)
        with httpx.Client(base_url=node.url, timeout=30) as http:
            for account_id in accounts:
                assert http.post("/v1/accounts", json={"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "USD"}).status_code == 200
                legs = [{"account_id": account_id, "amount": str(opening), "asset": "USD"}]
                assert http.post("/v1/batch-operations", json={"dedup_id": f"fund-{account_id}", "legs": legs}).status_code == 200
        total = opening * len(accounts)
        flights: list[tuple[float, float, Decimal]] = []  # (sent, answered, amount) of every transfer
        flights_lock = threading.Lock()
        stop = threading.Event()

        def writer(number: int) -> None:
            rng = random.Random(number)
            with httpx.Client(base_url=node.url, timeout=30) as http:
                sequence = 0
                while not stop.is_set():
                    sequence += 1
                    source, target = rng.sample(accounts, 2)
                    amount = Decimal(rng.randrange(1, 5000)) / 100
                    body = {"dedup_id": f"bank-{number}-{sequence}", "from_account_id": source, "to_account_id": target, "amount": str(amount), "asset": "USD"}
                    sent = time.monotonic()
                    response = http.post("/v1/transfers", json=body)
                    assert response.status_code in (200, 409), response.text
                    with flights_lock:
                        flights.append((sent, time.monotonic(), amount))

        reads: list[tuple[float, float, Decimal, Decimal]] = []  # (start, end, total, pending_in)

        def reader() -> None:
            with httpx.Client(base_url=node.url, timeout=30) as http:
                while not stop.is_set():
                    start = time.monotonic()
                    views = http.get("/v1/accounts", params={"ids": ids}).json()["accounts"]
                    end = time.monotonic()
                    pending_in = sum(Decimal(value) for view in views.values() for value in view["pending_in"].values())
                    reads.append((start, end, sum(_money(view) for view in views.values()), pending_in))

        threads = [threading.Thread(target=writer, args=(number,)) for number in range(3)] + [threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        time.sleep(run_s)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert len(flights) > 30 and len(reads) > 10
        for start, end, seen, pending_in in reads:
            in_flight = sum(amount for sent, answered, amount in flights if sent <= end and answered >= start)
            assert abs(seen - total) <= in_flight, (seen, total, in_flight)
            assert pending_in <= in_flight
        with httpx.Client(base_url=node.url, timeout=30) as http:
            views = http.get("/v1/accounts", params={"ids": ids}).json()["accounts"]
        assert sum(_money(view) for view in views.values()) == total
        assert all(not view["pending_in"] and not view["pending_out"] for view in views.values())
    finally:
        node.stop()
