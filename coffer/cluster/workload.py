"""A workload that records what a cluster acknowledged, and a checker that holds it to that.

Used by the fault tests, ``coffer chaos`` and ``coffer bench failover``. Client threads send
transfers to the nodes (each thread starts at another node and moves to the next one on a
network error, a 503 or a 507 — that node's disk is full), retrying an unanswered command with
the same dedup_id and payload until a deadline. What the cluster answered (200 or 409) is
*acknowledged*; what never got an answer is *unknown*.

The checker then proves, from the cluster's answers alone:
- every acknowledged command, sent again, answers exactly what it answered (nothing lost, no
  outcome changed); every unknown one gets an answer (and keeps it);
- the event history holds each applied dedup_id exactly once and no rejected one (nothing
  duplicated); seq is gapless and every event's ``prev_hash`` is the previous ``hash``;
- money is conserved: the balances add up to what was deposited;
- every replica reports the same chain head at the same seq.

With ``shards`` > 1 the cluster's nodes route every command to the shards that own its accounts
(accounts land on every shard, so about half of the commands cross shards), and the checker
holds every shard to the same rules, plus those of :mod:`coffer.cluster.shard_checks`: every
cross-shard transaction finished the same way on every shard it touched, as its commit point
decided, and nothing is in flight but client-held tries still waiting for their confirm.

The history comes from a replica whose event store starts at seq 1; when every replica was
rebuilt from a shared snapshot, from the stream itself, replayed through a fresh state machine
(:func:`history_from_log`), whose head must then be the replicas' head.
"""

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from coffer.cluster import shard_checks
from coffer.http import kept_client
from coffer.txn.shard_map import ShardMap

asset = "USD"
# Every balance is beyond 64 bits (10^27 minor units), and now and then a transfer is too: the wide
# integers of every layer are exercised under faults, not only the common case.
opening_amount = Decimal("10000000000000000000000000.00")
wide_amount_chance = 0.05
request_timeout_s = 5.0
retry_pause_s = 0.05
resenders = 16  # the checker's concurrent resends: a node gathers concurrent commands into one log entry


