"""History reads on a real node: balances as of a time, statements, cursor pages, the hierarchy.

The node answers them from its own event store with the code the query server also runs
(tests/query/test_query_app.py checks that both give the same answers). Event times come from
the node's own events, so the tests hold whatever the clock did.
"""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.service.server_process import CofferServer


def new_id(prefix: str = "reads") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def _module_api(_shared_server: CofferServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_shared_server.url, timeout=30.0) as client:
        yield client


@pytest.fixture
def api(server: CofferServer, _module_api: httpx.Client) -> httpx.Client:
    return _module_api


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return dict(error)


def command(api: httpx.Client, kind: str, **fields: Any) -> dict[str, Any]:
    (result,) = ok(api.post("/v1/commands", json={"commands": [{"type": kind, "dedup_id": new_id("d"), **fields}]}))["results"]
    assert result["status"] == 200, result
    return dict(result)


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.fixture
def story(api: httpx.Client) -> dict[str, Any]:
    """One account through create, deposit, transfer out, reserve, release; each event's seq and time."""
    alice, bob = new_id("alice"), new_id("bob")
    command(api, "create_account", account_id=alice, asset="USD")
    command(api, "create_account", account_id=bob, asset="USD")
    steps = [
        command(api, "batch_operation", legs=[{"account_id": alice, "amount": "100", "asset": "USD"}]),
        command(api, "transfer", from_account_id=alice, to_account_id=bob, amount="30.25", asset="USD"),
        command(api, "reserve", account_id=alice, reservation_id="r1", amount="10"),
        command(api, "release", account_id=alice, reservation_id="r1", amount="4"),
    ]
    history = ok(api.get(f"/v1/accounts/{alice}/history"))["versions"]
    return {"alice": alice, "bob": bob, "seqs": [step["seq"] for step in steps], "versions": history}


def test_an_account_as_of_a_time(api: httpx.Client, story: dict[str, Any]) -> None:
    alice = story["alice"]
    for version in story["versions"]:
        at = epoch_ms(version["time"])
        # The last event with time <= T: versions that share a millisecond show the later one.
        expected = max((other for other in story["versions"] if epoch_ms(other["time"]) <= at), key=lambda other: other["seq"])
        seen = ok(api.get(f"/v1/accounts/{alice}", params={"at_time": version["time"]}))
        assert (seen["version"], seen["available"], seen["reservations"]) == (
            expected["version"],
            expected["available"],
            expected["reservations"],
        )
        assert seen["seq"] >= expected["seq"]
        # The same instant as Unix seconds with a fraction.
        as_epoch = ok(api.get(f"/v1/accounts/{alice}", params={"at_time": f"{at // 1000}.{at % 1000:03d}"}))
        assert as_epoch == seen
    created = epoch_ms(story["versions"][0]["time"])
    expect_error(api.get(f"/v1/accounts/{alice}", params={"at_time": rfc3339(created - 1)}), 404, "ACCOUNT_NOT_FOUND")
    expect_error(api.get(f"/v1/accounts/{alice}", params={"at_time": "0"}), 404, "ACCOUNT_NOT_FOUND")
    latest = ok(api.get(f"/v1/accounts/{alice}"))
    future = ok(api.get(f"/v1/accounts/{alice}", params={"at_time": "4102444800"}))  # 2100-01-01
    assert future["version"] == latest["version"] and future["available"] == latest["available"] == "63.75"


def test_at_seq_and_at_time_refuse_each_other_and_bad_times(api: httpx.Client, story: dict[str, Any]) -> None:
    alice = story["alice"]
    both = {"at_seq": story["seqs"][0], "at_time": story["versions"][0]["time"]}
    expect_error(api.get(f"/v1/accounts/{alice}", params=both), 422, "INVALID_REQUEST")
    expect_error(api.get("/v1/accounts", params={"ids": alice, **both}), 422, "INVALID_REQUEST")
    for bad in ("yesterday", "2025-01-01", "2025-01-01T00:00:00", "-5", "1e9", ".5", "5.", "9" * 70):
        expect_error(api.get(f"/v1/accounts/{alice}", params={"at_time": bad}), 422, "INVALID_REQUEST")
    # at_seq on one account too; beyond the node's seq is 503, as for many accounts.
    first = ok(api.get(f"/v1/accounts/{alice}", params={"at_seq": story["seqs"][0]}))
    assert first["available"] == "100.00" and first["seq"] == story["seqs"][0]
    expect_error(api.get(f"/v1/accounts/{alice}", params={"at_seq": 2**62}), 503, "NOT_AVAILABLE")


