"""Flows and velocity limits over HTTP against a real node: a flow this code has never seen,
registered and run at runtime; versions; exactly-once runs; errors; a kill -9 during saga runs."""

import threading
import time
import uuid

import httpx
import pytest

from coffer import Client
from coffer.client import CofferError, Leg
from coffer.flows.files import library
from tests.service.server_process import CofferServer


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# A flow no module of this code base knows: loyalty points bought with cash at a rate, with a
# bonus that grows with the purchase, and a cap checked by the flow itself.
points_purchase = {
    "description": "Buy loyalty points with cash; a bonus growing with the purchase, up to 10% at 1000 EUR",
    "mode": "atomic",
    "params": {
        "buyer_cash": {"type": "account"},
        "buyer_points": {"type": "account"},
        "treasury_cash": {"type": "account"},
        "treasury_points": {"type": "account"},
        "cash": {"type": "amount", "asset": "EUR"},
        "points_per_unit": {"type": "decimal", "default": "12.5"},
    },
    "computed": [
        {"name": "base", "type": "decimal", "expr": "units(cash) * points_per_unit"},
        {"name": "bonus", "type": "decimal", "expr": "base * 10% * min(units(cash) / 1000, 1)"},
        {"name": "points", "type": "amount", "asset": "PTS", "expr": "base + bonus", "rounding": "floor"},
    ],
    "checks": [{"expr": "cash <= 1000", "message": "at most 1000 EUR of points at once"}],
    "steps": [
        {
            "name": "buy",
            "batch_operation": {
                "balanced": True,
                "legs": [
                    {"account": "{buyer_cash}", "debit": "cash"},
                    {"account": "{treasury_cash}", "credit": "cash"},
                    {"account": "{treasury_points}", "debit": "points"},
                    {"account": "{buyer_points}", "credit": "points", "metadata": {"run": "{run_id}"}},
                ],
            },
        }
    ],
}


@pytest.fixture
def accounts(server: CofferServer) -> dict[str, str]:
    ids = {role: fresh(role) for role in ("cash", "points", "tcash", "tpoints")}
    with Client(server.url) as api:
        api.create_account(ids["cash"], "EUR")
        api.create_account(ids["tcash"], "EUR")
        api.create_account(ids["points"], "PTS", scale=0)
        api.create_account(ids["tpoints"], "PTS", scale=0, lower_limit="-1000000000")
        api.batch_operation([Leg(account_id=ids["cash"], amount="500", asset="EUR")])
    return ids


def test_a_flow_never_seen_is_registered_and_run_over_http(server: CofferServer, accounts: dict[str, str]) -> None:
    name = fresh("points")
    with Client(server.url) as api:
        first = api.put_flow(name, points_purchase)
        assert first.version == 1 and first.name == name
        shown = api.get_flow(name)
        assert shown["version"] == 1 and shown["name"] == name and shown["mode"] == "atomic"
        # What GET answers, PUT takes back: a second version.
        changed = {**shown, "description": "version two"}
        assert api.put_flow(name, changed).version == 2
        assert api.get_flow(name, version=1)["description"] == points_purchase["description"]
        assert any(flow.name == name and flow.version == 2 for flow in api.list_flows())
        params = {"buyer_cash": accounts["cash"], "buyer_points": accounts["points"], "treasury_cash": accounts["tcash"], "treasury_points": accounts["tpoints"], "cash": "80.08"}
        run_id = fresh("run")
        run = api.run_flow(name, params, dedup_id=run_id)
        assert run.status == "SUCCEEDED" and run.version == 2, run
        # 80.08 * 12.5 = 1001; bonus 1001 * 10% * 0.08008 = 8.016008; floor(1009.016008) = 1009
        assert run.computed == {"base": "1001", "bonus": "8.016008", "points": "1009"}
        assert api.get_account(accounts["points"]).available == "1009"
        assert api.get_account(accounts["cash"]).available == "419.92"
        # Exactly once: the retry answers the same; other params under the same id are refused.
        assert api.run_flow(name, params, dedup_id=run_id) == run
        with pytest.raises(CofferError) as reused:
            api.run_flow(name, {**params, "cash": "1"}, dedup_id=run_id)
        assert reused.value.status == 409 and reused.value.code == "DEDUP_ID_REUSED"
        assert api.get_flow_run(run_id) == run
        # Version 1 on request; a dry run shows and applies nothing.
        dry = api.run_flow(name, {**params, "cash": "1"}, version=1, dry_run=True)
        assert dry.status == "DRY_RUN" and dry.steps[0]["command"]["legs"][0]["amount"] == "-1.00"
        assert api.get_account(accounts["cash"]).available == "419.92"
        with pytest.raises(CofferError) as check:
            api.run_flow(name, {**params, "cash": "1000.01"})
        assert (check.value.status, check.value.code) == (422, "FLOW_CHECK_FAILED")
        rejected = api.run_flow(name, {**params, "cash": "420"})
        assert rejected.status == "FAILED" and rejected.error is not None and rejected.error.code == "LOWER_LIMIT_EXCEEDED"
    # The registry and the runs are replicated state: a restart replays them.
    server.restart()
    with Client(server.url) as api:
        assert api.get_flow(name)["version"] == 2
        assert api.get_flow_run(run_id) == run