@dataclass
class Acknowledged:
    path: str
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
    mixed: bool = False  # all kinds of commands, not only transfers
    shards: int = 1  # the cluster's shards: with more than one, the map comes from GET /v1/shards
    shard_map: ShardMap | None = None
    # Per node URL: cross-shard commands sent to it and not yet answered (it coordinates them).
    cross_shard_in_flight: Counter[str] = field(default_factory=Counter)
    cross_shard_sent: int = 0
    cross_shard_txns: set[str] = field(default_factory=set)  # client txn_ids of tries across shards
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)
    unknown: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    last_refusals: dict[str, str] = field(default_factory=dict)  # per node: its last 503/507 or error
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def account_ids(self) -> list[str]:
        return [f"{self.prefix}-{number}" for number in range(self.accounts)]

    @property
    def deposited(self) -> int:
        """Minor units deposited over all accounts."""
        return _units(str(opening_amount)) * self.accounts

    def setup(self) -> None:
        commands: list[dict[str, Any]] = [
            {"type": "create_account", "dedup_id": f"{self.prefix}-create-{account_id}", "account_id": account_id, "asset": asset}
            for account_id in self.account_ids
        ]
        legs = [{"account_id": account_id, "amount": str(opening_amount), "asset": asset} for account_id in self.account_ids]
        fund = {"type": "batch_operation", "dedup_id": f"{self.prefix}-fund", "legs": legs}
        # Across shards, a node runs a command that spans shards next to the others: the accounts
        # must exist before the deposit that reaches every shard.
        rounds = [[*commands, fund]] if self.shards == 1 else [commands, [fund]]
        for items in rounds:
            status, answer, _ = self._send_until_answered("/v1/commands", {"commands": items}, time.monotonic() + 60, 0)
            assert status == 200 and all(result["status"] == 200 for result in answer["results"]), answer
        if self.shards > 1:
            self.shard_map = ShardMap.from_json(kept_client.client().get(f"{self.urls[0]}/v1/shards", timeout=request_timeout_s).json()["map"])
            assert self.shard_map.shards == self.shards, self.shard_map

    def crosses_shards(self, path: str, body: dict[str, Any]) -> bool:
        """Whether the command touches several shards (so the node it reaches coordinates it)."""
        if self.shard_map is None:
            return False
        if path in ("/v1/tcc/confirm", "/v1/tcc/cancel"):
            return body["txn_id"] in self.cross_shard_txns
        ids = [body[key] for key in ("from_account_id", "to_account_id") if key in body]
        ids += [leg["account_id"] for leg in body.get("legs", ())]
        return len({self.shard_map.shard_of(account_id) for account_id in ids}) > 1

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
        commands = _Commands(self, number, rng)
        while not self._stop.is_set():
            path, body = commands.next()
            with self._lock:
                self.unknown[body["dedup_id"]] = (path, body)
            # Keep trying this command (same dedup_id, same payload) while the load runs.
            answered = self._send_until_answered(path, body, None, number)
            if answered is None:
                continue  # stopped while the cluster did not answer: stays unknown
            status, answer, attempt_started_at = answered
            commands.answered(path, body, status)
            with self._lock:
                del self.unknown[body["dedup_id"]]
                self.acknowledged[body["dedup_id"]] = Acknowledged(
                    path, body, status, answer, time.monotonic(), attempt_started_at
                )

    def _send_until_answered(self, path: str, body: dict[str, Any], deadline: float | None, start: int) -> Any:
        attempt = start
        client = kept_client.client()
        while True:
            url = self.urls[attempt % len(self.urls)]
            started = time.monotonic()
            crossing = self.crosses_shards(path, body)
            if crossing:
                with self._lock:
                    self.cross_shard_in_flight[url] += 1
                    self.cross_shard_sent += 1
            try:
                response = client.post(url + path, json=body, timeout=request_timeout_s)
                if response.status_code in (200, 409):
                    return response.status_code, response.json(), started
                self.failures[f"HTTP {response.status_code}"] += 1
                self.last_refusals[url] = f"{response.status_code} {response.text[:300]}"
                # 503: unavailable for now; 507: that node's disk is full. Another node may take it.
                if response.status_code not in (503, 507):
                    raise AssertionError(f"unexpected answer {response.status_code}: {response.text}")
            except httpx.TransportError as error:
                self.failures[type(error).__name__] += 1
                self.last_refusals[url] = type(error).__name__
            finally:
                if crossing:
                    with self._lock:
                        self.cross_shard_in_flight[url] -= 1
            attempt += 1
            if deadline is None and self._stop.is_set():
                return None
            if deadline is not None and time.monotonic() > deadline:
                raise AssertionError(f"no answer for {path} before the deadline; last answers: {self.last_refusals}")
            time.sleep(retry_pause_s)