def test_many_accounts_as_of_a_time(api: httpx.Client, story: dict[str, Any]) -> None:
    alice, bob = story["alice"], story["bob"]
    transfer_seq = story["seqs"][1]
    transfer_time = next(version["time"] for version in story["versions"] if version["seq"] == transfer_seq)
    answer = ok(api.get("/v1/accounts", params={"ids": f"{alice},{bob},{new_id('nobody')}", "at_time": transfer_time}))
    assert answer["seq"] >= transfer_seq
    assert answer["accounts"][alice]["available"] in ("69.75", "59.75", "63.75")  # same-millisecond later events
    assert answer["accounts"][bob]["available"] == "30.25"
    assert len(answer["missing"]) == 1
    created_ms = epoch_ms(story["versions"][0]["time"])
    before = ok(api.get("/v1/accounts", params={"ids": f"{alice},{bob}", "at_time": rfc3339(created_ms - 1)}))
    assert before["accounts"] == {} and before["missing"] == [alice, bob]


def test_statement_of_the_whole_history_and_of_a_period(api: httpx.Client, story: dict[str, Any]) -> None:
    alice = story["alice"]
    whole = ok(api.get(f"/v1/accounts/{alice}/statement"))
    assert whole["opening"] is None and whole["closing"]["available"] == "63.75"
    assert [change["type"] for change in whole["changes"]] == [
        "account_created",
        "balances_changed",
        "transferred",
        "reserved",
        "released",
    ]
    assert [change["available_delta"] for change in whole["changes"]] == ["0.00", "100.00", "-30.25", "-10.00", "4.00"]
    assert [change["available"] for change in whole["changes"]] == ["0.00", "100.00", "69.75", "59.75", "63.75"]
    assert whole["changes"][3]["reservations"] == {"r1": "10.00"} and whole["changes"][4]["reservations"] == {"r1": "6.00"}
    assert all(change["dedup_id"] for change in whole["changes"]) and whole["next"] is None
    assert whole["asset"] == "USD" and whole["scale"] == 2


def test_statement_pages_and_bounds(api: httpx.Client, story: dict[str, Any]) -> None:
    alice = story["alice"]
    whole = ok(api.get(f"/v1/accounts/{alice}/statement"))
    pages = []
    cursor = None
    while True:
        page = ok(api.get(f"/v1/accounts/{alice}/statement", params={"limit": 2, **({"cursor": cursor} if cursor else {})}))
        pages.append(page)
        assert page["opening"] == whole["opening"] and page["closing"] == whole["closing"]
        cursor = page["next"]
        if cursor is None:
            break
    assert [len(page["changes"]) for page in pages] == [2, 2, 1]
    assert [change for page in pages for change in page["changes"]] == whole["changes"]
    # A period by seq: from the transfer to the release (exclusive).
    transfer_seq, _, release_seq = story["seqs"][1:]
    period = ok(api.get(f"/v1/accounts/{alice}/statement", params={"from_seq": transfer_seq, "to_seq": release_seq}))
    assert period["opening"]["available"] == "100.00" and period["closing"]["available"] == "59.75"
    assert [change["type"] for change in period["changes"]] == ["transferred", "reserved"]
    assert (period["from_seq"], period["to_seq"]) == (transfer_seq, release_seq)
    # A period by time: from the transfer's time on (inclusive) gives the transfer first.
    transfer_time = next(version["time"] for version in story["versions"] if version["seq"] == transfer_seq)
    by_time = ok(api.get(f"/v1/accounts/{alice}/statement", params={"from_time": transfer_time}))
    assert by_time["changes"][0]["seq"] <= transfer_seq and by_time["from_seq"] <= transfer_seq
    assert by_time["changes"][-1]["type"] == "released"
    # An empty period: opening and closing are the same.
    empty = ok(api.get(f"/v1/accounts/{alice}/statement", params={"from_seq": transfer_seq, "to_seq": transfer_seq}))
    assert empty["changes"] == [] and empty["opening"] == empty["closing"]
    expect_error(api.get(f"/v1/accounts/{new_id('nobody')}/statement"), 404, "ACCOUNT_NOT_FOUND")


def test_cursor_pages_of_events_and_history(api: httpx.Client, story: dict[str, Any]) -> None:
    first_seq = story["versions"][0]["seq"]
    end_seq = story["seqs"][-1] + 1
    everything = ok(api.get("/v1/events", params={"from_seq": first_seq, "to_seq": end_seq}))
    assert everything["next"] is None
    paged: list[dict[str, Any]] = []
    params: dict[str, Any] = {"from_seq": first_seq, "to_seq": end_seq, "limit": 2}
    while True:
        page = ok(api.get("/v1/events", params=params))
        paged.extend(page["events"])
        if page["next"] is None:
            break
        params = {**params, "cursor": page["next"], "limit": 1 if len(paged) > 2 else 2}  # limit may change between pages
    assert paged == everything["events"]
    alice = story["alice"]
    versions = ok(api.get(f"/v1/accounts/{alice}/history"))
    assert versions["next"] is None and len(versions["versions"]) == 5
    page = ok(api.get(f"/v1/accounts/{alice}/history", params={"limit": 3}))
    rest = ok(api.get(f"/v1/accounts/{alice}/history", params={"limit": 3, "cursor": page["next"]}))
    assert rest["next"] is None and page["versions"] + rest["versions"] == versions["versions"]
    # from_seq / limit without a cursor still works, and says where to go on.
    plain = ok(api.get(f"/v1/accounts/{alice}/history", params={"from_seq": story["seqs"][1], "limit": 1}))
    assert [version["seq"] for version in plain["versions"]] == [story["seqs"][1]] and plain["next"]


