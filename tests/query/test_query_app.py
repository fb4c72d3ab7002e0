"""``coffer query serve`` over real HTTP: the same answers as the node, from the store; hierarchy."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from coffer.query.sql_store import SqlStore
from tests.query.node_process import LoadedNode, project
from tests.service.server_process import free_port

reader_key = "reader-key-0123456789"
admin_key = "admin-key-0123456789"
start_s_max = 30.0


@dataclass
class QueryServer:
    url: str
    reader: httpx.Client
    admin: httpx.Client
    node: httpx.Client
    last_seq: int
    account_ids: list[str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, mixed_node: LoadedNode, new_dsn: Callable[[str], str]) -> Iterator[QueryServer]:
    store = SqlStore(new_dsn(request.param))
    project(mixed_node.url, store, mixed_node.last_seq)
    store.close()
    port = free_port()
    environment = {**os.environ, "COFFER_API_KEYS": f"reader:{reader_key},admin:{admin_key}"}
    command = [
        sys.executable,
        "-c",
        "from coffer.query.cli import query; query()",
        "serve",
        "--store",
        store.dsn,
        "--port",
        str(port),
    ]
    process = subprocess.Popen([*command, "--wait-s", "0.3", "--log-level", "warning"], env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_s_max
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "coffer query serve did not start"
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        with (
            httpx.Client(base_url=url, headers={"x-api-key": reader_key}, timeout=30.0) as reader,
            httpx.Client(base_url=url, headers={"x-api-key": admin_key}, timeout=30.0) as admin,
            httpx.Client(base_url=mixed_node.url, timeout=30.0) as node,
        ):
            yield QueryServer(url, reader, admin, node, mixed_node.last_seq, mixed_node.account_ids)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def test_history_is_the_nodes_history(served: QueryServer) -> None:
    for account_id in served.account_ids[:4] + served.account_ids[-2:]:
        path = f"/v1/accounts/{account_id}/history"
        assert _ok(served.reader.get(path)) == _ok(served.node.get(path))


def test_history_by_seq_and_by_time(served: QueryServer) -> None:
    account_id = served.account_ids[0]
    versions = _ok(served.reader.get(f"/v1/accounts/{account_id}/history"))["versions"]
    assert [version["version"] for version in versions] == list(range(1, len(versions) + 1))
    middle = versions[len(versions) // 2]
    by_seq = _ok(
        served.reader.get(f"/v1/accounts/{account_id}/history", params={"from_seq": middle["seq"], "to_seq": versions[-1]["seq"]})
    )
    assert by_seq["versions"] == [version for version in versions if middle["seq"] <= version["seq"] < versions[-1]["seq"]]
    by_time = _ok(served.reader.get(f"/v1/accounts/{account_id}/history", params={"from_time": middle["time"], "limit": 3}))
    assert by_time["versions"] == [version for version in versions if version["time"] >= middle["time"]][:3]


def test_events_page_through_the_whole_history(served: QueryServer) -> None:
    pages = []
    from_seq = 1
    while True:
        page = _ok(served.reader.get("/v1/events", params={"from_seq": from_seq, "limit": 97}))["events"]
        if not page:
            break
        pages.extend(page)
        from_seq = page[-1]["seq"] + 1
    assert [event["seq"] for event in pages] == list(range(1, served.last_seq + 1))
    assert pages[:200] == _ok(served.node.get("/v1/events", params={"limit": 200}))["events"]
    window = {"from_time": pages[10]["time"], "to_time": pages[-1]["time"]}
    assert _ok(served.reader.get("/v1/events", params=window)) == _ok(served.node.get("/v1/events", params=window))


def test_balances_of_many_accounts_as_of_one_seq(served: QueryServer) -> None:
    ids = ",".join([*served.account_ids, "nobody"])
    for seq in (1, served.last_seq // 3, served.last_seq):
        answer = _ok(served.reader.get("/v1/accounts", params={"ids": ids, "at_seq": seq}))
        assert answer == _ok(served.node.get("/v1/accounts", params={"ids": ids, "at_seq": seq}))
        assert "nobody" in answer["missing"]
    latest = _ok(served.reader.get("/v1/accounts", params={"ids": ids}))
    assert latest["seq"] == served.last_seq


def test_a_seq_the_store_has_not_reached_is_not_available(served: QueryServer) -> None:
    ahead = served.last_seq + 1
    _error(served.reader.get("/v1/accounts", params={"ids": served.account_ids[0], "at_seq": ahead}), 503, "NOT_AVAILABLE")
    _error(served.reader.get("/v1/events", params={"from_seq": 1, "to_seq": ahead + 1}), 503, "NOT_AVAILABLE")
    _error(served.reader.get(f"/v1/accounts/{served.account_ids[0]}/history", params={"min_seq": ahead}), 503, "NOT_AVAILABLE")
    assert _ok(served.reader.get("/v1/audit/head"))["seq"] == served.last_seq


def test_bad_questions_get_the_apis_errors(served: QueryServer) -> None:
    _error(served.reader.get("/v1/accounts/nobody/history"), 404, "ACCOUNT_NOT_FOUND")
    _error(served.reader.get("/v1/events", params={"limit": 0}), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/events", params={"limit": 10_001}), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/events", params={"from_time": "yesterday"}), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/accounts"), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/nothing"), 404, "INVALID_REQUEST")
    _error(httpx.get(f"{served.url}/v1/events"), 401, "UNAUTHORIZED")
    _error(served.reader.post("/v1/hierarchy/nodes", json={"node_id": "x", "children": []}), 403, "FORBIDDEN")


def _sum(accounts: dict[str, Any], ids: list[str]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for account_id in ids:
        if account_id in accounts:
            account = accounts[account_id]
            totals[account["asset"]] = totals.get(account["asset"], Decimal(0)) + Decimal(account["available"])
    return totals


def test_a_hierarchy_is_built_through_the_api_and_sums_its_subtree(served: QueryServer) -> None:
    usd = [account_id for account_id in served.account_ids if "-usd-" in account_id]
    btc = [account_id for account_id in served.account_ids if "-btc-" in account_id]
    _ok(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "h-root", "children": usd[:2]}))
    _ok(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "h-usd", "parent_id": "h-root", "children": usd[2:]}))
    made = _ok(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "h-btc", "parent_id": "h-root", "children": btc}))
    assert made == {
        "node_id": "h-btc",
        "parent_id": "h-root",
        "children": [{"id": account_id, "kind": "account"} for account_id in btc],
    }
    assert [child["id"] for child in _ok(served.reader.get("/v1/hierarchy/nodes/h-root"))["children"]] == [
        *usd[:2],
        "h-usd",
        "h-btc",
    ]

    for seq in (served.last_seq // 2, served.last_seq):
        accounts = _ok(served.node.get("/v1/accounts", params={"ids": ",".join(usd + btc), "at_seq": seq}))["accounts"]
        balance = _ok(served.reader.get("/v1/hierarchy/nodes/h-root/balance", params={"at_seq": seq}))
        assert balance["seq"] == seq
        assert {asset: Decimal(amount) for asset, amount in balance["available"].items()} == _sum(accounts, usd + btc)
        by_node = {entry["node_id"]: entry for entry in balance["nodes"]}
        assert list(by_node) == ["h-root", "h-usd", "h-btc"]
        assert {asset: Decimal(amount) for asset, amount in by_node["h-usd"]["available"].items()} == _sum(accounts, usd[2:])
        assert by_node["h-btc"]["parent_id"] == "h-root" and by_node["h-btc"]["depth"] == 1
        assert len(balance["available"]["BTC"].split(".")[1]) == 8  # the asset's scale, in full
    root_only = _ok(served.reader.get("/v1/hierarchy/nodes/h-root/balance", params={"root_only": "true"}))
    assert [entry["node_id"] for entry in root_only["nodes"]] == ["h-root"] and root_only["seq"] == served.last_seq


def test_hierarchy_changes_that_break_the_rules_are_rejected(served: QueryServer) -> None:
    account_id = served.account_ids[0]
    _ok(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "r-top", "children": []}))
    _ok(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "r-mid", "parent_id": "r-top", "children": []}))
    unknown = _error(
        served.admin.post("/v1/hierarchy/nodes", json={"node_id": "r-mid", "children": ["ghost"]}), 409, "ACCOUNT_NOT_FOUND"
    )
    assert unknown["account_id"] == "ghost"
    _error(
        served.admin.post("/v1/hierarchy/nodes", json={"node_id": "r-top", "parent_id": "r-mid", "children": ["r-mid"]}),
        409,
        "INVALID_REQUEST",
    )
    _error(served.admin.post("/v1/hierarchy/nodes", json={"node_id": account_id, "children": []}), 409, "INVALID_REQUEST")
    _error(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "r-x", "children": "a"}), 422, "INVALID_REQUEST")
    _error(served.admin.post("/v1/hierarchy/nodes", json={"node_id": "bad id", "children": []}), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/hierarchy/nodes/r-none/balance"), 404, "ACCOUNT_NOT_FOUND")
    _error(served.reader.get("/v1/hierarchy/nodes/r-top/balance", params={"at_seq": served.last_seq + 1}), 503, "NOT_AVAILABLE")
    _error(served.reader.get("/v1/hierarchy/nodes/r-top/balance", params={"root_only": "maybe"}), 422, "INVALID_REQUEST")
    assert _ok(served.reader.get("/v1/hierarchy/nodes/r-mid"))["children"] == []  # nothing changed


def _pages(client: httpx.Client, path: str, key: str, params: dict[str, Any]) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = _ok(client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        items.extend(page[key])
        cursor = page["next"]
        if cursor is None:
            return items


def test_pages_follow_next_to_the_end_as_on_the_node(served: QueryServer) -> None:
    events = _pages(served.reader, "/v1/events", "events", {"limit": 97})
    assert [event["seq"] for event in events] == list(range(1, served.last_seq + 1))
    first = _ok(served.reader.get("/v1/events", params={"limit": 97}))
    assert first == _ok(served.node.get("/v1/events", params={"limit": 97}))  # the same cursor too
    # A cursor of one server continues on the other: it names a position and a question, not a server.
    assert _ok(served.node.get("/v1/events", params={"limit": 97, "cursor": first["next"]}))["events"] == events[97:194]
    account_id = served.account_ids[0]
    path = f"/v1/accounts/{account_id}/history"
    assert _pages(served.reader, path, "versions", {"limit": 7}) == _pages(served.node, path, "versions", {"limit": 7})
    _error(served.reader.get(path, params={"cursor": first["next"]}), 422, "INVALID_REQUEST")


def test_balances_as_of_a_time_are_the_nodes(served: QueryServer) -> None:
    events = _ok(served.reader.get("/v1/events", params={"limit": 10_000}))["events"]
    ids = ",".join([*served.account_ids, "nobody"])
    for event in events[:: max(1, len(events) // 12)] + events[-1:]:
        answer = _ok(served.reader.get("/v1/accounts", params={"ids": ids, "at_time": event["time"]}))
        assert answer == _ok(served.node.get("/v1/accounts", params={"ids": ids, "at_time": event["time"]}))
        assert answer["seq"] >= event["seq"]
        for account in event["accounts"]:
            path = f"/v1/accounts/{account['account_id']}"
            assert _ok(served.reader.get(path, params={"at_time": event["time"]})) == _ok(
                served.node.get(path, params={"at_time": event["time"]})
            )
    account_id = served.account_ids[0]
    _error(served.reader.get(f"/v1/accounts/{account_id}", params={"at_time": "0"}), 404, "ACCOUNT_NOT_FOUND")
    both = {"at_time": "0", "at_seq": "1"}
    _error(served.reader.get(f"/v1/accounts/{account_id}", params=both), 422, "INVALID_REQUEST")
    _error(served.reader.get("/v1/accounts", params={"ids": account_id, **both}), 422, "INVALID_REQUEST")
    latest = _ok(served.reader.get(f"/v1/accounts/{account_id}"))
    assert latest == _ok(served.node.get(f"/v1/accounts/{account_id}"))


def test_statements_are_the_nodes(served: QueryServer) -> None:
    for account_id in served.account_ids[:3] + served.account_ids[-1:]:
        path = f"/v1/accounts/{account_id}/statement"
        whole = _ok(served.reader.get(path))
        assert whole == _ok(served.node.get(path))
        middle = whole["changes"][len(whole["changes"]) // 2]
        period = {"from_seq": whole["changes"][1]["seq"], "to_time": middle["time"]}
        assert _ok(served.reader.get(path, params=period)) == _ok(served.node.get(path, params=period))
        assert _pages(served.reader, path, "changes", {"limit": 3}) == whole["changes"]
        # The changes add up: opening + every delta = closing.
        opening = Decimal(whole["opening"]["available"]) if whole["opening"] else Decimal(0)
        assert opening + sum(Decimal(change["available_delta"]) for change in whole["changes"]) == Decimal(
            whole["closing"]["available"]
        )


def test_the_query_server_publishes_its_own_openapi_document(served: QueryServer) -> None:
    from coffer.server.openapi import query_openapi_document, query_server_routes

    document = httpx.get(f"{served.url}/openapi.json", timeout=10.0).json()  # no key needed
    assert document == query_openapi_document()
    assert {path: next(iter(item)) for path, item in document["paths"].items()} == query_server_routes
    for path, method in query_server_routes.items():
        if "{" in path or method != "get" or path == "/openapi.json":
            continue
        params = {"ids": served.account_ids[0]} if path == "/v1/accounts" else {}
        assert served.reader.get(path, params=params).status_code == 200, path