def test_flow_errors_over_http(server: CofferServer) -> None:
    with Client(server.url) as api:
        with pytest.raises(CofferError) as invalid:
            api.put_flow(fresh("bad"), {**points_purchase, "steps": [{"name": "x", "transfer": {"from": "{nope}", "to": "a", "amount": "cash"}}]})
        assert (invalid.value.status, invalid.value.code) == (422, "FLOW_INVALID")
        assert "steps[0].transfer.from: unknown name {nope}" in str(invalid.value)
        with pytest.raises(CofferError) as missing:
            api.run_flow(fresh("nothing"), {})
        assert (missing.value.status, missing.value.code) == (404, "FLOW_NOT_FOUND")
        with pytest.raises(CofferError) as no_run:
            api.get_flow_run(fresh("never"))
        assert (no_run.value.status, no_run.value.code) == (404, "FLOW_RUN_NOT_FOUND")
        name = fresh("points")
        api.put_flow(name, points_purchase)
        with pytest.raises(CofferError) as params:
            api.run_flow(name, {"cash": 5})
        assert params.value.status == 422 and "params" in str(params.value)


def test_ids_that_flows_and_transactions_derive_are_refused_from_clients(server: CofferServer) -> None:
    payer, shop, fees = fresh("payer"), fresh("shop"), fresh("fees")
    run_id = fresh("reserved-run")
    with Client(server.url) as api:
        api.put_flow("payment_with_fee", library()["payment_with_fee"])
        for account_id in (payer, shop, fees):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=payer, amount="100", asset="USD")])
    legs = [{"account_id": payer, "amount": "-10.00", "asset": "USD"}, {"account_id": shop, "amount": "9.70", "asset": "USD"}]
    legs.append({"account_id": fees, "amount": "0.30", "asset": "USD"})
    step_id = f"fl:{run_id}:pay"  # the dedup_id the run below gives its one command
    with httpx.Client(base_url=server.url) as http:

        def refused(answer: httpx.Response, prefix: str, name: str = "dedup_id") -> None:
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["code"] == "INVALID_REQUEST" and f"{name} " in error["message"] and f"starts with '{prefix}'" in error["message"]

        # Taken first by a client, the step's id would make the run replay the client's command.
        refused(http.post("/v1/batch-operations", json={"dedup_id": step_id, "legs": legs}), "fl:")
        refused(http.post("/v1/transfers", json={"dedup_id": f"fh:{'0' * 40}:pay", "from_account_id": payer, "to_account_id": shop, "amount": "1", "asset": "USD"}), "fh:")
        refused(http.post("/v1/reservations", json={"dedup_id": "cx:0:abc.try", "account_id": payer, "reservation_id": "r", "amount": "1"}), "cx:")
        refused(http.post("/v1/tcc/try", json={"dedup_id": fresh("try"), "txn_id": "cx:1:abc", "legs": legs}), "cx:", "txn_id")
        refused(http.post("/v1/tcc/cancel", json={"dedup_id": fresh("cancel"), "txn_id": "cx:1:abc"}), "cx:", "txn_id")
        refused(http.post(f"/v1/accounts/{payer}/lock", json={"dedup_id": f"fl:{run_id}:lock"}), "fl:")
        refused(http.post("/v1/flows/payment_with_fee/runs", json={"dedup_id": f"fl:{run_id}:x", "params": {}}), "fl:")
        refused(http.put(f"/v1/flows/{fresh('flow')}", json={**points_purchase, "dedup_id": "fh:mine"}), "fh:")
        mixed = http.post("/v1/commands", json={"commands": [
            {"type": "batch_operation", "dedup_id": step_id, "legs": legs},
            {"type": "finish_flow_run", "dedup_id": f"fl:{run_id}:finish", "run_id": run_id, "outcome": "{}"},
            {"type": "transfer", "dedup_id": fresh("ok"), "from_account_id": payer, "to_account_id": shop, "amount": "1", "asset": "USD"},
        ]})
        first, forged, fine = mixed.json()["results"]
        assert first["status"] == 422 and "starts with 'fl:'" in first["error"]["message"]
        assert forged["status"] == 422 and "starts with 'fl:'" in forged["error"]["message"]
        assert fine["status"] == 200
    with Client(server.url) as api:
        # The flow runner itself still uses them, and its run is the one that moves the money.
        params = {"payer": payer, "merchant": shop, "fee_account": fees, "asset": "USD", "amount": "10"}
        run = api.run_flow("payment_with_fee", params, dedup_id=run_id)
        assert run.status == "SUCCEEDED" and run.steps[0]["command"]["dedup_id"] == step_id
        assert [api.get_account(account_id).available for account_id in (payer, shop, fees)] == ["89.00", "10.70", "0.30"]
        # Naming a flow's command as the original of a compensation is reading the id, not taking it.
        undone = api.compensate(step_id, dedup_id=fresh("undo"))
        assert undone.compensation == "COMPENSATED"
        assert api.get_account(payer).available == "99.00"


