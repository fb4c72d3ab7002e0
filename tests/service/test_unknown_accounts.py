"""Over HTTP, for every command type: a command naming an account the ledger does not have is
rejected with 409 ACCOUNT_NOT_FOUND, and that outcome is final for its ``dedup_id`` — a retry after
the account was created answers the same 409, on its own endpoint and through /v1/commands."""

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.server_process import CofferServer

_numbers = itertools.count(1)

# (endpoint, body) naming the account "{new}" (asset NEW where the command names an asset).
commands: dict[str, tuple[str, dict[str, Any]]] = {
    "transfer": ("/v1/transfers", {"from_account_id": "{new}", "to_account_id": "{old}", "amount": "1.50", "asset": "NEW"}),
    "batch_operation": ("/v1/batch-operations", {"legs": [{"account_id": "{new}", "amount": "1.50", "asset": "NEW"}]}),
    "batch_precondition": (
        "/v1/batch-operations",
        {"legs": [{"account_id": "{old}", "amount": "1", "asset": "NEW"}], "preconditions": [{"account_id": "{new}", "min_balance": "0"}]},
    ),
    "reserve": ("/v1/reservations", {"account_id": "{new}", "reservation_id": "r1", "amount": "1.50"}),
    "release": ("/v1/releases", {"account_id": "{new}", "reservation_id": "r1", "amount": "1.50"}),
    "tcc_try": ("/v1/tcc/try", {"txn_id": "t-{new}", "legs": [{"account_id": "{new}", "amount": "1.50", "asset": "NEW"}]}),
    "update_limits": ("/v1/accounts/{new}/limits", {"lower_limit": "-1.00"}),
    "lock_account": ("/v1/accounts/{new}/lock", {}),
    "unlock_account": ("/v1/accounts/{new}/unlock", {}),
    "delete_account": ("/v1/accounts/{new}/delete", {}),
}
command_types = {
    "transfer": "transfer",
    "batch_operation": "batch_operation",
    "batch_precondition": "batch_operation",
    "reserve": "reserve",
    "release": "release",
    "tcc_try": "tcc_try",
    "update_limits": "update_limits",
    "lock_account": "lock_account",
    "unlock_account": "unlock_account",
    "delete_account": "delete_account",
}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = CofferServer(tmp_path_factory.mktemp("unknown") / "data")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_fill(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, names) for key, item in value.items()}
    return value


def _open(http: httpx.Client, account_id: str) -> None:
    answer = http.post("/v1/accounts", json={"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "NEW"})
    assert answer.status_code == 200, answer.text


def _expect_not_found(answer: httpx.Response | dict[str, Any], account_id: str) -> dict[str, Any]:
    body = answer if isinstance(answer, dict) else answer.json()
    status = body.pop("status", None) if isinstance(answer, dict) else answer.status_code
    assert status == 409, body
    assert body["error"]["code"] == "ACCOUNT_NOT_FOUND" and body["error"]["account_id"] == account_id, body
    return body


@pytest.mark.parametrize("kind", list(commands))
def test_the_rejection_is_final_on_the_own_endpoint(http: httpx.Client, kind: str) -> None:
    number = next(_numbers)
    names = {"new": f"new-{number}", "old": f"old-{number}"}
    _open(http, names["old"])
    path, body = commands[kind]
    request = {"dedup_id": f"unknown-{number}", **_fill(body, names)}
    first = _expect_not_found(http.post(_fill(path, names), json=request), names["new"])
    _open(http, names["new"])
    again = _expect_not_found(http.post(_fill(path, names), json=request), names["new"])
    assert again == first


@pytest.mark.parametrize("kind", list(commands))
def test_the_rejection_is_final_through_the_commands_endpoint(http: httpx.Client, kind: str) -> None:
    number = next(_numbers)
    names = {"new": f"new-{number}", "old": f"old-{number}"}
    _open(http, names["old"])
    _, body = commands[kind]
    item = {"type": command_types[kind], "dedup_id": f"unknown-{number}", **_fill(body, names)}
    if kind in ("update_limits", "lock_account", "unlock_account", "delete_account"):
        item["account_id"] = names["new"]
    (first,) = http.post("/v1/commands", json={"commands": [item]}).json()["results"]
    first = _expect_not_found(first, names["new"])
    _open(http, names["new"])
    (again,) = http.post("/v1/commands", json={"commands": [item]}).json()["results"]
    assert _expect_not_found(again, names["new"]) == first
