"""Crashes under cross-shard load: nothing acknowledged is lost, nothing moves twice, nothing stays in doubt.

Client threads send transfers (most across the two shards) while the test kills the whole
sharded node with SIGKILL (the router and, with it, every shard process), restarts it, and kills
one shard's process alone (the node restarts it). Afterwards:

- every transaction left in doubt is finished by the recovery task, with no client's help;
- every command retried with its dedup_id answers what it answered the first time (or, if its
  first answer was lost, a final outcome), and the committed ones, replayed on the opening
  balances, give exactly the balances the ledger holds (nothing lost, nothing applied twice);
- the money over both shards is what was deposited.
"""

import os
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx

from tests.txn.sharded_process import ShardedServer
from tests.txn.transfer_load import TransferClient, final_answer

opening = Decimal(1000)
recovery_wait_s_max = 60.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def test_kill_9_under_cross_shard_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    node = ShardedServer(tmp_path / "data", 2)
    node.start()
    try:
        accounts = node.ids_on(0, 3, "crash0") + node.ids_on(1, 3, "crash1")
        with httpx.Client(base_url=node.url, timeout=30) as http:
            for account_id in accounts:
                assert http.post("/v1/accounts", json={"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "USD"}).status_code == 200
                legs = [{"account_id": account_id, "amount": str(opening), "asset": "USD"}]
                assert http.post("/v1/batch-operations", json={"dedup_id": f"fund-{account_id}", "legs": legs}).status_code == 200
        stop = threading.Event()
        clients = [TransferClient(node.url, accounts, number, stop, "crash") for number in range(4)]
        for client in clients:
            client.start()
        time.sleep(1.5)
        node.kill()  # the router and, with it, every shard
        node.start()
        time.sleep(1.5)
        assert node.process is not None
        shard_pids = _children(node.process.pid)
        assert len(shard_pids) == 2
        os.kill(shard_pids[1], signal.SIGKILL)  # one shard alone; the node restarts it
        time.sleep(2.0)
        stop.set()
        for client in clients:
            client.join(30)

        with httpx.Client(base_url=node.url, timeout=30) as http:
            # Recovery finishes every transaction left in doubt, with no client's help.
            deadline = time.monotonic() + recovery_wait_s_max
            while True:
                # A restarted shard answers 503 until it has recovered: ask again.
                answers = [http.get("/v1/transactions", params={"shard": shard, "open": "true", "prefix": "cx:"}) for shard in (0, 1)]
                open_tries = [txn for answer in answers if answer.status_code == 200 for txn in answer.json()["transactions"]]
                if not open_tries and all(answer.status_code == 200 for answer in answers):
                    break
                assert time.monotonic() < deadline, f"still in doubt after {recovery_wait_s_max} s: {open_tries}"
                time.sleep(0.5)

            balances = dict.fromkeys(accounts, opening)
            acknowledged = 0
            for client in clients:
                for body, answer, _ in client.sent:
                    final = final_answer(http, body)
                    if answer is not None:
                        acknowledged += 1
                        assert final[0] == answer[0], (body, answer, final)
                        if final[0] == 200:
                            assert final[1].get("txn_id") == answer[1].get("txn_id")
                        else:
                            assert final[1]["error"]["code"] == answer[1]["error"]["code"]
                    if final[0] == 200:
                        amount = Decimal(body["amount"])
                        balances[body["from_account_id"]] -= amount
                        balances[body["to_account_id"]] += amount
            views = http.get("/v1/accounts", params={"ids": ",".join(accounts)}).json()["accounts"]
        assert acknowledged > 20
        for account_id in accounts:
            view = views[account_id]
            assert view["pending_in"] == {} and view["pending_out"] == {}, view
            assert Decimal(view["available"]) == balances[account_id], (account_id, view["available"], balances[account_id])
        assert sum(Decimal(view["available"]) for view in views.values()) == opening * len(accounts)
    finally:
        node.stop()
