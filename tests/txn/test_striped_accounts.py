"""Striped accounts on a real sharded node: credits stay on the payer's shard, one balance, sweeps.

A node of 3 shards (``coffer serve --shards 3``); a striped account of 3 stripes has one on every
shard, one of 2 stripes leaves a shard without one.
"""

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from coffer.txn.stripes import definition_key, place, stripe_id
from tests.service.server_process import CofferServer
from tests.txn.sharded_process import DedupIds, ShardedServer, ok, refused, running

dedup = DedupIds("st-test")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedServer]:
    yield from running(tmp_path_factory, "striped", 3)


def _open(http: httpx.Client, account_id: str, deposit: str | None = None, **fields: Any) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": account_id, "asset": "USD", **fields}))
    if deposit is not None:
        legs = [{"account_id": account_id, "amount": deposit, "asset": "USD"}]
        ok(http.post("/v1/batch-operations", json={"dedup_id": dedup(), "legs": legs}))


def _transfer(http: httpx.Client, source: str, target: str, amount: str, dedup_id: str | None = None) -> httpx.Response:
    body = {"dedup_id": dedup_id or dedup(), "from_account_id": source, "to_account_id": target, "amount": amount, "asset": "USD"}
    return http.post("/v1/transfers", json=body)


def _stripes_of(node: ShardedServer, account_id: str, count: int) -> list[str]:
    return [stripe_id(account_id, number) for number in place(account_id, count, node.map)]


def _total(http: httpx.Client, ids: list[str]) -> Decimal:
    """Every unit of money on these accounts, wherever it sits (available, reserved, pending out)."""
    views = ok(http.get("/v1/accounts", params={"ids": ",".join(ids)}))["accounts"]
    total = Decimal(0)
    for view in views.values():
        sections = [view["reservations"], view["pending_out"]]
        total += Decimal(view["available"]) + sum(Decimal(amount) for section in sections for amount in section.values())
    return total


def test_credits_from_every_shard_stay_on_the_payers_shard_and_read_as_one_balance(node: ShardedServer, http: httpx.Client) -> None:
    created = ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "merchant", "asset": "USD", "stripes": 3}))
    stripes = _stripes_of(node, "merchant", 3)
    assert [entry["account_id"] for entry in created["stripes"]] == stripes
    assert sorted(entry["shard"] for entry in created["stripes"]) == [0, 1, 2]  # one stripe on every shard
    payers = [node.ids_on(shard, 1, f"payer-{shard}")[0] for shard in range(3)]
    for payer in payers:
        _open(http, payer, "100")
    for shard, payer in enumerate(payers):
        moved = ok(_transfer(http, payer, "merchant", f"{shard + 1}.25"))
        assert "txn_id" not in moved  # no two-phase commit: one shard took it
        (stripe,) = [entry["account_id"] for entry in created["stripes"] if entry["shard"] == shard]
        assert [(view["account_id"], view["shard"]) for view in moved["accounts"]] == [(payer, shard), (stripe, shard)]
    view = ok(http.get("/v1/accounts/merchant"))
    assert view["available"] == "6.75" and view["upper_limit"] is None
    assert definition_key not in view["metadata"]
    assert sorted((entry["shard"], entry["available"]) for entry in view["stripes"]) == [(0, "1.25"), (1, "2.25"), (2, "3.25")]
    many = ok(http.get("/v1/accounts", params={"ids": f"merchant,{payers[0]}"}))["accounts"]
    assert many["merchant"]["available"] == "6.75" and many[payers[0]]["available"] == "98.75"
    at_time = ok(http.get("/v1/accounts/merchant", params={"at_time": "2999-01-01T00:00:00Z"}))
    assert at_time["available"] == "6.75"
    error = refused(http.get("/v1/accounts/merchant", params={"at_seq": view["seq"]}), 422, "INVALID_REQUEST")
    assert "at_time or token" in error["message"]
    # An ordinary account that only mentions the key in a value reads as it is.
    _open(http, "mentions", metadata={"note": definition_key})
    plain = ok(http.get("/v1/accounts/mentions", params={"at_seq": ok(http.get("/v1/accounts/mentions"))["seq"]}))
    assert plain["metadata"] == {"note": definition_key} and "stripes" not in plain


