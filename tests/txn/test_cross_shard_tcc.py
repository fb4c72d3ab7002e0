"""A client's TCC try with legs on several shards, over a real sharded node.

The try holds money on every participant; the client's confirm or cancel (by its own txn_id, as
on one shard) decides once at the commit point and finishes every shard; the client's timeout is
one deadline for the whole transaction; retries answer the original outcome; and a coordinator
that dies between any two of its steps leaves nothing the client's next call or the recovery task
cannot finish.
"""

import asyncio
import itertools
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.txn import coordinator as txn
from coffer.txn.coordinator import Coordinator
from coffer.txn.shard_map import ShardMap
from coffer.txn.shards import ShardClients, ShardUnavailable
from tests.txn.sharded_process import DedupIds, ShardedServer, ok, refused, running

dedup = DedupIds("xt")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedServer]:
    yield from running(tmp_path_factory, "cross-tcc", 2)


recovery_wait_s_max = 20.0


def _pair(node: ShardedServer, http: httpx.Client, name: str, deposit: str = "100", **fields: Any) -> tuple[str, str]:
    """An account on shard 0 holding ``deposit`` and an empty one on shard 1."""
    (a,) = node.ids_on(0, 1, f"{name}-a")
    (b,) = node.ids_on(1, 1, f"{name}-b")
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": a, "asset": "USD"}))
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": b, "asset": "USD", **fields}))
    ok(http.post("/v1/batch-operations", json={"dedup_id": dedup(), "legs": [{"account_id": a, "amount": deposit, "asset": "USD"}]}))
    return a, b


def _try_body(txn_id: str, a: str, b: str, amount: str, **fields: Any) -> dict[str, Any]:
    legs = [{"account_id": a, "amount": f"-{amount}", "asset": "USD"}, {"account_id": b, "amount": amount, "asset": "USD"}]
    return {"dedup_id": dedup(), "txn_id": txn_id, "legs": legs, **fields}


def _balances(http: httpx.Client, *ids: str) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    views = ok(http.get("/v1/accounts", params={"ids": ",".join(ids)}))["accounts"]
    return {key: (view["available"], view["pending_out"], view["pending_in"]) for key, view in views.items()}


def _settled(http: httpx.Client, a: str, b: str, expected: tuple[str, str]) -> None:
    """Wait until neither account holds anything pending, then compare the balances."""
    deadline = time.monotonic() + recovery_wait_s_max
    while True:
        found = _balances(http, a, b)
        if all(not out and not into for _, out, into in found.values()):
            break
        assert time.monotonic() < deadline, f"still pending: {found}"
        time.sleep(0.3)
    assert (found[a][0], found[b][0]) == expected


def test_try_then_confirm_moves_the_money_once(node: ShardedServer, http: httpx.Client) -> None:
    a, b = _pair(node, http, "confirm")
    body = _try_body("order-confirm", a, b, "30", timeout_s=600)
    tried = ok(http.post("/v1/tcc/try", json=body))
    assert tried["txn_id"] == "order-confirm" and set(tried["shard_seqs"]) == {"0", "1"}
    held = {view["account_id"]: view for view in tried["accounts"]}
    assert held[a]["available"] == "70.00" and list(held[a]["pending_out"].values()) == ["30.00"]
    assert list(held[b]["pending_in"].values()) == ["30.00"] and held[b]["available"] == "0.00"
    # Retries answer the original outcome; the txn_id or dedup_id reused for another try is refused.
    assert ok(http.post("/v1/tcc/try", json=body)) == tried
    refused(http.post("/v1/tcc/try", json={**body, "dedup_id": dedup()}), 409, "TXN_EXISTS")
    refused(http.post("/v1/tcc/try", json={**body, "timeout_s": 601}), 409, "DEDUP_ID_REUSED")
    view = ok(http.get("/v1/transactions/order-confirm"))
    assert view["state"] == "TRIED" and view["deadline"] is not None and view["participants"] == [0, 1]
    assert view["cross_shard_txn_id"].startswith("cx:")

    confirm = {"dedup_id": dedup(), "txn_id": "order-confirm"}
    confirmed = ok(http.post("/v1/tcc/confirm", json=confirm))
    assert {view["account_id"]: view["available"] for view in confirmed["accounts"]} == {a: "70.00", b: "30.00"}
    assert ok(http.post("/v1/tcc/confirm", json=confirm))["shard_seqs"] == confirmed["shard_seqs"]
    ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-confirm"}))  # changes nothing
    refused(http.post("/v1/tcc/cancel", json={"dedup_id": dedup(), "txn_id": "order-confirm"}), 409, "TXN_ALREADY_CONFIRMED")
    assert ok(http.post("/v1/tcc/try", json=body)) == tried
    assert _balances(http, a, b) == {a: ("70.00", {}, {}), b: ("30.00", {}, {})}
    view = ok(http.get("/v1/transactions/order-confirm"))
    assert view["state"] == "COMMITTED" and view["decision"]["commit"] is True
    assert {shard: part["state"] for shard, part in view["shards"].items() if part["state"]} == {"0": "CONFIRMED", "1": "CONFIRMED"}


