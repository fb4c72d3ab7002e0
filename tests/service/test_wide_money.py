"""Money beyond 64 bits and deadlines on a quiet ledger, against a real ``coffer serve``.

Amounts reach 2^127 - 1 minor units in every layer: the API, the WAL, the snapshot, the event
store; a node killed with SIGKILL comes back with them exact. A TCC deadline takes effect within
about a second of log time with no other traffic: the node appends a time-only entry.
"""

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.server_process import CofferServer

_numbers = itertools.count(1)
bound = 2**127 - 1


def dedup() -> str:
    return f"wide-{next(_numbers)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CofferServer]:
    server = CofferServer(tmp_path_factory.mktemp("wide") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _post(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    return http.post(path, json={"dedup_id": dedup(), **body})


def _deposit(http: httpx.Client, account_id: str, amount: str, asset: str) -> httpx.Response:
    return _post(http, "/v1/batch-operations", {"legs": [{"account_id": account_id, "amount": amount, "asset": asset}]})


def _spell(value: int, scale: int) -> str:
    digits = str(value).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}" if scale else digits


def test_an_ethereum_wallet_holds_real_balances(node: CofferServer) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as http:
        for account_id in ("eth-a", "eth-b"):
            assert _post(http, "/v1/accounts", {"account_id": account_id, "asset": "ETH", "scale": 18}).status_code == 200
        answer = _deposit(http, "eth-a", "10", "ETH")
        assert answer.status_code == 200, answer.text
        assert answer.json()["accounts"][0]["available"] == "10.000000000000000000"
        for _ in range(2):
            assert _deposit(http, "eth-b", "9", "ETH").status_code == 200
        assert http.get("/v1/accounts/eth-b").json()["available"] == "18.000000000000000000"
        # 10^20 ETH, 10^38 wei.
        assert _deposit(http, "eth-a", "100000000000000000000", "ETH").status_code == 200
        answer = _post(
            http, "/v1/transfers", {"from_account_id": "eth-a", "to_account_id": "eth-b", "amount": "99999999999999999999.5", "asset": "ETH"}
        )
        assert answer.status_code == 200, answer.text
        assert [view["available"] for view in answer.json()["accounts"]] == ["10.500000000000000000", "100000000000000000017.500000000000000000"]


def test_the_bound_is_2_to_the_127_minor_units(node: CofferServer) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as http:
        assert _post(http, "/v1/accounts", {"account_id": "cents", "asset": "CENTS", "scale": 2}).status_code == 200
        assert _deposit(http, "cents", "1" + "0" * 28, "CENTS").status_code == 200  # 10^30 minor units
        largest = _spell(bound, 2)
        beyond = _spell(bound + 1, 2)
        answer = _deposit(http, "cents", beyond, "CENTS")
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_AMOUNT"
        answer = _deposit(http, "cents", largest, "CENTS")
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert error["code"] == "BALANCE_OUT_OF_RANGE" and error["account_id"] == "cents" and str(bound) in error["message"]
        assert http.get("/v1/accounts/cents").json()["available"] == "1" + "0" * 28 + ".00"
        answer = _post(http, "/v1/accounts", {"account_id": "capped", "asset": "CENTS", "scale": 2, "upper_limit": largest})
        assert answer.status_code == 200, answer.text
        assert _deposit(http, "capped", largest, "CENTS").status_code == 200
        answer = _deposit(http, "capped", "0.01", "CENTS")
        assert answer.json()["error"]["code"] == "UPPER_LIMIT_EXCEEDED"  # the account's own limit speaks first


def test_wide_balances_survive_a_kill(node: CofferServer) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as http:
        assert _post(http, "/v1/accounts", {"account_id": "kept", "asset": "ETH", "scale": 18}).status_code == 200
        assert _deposit(http, "kept", _spell(bound - 5, 18), "ETH").status_code == 200
        reserved = _post(http, "/v1/reservations", {"account_id": "kept", "reservation_id": "big", "amount": _spell(2**100, 18)})
        assert reserved.status_code == 200, reserved.text
        before = http.get("/v1/accounts/kept").json()
        head = http.get("/v1/audit/head").json()
    node.kill()
    node.process = None
    node.start()
    with httpx.Client(base_url=node.url, timeout=30) as http:
        assert http.get("/v1/accounts/kept").json() == before
        assert http.get("/v1/audit/head").json() == head
        versions = http.get("/v1/accounts/kept/history").json()["versions"]
        assert versions[-1]["reservations"] == {"big": _spell(2**100, 18)}


def test_a_deadline_takes_effect_on_a_quiet_ledger(node: CofferServer) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as http:
        assert _post(http, "/v1/accounts", {"account_id": "quiet", "asset": "USD"}).status_code == 200
        assert _deposit(http, "quiet", "10.00", "USD").status_code == 200
        tried = _post(http, "/v1/tcc/try", {"txn_id": "quiet-txn", "legs": [{"account_id": "quiet", "amount": "-4.00", "asset": "USD"}], "timeout_s": 1})
        assert tried.status_code == 200 and tried.json()["accounts"][0]["pending_out"] == {"quiet-txn": "4.00"}
        tried_seq = tried.json()["seq"]
        started = time.monotonic()
        # Nothing else is written: only the node's own time-only entry can expire the try.
        while http.get("/v1/accounts/quiet").json()["pending_out"] and time.monotonic() - started < 10:
            time.sleep(0.1)
        view = http.get("/v1/accounts/quiet").json()
        assert view["pending_out"] == {} and view["available"] == "10.00"
        events = http.get("/v1/events", params={"from_seq": tried_seq + 1}).json()["events"]
        assert [event["type"] for event in events] == ["tcc_expired"]
        assert events[0]["dedup_id"] is None
        # The expiry is final: a late confirm finds the transaction cancelled.
        answer = _post(http, "/v1/tcc/confirm", {"txn_id": "quiet-txn"})
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "TXN_ALREADY_CANCELLED"
