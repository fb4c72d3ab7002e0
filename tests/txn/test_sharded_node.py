"""A sharded node over HTTP: routing, atomic movements across shards, exactly-once, and what it refuses."""

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.txn.sharded_process import DedupIds, ShardedServer, ok, running

dedup = DedupIds("sh")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedServer]:
    yield from running(tmp_path_factory, "sharded", 2)


def _open(http: httpx.Client, account_id: str, deposit: str | None = None, **fields: Any) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": account_id, "asset": "USD", **fields}))
    if deposit is not None:
        legs = [{"account_id": account_id, "amount": deposit, "asset": "USD"}]
        ok(http.post("/v1/batch-operations", json={"dedup_id": dedup(), "legs": legs}))


def _money(view: dict[str, Any]) -> Decimal:
    sections = [view["reservations"], view["pending_out"]]
    return Decimal(view["available"]) + sum(Decimal(amount) for section in sections for amount in section.values())


def test_single_shard_commands_go_straight_to_their_shard(node: ShardedServer, http: httpx.Client) -> None:
    a, b = node.ids_on(1, 2, "one")
    _open(http, a, "100")
    _open(http, b)
    moved = ok(http.post("/v1/transfers", json={"dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": "1", "asset": "USD"}))
    assert [view["shard"] for view in moved["accounts"]] == [1, 1]
    assert "txn_id" not in moved  # no two-phase commit for one shard
    assert ok(http.get(f"/v1/accounts/{b}"))["available"] == "1.00"


