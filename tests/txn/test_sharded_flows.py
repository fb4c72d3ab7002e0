"""Flows on a sharded node: the registry and run records on shard 0, a flow's batch across shards
becomes a cross-shard transaction by itself, a saga across shards, and exactly-once retries."""

from collections.abc import Iterator
from typing import Any

import pytest

from coffer import Client
from coffer.client import CofferError, Leg
from coffer.flows.files import library
from tests.txn.sharded_process import ShardedServer, running


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedServer]:
    yield from running(tmp_path_factory, "sharded-flows", 2)


def test_a_payment_across_shards_runs_as_one_transaction(node: ShardedServer) -> None:
    (payer,) = node.ids_on(0, 1, "fpayer")
    merchant, fees = node.ids_on(1, 2, "fshop")
    with Client(node.url) as api:
        for account_id in (payer, merchant, fees):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=payer, amount="100", asset="USD")])
        registered = api.put_flow("payment_with_fee", library()["payment_with_fee"])
        assert api.get_flow("payment_with_fee")["version"] == registered.version
        params = {"payer": payer, "merchant": merchant, "fee_account": fees, "asset": "USD", "amount": "50"}
        run = api.run_flow("payment_with_fee", params, dedup_id="sharded-pay-1")
        assert run.status == "SUCCEEDED", run
        assert run.steps[0].get("txn_id", "").startswith("cx:")  # the router made it a cross-shard transaction
        assert [api.get_account(account_id).available for account_id in (payer, merchant, fees)] == ["50.00", "48.55", "1.45"]
        assert api.run_flow("payment_with_fee", params, dedup_id="sharded-pay-1") == run
        assert api.get_flow_run("sharded-pay-1") == run
        with pytest.raises(CofferError) as reused:
            api.run_flow("payment_with_fee", {**params, "amount": "1"}, dedup_id="sharded-pay-1")
        assert reused.value.code == "DEDUP_ID_REUSED"
        failed = api.run_flow("payment_with_fee", {**params, "amount": "500"}, dedup_id="sharded-pay-2")
        assert failed.status == "FAILED" and failed.error is not None and failed.error.code == "LOWER_LIMIT_EXCEEDED"
        assert api.get_account(payer).available == "50.00"
        assert any(flow.name == "payment_with_fee" for flow in api.list_flows())


def test_a_withdrawal_saga_across_shards(node: ShardedServer) -> None:
    (wallet,) = node.ids_on(0, 1, "fwallet")
    (bank,) = node.ids_on(1, 1, "fbank")
    with Client(node.url) as api:
        api.create_account(wallet, "USD")
        api.create_account(bank, "USD", lower_limit="-1000")
        api.batch_operation([Leg(account_id=wallet, amount="100", asset="USD")])
        for name in ("withdrawal_reserve", "withdrawal_settle"):
            api.put_flow(name, library()[name])
        held = api.run_flow("withdrawal_reserve", {"wallet": wallet, "asset": "USD", "amount": "40", "withdrawal_id": "sh-w1"})
        assert held.status == "SUCCEEDED", held
        settle = {"wallet": wallet, "settlement": bank, "asset": "USD", "amount": "40", "withdrawal_id": "sh-w1"}
        settled = api.run_flow("withdrawal_settle", settle)
        assert settled.status == "SUCCEEDED", settled
        assert settled.steps[1].get("txn_id", "").startswith("cx:")
        assert [api.get_account(account_id).available for account_id in (wallet, bank)] == ["60.00", "40.00"]
        assert api.get_account(wallet).reservations == {}
        again = api.run_flow("withdrawal_settle", settle)  # a new run: the reservation is gone
        assert again.status == "FAILED" and again.error is not None and again.error.code == "RESERVATION_NOT_FOUND"
        assert api.get_account(bank).available == "40.00"