def test_try_then_cancel_gives_the_money_back(node: ShardedServer, http: httpx.Client) -> None:
    a, b = _pair(node, http, "cancel")
    ok(http.post("/v1/tcc/try", json=_try_body("order-cancel", a, b, "40")))
    cancel = {"dedup_id": dedup(), "txn_id": "order-cancel"}
    cancelled = ok(http.post("/v1/tcc/cancel", json=cancel))
    assert {view["account_id"]: view["available"] for view in cancelled["accounts"]} == {a: "100.00", b: "0.00"}
    ok(http.post("/v1/tcc/cancel", json=cancel))
    refused(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-cancel"}), 409, "TXN_ALREADY_CANCELLED")
    assert _balances(http, a, b) == {a: ("100.00", {}, {}), b: ("0.00", {}, {})}
    assert ok(http.get("/v1/transactions/order-cancel"))["state"] == "ABORTED"


def test_a_rejected_try_holds_nothing_anywhere(node: ShardedServer, http: httpx.Client) -> None:
    a, b = _pair(node, http, "reject", upper_limit="5")
    body = _try_body("order-reject", a, b, "6")
    first = refused(http.post("/v1/tcc/try", json=body), 409, "UPPER_LIMIT_EXCEEDED")
    assert http.post("/v1/tcc/try", json=body).json()["error"] == first
    assert _balances(http, a, b) == {a: ("100.00", {}, {}), b: ("0.00", {}, {})}
    refused(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-reject"}), 409, "TXN_NOT_FOUND")
    # Preconditions travel with the try of their shard, as for a batch operation.
    failing = _try_body("order-precondition", a, b, "1", preconditions=[{"account_id": b, "min_balance": "1"}])
    refused(http.post("/v1/tcc/try", json=failing), 409, "PRECONDITION_FAILED")
    passing = _try_body("order-precondition-2", a, b, "1", preconditions=[{"account_id": a, "expected_balance": "100"}])
    ok(http.post("/v1/tcc/try", json=passing))
    ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-precondition-2"}))
    assert _balances(http, a, b) == {a: ("99.00", {}, {}), b: ("1.00", {}, {})}


def test_the_client_timeout_is_one_deadline_for_every_shard(node: ShardedServer, http: httpx.Client) -> None:
    a, b = _pair(node, http, "deadline")
    ok(http.post("/v1/tcc/try", json=_try_body("order-expires", a, b, "10", timeout_s=1)))
    ok(http.post("/v1/tcc/try", json=_try_body("order-waits", a, b, "20")))  # no timeout: held until the client says
    ok(http.post("/v1/tcc/try", json=_try_body("order-in-time", a, b, "5", timeout_s=30)))
    # Longer than the recovery's in-doubt bound: a client's try waiting for its confirm is left alone.
    time.sleep(txn.in_doubt_after_s + 2.0)
    refused(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-expires"}), 409, "TXN_ALREADY_CANCELLED")
    assert ok(http.get("/v1/transactions/order-expires"))["decision"]["reason_code"] == "TXN_ALREADY_CANCELLED"
    assert ok(http.get("/v1/transactions/order-waits"))["state"] == "TRIED"
    ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-waits"}))
    ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-in-time"}))
    assert _balances(http, a, b) == {a: ("75.00", {}, {}), b: ("25.00", {}, {})}


def test_an_expired_try_is_cancelled_without_the_client(node: ShardedServer, http: httpx.Client) -> None:
    a, b = _pair(node, http, "expiry")
    ok(http.post("/v1/tcc/try", json=_try_body("order-forgotten", a, b, "10", timeout_s=1)))
    _settled(http, a, b, ("100.00", "0.00"))
    assert ok(http.get("/v1/transactions/order-forgotten"))["state"] == "ABORTED"


class _CrashingShards:
    """Shard clients whose coordinator dies (raises) before its ``calls``-th call."""

    def __init__(self, shards: ShardClients, calls: int) -> None:
        self.inner = shards
        self.calls = calls
        self.count = shards.count

    def _step(self) -> None:
        if self.calls == 0:
            raise ShardUnavailable(-1, "the coordinator died")
        self.calls -= 1

    async def post(self, shard: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._step()
        return await self.inner.post(shard, path, body)

    async def get(self, shard: int, path: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        self._step()
        return await self.inner.get(shard, path, params)


def _crash_after(urls: list[str], calls: int, step: str, argument: Any) -> bool:
    """Run one coordinator step that dies after ``calls`` calls; True if it got to its end."""

    async def run() -> bool:
        shards = ShardClients(urls)
        try:
            coordinator = Coordinator(_CrashingShards(shards, calls), ShardMap.even(len(urls)))  # type: ignore[arg-type]
            try:
                if step == "try":
                    await coordinator.tcc_try(argument)
                else:
                    await coordinator.tcc_finish(argument, commit=step == "confirm")
            except ShardUnavailable:
                return False
            return True
        finally:
            await shards.close()

    return asyncio.run(run())


@pytest.mark.parametrize("finish", ["confirm", "cancel"])
def test_a_coordinator_crash_between_any_two_steps_is_recovered(node: ShardedServer, http: httpx.Client, finish: str) -> None:
    urls = [entry["url"] for entry in ok(http.get("/v1/shards"))["shards"]]
    expected = ("75.00", "25.00") if finish == "confirm" else ("100.00", "0.00")
    for calls in itertools.count():
        a, b = _pair(node, http, f"crash-try-{finish}-{calls}")
        txn_id = f"crash-try-{finish}-{calls}"
        body = _try_body(txn_id, a, b, "25")
        plan = txn.plan_tcc(body, ShardMap.even(2))
        assert plan is not None
        done = _crash_after(urls, calls, "try", plan)
        # The client, whose try had no answer, retries it, then confirms or cancels.
        ok(http.post("/v1/tcc/try", json=body))
        ok(http.post(f"/v1/tcc/{finish}", json={"dedup_id": dedup(), "txn_id": txn_id}))
        assert _balances(http, a, b) == {a: (expected[0], {}, {}), b: (expected[1], {}, {})}
        if done:
            break
    for calls in itertools.count():
        a, b = _pair(node, http, f"crash-finish-{finish}-{calls}")
        txn_id = f"crash-finish-{finish}-{calls}"
        ok(http.post("/v1/tcc/try", json=_try_body(txn_id, a, b, "25")))
        done = _crash_after(urls, calls, finish, txn_id)
        # Either the client's retry finishes it, or (once decided) recovery does on its own.
        if calls % 2 == 0:
            answer = http.post(f"/v1/tcc/{finish}", json={"dedup_id": dedup(), "txn_id": txn_id})
            assert answer.status_code == 200, answer.text
            assert _balances(http, a, b) == {a: (expected[0], {}, {}), b: (expected[1], {}, {})}
        else:
            decided = ok(http.get(f"/v1/transactions/{txn_id}"))["decision"] is not None
            if decided:
                _settled(http, a, b, expected)
            else:
                ok(http.post(f"/v1/tcc/{finish}", json={"dedup_id": dedup(), "txn_id": txn_id}))
                assert _balances(http, a, b) == {a: (expected[0], {}, {}), b: (expected[1], {}, {})}
        if done:
            break


def test_kill_9_between_try_and_confirm(tmp_path: Path) -> None:
    node = ShardedServer(tmp_path / "data", 2)
    node.start()
    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            a, b = _pair(node, http, "kill")
            tried = ok(http.post("/v1/tcc/try", json=_try_body("order-kill", a, b, "12.50", timeout_s=600)))
            expiring = ok(http.post("/v1/tcc/try", json=_try_body("order-kill-expiring", a, b, "1", timeout_s=2)))
            assert tried["txn_id"] == "order-kill" and expiring["txn_id"] == "order-kill-expiring"
        node.kill()
        node.start()
        with httpx.Client(base_url=node.url, timeout=30) as http:
            assert ok(http.get("/v1/transactions/order-kill"))["state"] == "TRIED"
            ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "order-kill"}))
            _settled(http, a, b, ("87.50", "12.50"))
            assert sum(Decimal(available) for available, _, _ in _balances(http, a, b).values()) == Decimal(100)
    finally:
        node.stop()