def test_a_retry_reaches_the_same_stripe(node: ShardedServer, http: httpx.Client) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "two-stripes", "asset": "USD", "stripes": 2}))
    stripe_shards = {node.map.shard_of(stripe) for stripe in _stripes_of(node, "two-stripes", 2)}
    (bare_shard,) = set(range(3)) - stripe_shards
    (payer,) = node.ids_on(bare_shard, 1, "bare-payer")
    _open(http, payer, "50")
    dedup_id = dedup()
    first = ok(_transfer(http, payer, "two-stripes", "5", dedup_id))
    assert first["txn_id"].startswith("cx:")  # no stripe on the payer's shard: the dedup_id picks one, across shards
    assert ok(_transfer(http, payer, "two-stripes", "5", dedup_id)) == first
    assert ok(http.get("/v1/accounts/two-stripes"))["available"] == "5.00"
    (near_payer,) = node.ids_on(min(stripe_shards), 1, "near-payer")
    _open(http, near_payer, "50")
    near_id = dedup()
    near = ok(_transfer(http, near_payer, "two-stripes", "1", near_id))
    assert "txn_id" not in near and ok(_transfer(http, near_payer, "two-stripes", "1", near_id)) == near
    other = _transfer(http, near_payer, "two-stripes", "2", near_id)
    refused(other, 409, "DEDUP_ID_REUSED")
    assert ok(http.get("/v1/accounts/two-stripes"))["available"] == "6.00"


def test_what_a_striped_account_refuses(node: ShardedServer, http: httpx.Client) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "refuser", "asset": "USD", "stripes": 3}))
    (payer,) = node.ids_on(0, 1, "refusal-payer")
    _open(http, payer, "100")
    ok(_transfer(http, payer, "refuser", "10"))
    striped = "STRIPED_ACCOUNT"
    assert refused(_transfer(http, "refuser", payer, "1"), 422, striped)["account_id"] == "refuser"
    refused(http.post("/v1/reservations", json={"dedup_id": dedup(), "account_id": "refuser", "reservation_id": "r", "amount": "1"}), 422, striped)
    legs = [{"account_id": payer, "amount": "-1", "asset": "USD"}, {"account_id": "refuser", "amount": "1", "asset": "USD"}]
    refused(http.post("/v1/tcc/try", json={"dedup_id": dedup(), "txn_id": "t-striped", "legs": legs}), 422, striped)
    debit = [{"account_id": "refuser", "amount": "-1", "asset": "USD"}, {"account_id": payer, "amount": "1", "asset": "USD"}]
    refused(http.post("/v1/batch-operations", json={"dedup_id": dedup(), "legs": debit}), 422, striped)
    condition = [{"account_id": "refuser", "min_balance": "0"}]
    refused(http.post("/v1/batch-operations", json={"dedup_id": dedup(), "legs": legs, "preconditions": condition}), 422, striped)
    expected = {"dedup_id": dedup(), "from_account_id": payer, "to_account_id": "refuser", "amount": "1", "asset": "USD", "expected_to_balance": "10"}
    refused(http.post("/v1/transfers", json=expected), 422, striped)
    refused(http.post("/v1/accounts/refuser/limits", json={"dedup_id": dedup(), "upper_limit": "5"}), 422, striped)
    refused(http.post("/v1/accounts/refuser/lock", json={"dedup_id": dedup()}), 422, striped)
    refused(http.post("/v1/accounts/refuser/delete", json={"dedup_id": dedup()}), 422, striped)
    limited = {"dedup_id": dedup(), "account_id": "limited", "asset": "USD", "stripes": 2, "upper_limit": "100"}
    refused(http.post("/v1/accounts", json=limited), 422, striped)
    too_many = {"dedup_id": dedup(), "account_id": "many", "asset": "USD", "stripes": 1024}
    refused(http.post("/v1/accounts", json=too_many), 422, "INVALID_REQUEST")
    # A stripe's id is the router's to name: never a client's, in any command.
    stripe = _stripes_of(node, "refuser", 3)[0]
    assert "reserved" in refused(_transfer(http, stripe, payer, "1"), 422, "INVALID_REQUEST")["message"]
    refused(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "st:mine", "asset": "USD"}), 422, "INVALID_REQUEST")
    refused(_transfer(http, payer, "refuser", "1", "st:c:mine"), 422, "INVALID_REQUEST")
    assert ok(http.get(f"/v1/accounts/{stripe}"))["account_id"] == stripe  # reading one is fine
    # The same rules in a batch of commands: each item answered on its own.
    items = [
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": "refuser", "to_account_id": payer, "amount": "1", "asset": "USD"},
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": payer, "to_account_id": "refuser", "amount": "2", "asset": "USD"},
        {"type": "transfer", "dedup_id": dedup(), "from_account_id": stripe, "to_account_id": payer, "amount": "1", "asset": "USD"},
    ]
    results = ok(http.post("/v1/commands", json={"commands": items}))["results"]
    assert [(result["status"], result.get("error", {}).get("code")) for result in results] == [
        (422, striped),
        (200, None),
        (422, "INVALID_REQUEST"),
    ]
    assert results[1]["accounts"][1]["shard"] == 0  # the credit went to the stripe on the payer's shard
    assert ok(http.get("/v1/accounts/refuser"))["available"] == "12.00"