def test_velocity_limits_on_a_sharded_node(node: ShardedServer) -> None:
    (alice,) = node.ids_on(1, 1, "fvalice")
    (bob,) = node.ids_on(0, 1, "fvbob")
    with Client(node.url) as api:
        api.create_account(alice, "USD")
        api.create_account(bob, "USD")
        api.batch_operation([Leg(account_id=alice, amount="100", asset="USD")])
        api.set_velocity_limits(alice, amount_per_day="30")
        assert api.get_account(alice).velocity is not None
        # Across shards (raw: the client's CommandResult wants a log_index, which a cross-shard answer has not).
        body = {"from_account_id": alice, "to_account_id": bob, "asset": "USD"}
        api.request("POST", "/v1/transfers", json={**body, "dedup_id": "fv-1", "amount": "30"}, retry=True)  # the hold is the debit
        with pytest.raises(CofferError) as capped:
            api.request("POST", "/v1/transfers", json={**body, "dedup_id": "fv-2", "amount": "1"}, retry=True)
        assert capped.value.code == "VELOCITY_LIMIT_EXCEEDED"
        assert api.get_account(bob).available == "30.00"


def test_webhooks_follow_every_shard(node: ShardedServer) -> None:
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from coffer.notify.notifier import verify

    received: list[dict] = []
    failures = ["fail", "fail"]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if failures:
                failures.pop()
                self.send_response(503)
                self.end_headers()
                return
            received.append({"body": json.loads(body), "signature": self.headers["x-coffer-signature"], "raw": body})
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (left,) = node.ids_on(0, 1, "whleft")
        (right,) = node.ids_on(1, 1, "whright")
        with Client(node.url) as api:
            for account_id in (left, right):
                api.create_account(account_id, "USD")
            created = api.create_webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", account_ids=[left, right])
            assert set(created["cursors"]) == {"0", "1"}
            api.batch_operation([Leg(account_id=left, amount="10", asset="USD")])  # shard 0
            api.batch_operation([Leg(account_id=right, amount="10", asset="USD")])  # shard 1
            api.batch_operation([Leg(account_id=left, amount="5", asset="USD")])  # shard 0
            deadline = time.monotonic() + 30
            while len({item["body"]["delivery_id"] for item in received}) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            by_shard: dict[int, list[int]] = {}
            for item in received:
                assert verify(created["secret"], item["signature"], item["raw"])
                by_shard.setdefault(item["body"]["shard"], []).append(item["body"]["event"]["seq"])
            assert sorted(by_shard) == [0, 1] and len(by_shard[0]) == 2 and by_shard[0] == sorted(by_shard[0])
            log = api.webhook_deliveries(created["id"])
            assert {row["shard"] for row in log} == {0, 1} and any(row["outcome"] == "failed" for row in log)
            api.delete_webhook(created["id"])
    finally:
        server.shutdown()
        server.server_close()


def test_the_router_refuses_the_ids_flows_and_transactions_derive(node: ShardedServer) -> None:
    import httpx

    (payer,) = node.ids_on(0, 1, "rpayer")
    merchant, fees = node.ids_on(1, 2, "rshop")
    (near,) = node.ids_on(0, 1, "rnear")
    with Client(node.url) as api:
        for account_id in (payer, merchant, fees, near):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=payer, amount="100", asset="USD")])
        api.put_flow("payment_with_fee", library()["payment_with_fee"])
    step_id = "fl:sharded-reserved-1:pay"
    with httpx.Client(base_url=node.url, timeout=30) as http:
        one_shard = {"from_account_id": payer, "to_account_id": near, "amount": "1", "asset": "USD"}
        for dedup_id in (step_id, f"fh:{'0' * 40}:pay", "cx:0:abc.try"):
            answer = http.post("/v1/transfers", json={**one_shard, "dedup_id": dedup_id})
            assert answer.status_code == 422 and f"starts with '{dedup_id[:3]}'" in answer.json()["error"]["message"]
        # /v1/commands: the items that would go straight to their shard are checked too.
        results = http.post(
            "/v1/commands",
            json={"commands": [{"type": "transfer", "dedup_id": step_id, **one_shard}, {"type": "transfer", "dedup_id": "r-fine-1", **one_shard}]},
        ).json()["results"]
        assert results[0]["status"] == 422 and "starts with 'fl:'" in results[0]["error"]["message"]
        assert results[1]["status"] == 200
        answer = http.post("/v1/flows/payment_with_fee/runs", json={"dedup_id": "fh:x", "params": {}})
        assert answer.status_code == 422 and "starts with 'fh:'" in answer.json()["error"]["message"]
        answer = http.put("/v1/flows/r-flow", json={**library()["top_up"], "dedup_id": "fl:x"})
        assert answer.status_code == 422 and "starts with 'fl:'" in answer.json()["error"]["message"]
    with Client(node.url) as api:
        params = {"payer": payer, "merchant": merchant, "fee_account": fees, "asset": "USD", "amount": "10"}
        run = api.run_flow("payment_with_fee", params, dedup_id="sharded-reserved-1")
        assert run.status == "SUCCEEDED" and run.steps[0]["command"]["dedup_id"] == step_id
        assert [api.get_account(account_id).available for account_id in (payer, merchant, fees)] == ["89.00", "9.70", "0.30"]


