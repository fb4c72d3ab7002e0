"""Every event type, produced on a real node and read back through every tool we ship.

The 20 types of :class:`coffer.core.events.EventType` — ``tcc_expired`` included (a try with
``timeout_s=1``, then a later write: expiry fires by log time, on the next entry), with its null
``dedup_id`` and null command — are read through the client (a page and the iterator), the CLI
(``coffer events --json`` and the table), the event feed (``/v1/events/stream``), the projector into
SQLite (``coffer project``) and ``coffer audit verify``. A tool that cannot read one type fails here.
"""

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from coffer.cli import main
from coffer.client import Client, Leg
from coffer.core.events import EventRecord, EventType, verify_chain
from coffer.query.sql_store import SqlStore
from tests.service.server_process import CofferServer

expiry_wait_s = 1.3  # the try's timeout_s=1, plus room for the log clock's millisecond rounding


class History(msgspec.Struct):
    url: str
    first_seq: int
    last_seq: int
    alice: str


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CofferServer]:
    server = CofferServer(tmp_path_factory.mktemp("every-type") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def history(node: CofferServer) -> History:
    tag = uuid.uuid4().hex[:8]
    alice, bob, gone = f"alice-{tag}", f"bob-{tag}", f"gone-{tag}"
    with Client(node.url) as api:
        first = api.create_account(alice, "USD")  # account_created
        api.create_account(bob, "USD")
        api.create_account(gone, "USD")
        api.update_limits(alice, lower_limit="-5")  # limits_updated
        api.batch_operation([Leg(account_id=alice, amount="100", asset="USD")])  # balances_changed
        transfer = api.transfer(alice, bob, "10", asset="USD")  # transferred
        api.reserve(alice, "r1", "5")  # reserved
        api.release(alice, "r1")  # released
        legs = [Leg(account_id=alice, amount="-1", asset="USD"), Leg(account_id=bob, amount="1", asset="USD")]
        api.tcc_try(f"t1-{tag}", legs)  # tcc_tried
        api.tcc_confirm(f"t1-{tag}")  # tcc_confirmed
        api.tcc_try(f"t2-{tag}", legs)
        api.tcc_cancel(f"t2-{tag}")  # tcc_cancelled
        api.compensate(transfer.dedup_id)  # compensated
        api.compensate(f"never-sent-{tag}")  # null_compensated
        api.lock_account(bob)  # account_locked
        api.unlock_account(bob)  # account_unlocked
        api.delete_account(gone)  # account_deleted
        # txn_decided: the transaction layer's decision at a commit point (an admin command)
        api.commands([{"type": "decide", "dedup_id": f"decide-{tag}", "txn_id": f"x-{tag}", "commit": True}])
        api.set_velocity_limits(alice, debits_per_day=1000)  # velocity_limits_set
        deposit = {
            "mode": "atomic",
            "params": {"to": {"type": "account"}, "x": {"type": "amount", "asset": "USD", "default": "0.01"}},
            "steps": [{"name": "in", "batch_operation": {"legs": [{"account": "{to}", "credit": "x"}]}}],
        }
        api.put_flow(f"deposit-{tag}", deposit)  # flow_registered
        api.run_flow(f"deposit-{tag}", {"to": alice})  # flow_run_started, balances_changed, flow_run_finished
        api.tcc_try(f"t3-{tag}", legs, timeout_s=1)
        time.sleep(expiry_wait_s)
        last = api.reserve(alice, "r2", "1")  # the next entry's log time fires the expiry first: tcc_expired
    return History(node.url, first.seq, last.seq, alice)


def _types(events: list[dict[str, object]] | list[object]) -> set[str]:
    return {event["type"] if isinstance(event, dict) else event.type for event in events}  # type: ignore[attr-defined]


every_type = {event_type.value for event_type in EventType}


def test_the_history_holds_every_type(history: History) -> None:
    with httpx.Client(base_url=history.url) as raw:
        events = raw.get("/v1/events", params={"from_seq": history.first_seq}).json()["events"]
    assert _types(events) == every_type
    (expired,) = [event for event in events if event["type"] == "tcc_expired"]
    assert expired["dedup_id"] is None


def test_the_client_reads_every_type(history: History) -> None:
    with Client(history.url) as api:
        page = api.events(from_seq=history.first_seq, to_seq=history.last_seq + 1)
        assert _types(page) == every_type
        expired = next(event for event in page if event.type == "tcc_expired")
        assert expired.dedup_id is None and expired.accounts
        iterated = list(api.iter_events(from_seq=history.first_seq, to_seq=history.last_seq + 1, limit=4))
        assert iterated == page
        statement = api.statement(expired.accounts[0].account_id, from_seq=expired.seq, to_seq=expired.seq + 1)
        assert [(change.type, change.dedup_id) for change in statement.changes] == [("tcc_expired", None)]


def test_the_cli_reads_every_type(history: History) -> None:
    runner = CliRunner()
    arguments = ["events", "--url", history.url, "--from-seq", str(history.first_seq), "--limit", "5", "--all"]
    as_json = runner.invoke(main, [*arguments, "--json"])
    assert as_json.exit_code == 0, as_json.output
    events = json.loads(as_json.stdout)
    assert _types(events) == every_type and [event["seq"] for event in events] == list(
        range(history.first_seq, history.last_seq + 1)
    )
    table = runner.invoke(main, arguments)
    assert table.exit_code == 0, table.output
    expired_rows = [line for line in table.stdout.splitlines() if " tcc_expired " in line]
    assert len(expired_rows) == 1 and " - " in expired_rows[0]
    one_page = runner.invoke(main, ["events", "--url", history.url, "--from-seq", str(history.first_seq), "--limit", "5"])
    assert one_page.exit_code == 0 and "more: --cursor " in one_page.stderr
    statement = runner.invoke(main, ["statement", "--url", history.url, history.alice])
    assert statement.exit_code == 0, statement.output
    assert "tcc_expired" in statement.stdout and "closing available" in statement.stdout


def test_the_event_feed_carries_every_type(history: History) -> None:
    records: list[EventRecord] = []
    with (
        httpx.Client(base_url=history.url, timeout=30.0) as raw,
        raw.stream("GET", "/v1/events/stream", params={"from_seq": 1}) as stream,
    ):
        for line in stream.iter_lines():
            item = json.loads(line)
            if "heartbeat" in item:
                continue
            records.append(
                EventRecord(
                    item["seq"], base64.b64decode(item["body"]), bytes.fromhex(item["prev_hash"]), bytes.fromhex(item["hash"])
                )
            )
            if item["seq"] == history.last_seq:
                break
    assert verify_chain(records)[0] == history.last_seq
    decoded = [record.decode() for record in records if record.seq >= history.first_seq]
    assert {event.type for event in decoded} == every_type
    expired = next(event for event in decoded if event.type == "tcc_expired")
    assert expired.dedup_id is None and expired.command is None


def test_the_projector_and_the_audit_read_every_type(history: History, tmp_path: Path) -> None:
    store_path = tmp_path / "history.sqlite3"
    runner = CliRunner()
    projected = runner.invoke(
        main, ["project", "--source", history.url, "--store", str(store_path), "--until-seq", str(history.last_seq)]
    )
    assert projected.exit_code == 0, projected.output
    store = SqlStore(str(store_path))
    try:
        rows = store.event_rows(history.first_seq, 1000)
    finally:
        store.close()
    assert {row[4] for row in rows} == every_type
    assert [row[3] for row in rows if row[4] == "tcc_expired"] == [None]
    verified = runner.invoke(main, ["audit", "verify", "--store", str(store_path), "--url", history.url])
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.strip().splitlines()[-1].startswith("verdict=OK")
