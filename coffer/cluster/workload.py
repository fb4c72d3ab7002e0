"""A workload that records what a cluster acknowledged, and a checker that holds it to that.

Used by the fault tests and ``coffer bench failover``. Client threads send transfers to the
nodes (each thread starts at another node and moves to the next one on a network error or a
503), retrying an unanswered command with the same dedup_id and payload until a deadline. What
the cluster answered (200 or 409) is *acknowledged*; what never got an answer is *unknown*.

The checker then proves, from the cluster's answers alone:
- every acknowledged command, sent again, answers exactly what it answered (nothing lost, no
  outcome changed); every unknown one gets an answer (and keeps it);
- the event history holds each applied dedup_id exactly once and no rejected one (nothing
  duplicated); seq is gapless and every event's ``prev_hash`` is the previous ``hash``;
- money is conserved: the balances add up to what was deposited;
- every replica reports the same chain head at the same seq.
"""

import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

asset = "USD"
opening_amount = Decimal("100000.00")
request_timeout_s = 5.0
retry_pause_s = 0.05


@dataclass
class Acknowledged:
    body: dict[str, Any]
    status: int
    answer: Any
    acknowledged_at: float
    attempt_started_at: float  # when the attempt that got this answer was sent


@dataclass
class Workload:
    urls: list[str]
    accounts: int = 16
    threads: int = 6
    prefix: str = "w"
    seed: int = 1
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)
    unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def account_ids(self) -> list[str]:
        return [f"{self.prefix}-{number}" for number in range(self.accounts)]

    @property
    def deposited(self) -> Decimal:
        return opening_amount * self.accounts

    def setup(self) -> None:
        commands: list[dict[str, Any]] = [
            {"type": "create_account", "dedup_id": f"{self.prefix}-create-{account_id}", "account_id": account_id, "asset": asset}
            for account_id in self.account_ids
        ]
        legs = [{"account_id": account_id, "amount": str(opening_amount), "asset": asset} for account_id in self.account_ids]
        commands.append({"type": "batch_operation", "dedup_id": f"{self.prefix}-fund", "legs": legs})
        status, answer, _ = self._send_until_answered("/v1/commands", {"commands": commands}, time.monotonic() + 60, 0)
        assert status == 200 and all(result["status"] == 200 for result in answer["results"]), answer

    def start(self) -> None:
        self._stop.clear()
        for number in range(self.threads):
            thread = threading.Thread(target=self._client, args=(number,), name=f"workload-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, drain_s: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(drain_s + request_timeout_s * 2)
        self._threads.clear()

    def acknowledged_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for entry in self.acknowledged.values() if entry.acknowledged_at >= moment)

    def first_acknowledged_after(self, moment: float) -> float | None:
        """When the first answer came to an attempt sent after ``moment``: writes work again."""
        with self._lock:
            times = [entry.acknowledged_at for entry in self.acknowledged.values() if entry.attempt_started_at >= moment]
        return min(times) if times else None

    def _client(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            source, target = rng.sample(self.account_ids, 2)
            body = {
                "dedup_id": f"{self.prefix}-{self.seed}-{number}-{sequence}",
                "from_account_id": source,
                "to_account_id": target,
                "amount": f"{rng.randrange(1, 50)}.{rng.randrange(100):02d}",
                "asset": asset,
            }
            with self._lock:
                self.unknown[body["dedup_id"]] = body
            # Keep trying this command (same dedup_id, same payload) while the load runs.
            answered = self._send_until_answered("/v1/transfers", body, None, number)
            if answered is None:
                continue  # stopped while the cluster did not answer: stays unknown
            status, answer, attempt_started_at = answered
            with self._lock:
                del self.unknown[body["dedup_id"]]
                self.acknowledged[body["dedup_id"]] = Acknowledged(body, status, answer, time.monotonic(), attempt_started_at)

    def _send_until_answered(self, path: str, body: dict[str, Any], deadline: float | None, start: int) -> Any:
        attempt = start
        with httpx.Client(timeout=request_timeout_s) as client:
            while True:
                url = self.urls[attempt % len(self.urls)]
                started = time.monotonic()
                try:
                    response = client.post(url + path, json=body)
                    if response.status_code in (200, 409):
                        return response.status_code, response.json(), started
                    self.failures[f"HTTP {response.status_code}"] += 1
                    if response.status_code != 503:
                        raise AssertionError(f"unexpected answer {response.status_code}: {response.text}")
                except httpx.TransportError as error:
                    self.failures[type(error).__name__] += 1
                attempt += 1
                if deadline is None and self._stop.is_set():
                    return None
                if deadline is not None and time.monotonic() > deadline:
                    raise AssertionError(f"no answer for {path} before the deadline")
                time.sleep(retry_pause_s)


@dataclass
class Verdict:
    acknowledged: int
    settled_unknown: int
    lost: int
    duplicated: int
    changed_outcomes: int
    conservation_ok: bool
    replicas_agree: bool
    chain_ok: bool
    events: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check(workload: Workload, urls: list[str], settle_s: float = 60.0) -> Verdict:
    """Hold the cluster to what it acknowledged (see the module docstring)."""
    problems: list[str] = []
    deadline = time.monotonic() + settle_s
    changed = 0
    applied: set[str] = set()
    rejected: set[str] = set()
    for dedup_id, entry in list(workload.acknowledged.items()):
        status, answer, _ = workload._send_until_answered("/v1/transfers", entry.body, deadline, hash(dedup_id))
        if (status, answer) != (entry.status, entry.answer):
            changed += 1
            problems.append(f"{dedup_id}: answered {entry.status} {entry.answer}, now {status} {answer}")
        (applied if entry.status == 200 else rejected).add(dedup_id)
    for dedup_id, body in list(workload.unknown.items()):
        first = workload._send_until_answered("/v1/transfers", body, deadline, hash(dedup_id))[:2]
        again = workload._send_until_answered("/v1/transfers", body, deadline, hash(dedup_id) + 1)[:2]
        if first != again:
            problems.append(f"{dedup_id}: an unknown command answered {first} then {again}")
        (applied if first[0] == 200 else rejected).add(dedup_id)

    heads = _converged_heads(urls, deadline)
    replicas_agree = len({(head["seq"], head["hash"]) for head in heads}) == 1
    if not replicas_agree:
        problems.append(f"replicas disagree: {heads}")
    events = _all_events(urls[0])
    seen = Counter(
        event["dedup_id"] for event in events if event["type"] == "transferred" and event["dedup_id"].startswith(workload.prefix)
    )
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    lost = len(applied - set(seen))
    if duplicated:
        problems.append(f"{duplicated} transfers applied more than once")
    if lost:
        problems.append(f"{lost} acknowledged transfers are not in the history")
    wrongly_applied = rejected & set(seen)
    if wrongly_applied:
        problems.append(f"{len(wrongly_applied)} rejected transfers are in the history")
    chain_ok = [event["seq"] for event in events] == list(range(1, len(events) + 1)) and all(
        later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(events)
    )
    if not chain_ok:
        problems.append("the event history is not a gapless chain")
    balances = httpx.get(f"{urls[0]}/v1/accounts", params={"ids": ",".join(workload.account_ids)}, timeout=10).json()["accounts"]
    total = sum(Decimal(view["available"]) for view in balances.values())
    conservation_ok = total == workload.deposited
    if not conservation_ok:
        problems.append(f"balances add up to {total}, deposited {workload.deposited}")
    return Verdict(
        acknowledged=len(workload.acknowledged),
        settled_unknown=len(workload.unknown),
        lost=lost,
        duplicated=duplicated,
        changed_outcomes=changed,
        conservation_ok=conservation_ok,
        replicas_agree=replicas_agree,
        chain_ok=chain_ok,
        events=len(events),
        problems=problems,
    )


def _converged_heads(urls: list[str], deadline: float) -> list[dict[str, Any]]:
    """Every replica's head once they all reached the same seq (or the deadline passed)."""
    while True:
        heads = []
        for url in urls:
            try:
                heads.append(httpx.get(f"{url}/v1/audit/head", timeout=request_timeout_s).json())
            except (httpx.TransportError, ValueError):
                heads.append({"seq": -1, "hash": "unreachable", "url": url})
        if len({(head["seq"], head["hash"]) for head in heads}) == 1 or time.monotonic() > deadline:
            return heads
        time.sleep(0.2)


def _all_events(url: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = httpx.get(f"{url}/v1/events", params={"from_seq": len(events) + 1, "limit": 10000}, timeout=30).json()["events"]
        if not page:
            return events
        events.extend(page)