def test_a_threshold_webhook_on_a_sharded_node(node: ShardedServer) -> None:
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"])))["event"]["seq"])
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (watched,) = node.ids_on(1, 1, "thwatched")
        (other,) = node.ids_on(1, 1, "thother")
        with Client(node.url) as api:
            api.create_account(watched, "USD")
            api.create_account(other, "USD")
            api.batch_operation([Leg(account_id=watched, amount="60", asset="USD")])
            created = api.create_webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", threshold={"account_id": watched, "amount": "50", "direction": "below"})
            assert set(created["cursors"]) == {"0", "1"}
            api.batch_operation([Leg(account_id=watched, amount="-5", asset="USD")])  # 55: not below
            crossing = api.batch_operation([Leg(account_id=watched, amount="-10", asset="USD")]).seq  # 45: crosses
            api.batch_operation([Leg(account_id=watched, amount="-1", asset="USD")])  # 44: already below
            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert received == [crossing]
            api.delete_webhook(created["id"])
    finally:
        server.shutdown()
        server.server_close()
def _saga(compensation: dict[str, Any] | str) -> dict[str, Any]:
    """Escrow then pay out, each a transfer that may cross shards; the first undone if the second fails."""
    return {
        "mode": "saga",
        "params": {"payer": {"type": "account"}, "escrow": {"type": "account"}, "merchant": {"type": "account"}, "amount": {"type": "amount", "asset": "USD"}},
        "steps": [
            {"name": "hold", "transfer": {"from": "{payer}", "to": "{escrow}", "amount": "amount"}, "compensation": compensation},
            {"name": "pay", "transfer": {"from": "{escrow}", "to": "{merchant}", "amount": "amount"}},
        ],
    }


@pytest.mark.parametrize("undo", ["transfer_back", "compensate"])
def test_a_saga_whose_steps_span_shards_compensates_across_shards(node: ShardedServer, undo: str) -> None:
    (payer,) = node.ids_on(0, 1, f"saga-payer-{undo}")
    (escrow,) = node.ids_on(1, 1, f"saga-escrow-{undo}")
    (merchant,) = node.ids_on(0, 1, f"saga-merchant-{undo}")
    compensation: dict[str, Any] | str = "compensate"
    if undo == "transfer_back":
        compensation = {"transfer": {"from": "{escrow}", "to": "{payer}", "amount": "amount"}}
    with Client(node.url) as api:
        api.create_account(payer, "USD")
        api.create_account(escrow, "USD")
        api.create_account(merchant, "USD", upper_limit="50")
        api.batch_operation([Leg(account_id=payer, amount="100", asset="USD")])
        api.put_flow(f"escrow_pay_{undo}", _saga(compensation))
        params = {"payer": payer, "escrow": escrow, "merchant": merchant, "amount": "30"}
        paid = api.run_flow(f"escrow_pay_{undo}", params, dedup_id=f"saga-ok-{undo}")
        assert paid.status == "SUCCEEDED", paid
        assert all(step.get("txn_id", "").startswith("cx:") for step in paid.steps)  # both steps crossed shards
        # The second payment would take the merchant over its limit: the hold is undone across shards.
        failed = api.run_flow(f"escrow_pay_{undo}", params, dedup_id=f"saga-undo-{undo}")
        assert failed.status == "COMPENSATED", failed
        assert failed.error is not None and failed.error.code == "UPPER_LIMIT_EXCEEDED"
        assert [api.get_account(account_id).available for account_id in (payer, escrow, merchant)] == ["70.00", "0.00", "30.00"]
        assert api.run_flow(f"escrow_pay_{undo}", params, dedup_id=f"saga-undo-{undo}") == failed  # a retry answers the same
