"""Write the upgrade fixture: a data directory made by an older release, and what it answered.

Run it with the *older* release installed (``python make_fixture.py OUT_DIR``): it starts that
release's ``coffer serve`` on a fresh data directory, with snapshots every few entries, sends every
kind of command (so the log, the snapshot and the event store hold every event type and the
widest amounts that release took), records every account and the chain head as that release
answers them, kills the node with SIGKILL (the realistic way an upgrade starts), and packs the
directory as ``data.tar.gz`` next to ``expected.json``. Only the client calls that both releases
have are used.

The fixture in this folder was made with commit f317832 (the last release with 64-bit amounts and
unversioned formats); ``test_upgrade.py`` opens it with the current code.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from coffer import Client
from coffer.client import Leg, RejectedError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _workload(client: Client) -> dict[str, object]:
    """Every command type, every event type; returns the retries the new release must answer alike."""
    client.create_account("alice", asset="USD", dedup_id="open-alice")
    client.create_account("bob", asset="USD", upper_limit="5000.00", dedup_id="open-bob")
    client.create_account("carol", asset="USD", lower_limit="-100.00", metadata={"kind": "credit"}, dedup_id="open-carol")
    client.create_account("whale", asset="ETH", scale=18, dedup_id="open-whale")
    client.create_account("minnow", asset="ETH", scale=18, dedup_id="open-minnow")
    client.create_account("temp", asset="USD", dedup_id="open-temp")
    client.batch_operation([Leg(account_id="alice", amount="1000.00", asset="USD")], dedup_id="deposit-alice")
    # The widest balance the old release held: 9.2 ETH, just under 2^63 wei.
    client.batch_operation([Leg(account_id="whale", amount="9.223372036854775807", asset="ETH")], dedup_id="deposit-whale")
    client.transfer("whale", "minnow", "0.000000000000000001", "ETH", dedup_id="wei")
    paid = client.transfer("alice", "bob", "250.50", "USD", dedup_id="pay-bob")
    client.transfer("alice", "carol", "10", "USD", expected_from_balance="749.50", dedup_id="pay-carol")
    client.transfer("carol", "alice", "50.00", "USD", dedup_id="carol-overdraft")
    client.reserve("alice", "order-1", "100.00", dedup_id="hold-1")
    client.release("alice", "order-1", "40.00", dedup_id="unhold-1")
    client.tcc_try("txn-ok", [Leg(account_id="alice", amount="-5.00", asset="USD"), Leg(account_id="bob", amount="5.00", asset="USD")], dedup_id="try-ok")
    client.tcc_confirm("txn-ok", dedup_id="confirm-ok")
    client.tcc_try("txn-no", [Leg(account_id="alice", amount="-7.00", asset="USD")], dedup_id="try-no")
    client.tcc_cancel("txn-no", dedup_id="cancel-no")
    client.tcc_try("txn-late", [Leg(account_id="bob", amount="-3.00", asset="USD")], timeout_s=1, dedup_id="try-late")
    time.sleep(1.3)
    client.lock_account("carol", dedup_id="lock-carol")  # its entry expires txn-late first
    client.unlock_account("carol", dedup_id="unlock-carol")
    client.update_limits("bob", upper_limit="6000.00", dedup_id="limits-bob")
    client.transfer("alice", "bob", "1.00", "USD", dedup_id="to-undo")
    client.compensate("to-undo", dedup_id="undo")
    client.compensate("never-sent", dedup_id="undo-never")
    client.delete_account("temp", dedup_id="close-temp")
    try:
        client.transfer("alice", "bob", "999999.00", "USD", dedup_id="too-much")
        raise AssertionError("an overdraft was accepted")
    except RejectedError as error:
        rejected_code = error.code
    for round_ in range(30):  # enough entries to pass a few snapshots, and a log tail after the last
        client.transfer("alice", "bob", "0.01", "USD", dedup_id=f"drip-{round_}")
    return {
        "retry_ok": {"dedup_id": "pay-bob", "seq": paid.seq},
        "retry_rejected": {"dedup_id": "too-much", "code": rejected_code},
    }


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        port = _free_port()
        node = subprocess.Popen(
            ["coffer", "serve", "--data-dir", str(data_dir), "--port", str(port), "--snapshot-entries", "8"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            with Client(url) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        client.healthz()
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                retries = _workload(client)
                time.sleep(1.0)  # let the last snapshot settle and the event store catch up
                ids = ["alice", "bob", "carol", "whale", "minnow", "temp"]
                accounts = {account_id: _raw_get(client, f"/v1/accounts/{account_id}") for account_id in ids}
                head = _raw_get(client, "/v1/audit/head")
        finally:
            os.kill(node.pid, signal.SIGKILL)
            node.wait()
        with tarfile.open(out_dir / "data.tar.gz", "w:gz") as archive:
            archive.add(data_dir, arcname="data")
    expected = {"accounts": accounts, "head": head, **retries}
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


def _raw_get(client: Client, path: str) -> object:
    return client.request("GET", path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
