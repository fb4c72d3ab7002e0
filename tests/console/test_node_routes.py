"""The node routes behind the console, over real HTTP: search, whoami, audit verify, shards, pages."""

import sqlite3

import httpx
import pytest

from coffer import console
from coffer.client import Client, Leg
from tests.console.conftest import keys
from tests.service.server_process import CofferServer


def _get(node: CofferServer, path: str, role: str = "reader", **params: object) -> httpx.Response:
    return httpx.get(node.url + path, params=params, headers={"x-api-key": keys[role]}, timeout=30)


@pytest.fixture(scope="module")
def funded(keyed_node: CofferServer) -> CofferServer:
    with Client(keyed_node.url, api_key=keys["admin"]) as client:
        for account_id in ("search-alice", "search-alfred", "search-bob", "search-al"):
            client.create_account(account_id, "USD")
        client.batch_operation([Leg(account_id="search-alice", amount="100", asset="USD")])
        client.transfer("search-alice", "search-bob", "10", "USD")
    return keyed_node


def test_search_pages_through_the_ids_with_a_prefix(funded: CofferServer) -> None:
    first = _get(funded, "/v1/search/accounts", prefix="search-al", limit=2).json()
    assert [view["account_id"] for view in first["accounts"]] == ["search-al", "search-alfred"]
    assert first["next"] == "search-alfred" and first["seq"] >= 6
    second = _get(funded, "/v1/search/accounts", prefix="search-al", limit=2, after=first["next"]).json()
    assert [view["account_id"] for view in second["accounts"]] == ["search-alice"] and second["next"] is None
    assert second["accounts"][0]["available"] == "90.00"
    assert _get(funded, "/v1/search/accounts", prefix="nobody-").json()["accounts"] == []


@pytest.mark.parametrize(
    "params",
    [{"prefix": "bad prefix"}, {"prefix": "x" * 129}, {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"after": "a/b"}],
)
def test_search_refuses_malformed_parameters(funded: CofferServer, params: dict[str, str]) -> None:
    answer = _get(funded, "/v1/search/accounts", **params)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_REQUEST"


def test_whoami_names_the_role_and_key_id_of_each_key(keyed_node: CofferServer) -> None:
    for role in keys:
        who = _get(keyed_node, "/v1/whoami", role).json()
        assert who["role"] == role and len(who["key_id"]) == 12 and who["keys_required"]
    # Asked before signing in: no role, rather than a 401 (which a browser logs as an error).
    for headers in ({}, {"x-api-key": "not-a-key-of-this-node"}):
        answer = httpx.get(keyed_node.url + "/v1/whoami", headers=headers)
        assert answer.status_code == 200 and answer.json() == {"role": None, "key_id": None, "keys_required": True}


def test_audit_verify_answers_ok_then_finds_an_edited_event(tmp_path_factory: pytest.TempPathFactory) -> None:
    node = CofferServer(tmp_path_factory.mktemp("tampered") / "data")
    node.start()
    try:
        with Client(node.url) as client:
            client.create_account("v1", "USD")
            client.create_account("v2", "USD")
            client.batch_operation([Leg(account_id="v1", amount="5", asset="USD")])
            moved = client.transfer("v1", "v2", "1", "USD")
        verdict = httpx.get(node.url + "/v1/audit/verify", timeout=30).json()
        assert verdict["ok"] and verdict["seq"] == moved.seq == 4 and verdict["accounts_compared"] == 2, verdict
        with sqlite3.connect(node.data_dir / "events.sqlite3") as connection:
            connection.execute("UPDATE events SET hash = ? WHERE seq = 3", (b"\x01" * 32,))
        verdict = httpx.get(node.url + "/v1/audit/verify", timeout=30).json()
        assert not verdict["ok"] and verdict["first_bad_seq"] == 3, verdict
    finally:
        node.stop()


def test_a_node_of_one_shard_shows_itself_as_shard_zero(keyed_node: CofferServer) -> None:
    shards = _get(keyed_node, "/v1/shards").json()
    head = _get(keyed_node, "/v1/audit/head").json()
    (only,) = shards["shards"]
    assert shards["map"] is None and only["shard"] == 0 and only["ready"] is True
    assert only["head"]["seq"] >= 0 and set(only["head"]) >= set(head)


def test_metrics_count_answers_by_status_and_time_them(funded: CofferServer) -> None:
    _get(funded, "/v1/accounts/nobody-at-all")  # a 404
    text = _get(funded, "/metrics").text
    assert 'coffer_http_requests_total{method="GET",status="404"}' in text
    assert 'coffer_http_request_seconds_bucket{le="0.005",method="POST"}' in text
    for gauge in ("coffer_event_store_lag_events", "coffer_log_apply_lag_entries", "coffer_log_last_index", "coffer_checkpoint_diverged"):
        assert f"\n{gauge} " in text


def test_the_pages_and_their_files_are_served_with_a_strict_policy(keyed_node: CofferServer) -> None:
    names = console.asset_names()
    assert {"index.html", "console.js", "charts.js", "console.css", "docs.html", "docs.js"} <= set(names["console"])
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"} <= set(names["swagger-ui"])
    for path in ("/console", "/docs", "/console/assets/console.js", "/docs/assets/swagger-ui-bundle.js"):
        answer = httpx.get(keyed_node.url + path)  # no key: the pages load, their API calls need one
        assert answer.status_code == 200, path
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        again = httpx.get(keyed_node.url + path, headers={"if-none-match": answer.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(keyed_node.url + "/console/assets/../app.py").status_code == 404
    assert httpx.get(keyed_node.url + "/console/assets/nothing.js").status_code == 404
    assert httpx.get(keyed_node.url + "/console/assets/console.js").headers["content-type"].startswith("text/javascript")
