"""The checker's rules for cross-shard transactions, read from every shard's history.

Method. A cross-shard transaction leaves, on each participant shard, a ``tcc_tried`` event under
``<txn_id>.try`` and one ``tcc_confirmed`` or ``tcc_cancelled`` event (under ``.confirm``,
``.cancel`` or a recovery's ``.recovered.<n>``); its decision is kept at its commit point. From
the histories alone :class:`TransactionLedger` tells, per transaction and shard, whether it was
tried, how often it moved money, and how it finished; then, through ``GET /v1/transactions/{id}``
on the nodes, it holds every transaction to its commit point's decision: committed means
confirmed on every shard that holds it, aborted means confirmed on none, undecided is allowed only
for a client-held try that still waits for its confirm (its money is in flight, in ``pending_out``).
"""

import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from coffer.http import kept_client
from coffer.txn.coordinator import is_client_held, tcc_txn_id_of, txn_prefix
from coffer.txn.shard_map import ShardMap

request_timeout_s = 10.0
poll_s = 0.5
readers_max = 4  # concurrent reads of transactions: the checker must not starve a loaded machine
_finished_types = {"tcc_confirmed": "confirmed", "tcc_cancelled": "cancelled", "tcc_expired": "cancelled"}


def crossed_shards(answer: Any) -> bool:
    """Whether a 200 answer is that of a command the node ran across shards."""
    return isinstance(answer, dict) and isinstance(answer.get("shard_seqs"), dict)


def cross_shard_txn_id(answer: dict[str, Any], shard_map: ShardMap) -> str:
    """The id the shards hold a cross-shard command under (a client-held try: derived from the
    client's txn_id, as the router derives it)."""
    txn_id = answer["txn_id"]
    return txn_id if txn_id.startswith(txn_prefix) else tcc_txn_id_of(txn_id, shard_map.shard_of(txn_id))


@dataclass
class TransactionLedger:
    tried: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    moved: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))  # finishes that changed balances
    finished: dict[str, dict[int, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))

    @classmethod
    def from_histories(cls, histories: list[list[dict[str, Any]]]) -> "TransactionLedger":
        ledger = cls()
        for shard, events in enumerate(histories):
            for event in events:
                dedup_id = event["dedup_id"] or ""
                if not dedup_id.startswith(txn_prefix):
                    continue
                txn_id = dedup_id.split(".", 1)[0]  # transaction ids hold no dot; their steps follow one
                if event["type"] == "tcc_tried":
                    ledger.tried[txn_id][shard] += 1
                elif event["type"] in _finished_types:
                    ledger.finished[txn_id][shard].add(_finished_types[event["type"]])
                    if event["accounts"]:
                        ledger.moved[txn_id][shard] += 1
        return ledger

    @property
    def duplicated(self) -> int:
        """Tries held twice, or finishes that moved money twice, on one shard."""
        counts = [*self.tried.values(), *self.moved.values()]
        return sum(count - 1 for counter in counts for count in counter.values() if count > 1)

    def holds(self, path: str, body: dict[str, Any], answer: dict[str, Any], shard_map: ShardMap) -> bool:
        """Whether an acknowledged cross-shard command is in the history of every shard it answered for."""
        txn_id = cross_shard_txn_id(answer, shard_map)
        shards = [int(shard) for shard in answer["shard_seqs"]]
        # Read without adding: the ledger's keys are the transactions the histories hold.
        if path == "/v1/tcc/try":
            tried = self.tried.get(txn_id, Counter())
            return all(tried[shard] == 1 for shard in shards)
        outcome = "cancelled" if path == "/v1/tcc/cancel" else "confirmed"
        finished = self.finished.get(txn_id, {})
        return all(finished.get(shard) == {outcome} for shard in shards)

    def in_flight(self) -> list[str]:
        """Transactions tried on some shard that has not finished them."""
        return sorted(
            txn_id for txn_id, shards in self.tried.items() if any(not self.finished.get(txn_id, {}).get(shard) for shard in shards)
        )

    def disagreements(self, urls: list[str], deadline: float) -> list[str]:
        """Every transaction finished as decided, the same way on every shard (see the module docstring)."""
        problems = []
        for txn_id, shards in self.finished.items():
            outcomes = set().union(*shards.values())
            if len(outcomes) > 1:
                problems.append(f"{txn_id} finished differently across shards: {dict(shards)}")
        txn_ids = sorted(self.tried)

        def verify(position: int) -> str | None:
            return _verify(urls[position % len(urls)], txn_ids[position], deadline)

        with ThreadPoolExecutor(readers_max) as pool:
            problems += [problem for problem in pool.map(verify, range(len(txn_ids))) if problem is not None]
        return problems


def _verify(url: str, txn_id: str, deadline: float) -> str | None:
    """One transaction against its commit point's decision; waits while it is decided but in flight."""
    while True:
        try:
            response = kept_client.client().get(f"{url}/v1/transactions/{txn_id}", timeout=request_timeout_s)
            view = response.json() if response.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            view = None
        if view is not None and not view["state"].endswith("_IN_FLIGHT"):
            break
        if time.monotonic() > deadline:
            return f"{txn_id}: no settled view before the deadline: {view}"
        time.sleep(poll_s)
    states = {shard: part.get("state") for shard, part in view["shards"].items() if "error" not in part}
    decision = view["decision"]
    if decision is None:
        if is_client_held(txn_id) and set(states.values()) <= {"TRIED"}:
            return None  # waits for its client's confirm or cancel; its money is in pending_out
        return f"{txn_id}: undecided at its commit point, yet {states}"
    wanted = "CONFIRMED" if decision["commit"] else "CANCELLED"
    wrong = {shard: state for shard, state in states.items() if state is not None and state != wanted}
    if wrong:
        return f"{txn_id}: decided {'commit' if decision['commit'] else 'abort'}, yet {wrong}"
    return None


def wait_for_recovery(urls: list[str], shards: int, deadline: float) -> list[str]:
    """Wait until no shard holds a coordinator's try open (recovery finishes what a killed node
    left in doubt); client-held tries may stay open, waiting for their client."""
    while True:
        open_tries: list[str] = []
        for shard in range(shards):
            try:
                response = kept_client.client().get(
                    f"{urls[shard % len(urls)]}/v1/transactions",
                    params={"shard": shard, "open": "true", "prefix": txn_prefix},
                    timeout=request_timeout_s,
                )
                listed = response.json()["transactions"] if response.status_code == 200 else [f"HTTP {response.status_code}"]
            except (httpx.TransportError, ValueError, KeyError) as error:
                listed = [f"unreadable: {error!r}"]
            open_tries += [f"{shard}:{txn_id}" for txn_id in listed if not is_client_held(txn_id)]
        if not open_tries:
            return []
        if time.monotonic() > deadline:
            return [f"tries still in doubt after the settle time: {open_tries[:5]} ({len(open_tries)})"]
        time.sleep(poll_s)