def test_many_stripes_share_the_shards_evenly(node: ShardedServer, http: httpx.Client) -> None:
    # 300 stripes on 3 shards: 100 on each, and a definition longer than one metadata value holds.
    created = ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "wide", "asset": "USD", "stripes": 300}))
    shards = [entry["shard"] for entry in created["stripes"]]
    assert [shards.count(shard) for shard in range(3)] == [100, 100, 100]
    assert len(created["accounts"][0]["metadata"]) > 1  # the record's definition, cut over several keys
    (payer,) = node.ids_on(1, 1, "wide-payer")
    _open(http, payer, "10")
    moved = ok(_transfer(http, payer, "wide", "4"))
    assert "txn_id" not in moved and moved["accounts"][1]["shard"] == 1
    view = ok(http.get("/v1/accounts/wide"))
    assert view["available"] == "4.00" and len(view["stripes"]) == 300 and view["metadata"] == {}
    full = {"dedup_id": dedup(), "account_id": "crowded", "asset": "USD", "stripes": 300, "metadata": {f"k{n}": "v" for n in range(31)}}
    assert "give at most" in refused(http.post("/v1/accounts", json=full), 422, "INVALID_REQUEST")["message"]
    mine = {"dedup_id": dedup(), "account_id": "forged", "asset": "USD", "metadata": {definition_key: "2:0,1"}}
    refused(http.post("/v1/accounts", json={**mine, "stripes": 2}), 422, "INVALID_REQUEST")


def test_a_sweep_moves_every_stripe_at_once_and_exactly_once(node: ShardedServer, http: httpx.Client) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "swept", "asset": "USD", "stripes": 3}))
    payers = [node.ids_on(shard, 1, f"sweep-payer-{shard}")[0] for shard in range(3)]
    (treasury,) = node.ids_on(1, 1, "treasury")
    for payer in payers:
        _open(http, payer, "40")
    _open(http, treasury)
    for shard, payer in enumerate(payers):
        ok(_transfer(http, payer, "swept", f"{10 * (shard + 1)}"))
    everything = [*payers, treasury, *_stripes_of(node, "swept", 3)]
    before = _total(http, everything)
    body = {"dedup_id": dedup(), "to_account_id": treasury}
    first = ok(http.post("/v1/accounts/swept/sweep", json=body))
    assert first["swept"] == "60.00" and first["txn_id"].startswith("cx:") and set(first["shard_seqs"]) == {"0", "1", "2"}
    assert ok(http.get(f"/v1/accounts/{treasury}", params={"token": first["token"]}))["available"] == "60.00"
    assert ok(http.get("/v1/accounts/swept", params={"token": first["token"]}))["available"] == "0.00"
    assert _total(http, everything) == before  # moved, not made
    # Money arriving after the sweep stays for the next one; a retry moves nothing again.
    ok(_transfer(http, payers[2], "swept", "5"))
    assert ok(http.post("/v1/accounts/swept/sweep", json=body)) == first
    assert ok(http.get(f"/v1/accounts/{treasury}"))["available"] == "60.00"
    other = http.post("/v1/accounts/swept/sweep", json={**body, "to_account_id": payers[0]})
    refused(other, 409, "DEDUP_ID_REUSED")
    second = ok(http.post("/v1/accounts/swept/sweep", json={"dedup_id": dedup(), "to_account_id": treasury}))
    assert second["swept"] == "5.00" and [view["shard"] for view in second["accounts"]] == [2, 1]
    empty_body = {"dedup_id": dedup(), "to_account_id": treasury}
    empty = ok(http.post("/v1/accounts/swept/sweep", json=empty_body))
    assert empty["swept"] == "0" and empty["accounts"] == []
    ok(_transfer(http, payers[0], "swept", "1"))
    assert ok(http.post("/v1/accounts/swept/sweep", json=empty_body)) == empty  # the same answer: it moved nothing
    assert _total(http, everything) == before
    # What a sweep refuses.
    refused(http.post("/v1/accounts/swept/sweep", json={"dedup_id": dedup(), "to_account_id": "swept"}), 422, "STRIPED_ACCOUNT")
    refused(http.post(f"/v1/accounts/{treasury}/sweep", json={"dedup_id": dedup(), "to_account_id": payers[0]}), 422, "INVALID_REQUEST")
    refused(http.post("/v1/accounts/nobody/sweep", json={"dedup_id": dedup(), "to_account_id": treasury}), 409, "ACCOUNT_NOT_FOUND")
    refused(http.post("/v1/accounts/swept/sweep", json={"dedup_id": "cx:x", "to_account_id": treasury}), 422, "INVALID_REQUEST")
    refused(http.post("/v1/accounts/swept/sweep", json={"dedup_id": dedup()}), 422, "INVALID_REQUEST")
    lost = http.post("/v1/accounts/swept/sweep", json={"dedup_id": dedup(), "to_account_id": "no-such-account"})
    assert refused(lost, 409, "ACCOUNT_NOT_FOUND")["account_id"] == "no-such-account"
    assert ok(http.get("/v1/accounts/swept"))["available"] == "1.00"  # an aborted sweep leaves every stripe as it was
    assert _total(http, everything) == before


