"""The HTTP contract (docs/api.md) against a real server: every endpoint, every error code."""

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.server_process import CofferServer

_numbers = itertools.count(1)


def dedup() -> str:
    return f"api-{next(_numbers)}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = CofferServer(tmp_path_factory.mktemp("api") / "data")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.stop()


def create(api: httpx.Client, account_id: str, asset: str = "USD", **extra: Any) -> dict[str, Any]:
    response = api.post("/v1/accounts", json={"dedup_id": dedup(), "account_id": account_id, "asset": asset, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def fund(api: httpx.Client, account_id: str, amount: str, asset: str = "USD") -> dict[str, Any]:
    response = api.post(
        "/v1/batch-operations", json={"dedup_id": dedup(), "legs": [{"account_id": account_id, "amount": amount, "asset": asset}]}
    )
    assert response.status_code == 200, response.text
    return response.json()


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


def test_account_lifecycle_and_views(api: httpx.Client) -> None:
    created = create(api, "life-a", metadata={"owner": "ada"}, lower_limit="-5", upper_limit="1000")
    (view,) = created["accounts"]
    assert view == {
        "account_id": "life-a",
        "asset": "USD",
        "scale": 2,
        "state": "NORMAL",
        "lower_limit": "-5.00",
        "upper_limit": "1000.00",
        "available": "0.00",
        "reservations": {},
        "pending_in": {},
        "pending_out": {},
        "version": 1,
        "seq": created["seq"],
        "metadata": {"owner": "ada"},
    }
    assert api.get("/v1/accounts/life-a").json()["version"] == 1
    limits = api.post("/v1/accounts/life-a/limits", json={"dedup_id": dedup(), "upper_limit": None})
    assert limits.status_code == 200 and limits.json()["accounts"][0]["upper_limit"] is None
    assert limits.json()["accounts"][0]["lower_limit"] == "-5.00"  # absent lower_limit keeps it
    assert api.post("/v1/accounts/life-a/lock", json={"dedup_id": dedup()}).json()["accounts"][0]["state"] == "LOCKED"
    assert api.post("/v1/accounts/life-a/unlock", json={"dedup_id": dedup()}).json()["accounts"][0]["state"] == "NORMAL"
    deleted = api.post("/v1/accounts/life-a/delete", json={"dedup_id": dedup()})
    assert deleted.json()["accounts"][0]["state"] == "DELETED"
    assert api.get("/v1/accounts/life-a").json()["state"] == "DELETED"  # a deleted account still answers
    history = api.get("/v1/accounts/life-a/history").json()["versions"]
    assert [version["version"] for version in history] == [1, 2, 3, 4, 5]
    assert all(version["time"].endswith("Z") for version in history)


def test_money_commands(api: httpx.Client) -> None:
    create(api, "m-a")
    create(api, "m-b")
    fund(api, "m-a", "100")
    moved = api.post(
        "/v1/transfers",
        json={
            "dedup_id": dedup(),
            "from_account_id": "m-a",
            "to_account_id": "m-b",
            "amount": "10.5",
            "asset": "USD",
            "expected_from_balance": "100",
        },
    )
    assert moved.status_code == 200
    assert [view["available"] for view in moved.json()["accounts"]] == ["89.50", "10.50"]
    reserved = api.post(
        "/v1/reservations", json={"dedup_id": dedup(), "account_id": "m-a", "reservation_id": "r1", "amount": "9.50"}
    )
    assert reserved.json()["accounts"][0]["reservations"] == {"r1": "9.50"}
    released = api.post("/v1/releases", json={"dedup_id": dedup(), "account_id": "m-a", "reservation_id": "r1", "amount": "0.50"})
    assert released.json()["accounts"][0]["reservations"] == {"r1": "9.00"}
    tried = api.post(
        "/v1/tcc/try",
        json={
            "dedup_id": dedup(),
            "txn_id": "txn-1",
            "legs": [
                {"account_id": "m-a", "amount": "-20", "asset": "USD"},
                {"account_id": "m-b", "amount": "20", "asset": "USD"},
            ],
            "timeout_s": 600,
        },
    )
    assert [(view["pending_out"], view["pending_in"]) for view in tried.json()["accounts"]] == [
        ({"txn-1": "20.00"}, {}),
        ({}, {"txn-1": "20.00"}),
    ]
    confirmed = api.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "txn-1"})
    assert [view["available"] for view in confirmed.json()["accounts"]] == ["60.50", "30.50"]
    transfer_id = dedup()
    api.post(
        "/v1/transfers",
        json={"dedup_id": transfer_id, "from_account_id": "m-b", "to_account_id": "m-a", "amount": "0.50", "asset": "USD"},
    )
    compensated = api.post("/v1/compensations", json={"dedup_id": dedup(), "original_dedup_id": transfer_id})
    assert compensated.json()["compensation"] == "COMPENSATED"
    null = api.post("/v1/compensations", json={"dedup_id": dedup(), "original_dedup_id": "never-sent"})
    assert null.json()["compensation"] == "NULL_COMPENSATED" and null.json()["accounts"] == []
    late = api.post(
        "/v1/transfers",
        json={"dedup_id": "never-sent", "from_account_id": "m-a", "to_account_id": "m-b", "amount": "1", "asset": "USD"},
    )
    expect_error(late, 409, "ALREADY_COMPENSATED")
    batch = api.post(
        "/v1/batch-operations",
        json={
            "dedup_id": dedup(),
            "legs": [{"account_id": "m-a", "amount": "-1", "asset": "USD"}, {"account_id": "m-b", "amount": "1", "asset": "USD"}],
            "preconditions": [{"account_id": "m-a", "min_balance": "60.50", "max_balance": "60.50", "expected_version": 9}],
        },
    )
    assert batch.status_code == 200, batch.text
    canceled_try = api.post(
        "/v1/tcc/try",
        json={"dedup_id": dedup(), "txn_id": "txn-2", "legs": [{"account_id": "m-a", "amount": "-1", "asset": "USD"}]},
    )
    assert canceled_try.status_code == 200
    cancelled = api.post("/v1/tcc/cancel", json={"dedup_id": dedup(), "txn_id": "txn-2"})
    assert cancelled.json()["accounts"][0]["pending_out"] == {}


