"""The answer to a command is what applying it did: the same accounts and log index as its event in
the history, the same bytes for every retry, also on a node whose event store starts at a
snapshot (it holds no event of the command)."""

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.entries import encode_entry
from coffer.log.wal import LocalWal
from coffer.replica import Replica
from tests.service.server_process import CofferServer


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = CofferServer(tmp_path_factory.mktemp("replies") / "data")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.stop()


def _event(api: httpx.Client, seq: int) -> dict[str, Any]:
    (event,) = api.get("/v1/events", params={"from_seq": seq, "to_seq": seq + 1, "min_seq": seq}).json()["events"]
    assert event["seq"] == seq
    return event


def _command(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a command twice; both answers are the same bytes, and they say what its event says."""
    first = api.post(path, json=body)
    assert first.status_code == 200, first.text
    retried = api.post(path, json=body)
    assert retried.status_code == 200 and retried.content == first.content
    answer: dict[str, Any] = first.json()
    event = _event(api, answer["seq"])
    assert answer["log_index"] == event["log_index"]
    assert answer["accounts"] == event["accounts"]
    assert event["dedup_id"] == body["dedup_id"]
    return answer


def test_answers_are_the_event_history_view_of_the_command(api: httpx.Client) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    for account_id in (alice, bob):
        _command(api, "/v1/accounts", {"dedup_id": f"create-{account_id}", "account_id": account_id, "asset": "USD"})
    legs = [{"account_id": alice, "amount": "100.00", "asset": "USD"}, {"account_id": bob, "amount": "5", "asset": "USD"}]
    _command(api, "/v1/batch-operations", {"dedup_id": f"fund-{alice}", "legs": legs})
    moved = _command(
        api, "/v1/transfers", {"dedup_id": f"move-{alice}", "from_account_id": alice, "to_account_id": bob, "amount": "25.50", "asset": "USD"}
    )
    assert [view["available"] for view in moved["accounts"]] == ["74.50", "30.50"]
    reserve = {"dedup_id": f"hold-{alice}", "account_id": alice, "reservation_id": "order-1", "amount": "10"}
    held = _command(api, "/v1/reservations", reserve)
    assert held["accounts"][0]["reservations"] == {"order-1": "10.00"}
    _command(api, "/v1/releases", {"dedup_id": f"free-{alice}", "account_id": alice, "reservation_id": "order-1", "amount": "4"})
    undone = _command(api, "/v1/compensations", {"dedup_id": f"undo-{alice}", "original_dedup_id": f"move-{alice}"})
    assert undone["compensation"] == "COMPENSATED"
    tried = {"dedup_id": f"try-{alice}", "txn_id": f"txn-{alice}", "legs": [{"account_id": alice, "amount": "-1", "asset": "USD"}]}
    tried["legs"].append({"account_id": bob, "amount": "1", "asset": "USD"})
    _command(api, "/v1/tcc/try", tried)
    _command(api, "/v1/tcc/confirm", {"dedup_id": f"confirm-{alice}", "txn_id": f"txn-{alice}"})
    # The same commands inside POST /v1/commands answer the same.
    again = api.post("/v1/commands", json={"commands": [{"type": "transfer", "dedup_id": f"move-{alice}", "from_account_id": alice,
                                                          "to_account_id": bob, "amount": "25.50", "asset": "USD"}]})
    assert again.json()["results"] == [{"status": 200, **moved}]


def test_a_retry_under_a_snapshot_is_answered_without_its_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Small segments, so that the log can drop the entries under the snapshot (whole segments only).
    replica = Replica(data_dir, LocalWal(data_dir / "log", segment_bytes_max=64))
    replica.recover()
    entries = [
        [CreateAccount(dedup_id="open-a", account_id="a", asset="USD"), CreateAccount(dedup_id="open-b", account_id="b", asset="USD")],
        [BatchBalanceOperation(dedup_id="fund", legs=(Leg(account_id="a", amount=10_000, asset="USD"),))],
        [Transfer(dedup_id="under", from_account_id="a", to_account_id="b", amount=250, asset="USD")],
    ]
    for commands in entries:
        replica.apply(replica.log.append(encode_entry(list(commands))), list(commands))
    replica.start_snapshot()
    replica.wait_for_snapshot()
    replica.log.truncate_before(replica.machine.log_index)
    assert replica.log.first_index > 1
    replica.close()
    retry = {"dedup_id": "under", "from_account_id": "a", "to_account_id": "b", "amount": "2.50", "asset": "USD"}

    node = CofferServer(data_dir)
    node.start()
    try:
        with httpx.Client(base_url=node.url, timeout=10) as http:
            answer = http.post("/v1/transfers", json=retry)
            assert answer.status_code == 200, answer.text
            event = _event(http, answer.json()["seq"])
            assert (answer.json()["accounts"], answer.json()["log_index"]) == (event["accounts"], event["log_index"])
    finally:
        node.stop()

    # With the log below the snapshot gone, the node's history now starts after the snapshot, as on a
    # replica that joined from a shared one (a store deleted while the whole log is there is rebuilt).
    for path in data_dir.glob("events.sqlite3*"):
        path.unlink()
    node.start()
    try:
        with httpx.Client(base_url=node.url, timeout=10) as http:
            below = http.get("/v1/events", params={"to_seq": 4})
            assert below.status_code != 200 or below.json()["events"] == [], below.text
            again = http.post("/v1/transfers", json=retry)
            assert again.status_code == 200, again.text
            assert again.content == answer.content
    finally:
        node.stop()
