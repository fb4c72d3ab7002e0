"""Transfer load for the kill tests of sharded nodes: client threads, and each transfer's final answer.

The tests kill a node (or a shard) while these threads send transfers, most of them across
shards, then send every transfer again with its dedup_id: the final answer must match the first
one wherever there was one, and the committed transfers, replayed on the opening balances, must
give the balances the ledger holds.
"""

import random
import threading
import time
from typing import Any

import httpx

request_timeout_s = 10.0
final_answer_wait_s_max = 60.0  # recovery of what a kill left in doubt, on a loaded machine

Answer = tuple[int, dict[str, Any]]
"""(status, body) of a transfer that was decided: 200 or 409."""


class TransferClient(threading.Thread):
    """Sends random transfers among ``accounts`` until ``stop`` is set, with dedup ids ``{prefix}-{number}-{n}``.

    ``sent`` holds each transfer's body, its answer (None if it got none or not a final one) and
    the monotonic time it was answered or given up on.
    """

    def __init__(self, url: str, accounts: list[str], number: int, stop: threading.Event, prefix: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.accounts = accounts
        self.number = number
        self.stop_event = stop
        self.prefix = prefix
        self.sent: list[tuple[dict[str, Any], Answer | None, float]] = []
        self.rng = random.Random(number)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=request_timeout_s) as http:
            sequence = 0
            while not self.stop_event.is_set():
                sequence += 1
                source, target = self.rng.sample(self.accounts, 2)
                amount = f"{self.rng.randrange(1, 60)}.{self.rng.randrange(100):02d}"
                body = {"dedup_id": f"{self.prefix}-{self.number}-{sequence}", "from_account_id": source, "to_account_id": target}
                body |= {"amount": amount, "asset": "USD"}
                try:
                    response = http.post("/v1/transfers", json=body)
                    answer = (response.status_code, response.json()) if response.status_code in (200, 409) else None
                except (httpx.HTTPError, ValueError):
                    answer = None
                    time.sleep(0.05)
                self.sent.append((body, answer, time.monotonic()))


def final_answer(http: httpx.Client, body: dict[str, Any]) -> Answer:
    """Send the transfer ``body`` again until it is decided (200 or 409); fail after :data:`final_answer_wait_s_max`."""
    deadline = time.monotonic() + final_answer_wait_s_max
    while True:
        try:
            response = http.post("/v1/transfers", json=body)
            if response.status_code in (200, 409):
                return response.status_code, response.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no final answer for {body['dedup_id']}"
        time.sleep(0.2)