def _rule_cases(api: httpx.Client) -> list[tuple[str, dict[str, Any], str]]:
    create(api, "r-a")
    create(api, "r-b", upper_limit="10")
    create(api, "r-eur", asset="EUR")
    create(api, "r-locked")
    create(api, "r-gone")
    fund(api, "r-a", "50")
    fund(api, "r-eur", "5", asset="EUR")
    api.post("/v1/accounts/r-locked/lock", json={"dedup_id": dedup()})
    api.post("/v1/accounts/r-gone/delete", json={"dedup_id": dedup()})
    api.post(
        "/v1/tcc/try",
        json={"dedup_id": dedup(), "txn_id": "t-done", "legs": [{"account_id": "r-a", "amount": "-1", "asset": "USD"}]},
    )
    api.post("/v1/tcc/confirm", json={"dedup_id": dedup(), "txn_id": "t-done"})
    api.post(
        "/v1/tcc/try",
        json={"dedup_id": dedup(), "txn_id": "t-off", "legs": [{"account_id": "r-a", "amount": "-1", "asset": "USD"}]},
    )
    api.post("/v1/tcc/cancel", json={"dedup_id": dedup(), "txn_id": "t-off"})
    created_id = dedup()
    create_body = {"dedup_id": created_id, "account_id": "r-c", "asset": "USD"}
    api.post("/v1/accounts", json=create_body)

    def transfer(source: str, target: str, amount: str = "1", asset: str = "USD", **extra: Any) -> dict[str, Any]:
        return {"from_account_id": source, "to_account_id": target, "amount": amount, "asset": asset, **extra}

    return [
        ("/v1/transfers", transfer("r-a", "nobody"), "ACCOUNT_NOT_FOUND"),
        ("/v1/accounts", {"account_id": "r-a", "asset": "USD"}, "ACCOUNT_EXISTS"),
        ("/v1/transfers", transfer("r-locked", "r-a"), "ACCOUNT_LOCKED"),
        ("/v1/transfers", transfer("r-a", "r-gone"), "ACCOUNT_DELETED"),
        ("/v1/accounts/r-a/delete", {}, "ACCOUNT_NOT_EMPTY"),
        ("/v1/accounts/r-a/unlock", {}, "INVALID_STATE_TRANSITION"),
        ("/v1/transfers", transfer("r-a", "r-eur"), "ASSET_MISMATCH"),
        ("/v1/transfers", transfer("r-a", "r-a"), "SAME_ACCOUNT"),
        ("/v1/transfers", transfer("r-a", "r-b", "1000"), "LOWER_LIMIT_EXCEEDED"),
        ("/v1/transfers", transfer("r-a", "r-b", "11"), "UPPER_LIMIT_EXCEEDED"),
        ("/v1/transfers", transfer("r-a", "r-b", expected_from_balance="1"), "PRECONDITION_FAILED"),
        ("/v1/releases", {"account_id": "r-a", "reservation_id": "none"}, "RESERVATION_NOT_FOUND"),
        ("/v1/tcc/try", {"txn_id": "t-done", "legs": [{"account_id": "r-a", "amount": "-1", "asset": "USD"}]}, "TXN_EXISTS"),
        ("/v1/tcc/confirm", {"txn_id": "t-unknown"}, "TXN_NOT_FOUND"),
        ("/v1/tcc/cancel", {"txn_id": "t-done"}, "TXN_ALREADY_CONFIRMED"),
        ("/v1/tcc/confirm", {"txn_id": "t-off"}, "TXN_ALREADY_CANCELLED"),
        ("/v1/compensations", {"original_dedup_id": created_id}, "ORIGINAL_NOT_COMPENSABLE"),
        ("/v1/accounts", {**create_body, "account_id": "r-other", "dedup_id": created_id}, "DEDUP_ID_REUSED"),
    ]