def test_a_transfer_across_shards_is_atomic_and_exactly_once(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(0, 1, "cross-a")
    (b,) = node.ids_on(1, 1, "cross-b")
    _open(http, a, "100")
    _open(http, b)
    body = {"dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": "30.25", "asset": "USD"}
    first = ok(http.post("/v1/transfers", json=body))
    assert [(view["account_id"], view["available"], view["shard"]) for view in first["accounts"]] == [
        (a, "69.75", 0),
        (b, "30.25", 1),
    ]
    assert first["txn_id"].startswith("cx:") and set(first["shard_seqs"]) == {"0", "1"}
    again = ok(http.post("/v1/transfers", json=body))
    assert again == first  # a retry replays every step and moves nothing twice
    token = first["token"]
    assert token == ",".join(f"{shard}:{seq}" for shard, seq in sorted(first["shard_seqs"].items()))
    assert ok(http.get(f"/v1/accounts/{b}", params={"token": token}))["available"] == "30.25"
    too_far = ",".join(f"{shard}:{seq + 1000}" for shard, seq in first["shard_seqs"].items())
    assert http.get(f"/v1/accounts/{b}", params={"token": too_far}).status_code == 503
    assert http.get(f"/v1/accounts/{b}", params={"token": "x"}).status_code == 422
    views = ok(http.get("/v1/accounts", params={"ids": f"{a},{b}"}))
    assert {key: view["available"] for key, view in views["accounts"].items()} == {a: "69.75", b: "30.25"}
    assert set(views["seqs"]) == {"0", "1"}
    txn = ok(http.get(f"/v1/transactions/{first['txn_id']}"))
    assert txn["state"] == "COMMITTED" and txn["decision"]["commit"] is True
    assert {shard: part["state"] for shard, part in txn["shards"].items() if part["state"]} == {"0": "CONFIRMED", "1": "CONFIRMED"}
    # Reusing the dedup_id for another payload is refused, as on one shard.
    other = http.post("/v1/transfers", json={**body, "amount": "1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "DEDUP_ID_REUSED"


def test_a_rejected_cross_shard_command_changes_nothing_anywhere(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(0, 1, "rej-a")
    (b,) = node.ids_on(1, 1, "rej-b")
    _open(http, a, "10")
    _open(http, b, upper_limit="5")
    body = {"dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": "6", "asset": "USD"}
    answer = http.post("/v1/transfers", json=body)
    assert answer.status_code == 409 and answer.json()["error"] == {
        "code": "UPPER_LIMIT_EXCEEDED",
        "message": f"account {b} would go above its upper limit",
        "account_id": b,
    }
    assert http.post("/v1/transfers", json=body).json() == answer.json()  # the same rejection, for good
    views = ok(http.get("/v1/accounts", params={"ids": f"{a},{b}"}))["accounts"]
    assert (views[a]["available"], views[a]["pending_out"], views[b]["pending_in"]) == ("10.00", {}, {})


def test_a_batch_operation_across_shards_is_all_or_nothing_with_its_preconditions(node: ShardedServer, http: httpx.Client) -> None:
    a, c = node.ids_on(0, 2, "batch-a")
    (b,) = node.ids_on(1, 1, "batch-b")
    _open(http, a, "50")
    _open(http, b)
    _open(http, c)
    legs = [
        {"account_id": a, "amount": "-20", "asset": "USD"},
        {"account_id": b, "amount": "15", "asset": "USD"},
        {"account_id": c, "amount": "4", "asset": "USD"},  # 1.00 leaves the ledger: a fee withdrawn
    ]
    failing = {"dedup_id": dedup(), "legs": legs, "preconditions": [{"account_id": b, "expected_balance": "1"}]}
    answer = http.post("/v1/batch-operations", json=failing)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "PRECONDITION_FAILED"
    assert ok(http.get(f"/v1/accounts/{a}"))["available"] == "50.00"
    passing = {"dedup_id": dedup(), "legs": legs, "preconditions": [{"account_id": b, "expected_balance": "0"}]}
    done = ok(http.post("/v1/batch-operations", json=passing))
    assert [view["available"] for view in done["accounts"]] == ["30.00", "15.00", "4.00"]
    # A precondition on a shard the command moves nothing on cannot be held: refused up front.
    (lonely,) = node.ids_on(1, 1, "batch-lonely")
    _open(http, lonely)
    refused = http.post(
        "/v1/batch-operations",
        json={"dedup_id": dedup(), "legs": legs[:1] + legs[2:], "preconditions": [{"account_id": lonely, "min_balance": "0"}]},
    )
    assert refused.status_code == 422 and "precondition" in refused.json()["error"]["message"]


def test_money_is_conserved_over_cross_shard_traffic(node: ShardedServer, http: httpx.Client) -> None:
    accounts = node.ids_on(0, 3, "bank0") + node.ids_on(1, 3, "bank1")
    for account_id in accounts:
        _open(http, account_id, "100")
    for number in range(30):
        source, target = accounts[number % 6], accounts[(number * 5 + 1) % 6]
        if source == target:
            continue
        http.post("/v1/transfers", json={"dedup_id": dedup(), "from_account_id": source, "to_account_id": target, "amount": "7", "asset": "USD"})
    views = ok(http.get("/v1/accounts", params={"ids": ",".join(accounts)}))["accounts"]
    assert sum(_money(view) for view in views.values()) == Decimal(600)
    assert all(not view["pending_in"] and not view["pending_out"] for view in views.values())


def test_compensations_across_shards(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(0, 1, "comp-a")
    (b,) = node.ids_on(1, 1, "comp-b")
    _open(http, a, "10")
    _open(http, b)
    # Compensated before it arrived: the cross-shard original is then refused, for good.
    early = dedup()
    null = ok(http.post("/v1/compensations", json={"dedup_id": dedup(), "original_dedup_id": early}))
    assert null["compensation"] == "NULL_COMPENSATED"
    late = http.post("/v1/transfers", json={"dedup_id": early, "from_account_id": a, "to_account_id": b, "amount": "1", "asset": "USD"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "ALREADY_COMPENSATED"
    assert ok(http.get(f"/v1/accounts/{a}"))["available"] == "10.00"
    # A committed cross-shard original is undone by a reversing cross-shard transaction, once.
    moved = dedup()
    ok(http.post("/v1/transfers", json={"dedup_id": moved, "from_account_id": a, "to_account_id": b, "amount": "1", "asset": "USD"}))
    compensation = {"dedup_id": dedup(), "original_dedup_id": moved}
    undone = ok(http.post("/v1/compensations", json=compensation))
    assert undone["compensation"] == "COMPENSATED" and undone["txn_id"].startswith("cx:")
    assert {view["account_id"]: view["available"] for view in undone["accounts"]} == {a: "10.00", b: "0.00"}
    assert ok(http.post("/v1/compensations", json=compensation)) == undone
    again = http.post("/v1/compensations", json={"dedup_id": dedup(), "original_dedup_id": moved})
    assert again.status_code == 409 and again.json()["error"]["code"] == "ALREADY_COMPENSATED"
    assert ok(http.get(f"/v1/accounts/{a}"))["available"] == "10.00"
    # A single-shard original is compensated on its shard.
    (c,) = node.ids_on(0, 1, "comp-c")
    _open(http, c)
    single = dedup()
    ok(http.post("/v1/transfers", json={"dedup_id": single, "from_account_id": a, "to_account_id": c, "amount": "2", "asset": "USD"}))
    undone = ok(http.post("/v1/compensations", json={"dedup_id": dedup(), "original_dedup_id": single}))
    assert undone["compensation"] == "COMPENSATED"


def test_confirm_and_cancel_find_the_shard_of_a_single_shard_try(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(1, 1, "tcc-a")
    _open(http, a, "10")
    ok(http.post("/v1/tcc/try", json={"dedup_id": dedup(), "txn_id": "t-one", "legs": [{"account_id": a, "amount": "-3", "asset": "USD"}]}))
    confirmed = ok(http.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "t-one"}))
    assert confirmed["accounts"][0]["available"] == "7.00"
    missing = http.post("/v1/tcc/cancel", json={"dedup_id": dedup(), "txn_id": "t-none"})
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "TXN_NOT_FOUND"


def test_what_a_sharded_node_refuses(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(0, 1, "ref-a")
    (b,) = node.ids_on(1, 1, "ref-b")
    _open(http, a, "10")
    _open(http, b)
    legs = [{"account_id": a, "amount": "-1", "asset": "USD"}, {"account_id": b, "amount": "1", "asset": "USD"}]
    answer = http.post("/v1/tcc/try", json={"dedup_id": dedup(), "txn_id": "cx:t-two", "legs": legs})
    assert answer.status_code == 422 and "reserved" in answer.json()["error"]["message"]
    answer = http.post("/v1/tcc/try", json={"dedup_id": dedup(), "txn_id": "t-two", "legs": legs, "timeout_s": 0})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_REQUEST"
    answer = http.post("/v1/transfers", json={"dedup_id": "cx:mine", "from_account_id": a, "to_account_id": b, "amount": "1", "asset": "USD"})
    assert answer.status_code == 422 and "reserved" in answer.json()["error"]["message"]
    answer = http.get("/v1/events")
    assert answer.status_code == 422 and "shard=" in answer.json()["error"]["message"]
    assert ok(http.get("/v1/events", params={"shard": 1, "limit": 2}))["events"]
    assert ok(http.get("/v1/audit/head", params={"shard": 0}))["seq"] > 0
    shards = ok(http.get("/v1/shards"))
    assert shards["map"]["shards"] == 2 and all(entry["ready"] for entry in shards["shards"])


def test_commands_in_one_request_span_shards(node: ShardedServer, http: httpx.Client) -> None:
    (a,) = node.ids_on(0, 1, "mix-a")
    (b,) = node.ids_on(1, 1, "mix-b")
    commands = [
        {"type": "create_account", "dedup_id": dedup(), "account_id": a, "asset": "USD"},
        {"type": "create_account", "dedup_id": dedup(), "account_id": b, "asset": "USD"},
        {"type": "batch_operation", "dedup_id": dedup(), "legs": [{"account_id": a, "amount": "5", "asset": "USD"}]},
    ]
    results = ok(http.post("/v1/commands", json={"commands": commands}))["results"]
    assert [result["status"] for result in results] == [200, 200, 200]
    cross = [{"type": "transfer", "dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": "2", "asset": "USD"}]
    (result,) = ok(http.post("/v1/commands", json={"commands": cross}))["results"]
    assert result["status"] == 200 and result["txn_id"].startswith("cx:")


def test_a_data_directory_keeps_its_number_of_shards(node: ShardedServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "coffer", "serve", "--shards", "3", "--data-dir", str(node.data_dir), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode != 0 and "holds a ledger of 2 shards" in completed.stderr
    completed = subprocess.run(
        [sys.executable, "-m", "coffer", "serve", "--data-dir", str(node.data_dir), "--port", "1"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode != 0 and "sharded ledger" in completed.stderr


def test_the_router_reads_and_answers_msgpack_batches(node: ShardedServer, http: httpx.Client) -> None:
    import msgspec

    (a,) = node.ids_on(0, 1, "mp-a")
    (b,) = node.ids_on(1, 1, "mp-b")
    (c,) = node.ids_on(1, 1, "mp-c")
    _open(http, a, "100")
    _open(http, b, "10")  # its batch on shard 1 runs beside the cross-shard transfer: it has its own money
    _open(http, c)
    items = [
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": "2.50", "asset": "USD"},
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": b, "to_account_id": c, "amount": "1", "asset": "USD"},
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": a, "to_account_id": b, "amount": 1, "asset": "USD"},
    ]
    headers = {"content-type": "application/msgpack"}
    answer = http.post("/v1/commands", content=msgspec.msgpack.encode({"commands": items}), headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/msgpack", answer.content
    results = msgspec.msgpack.decode(answer.content)["results"]
    assert [result["status"] for result in results] == [200, 200, 422], results
    assert ok(http.get(f"/v1/accounts/{c}"))["available"] == "1.00"

    # Malformed MessagePack is a 422 in the documented shape, in MessagePack, from the router itself.
    repeated = b"\x81\xa8commands\x91\x82\xa4type\xablock_account\xa4type\xablock_account"
    bad_timestamp = b"\xc7\x03\xff\x00\x00\x00"  # msgspec raises ValidationError for it, not DecodeError
    for body in (b"\xc1", repeated, b"\x81\x01\x01", msgspec.msgpack.encode({"commands": []}), bad_timestamp):
        refused = http.post("/v1/commands", content=body, headers=headers)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/msgpack", refused.content
        assert msgspec.msgpack.decode(refused.content)["error"]["code"] == "INVALID_REQUEST"
    shapeless = http.post("/v1/commands", content=msgspec.msgpack.encode({"commands": "x"}), headers=headers)
    assert shapeless.status_code == 422 and msgspec.msgpack.decode(shapeless.content)["error"]["code"] == "INVALID_REQUEST"


def test_the_route_other_nodes_forward_through_reaches_only_the_shards_this_node_runs(node: ShardedServer, http: httpx.Client) -> None:
    # A node without API keys listens on loopback and trusts its callers, as its shard processes do.
    assert ok(http.get("/v1/internal/shards/1/readyz"))["status"] == "ready"
    (a,) = node.ids_on(1, 1, "fw")
    _open(http, a, "3")
    assert ok(http.get(f"/v1/internal/shards/1/v1/accounts/{a}"))["available"] == "3.00"
    # The shard holds no such account: the request went to shard 0 as it is, not to a's shard.
    assert http.get(f"/v1/internal/shards/0/v1/accounts/{a}").status_code == 404
    refused = http.get("/v1/internal/shards/2/readyz")
    assert refused.status_code == 503 and refused.headers["x-coffer-not-hosted"] == "1"


def test_forwarding_to_a_node_with_api_keys_needs_the_cluster_token(tmp_path: Path) -> None:
    admin_key = "k" * 32
    keyed = ShardedServer(tmp_path / "data", 2, {"COFFER_API_KEYS": f"admin:{admin_key}"})
    keyed.start()
    try:
        # Not even an admin key opens it: only a node of the cluster (none here, with no cluster secret).
        for headers in ({}, {"x-api-key": admin_key}, {"x-coffer-forward-token": "guess"}):
            answer = httpx.get(f"{keyed.url}/v1/internal/shards/0/readyz", headers=headers, timeout=10)
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "FORBIDDEN", answer.text
    finally:
        keyed.stop()