def test_the_library_over_http(server: CofferServer) -> None:
    payer, shop, fees = fresh("payer"), fresh("shop"), fresh("fees")
    with Client(server.url) as api:
        for name, fields in library().items():
            api.put_flow(name, fields)
        for account_id in (payer, shop, fees):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=payer, amount="100", asset="USD")])
        run = api.run_flow("payment_with_fee", {"payer": payer, "merchant": shop, "fee_account": fees, "asset": "USD", "amount": "10"})
        assert run.status == "SUCCEEDED" and run.computed == {"fee": "0.30", "net": "9.70"}
        assert [api.get_account(account_id).available for account_id in (payer, shop, fees)] == ["90.00", "9.70", "0.30"]


def test_velocity_limits_over_http(server: CofferServer) -> None:
    alice, bob = fresh("alice"), fresh("bob")
    with Client(server.url) as api:
        api.create_account(alice, "USD")
        api.create_account(bob, "USD")
        api.batch_operation([Leg(account_id=alice, amount="100", asset="USD")])
        api.set_velocity_limits(alice, amount_per_day="25", debits_per_hour=2)
        view = api.get_account(alice)
        assert view.velocity is not None and view.velocity["amount_per_day"] == "25.00" and view.velocity["debits_per_hour"] == 2
        api.transfer(alice, bob, "20", "USD")
        with pytest.raises(CofferError) as capped:
            api.transfer(alice, bob, "5.01", "USD")
        assert (capped.value.status, capped.value.code, capped.value.account_id) == (409, "VELOCITY_LIMIT_EXCEEDED", alice)
        used = api.get_account(alice).velocity
        assert used is not None and used["used"]["day_amount"] == "20.00" and used["used"]["hour_debits"] == 1
        api.transfer(alice, bob, "5", "USD")
        with pytest.raises(CofferError):
            api.transfer(alice, bob, "0.01", "USD")  # the third debit this hour
        api.set_velocity_limits(alice)  # none: removed
        assert api.get_account(alice).velocity is None
        api.transfer(alice, bob, "50", "USD")
        with pytest.raises(CofferError) as bad:
            api.set_velocity_limits(alice, amount_per_day="0")
        assert bad.value.code == "INVALID_AMOUNT"


two_step_saga = {
    "mode": "saga",
    "params": {"a": {"type": "account"}, "b": {"type": "account"}, "c": {"type": "account"}, "x": {"type": "amount", "asset": "USD"}},
    "steps": [
        {"name": "first", "transfer": {"from": "{a}", "to": "{b}", "amount": "x"}, "compensation": "compensate"},
        {"name": "second", "transfer": {"from": "{b}", "to": "{c}", "amount": "x"}, "compensation": "compensate"},
        {"name": "third", "reserve": {"account": "{c}", "reservation_id": "r-{run_id}", "amount": "x"}},
    ],
}


def test_saga_runs_survive_a_kill_9_of_the_node(server: CofferServer) -> None:
    a, b, c, name = fresh("a"), fresh("b"), fresh("c"), fresh("saga")
    runs = 40
    with Client(server.url) as api:
        for account_id in (a, b, c):
            api.create_account(account_id, "USD")
        api.batch_operation([Leg(account_id=a, amount=str(runs), asset="USD")])
        api.put_flow(name, two_step_saga)
    params = {"a": a, "b": b, "c": c, "x": "1"}
    run_ids = [fresh("run") for _ in range(runs)]

    def send(run_ids: list[str]) -> None:
        with Client(server.url, timeout_s=2.0) as api:
            for run_id in run_ids:
                try:
                    api.run_flow(name, params, dedup_id=run_id)
                except CofferError:
                    return  # the node died under us

    threads = [threading.Thread(target=send, args=(run_ids[index::4],)) for index in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)
    server.kill()
    for thread in threads:
        thread.join()
    server.start()
    with Client(server.url) as api:
        for run_id in run_ids:  # every client comes back with its dedup_id
            assert api.run_flow(name, params, dedup_id=run_id).status == "SUCCEEDED"
        assert api.get_account(a).available == "0.00"
        assert api.get_account(b).available == "0.00"
        carol = api.get_account(c)
        assert carol.available == "0.00" and len(carol.reservations) == runs
        assert api.request("GET", "/v1/flows/runs")["runs"] == []
