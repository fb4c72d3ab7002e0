"""A data directory written by the release before versioned formats opens with this one.

The fixture (``f317832/``, made by ``make_fixture.py`` running that release) holds a format-1 WAL,
a format-1 snapshot, a crash leftover (a ``.pending`` snapshot) and an event store of format-1
events of every type. This release must serve the same balances and chain head, answer retries of
old ``dedup_id``s as they were answered, append new (format 2) events that extend the same chain,
and ``coffer audit verify`` must accept the whole chain, across a restart too.
"""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from coffer.core.events import event_format
from coffer.history.event_store import EventStore
from tests.service.server_process import CofferServer

fixture_dir = Path(__file__).parent / "f317832"


@pytest.fixture
def old_data_dir(tmp_path: Path) -> Path:
    with tarfile.open(fixture_dir / "data.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "data"


def _verify(url: str, tmp_path: Path, until_seq: int) -> subprocess.CompletedProcess[str]:
    store = tmp_path / "audit.sqlite3"
    store.unlink(missing_ok=True)
    project = subprocess.run(
        [sys.executable, "-m", "coffer", "project", "--source", url, "--store", str(store), "--until-seq", str(until_seq)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert project.returncode == 0, project.stderr
    return subprocess.run(
        [sys.executable, "-m", "coffer", "audit", "verify", "--store", str(store), "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_old_data_directory_serves_the_same_ledger_and_extends_its_chain(old_data_dir: Path, tmp_path: Path) -> None:
    expected = json.loads((fixture_dir / "expected.json").read_text())
    node = CofferServer(old_data_dir)
    node.start()
    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            for account_id, view in expected["accounts"].items():
                assert http.get(f"/v1/accounts/{account_id}").json() == view
            assert http.get("/v1/audit/head").json() == expected["head"]
            assert expected["accounts"]["whale"]["available"] == "9.223372036854775806"

            # Retries of old dedup_ids answer what the old release answered.
            retry = expected["retry_ok"]
            answer = http.post(
                "/v1/transfers",
                json={"dedup_id": retry["dedup_id"], "from_account_id": "alice", "to_account_id": "bob", "amount": "250.50", "asset": "USD"},
            )
            assert answer.status_code == 200 and answer.json()["seq"] == retry["seq"]
            rejected = expected["retry_rejected"]
            answer = http.post(
                "/v1/transfers",
                json={"dedup_id": rejected["dedup_id"], "from_account_id": "alice", "to_account_id": "bob", "amount": "999999.00", "asset": "USD"},
            )
            assert answer.status_code == 409 and answer.json()["error"]["code"] == rejected["code"]

            # New writes extend the same chain, under the new protocol: 10 ETH now fits.
            head_seq = expected["head"]["seq"]
            answer = http.post(
                "/v1/batch-operations",
                json={"dedup_id": "upgrade-deposit", "legs": [{"account_id": "whale", "amount": "10", "asset": "ETH"}]},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["seq"] == head_seq + 1
            assert answer.json()["accounts"][0]["available"] == "19.223372036854775806"
            events = http.get("/v1/events", params={"from_seq": head_seq, "to_seq": head_seq + 2}).json()["events"]
            assert events[0]["hash"] == expected["head"]["hash"]
            assert events[1]["prev_hash"] == expected["head"]["hash"]

        verdict = _verify(node.url, tmp_path, head_seq + 1)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr

        # Restart: the log now mixes entry formats, the snapshots may too.
        node.restart()
        with httpx.Client(base_url=node.url, timeout=30) as http:
            whale = http.get("/v1/accounts/whale").json()
            assert whale["available"] == "19.223372036854775806"
            assert http.get("/v1/audit/head").json()["seq"] == head_seq + 1
        verdict = _verify(node.url, tmp_path, head_seq + 1)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    finally:
        node.stop()
    store = EventStore(old_data_dir / "events.sqlite3")
    try:
        formats = [event_format(record.body) for record in store.events(limit=10_000)]
    finally:
        store.close()
    assert formats == [1] * head_seq + [2]