class _Commands:
    """What one client thread sends next: transfers, or with ``mixed`` every kind of command.

    Every command moves money between the workload's own accounts only, so the sum of
    available + reserved + pending_out over them stays what was deposited, whatever applies.
    """

    def __init__(self, workload: Workload, number: int, rng: random.Random) -> None:
        self.workload = workload
        self.number = number
        self.rng = rng
        self.sequence = 0
        self.open_txn: str | None = None  # a TCC try of this thread that still needs phase two
        self.reserved: list[tuple[str, str]] = []  # (account, reservation) this thread holds
        self.transfers: list[str] = []  # applied transfers this thread may compensate

    def _dedup_id(self) -> str:
        self.sequence += 1
        return f"{self.workload.prefix}-{self.workload.seed}-{self.number}-{self.sequence}"

    def _amount(self) -> str:
        if self.rng.random() < wide_amount_chance:
            return f"{self.rng.randrange(10**18, 10**21)}.{self.rng.randrange(100):02d}"
        return f"{self.rng.randrange(1, 50)}.{self.rng.randrange(100):02d}"

    def next(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        source, target = rng.sample(self.workload.account_ids, 2)
        dedup_id = self._dedup_id()
        if self.open_txn is not None:
            txn, self.open_txn = self.open_txn, None
            return rng.choice(("/v1/tcc/confirm", "/v1/tcc/cancel")), {"dedup_id": dedup_id, "txn_id": txn}
        kind = rng.choice(("transfer", "batch", "reserve", "release", "tcc", "compensate")) if self.workload.mixed else "transfer"
        if kind == "batch":
            amount = self._amount()
            legs = [
                {"account_id": source, "amount": f"-{amount}", "asset": asset},
                {"account_id": target, "amount": amount, "asset": asset},
            ]
            return "/v1/batch-operations", {
                "dedup_id": dedup_id,
                "legs": legs,
                "preconditions": [{"account_id": source, "min_balance": "0"}],
            }
        if kind == "reserve":
            reservation = f"r{self.number}-{self.sequence}"
            return "/v1/reservations", {
                "dedup_id": dedup_id,
                "account_id": source,
                "reservation_id": reservation,
                "amount": self._amount(),
            }
        if kind == "release" and self.reserved:
            account_id, reservation = self.reserved.pop()
            return "/v1/releases", {"dedup_id": dedup_id, "account_id": account_id, "reservation_id": reservation}
        if kind == "tcc":
            amount = self._amount()
            legs = [
                {"account_id": source, "amount": f"-{amount}", "asset": asset},
                {"account_id": target, "amount": amount, "asset": asset},
            ]
            return "/v1/tcc/try", {"dedup_id": dedup_id, "txn_id": f"txn-{dedup_id}", "legs": legs, "timeout_s": 60}
        if kind == "compensate" and self.transfers:
            return "/v1/compensations", {
                "dedup_id": dedup_id,
                "original_dedup_id": self.transfers.pop(rng.randrange(len(self.transfers))),
            }
        body = {
            "dedup_id": dedup_id,
            "from_account_id": source,
            "to_account_id": target,
            "amount": self._amount(),
            "asset": asset,
        }
        return "/v1/transfers", body

    def answered(self, path: str, body: dict[str, Any], status: int) -> None:
        if status != 200:
            return
        if path == "/v1/tcc/try":
            self.open_txn = body["txn_id"]
            if self.workload.crosses_shards(path, body):
                with self.workload._lock:
                    self.workload.cross_shard_txns.add(body["txn_id"])
        elif path == "/v1/reservations":
            self.reserved.append((body["account_id"], body["reservation_id"]))
        elif path == "/v1/transfers":
            self.transfers.append(body["dedup_id"])


@dataclass
class Verdict:
    limit_violations: int
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
    in_flight: int = 0  # cross-shard tries still open at the end: client-held, waiting for their confirm

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    workload: Workload,
    urls: list[str],
    settle_s: float = 60.0,
    history: Callable[[int], list[dict[str, Any]]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Verdict:
    """Hold the cluster to what it acknowledged (see the module docstring).

    ``settle_s`` bounds the wait for each answer (a long run resends hundreds of thousands of
    commands: a bound on the whole check would fail at the first 503 after it). ``history``
    gives the whole event history when no replica holds all of it (every one was rebuilt from a
    shared snapshot) of the shard it is given: :func:`history_from_log` replays it from the stream.
    ``progress`` receives a line as each step ends, with how long it took.
    """
    problems: list[str] = []

    def report(step: str, since: float) -> None:
        if progress is not None:
            progress(f"check: {step} in {time.monotonic() - since:.1f} s")

    def settle_by() -> float:
        return time.monotonic() + settle_s

    changed = 0
    compensations = {dedup_id for dedup_id, entry in workload.acknowledged.items() if entry.path == "/v1/compensations"}
    compensations |= {dedup_id for dedup_id, (path, _) in workload.unknown.items() if path == "/v1/compensations"}
    applied: dict[str, tuple[str, dict[str, Any], Any]] = {}  # dedup_id -> (path, body, answer)
    rejected: set[str] = set()
    started = time.monotonic()

    def resend_acknowledged(item: tuple[str, Acknowledged]) -> tuple[str, Any]:
        dedup_id, entry = item
        return dedup_id, workload._send_until_answered(entry.path, entry.body, settle_by(), hash(dedup_id))[:2]

    def settle_unknown(item: tuple[str, tuple[str, dict[str, Any]]]) -> tuple[str, Any]:
        dedup_id, (path, body) = item
        first = workload._send_until_answered(path, body, settle_by(), hash(dedup_id))[:2]
        again = workload._send_until_answered(path, body, settle_by(), hash(dedup_id) + 1)[:2]
        return dedup_id, (first, again)

    # Each command's answer depends only on what its dedup_id holds, so they are sent again side by
    # side: one at a time, a sharded run's checker (every cross-shard retry is several requests
    # inside the cluster) took longer than the run.
    with ThreadPoolExecutor(resenders) as pool:
        acknowledged = list(workload.acknowledged.items())
        try:
            for dedup_id, (status, answer) in pool.map(resend_acknowledged, acknowledged):
                entry = workload.acknowledged[dedup_id]
                if (status, answer) != (entry.status, entry.answer):
                    changed += 1
                    problems.append(f"{dedup_id}: answered {entry.status} {entry.answer}, now {status} {answer}")
                if entry.status == 200:
                    applied[dedup_id] = (entry.path, entry.body, entry.answer)
                else:
                    rejected.add(dedup_id)
            if not problems:
                for dedup_id, (first, again) in pool.map(settle_unknown, list(workload.unknown.items())):
                    if first != again:
                        problems.append(f"{dedup_id}: an unknown command answered {first} then {again}")
                    if first[0] == 200:
                        applied[dedup_id] = (workload.unknown[dedup_id][0], workload.unknown[dedup_id][1], first[1])
                    else:
                        rejected.add(dedup_id)
        except AssertionError as error:
            problems.append(f"{error} (failures seen: {dict(workload.failures)})")
    report(f"sent again {len(acknowledged)} acknowledged and settled {len(workload.unknown)} unknown commands", started)

    sharded = workload.shard_map is not None
    if sharded:
        # Coordinators' transactions a killed node left in doubt are finished by recovery.
        started = time.monotonic()
        problems += shard_checks.wait_for_recovery(urls, workload.shards, settle_by())
        report("waited for recovery to finish the transactions left in doubt", started)
    started = time.monotonic()
    histories: list[list[dict[str, Any]]] = []
    replicas_agree = chain_ok = True
    for shard in range(workload.shards):
        shard_param = shard if sharded else None
        where = f"shard {shard}: " if sharded else ""
        heads = _converged_heads(urls, settle_by(), shard_param)
        agree = len({(head["seq"], head["hash"]) for head in heads}) == 1
        if not agree:
            problems.append(f"{where}replicas disagree: {heads}")
        events = _full_history(urls, shard_param)
        if (not events or events[0]["seq"] != 1) and history is not None:
            events = history(shard)
            if events and agree and (events[-1]["seq"], events[-1]["hash"]) != (heads[0]["seq"], heads[0]["hash"]):
                agree = False
                problems.append(
                    f"{where}the replicas' head {heads[0]} is not the head of the stream's history {events[-1]['seq']}"
                )
        linked = [event["seq"] for event in events] == list(range(1, len(events) + 1)) and all(
            later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(events)
        )
        if not linked:
            problems.append(f"{where}the event history is not a gapless chain")
        replicas_agree = replicas_agree and agree
        chain_ok = chain_ok and linked
        histories.append(events)
    events = [event for shard_events in histories for event in shard_events]
    report(f"read the heads and the histories of {workload.shards} shard(s), {len(events)} events", started)
    own = f"{workload.prefix}-{workload.seed}-"
    # A dedup_id is unique per shard (each has its own dedup store): a compensation, sent to every
    # shard, leaves a null compensation on each shard that never held its original.
    seen_per_shard = [
        Counter(event["dedup_id"] for event in shard_events if (event["dedup_id"] or "").startswith(own))
        for shard_events in histories
    ]
    seen = set().union(*seen_per_shard)
    duplicated = sum(count - 1 for shard_seen in seen_per_shard for count in shard_seen.values() if count > 1)
    if sharded:
        assert workload.shard_map is not None
        ledger = shard_checks.TransactionLedger.from_histories(histories)
        duplicated += ledger.duplicated
        crossed = {dedup_id: item for dedup_id, item in applied.items() if shard_checks.crossed_shards(item[2])}
        lost = len(set(applied) - set(crossed) - seen)
        lost += sum(not ledger.holds(path, body, answer, workload.shard_map) for path, body, answer in crossed.values())
        started = time.monotonic()
        problems += ledger.disagreements(urls, settle_by())
        report(f"held {len(ledger.tried)} cross-shard transactions to their commit points", started)
        in_flight = len(ledger.in_flight())
    else:
        lost = len(set(applied) - seen)
        in_flight = 0
    if duplicated:
        problems.append(f"{duplicated} transfers applied more than once")
    if lost:
        problems.append(f"{lost} acknowledged transfers are not in the history")
    wrongly_applied = rejected & seen
    if sharded:
        # A compensation refused by the shard of its original may still be a null compensation on
        # the others (see above): only the original's shard decides, so it is not counted here.
        wrongly_applied -= {dedup_id for dedup_id in wrongly_applied if dedup_id in compensations}
    if wrongly_applied:
        problems.append(f"{len(wrongly_applied)} rejected transfers are in the history")
    outside = [
        (event["seq"], view["account_id"])
        for event in events
        for view in event["accounts"]
        if _units(view["available"]) < _units(view["lower_limit"])
        or (view["upper_limit"] is not None and _total(view) > _units(view["upper_limit"]))
    ]
    if outside:
        problems.append(f"accounts outside their limits after events: {outside[:5]}")
    balances = kept_client.client().get(f"{urls[0]}/v1/accounts", params={"ids": ",".join(workload.account_ids)}, timeout=10).json()["accounts"]
    # Money in flight counts where it is held: a try's pending_out until its confirm or cancel.
    totals: Counter[str] = Counter()
    for view in balances.values():
        totals[view["asset"]] += (
            _units(view["available"])
            + sum(map(_units, view["reservations"].values()))
            + sum(map(_units, view["pending_out"].values()))
        )
    conservation_ok = dict(totals) == {asset: workload.deposited} and len(balances) == workload.accounts
    if not conservation_ok:
        problems.append(
            f"balances add up to {dict(totals)} over {len(balances)} accounts, deposited {workload.deposited} {asset}"
        )
    return Verdict(
        limit_violations=len(outside),
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
        in_flight=in_flight,
    )


def _units(text: str) -> int:
    """Exact minor units of an amount the API printed at full scale (Decimal's default context
    keeps 28 digits, fewer than a wide balance has: integers keep them all)."""
    return int(text.replace(".", ""))


def _total(view: dict[str, Any]) -> int:
    sections = (view["reservations"], view["pending_in"], view["pending_out"])
    return _units(view["available"]) + sum(_units(amount) for section in sections for amount in section.values())


def _shard_params(shard: int | None) -> dict[str, int]:
    return {} if shard is None else {"shard": shard}


def _converged_heads(urls: list[str], deadline: float, shard: int | None = None) -> list[dict[str, Any]]:
    """Every replica's head (of ``shard``) once they all reached the same seq (or the deadline passed)."""
    while True:
        heads = []
        for url in urls:
            try:
                head = kept_client.client().get(f"{url}/v1/audit/head", params=_shard_params(shard), timeout=request_timeout_s).json()
            except (httpx.TransportError, ValueError):
                head = None
            if not isinstance(head, dict) or "seq" not in head:
                head = {"seq": -1, "hash": f"no head: {head}", "url": url}
            heads.append(head)
        if len({(head["seq"], head["hash"]) for head in heads}) == 1 or time.monotonic() > deadline:
            return heads
        time.sleep(0.2)


def _all_events(url: str, shard: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        from_seq = events[-1]["seq"] + 1 if events else 1
        params = {"from_seq": from_seq, "limit": 10000, **_shard_params(shard)}
        page = kept_client.client().get(f"{url}/v1/events", params=params, timeout=30).json()["events"]
        if not page:
            return events
        events.extend(page)


def _full_history(urls: list[str], shard: int | None = None) -> list[dict[str, Any]]:
    """The history of a replica that holds all of it (one rebuilt from a shared snapshot does not)."""
    best: list[dict[str, Any]] = []
    for url in urls:
        events = _all_events(url, shard)
        if events and events[0]["seq"] == 1:
            return events
        best = best or events
    return best


def history_from_log(servers: list[str], stream: str) -> list[dict[str, Any]]:
    """The whole event history, replayed from the stream through a fresh state machine.

    Every replica applies the same log with the same code, so this is the history each of them
    derives; it serves when no replica's event store starts at seq 1. Needs an uncompacted stream.
    """
    from coffer.core.entries import decode_entry
    from coffer.core.state_machine import StateMachine
    from coffer.http.views import event_view
    from coffer.log.jetstream import JetStreamLog

    machine = StateMachine()
    events: list[dict[str, Any]] = []
    with JetStreamLog(servers, stream=stream, replicas=len(servers)) as log:
        if log.first_index > 1:
            return []
        for record in log.read(1):
            entry = decode_entry(record.payload)
            _, records = machine.apply(record.index, record.time_ms, entry.commands, entry.actors, entry.protocol_version)
            events.extend(event_view(item) for item in records)
    return events