def test_every_rule_code_is_409_and_sticks(api: httpx.Client) -> None:
    for path, fields, code in _rule_cases(api):
        body = {"dedup_id": dedup(), **fields} if "dedup_id" not in fields else fields
        first = api.post(path, json=body)
        error = expect_error(first, 409, code)
        # A retry of a rejected command answers the same 409 (DEDUP_ID_REUSED is not stored).
        if code != "DEDUP_ID_REUSED":
            assert api.post(path, json=body).json() == {"error": error}, path
    reserve = {"dedup_id": dedup(), "account_id": "r-a", "reservation_id": "small", "amount": "1"}
    assert api.post("/v1/reservations", json=reserve).status_code == 200
    too_much = api.post("/v1/releases", json={"dedup_id": dedup(), "account_id": "r-a", "reservation_id": "small", "amount": "2"})
    expect_error(too_much, 409, "INSUFFICIENT_RESERVATION")


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (10, "INVALID_AMOUNT"),
        (10.5, "INVALID_AMOUNT"),
        ("1e3", "INVALID_AMOUNT"),
        ("NaN", "INVALID_AMOUNT"),
        ("+5", "INVALID_AMOUNT"),
        (".5", "INVALID_AMOUNT"),
        (" 5", "INVALID_AMOUNT"),
        ("1.234", "INVALID_AMOUNT"),
        ("-1", "INVALID_AMOUNT"),
        ("0", "INVALID_AMOUNT"),
    ],
)
def test_malformed_amounts_are_422_and_never_logged(api: httpx.Client, amount: Any, code: str) -> None:
    create(api, f"amt-{next(_numbers)}")
    dedup_id = dedup()
    body = {"dedup_id": dedup_id, "from_account_id": "m-a", "to_account_id": "m-b", "amount": amount, "asset": "USD"}
    head = api.get("/v1/audit/head").json()
    expect_error(api.post("/v1/transfers", json=body), 422, code)
    assert api.get("/v1/audit/head").json() == head
    # The dedup_id was not used up: the same id with a good amount is applied.
    good = api.post("/v1/transfers", json={**body, "amount": "0.01"})
    assert good.status_code in (200, 409) and good.json().get("error", {}).get("code") != "DEDUP_ID_REUSED"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/transfers", {"from_account_id": "m-a"}),
        (
            "/v1/transfers",
            {"dedup_id": "x", "from_account_id": "m-a", "to_account_id": "m-b", "amount": "1", "asset": "USD", "extra": 1},
        ),
        ("/v1/accounts", {"dedup_id": "x", "account_id": "bad id!", "asset": "USD"}),
        ("/v1/accounts", {"dedup_id": "x", "account_id": "a" * 129, "asset": "USD"}),
        ("/v1/accounts", {"dedup_id": "x", "account_id": "ok", "asset": "USD", "scale": 19}),
        ("/v1/batch-operations", {"dedup_id": "x", "legs": []}),
        ("/v1/commands", {"commands": []}),
        ("/v1/commands", {"commands": [{"type": "transfer"}] * 8191}),
    ],
)
def test_malformed_requests_are_422(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    expect_error(api.post(path, json=body), 422, "INVALID_REQUEST")


def test_not_json_and_oversized_bodies(api: httpx.Client) -> None:
    expect_error(api.post("/v1/transfers", content=b"{not json"), 422, "INVALID_REQUEST")
    expect_error(api.post("/v1/transfers", content=b"[" * 100_000), 422, "INVALID_REQUEST")
    response = api.post("/v1/commands", content=b" " * (17 * 1024 * 1024))
    assert response.status_code == 413


def test_commands_endpoint_answers_each_on_its_own(api: httpx.Client) -> None:
    commands = [
        {"type": "create_account", "dedup_id": dedup(), "account_id": "batch-a", "asset": "PTS", "scale": 0},
        {"type": "batch_operation", "dedup_id": dedup(), "legs": [{"account_id": "batch-a", "amount": "7", "asset": "PTS"}]},
        {"type": "reserve", "dedup_id": dedup(), "account_id": "batch-a", "reservation_id": "r", "amount": "0.5"},
        {"type": "reserve", "dedup_id": dedup(), "account_id": "batch-a", "reservation_id": "r", "amount": "100"},
        {"type": "lock_account", "dedup_id": dedup(), "account_id": "batch-a"},
        {"type": "nonsense", "dedup_id": dedup()},
    ]
    results = api.post("/v1/commands", json={"commands": commands}).json()["results"]
    assert [result["status"] for result in results] == [200, 200, 422, 409, 200, 422]
    assert results[1]["accounts"][0]["available"] == "7"
    assert results[3]["error"]["code"] == "LOWER_LIMIT_EXCEEDED"


def test_reads(api: httpx.Client) -> None:
    create(api, "q-a")
    seq_before = fund(api, "q-a", "3")["seq"]
    fund(api, "q-a", "4")
    expect_error(api.get("/v1/accounts/q-nobody"), 404, "ACCOUNT_NOT_FOUND")
    at = api.get("/v1/accounts", params={"ids": "q-a,q-nobody", "at_seq": seq_before}).json()
    assert at["seq"] == seq_before and at["accounts"]["q-a"]["available"] == "3.00" and at["missing"] == ["q-nobody"]
    assert api.get("/v1/accounts", params={"ids": "q-a"}).json()["accounts"]["q-a"]["available"] == "7.00"
    head = api.get("/v1/audit/head").json()
    assert api.get("/v1/accounts/q-a", params={"min_seq": head["seq"]}).status_code == 200
    expect_error(api.get("/v1/accounts/q-a", params={"min_seq": head["seq"] + 1000}), 503, "NOT_AVAILABLE")
    events = api.get("/v1/events", params={"from_seq": seq_before, "to_seq": seq_before + 2}).json()["events"]
    assert [event["seq"] for event in events] == [seq_before, seq_before + 1]
    assert events[1]["prev_hash"] == events[0]["hash"]
    assert events[0]["type"] == "balances_changed" and events[0]["accounts"][0]["available"] == "3.00"
    in_time = api.get("/v1/events", params={"from_time": events[0]["time"], "limit": 1}).json()["events"]
    assert in_time and in_time[0]["seq"] <= seq_before
    expect_error(api.get("/v1/events", params={"limit": 10001}), 422, "INVALID_REQUEST")
    expect_error(api.get("/v1/events", params={"from_time": "yesterday"}), 422, "INVALID_REQUEST")


def test_operations_endpoints(api: httpx.Client) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").json()["status"] == "ready"
    assert "coffer_commands_total" in api.get("/metrics").text
    assert api.put("/admin/log-level", json={"level": "debug"}).json() == {"level": "debug"}
    expect_error(api.put("/admin/log-level", json={"level": "loud"}), 422, "INVALID_REQUEST")
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.") and "/v1/transfers" in document["paths"]
    schemas = document["components"]["schemas"]
    assert schemas["TransferBody"]["properties"]["amount"] == {"$ref": "#/components/schemas/PositiveAmount"}
    assert schemas["PositiveAmount"]["pattern"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = "reader:reader-key-0123456789,operator:operator-key-0123456789,admin:admin-key-0123456789"
    server = CofferServer(tmp_path_factory.mktemp("keyed") / "data", {"COFFER_API_KEYS": keys})
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        (None, "GET", "/v1/audit/head", 401),
        ("wrong-key-0123456789", "GET", "/v1/audit/head", 401),
        ("reader-key-0123456789", "GET", "/v1/audit/head", 200),
        ("reader-key-0123456789", "POST", "/v1/transfers", 403),
        ("operator-key-0123456789", "POST", "/v1/accounts", 403),
        ("operator-key-0123456789", "PUT", "/admin/log-level", 403),
        ("admin-key-0123456789", "PUT", "/admin/log-level", 200),
        (None, "GET", "/healthz", 200),
    ],
)
def test_roles(keyed: str, key: str | None, method: str, path: str, status: int) -> None:
    headers = {} if key is None else {"X-API-Key": key}
    body = {"level": "info"} if path == "/admin/log-level" else {"dedup_id": "k"}
    response = httpx.request(method, keyed + path, headers=headers, json=body if method != "GET" else None)
    if status >= 400:
        expect_error(response, status, {401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status])
    else:
        assert response.status_code == status


def test_bearer_key_and_operator_commands(keyed: str) -> None:
    admin = {"Authorization": "Bearer admin-key-0123456789"}
    operator = {"Authorization": "Bearer operator-key-0123456789"}
    assert (
        httpx.post(
            f"{keyed}/v1/accounts", headers=admin, json={"dedup_id": "k1", "account_id": "k-a", "asset": "USD"}
        ).status_code
        == 200
    )
    batch = {"commands": [{"type": "create_account", "dedup_id": "k2", "account_id": "k-b", "asset": "USD"}]}
    results = httpx.post(f"{keyed}/v1/commands", headers=operator, json=batch).json()["results"]
    assert results[0]["status"] == 403 and results[0]["error"]["code"] == "FORBIDDEN"


def test_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "coffer", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0 and "API keys" in done.stderr