def test_the_definition_outlives_the_router(node: ShardedServer, http: httpx.Client) -> None:
    ok(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "durable", "asset": "USD", "stripes": 3}))
    (payer,) = node.ids_on(2, 1, "durable-payer")
    _open(http, payer, "10")
    node.stop()
    node.start()
    with httpx.Client(base_url=node.url, timeout=30) as fresh:
        moved = ok(_transfer(fresh, payer, "durable", "3"))
        assert [view["shard"] for view in moved["accounts"]] == [2, 2]
        assert ok(fresh.get("/v1/accounts/durable"))["available"] == "3.00"


def test_a_single_node_refuses_stripes(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = CofferServer(tmp_path_factory.mktemp("single") / "data")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            striped = {"dedup_id": dedup(), "account_id": "m", "asset": "USD", "stripes": 2}
            assert "sharded node" in refused(http.post("/v1/accounts", json=striped), 422, "INVALID_REQUEST")["message"]
            _open(http, "plain")
            sweep = http.post("/v1/accounts/plain/sweep", json={"dedup_id": dedup(), "to_account_id": "m"})
            assert "not striped" in refused(sweep, 422, "INVALID_REQUEST")["message"]
            refused(http.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": "st:x", "asset": "USD"}), 422, "INVALID_REQUEST")
    finally:
        server.stop()


def test_the_client_and_the_cli_create_and_sweep_striped_accounts(node: ShardedServer, http: httpx.Client) -> None:
    from click.testing import CliRunner

    from coffer.cli import main
    from coffer.client import Client

    (payer,) = node.ids_on(0, 1, "client-payer")
    (treasury,) = node.ids_on(2, 1, "client-treasury")
    _open(http, payer, "20")
    _open(http, treasury)
    with Client(node.url) as client:
        created = client.create_account("client-striped", "USD", stripes=2)
        assert created.accounts[0].account_id == "client-striped"
        client.transfer(payer, "client-striped", "7", "USD")
        view = client.get_account("client-striped")
        assert view.available == "7.00" and view.stripes is not None and len(view.stripes) == 2
        dedup_id = dedup()
        swept = client.sweep("client-striped", treasury, dedup_id=dedup_id)
        assert swept.swept == "7.00" and client.sweep("client-striped", treasury, dedup_id=dedup_id).swept == "7.00"
    runner = CliRunner()
    environment = {"COFFER_URL": node.url}
    made = runner.invoke(main, ["account", "create", "cli-striped", "--asset", "USD", "--stripes", "3"], env=environment)
    assert made.exit_code == 0, made.output
    ok(_transfer(http, payer, "cli-striped", "2"))
    moved = runner.invoke(main, ["account", "sweep", "cli-striped", "--to", treasury], env=environment)
    assert moved.exit_code == 0, moved.output
    assert "swept: 2.00" in moved.stdout
    assert ok(http.get(f"/v1/accounts/{treasury}"))["available"] == "9.00"
    refused = runner.invoke(main, ["account", "create", "x", "--asset", "USD", "--stripes", "1"], env=environment)
    assert refused.exit_code != 0 and "--stripes" in refused.output