def test_a_cursor_only_continues_its_own_question(api: httpx.Client, story: dict[str, Any]) -> None:
    alice, bob = story["alice"], story["bob"]
    events_cursor = ok(api.get("/v1/events", params={"from_seq": 1, "limit": 1}))["next"]
    history_cursor = ok(api.get(f"/v1/accounts/{alice}/history", params={"limit": 1}))["next"]
    statement_cursor = ok(api.get(f"/v1/accounts/{alice}/statement", params={"limit": 1}))["next"]
    assert events_cursor and history_cursor and statement_cursor
    refused = [
        api.get("/v1/events", params={"from_seq": 2, "limit": 1, "cursor": events_cursor}),  # other filters
        api.get("/v1/events", params={"from_seq": 1, "cursor": history_cursor}),  # another route
        api.get(f"/v1/accounts/{bob}/history", params={"cursor": history_cursor}),  # another account
        api.get(f"/v1/accounts/{alice}/history", params={"cursor": statement_cursor}),
        api.get(f"/v1/accounts/{alice}/statement", params={"cursor": history_cursor}),
        api.get(f"/v1/accounts/{alice}/history", params={"to_seq": 10**9, "cursor": history_cursor}),
        api.get("/v1/events", params={"cursor": "not-a-cursor"}),
        api.get("/v1/events", params={"cursor": "Yz" * 200}),
        api.get("/v1/events", params={"cursor": "YzEuMS5hYmM"}),  # well formed, wrong digest
    ]
    for response in refused:
        expect_error(response, 422, "INVALID_REQUEST")
    # The same question continues, whatever the limit.
    ok(api.get("/v1/events", params={"from_seq": 1, "limit": 5, "cursor": events_cursor}))


def test_the_hierarchy_on_the_node(api: httpx.Client, story: dict[str, Any]) -> None:
    alice, bob = story["alice"], story["bob"]
    root, team = new_id("root"), new_id("team")
    ok(api.post("/v1/hierarchy/nodes", json={"node_id": root, "children": [bob]}))
    node = ok(api.post("/v1/hierarchy/nodes", json={"node_id": team, "parent_id": root, "children": [alice]}))
    assert node == {"node_id": team, "parent_id": root, "children": [{"id": alice, "kind": "account"}]}
    assert ok(api.get(f"/v1/hierarchy/nodes/{root}"))["children"] == [
        {"id": bob, "kind": "account"},
        {"id": team, "kind": "node"},
    ]
    balance = ok(api.get(f"/v1/hierarchy/nodes/{root}/balance"))
    assert balance["available"] == {"USD": "94.00"}  # 63.75 + 30.25; the 6.00 reserved is not available
    assert [entry["node_id"] for entry in balance["nodes"]] == [root, team]
    assert balance["nodes"][1]["available"] == {"USD": "63.75"}
    only = ok(api.get(f"/v1/hierarchy/nodes/{root}/balance", params={"root_only": "true"}))
    assert len(only["nodes"]) == 1
    then = ok(api.get(f"/v1/hierarchy/nodes/{root}/balance", params={"at_seq": story["seqs"][0]}))
    assert then["available"] == {"USD": "100.00"} and then["seq"] == story["seqs"][0]
    expect_error(api.get(f"/v1/hierarchy/nodes/{new_id('none')}/balance"), 404, "ACCOUNT_NOT_FOUND")
    expect_error(
        api.post("/v1/hierarchy/nodes", json={"node_id": root, "parent_id": team, "children": [bob, team]}),
        409,
        "INVALID_REQUEST",
    )
    expect_error(
        api.post("/v1/hierarchy/nodes", json={"node_id": new_id("n"), "children": [new_id("ghost")]}), 409, "ACCOUNT_NOT_FOUND"
    )
    expect_error(api.post("/v1/hierarchy/nodes", json={"node_id": "bad id"}), 422, "INVALID_REQUEST")
    expect_error(api.get(f"/v1/hierarchy/nodes/{root}/balance", params={"at_seq": 2**62}), 503, "NOT_AVAILABLE")
