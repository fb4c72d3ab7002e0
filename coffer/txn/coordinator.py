"""Atomic movements across shards: two phases over the shards' own TCC primitives.

A transfer between shards, or a batch operation with legs (or preconditions) on several shards,
runs as one transaction:

1. **Try** on every participant shard at once: a TCC try of the legs (and preconditions) on that
   shard's accounts. Money to leave moves from ``available`` to ``pending_out``, money to arrive is
   booked as ``pending_in``; every limit and precondition is checked there, with the hold.
2. **Decide** at the commit point: a ``decide`` command in one shard's log (the first decision
   written wins). Commit if every try succeeded, else abort with the first rejection as reason.
3. **Confirm or cancel** on every participant.

The commit point is the shard of the command's ``dedup_id`` (the same hash as for accounts). It
need not be a participant: what matters is that every coordinator and every recovery task finds
it from the transaction alone, and the id of a cross-shard transaction says it:
``cx:<commit point>:<SHA-256 of the dedup_id>``. (A participant chosen from the accounts would
save a round for some commands, but a compensation, a retry and the recovery task know only the
ids, and the dedup_id's shard spreads the decisions evenly.)

Coordinators keep no state: every shard-level ``dedup_id`` derives from the client's
(``<txn_id>.try``, ``.decide``, ``.confirm``, ``.cancel``), so a retry of the same command, also
after a coordinator crashed between any two steps, replays each step and answers the outcome that
was decided; nothing moves twice. A recovery task (:meth:`Coordinator.recover`) looks for tries
open longer than a bound on its shards (each shard is scanned by a bounded set of routers, see
:mod:`coffer.txn.scanners`), proposes abort at the commit point (which only wins if nothing was
decided), and finishes the transaction as decided. No participant ever decides alone.

**Client-held TCC tries across shards.** A client's ``tcc/try`` whose legs span shards runs the
same machinery, split in time: the try answers once every participant holds its part, and the
client's later ``tcc/confirm`` or ``tcc/cancel`` (naming the client's ``txn_id``) writes the
decision at the commit point and finishes every participant. Its transaction id derives from the
client's ``txn_id``, not its ``dedup_id``, since confirm and cancel know only that:
``cx:<commit point>:tcc:<SHA-256>``, the commit point being the shard of the client's ``txn_id``.
Before any hold, the coordinator *claims* the id at the commit point: a ``decide`` record under
``<txn_id>.claim`` whose dedup store keeps a fingerprint of the client's request (its dedup_id
and payload) and whose log time starts the client's timeout. The first claim wins, so a second try
under the same ``txn_id`` answers ``TXN_EXISTS`` (or ``DEDUP_ID_REUSED``) before it holds any money,
and a confirm reads the deadline from the claim. The participants' own tries carry no deadline: no
shard may expire its part alone while another confirms. The client's timeout is one decision for
the whole transaction: a confirm after it, or the recovery task once it passed, proposes abort at
the commit point (the first decision wins), and a confirm that loses answers
``TXN_ALREADY_CANCELLED``, as an expired try on one shard does. Recovery tells these tries from the
coordinator's own by their id: a client-held try waiting for its confirm before its deadline is
left alone, unless its commit point has already decided (a coordinator died while finishing).

While a transaction is in flight every unit of money is in exactly one place: in the source
account's ``pending_out`` until confirm (it counts in ``available + reserved + pending_out``), and
then in the target's ``available``; ``pending_in`` is never counted. So the sum over all shards
only changes by deposits and withdrawals, at every moment.
"""

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coffer.core.commands import transaction_id_prefix
from coffer.core.errors import ErrorCode
from coffer.txn.scanners import EveryShard, RecoveryScope
from coffer.txn.shard_map import ShardMap
from coffer.txn.shards import ShardClients, ShardUnavailable

logger = logging.getLogger(__name__)

txn_prefix = transaction_id_prefix  # reserved: clients may not use it for txn_ids or dedup_ids
in_doubt_after_s = 5.0  # a try open this long without its coordinator is resolved by recovery
recovery_interval_s = 1.0
recovery_batch_max = 1_000  # open tries fetched from one shard per round

# Which rejection explains an abort best: the first failing check in a single-shard command's
# order (existence and state, then conditions, then limits), then the command's own order.
_step_of_code = {
    ErrorCode.ACCOUNT_NOT_FOUND: 3,
    ErrorCode.ACCOUNT_DELETED: 3,
    ErrorCode.ACCOUNT_LOCKED: 3,
    ErrorCode.ASSET_MISMATCH: 3,
    ErrorCode.PRECONDITION_FAILED: 4,
    ErrorCode.LOWER_LIMIT_EXCEEDED: 5,
    ErrorCode.UPPER_LIMIT_EXCEEDED: 5,
    ErrorCode.BALANCE_OUT_OF_RANGE: 5,
    ErrorCode.VELOCITY_LIMIT_EXCEEDED: 6,  # checked last, with the movement
}
_malformed = {ErrorCode.INVALID_AMOUNT, ErrorCode.INVALID_REQUEST}
claims_cached_max = 100_000  # claims a coordinator remembers (they never change; re-read when dropped)
tcc_marker = "tcc"  # the third part of a client-held try's id
claim_suffix = ".claim"
# The abort reasons of a client-held try that existed (cancelled, expired, or left incomplete):
# a confirm then answers TXN_ALREADY_CANCELLED. Any other reason is a rejected try, which never
# existed, as on one shard: confirm and cancel answer TXN_NOT_FOUND.
_held_abort_codes = {ErrorCode.TXN_ALREADY_CANCELLED.value, ErrorCode.TXN_ABORTED.value}


def txn_id_of(dedup_id: str, commit_point: int) -> str:
    return f"{txn_prefix}{commit_point}:{hashlib.sha256(dedup_id.encode()).hexdigest()[:40]}"


def commit_point_of(txn_id: str) -> int:
    return int(txn_id.split(":")[1])


def tcc_txn_id_of(client_txn_id: str, commit_point: int) -> str:
    """The id of a client-held cross-shard TCC try: from the client's txn_id, which confirm names."""
    digest = hashlib.sha256(b"tcc\0" + client_txn_id.encode()).hexdigest()[:40]
    return f"{txn_prefix}{commit_point}:{tcc_marker}:{digest}"


def is_client_held(txn_id: str) -> bool:
    """A try the client confirms or cancels (a cross-shard ``tcc/try``), not a coordinator's own."""
    parts = txn_id.split(":")
    return len(parts) == 4 and parts[2] == tcc_marker and "." not in parts[3]  # not its claim


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _time_ms(text: str) -> int:
    """The milliseconds of a view's RFC 3339 time (``time_text``)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


class PlanError(ValueError):
    """The command cannot run across shards as it is (a 422)."""


@dataclass
class Plan:
    """A command cut along shard lines: one try per participant."""

    dedup_id: str
    txn_id: str
    commit_point: int
    tries: dict[int, dict[str, Any]]  # shard -> the try's legs and preconditions
    account_order: list[str]  # the accounts in the command's order, for the answer
    shard_order: list[int] = field(default_factory=list)  # participants in the command's order


def plan(kind: str, body: dict[str, Any], shard_map: ShardMap) -> Plan | None:
    """The cross-shard plan of a transfer or batch operation, or None if one shard holds it all."""
    legs: list[dict[str, Any]] = []
    conditions: list[dict[str, Any]] = []
    if kind == "transfer":
        amount = body["amount"]
        legs = [
            {"account_id": body["from_account_id"], "amount": f"-{amount}", "asset": body["asset"]},
            {"account_id": body["to_account_id"], "amount": amount, "asset": body["asset"]},
        ]
        for metadata_leg in legs:
            if body.get("metadata") is not None:
                metadata_leg["metadata"] = body["metadata"]
        if body.get("expected_from_balance") is not None:
            conditions.append({"account_id": body["from_account_id"], "expected_balance": body["expected_from_balance"]})
        if body.get("expected_to_balance") is not None:
            conditions.append({"account_id": body["to_account_id"], "expected_balance": body["expected_to_balance"]})
    elif kind == "batch_operation":
        legs = list(body["legs"])
        conditions = list(body.get("preconditions") or [])
    else:
        return None
    order: list[int] = []
    for item in [*legs, *conditions]:
        shard = shard_map.shard_of(item["account_id"])
        if shard not in order:
            order.append(shard)
    if len(order) <= 1:
        return None
    leg_shards = {shard_map.shard_of(leg["account_id"]) for leg in legs}
    for condition in conditions:
        if shard_map.shard_of(condition["account_id"]) not in leg_shards:
            # A try holds money on the accounts it moves; a condition on a shard the command
            # moves nothing on could only be checked, not held until the decision.
            raise PlanError(
                f"the precondition on {condition['account_id']} names a shard this command moves no money on; "
                "a precondition of a cross-shard command must be on an account of one of its legs' shards"
            )
    dedup_id = body["dedup_id"]
    commit_point = shard_map.shard_of(dedup_id)
    txn_id = txn_id_of(dedup_id, commit_point)
    tries: dict[int, dict[str, Any]] = {shard: {"legs": [], "preconditions": []} for shard in order}
    for leg in legs:
        tries[shard_map.shard_of(leg["account_id"])]["legs"].append(leg)
    for condition in conditions:
        tries[shard_map.shard_of(condition["account_id"])]["preconditions"].append(condition)
    accounts: list[str] = []
    for item in [*legs, *conditions]:
        if item["account_id"] not in accounts:
            accounts.append(item["account_id"])
    return Plan(dedup_id, txn_id, commit_point, tries, accounts, order)


@dataclass
class TccPlan:
    """A client's TCC try with legs on several shards."""

    client_txn_id: str
    timeout_s: int | None
    cut: Plan  # the tries per shard; its txn_id and commit point are the client-held ones
    fingerprint: str  # the request (dedup_id and payload), kept by the claim
    dedup_fingerprint: str  # the dedup_id alone: tells DEDUP_ID_REUSED from TXN_EXISTS


def plan_tcc(body: dict[str, Any], shard_map: ShardMap) -> TccPlan | None:
    """The cross-shard plan of a (validated) TCC try, or None if one shard holds it all."""
    cut = plan("batch_operation", {"dedup_id": body["dedup_id"], "legs": body["legs"], "preconditions": body.get("preconditions")}, shard_map)
    if cut is None:
        return None
    client_txn_id = body["txn_id"]
    cut.commit_point = shard_map.shard_of(client_txn_id)
    cut.txn_id = tcc_txn_id_of(client_txn_id, cut.commit_point)
    payload = {key: body.get(key) for key in ("txn_id", "legs", "preconditions", "timeout_s")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    dedup_fingerprint = hashlib.sha256(body["dedup_id"].encode()).hexdigest()[:32]
    return TccPlan(client_txn_id, body.get("timeout_s"), cut, fingerprint, dedup_fingerprint)


@dataclass
class Claim:
    """What the commit point keeps of a client-held try: its request, participants and deadline."""

    request: str
    dedup: str
    participants: list[int]
    deadline_ms: int | None


class Outcome:
    """What the client is answered: a status and a body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


class Coordinator:
    def __init__(
        self, shards: ShardClients, shard_map: ShardMap, clock_ms: Callable[[], int] = _wall_clock_ms, scope: RecoveryScope | None = None
    ) -> None:
        self.shards = shards
        self.shard_map = shard_map
        # Which shards this coordinator's recovery scans: all of them, unless a registry of routers
        # shares the shards out (see :mod:`coffer.txn.scanners`).
        self.scope: RecoveryScope = scope if scope is not None else EveryShard()
        # The clock a client's timeout is judged by; the commit point's log time starts it.
        self.clock_ms = clock_ms
        self._first_seen: dict[tuple[int, str], float] = {}
        self._claims: dict[str, Claim] = {}  # claims never change once written
        self.recovered = 0

    # ------------------------------------------------------------------ the three phases

    async def run(self, plan_: Plan) -> Outcome:
        """Run (or replay) a cross-shard transaction to its end; ShardUnavailable if it cannot."""
        txn_id = plan_.txn_id
        participants = sorted(plan_.tries)
        answers, unknown = await self._try_all(plan_, participants, None)
        for _, answer in answers.values():
            if _code(answer) == ErrorCode.DEDUP_ID_REUSED:
                return Outcome(409, answer)  # another command under this dedup_id: nothing decided here
        if unknown:
            # Whether those tries hold money is unknown: decide nothing, the client retries (the
            # same dedup_id replays every step), or recovery aborts the transaction later.
            raise ShardUnavailable(unknown[0], "a participant's try has no known outcome")
        failures = [(shard, answers[shard][1]) for shard in plan_.shard_order if answers[shard][0] != 200]
        decision_body = self._decision_body(plan_, participants, failures)
        decision = await self._decide(plan_.commit_point, txn_id, decision_body)
        if decision["commit"]:
            return await self._finish_commit(plan_, participants)
        await self._finish_abort(txn_id, [shard for shard in participants if answers[shard][0] == 200])
        return _abort_outcome(txn_id, decision)

    async def _try_all(
        self, plan_: Plan, participants: list[int], timeout_s: int | None
    ) -> tuple[dict[int, tuple[int, dict[str, Any]]], list[int]]:
        """A try on every participant at once: the answers, and the shards whose answer is unknown."""
        txn_id = plan_.txn_id

        async def try_on(shard: int) -> tuple[int, dict[str, Any]]:
            work = plan_.tries[shard]
            body = {"dedup_id": f"{txn_id}.try", "txn_id": txn_id, "legs": work["legs"], "preconditions": work["preconditions"]}
            if timeout_s is not None:
                body["timeout_s"] = timeout_s
            return await self.shards.post(shard, "/v1/tcc/try", body)

        tried = await asyncio.gather(*(try_on(shard) for shard in participants), return_exceptions=True)
        answers: dict[int, tuple[int, dict[str, Any]]] = {}
        unknown: list[int] = []
        for shard, result in zip(participants, tried, strict=True):
            if isinstance(result, ShardUnavailable):
                unknown.append(shard)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers[shard] = result
        return answers, unknown

    @staticmethod
    def _decision_body(plan_: Plan, participants: list[int], failures: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Commit if no try failed, else abort with the rejection that explains it best."""
        txn_id = plan_.txn_id
        decision_body: dict[str, Any] = {"type": "decide", "dedup_id": f"{txn_id}.decide", "txn_id": txn_id, "commit": not failures}
        decision_body["participants"] = participants
        if failures:
            _, reason = min(failures, key=lambda item: (_step_of_code.get(_code(item[1]), 0), plan_.shard_order.index(item[0])))
            error = reason["error"]
            decision_body.update(
                reason_code=error["code"], reason_message=error.get("message", "")[:1024], reason_account_id=error.get("account_id")
            )
        return decision_body

    async def _decide(self, commit_point: int, txn_id: str, decision_body: dict[str, Any]) -> dict[str, Any]:
        """Write a decision at the commit point; return the decision that stands there."""
        status, answer = await self.shards.post(commit_point, "/v1/commands", {"commands": [decision_body]})
        (result,) = answer["results"]
        if result["status"] == 200:
            return {key: decision_body.get(key) for key in ("commit", "reason_code", "reason_message", "reason_account_id")}
        if _code(result) != ErrorCode.TXN_ALREADY_DECIDED:
            raise ShardUnavailable(commit_point, f"the commit point refused the decision: {result}")
        status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
        if status != 200 or view.get("decision") is None:
            raise ShardUnavailable(commit_point, f"the commit point has no decision for {txn_id}")
        return view["decision"]

    async def _finish_commit(self, plan_: Plan, participants: list[int]) -> Outcome:
        return await self._finish(plan_.txn_id, participants, plan_.account_order, plan_.shard_order[0], commit=True)

    async def _finish(
        self, txn_id: str, participants: list[int], account_order: list[str], first: int, *, commit: bool, answer_txn_id: str | None = None
    ) -> Outcome:
        """Confirm (or cancel) on every participant and answer as one command over all of them."""
        path, suffix = ("/v1/tcc/confirm", "confirm") if commit else ("/v1/tcc/cancel", "cancel")
        finished = await asyncio.gather(
            *(self.shards.post(shard, path, {"dedup_id": f"{txn_id}.{suffix}", "txn_id": txn_id}) for shard in participants)
        )
        answered: dict[int, tuple[int, dict[str, Any]]] = {}
        for shard, (status, answer) in zip(participants, finished, strict=True):
            if status == 200:
                answered[shard] = (status, answer)
            elif commit or _code(answer) != ErrorCode.TXN_NOT_FOUND:
                raise ShardUnavailable(shard, f"{path} of a decided transaction answered {status}: {answer}")
            # A cancel where no try arrived: nothing is held there (recovery cancels a late one).
        return await self._answer(txn_id if answer_txn_id is None else answer_txn_id, answered, account_order, first)

    async def _answer(
        self, txn_id: str, answered: dict[int, tuple[int, dict[str, Any]]], account_order: list[str], first: int
    ) -> Outcome:
        """The answer of a step every participant took: the accounts as of each shard's seq."""
        seqs: dict[int, int] = {}
        log_indexes: dict[int, int] = {}
        views: dict[str, dict[str, Any]] = {}
        for shard, (_, answer) in sorted(answered.items()):
            seqs[shard] = answer["seq"]
            log_indexes[shard] = answer["log_index"]
            # The step's own event holds the accounts right after it, unless an earlier finish
            # (recovery) did the work first (then this one changed nothing): read them as of its seq.
            for view in answer["accounts"]:
                views[view["account_id"]] = view
        for shard in seqs:
            ids = [account_id for account_id in account_order if self.shard_map.shard_of(account_id) == shard and account_id not in views]
            if not ids:
                continue
            status, answer = await self.shards.get(shard, "/v1/accounts", {"ids": ",".join(ids), "at_seq": seqs[shard]})
            if status != 200:
                raise ShardUnavailable(shard, f"reading the accounts after a step answered {status}")
            views.update(answer["accounts"])
        first = first if first in seqs or not seqs else min(seqs)
        return Outcome(
            200,
            {
                # seq and log_index of the first account's shard; the others in shard_seqs.
                "seq": seqs.get(first, 0),
                "log_index": log_indexes.get(first, 0),
                "accounts": [views[account_id] for account_id in account_order if account_id in views],
                "txn_id": txn_id,
                "shard_seqs": {str(shard): seq for shard, seq in sorted(seqs.items())},
                # Pass it to reads (token=…) to read this write on every shard it touched.
                "token": ",".join(f"{shard}:{seq}" for shard, seq in sorted(seqs.items())),
            },
        )

    # ------------------------------------------------------------------ client-held TCC tries

    def participant_timeout_s(self, tcc: TccPlan) -> int | None:
        """A participant's own deadline: none, so that no shard expires its part alone."""
        return None

    async def tcc_try(self, tcc: TccPlan) -> Outcome:
        """Claim the transaction at its commit point, then hold the legs on every participant."""
        cut = tcc.cut
        participants = sorted(cut.tries)
        conflict = await self._claim(tcc, participants)
        if conflict is not None:
            return conflict
        answers, unknown = await self._try_all(cut, participants, self.participant_timeout_s(tcc))
        if unknown:
            # The client retries the try (each step replays), or confirms or cancels: a confirm
            # commits only when every participant holds its part.
            raise ShardUnavailable(unknown[0], "a participant's try has no known outcome")
        failures = [(shard, answers[shard][1]) for shard in cut.shard_order if answers[shard][0] != 200]
        if not failures:
            return await self._answer(tcc.client_txn_id, answers, cut.account_order, cut.shard_order[0])
        decision = await self._decide(cut.commit_point, cut.txn_id, self._decision_body(cut, participants, failures))
        # A commit needs every participant's hold, and this one has a rejection: none was written.
        assert not decision["commit"], f"{cut.txn_id} committed though a participant rejected its try"
        await self._finish_abort(cut.txn_id, [shard for shard in participants if answers[shard][0] == 200])
        return _abort_outcome(cut.txn_id, decision)

    async def _claim(self, tcc: TccPlan, participants: list[int]) -> Outcome | None:
        """Write the claim at the commit point; the answer of a conflicting try, or None."""
        cut = tcc.cut
        claim_id = f"{cut.txn_id}{claim_suffix}"
        record = {"request": tcc.fingerprint, "dedup": tcc.dedup_fingerprint, "timeout_s": tcc.timeout_s}
        body = {
            "type": "decide",
            "dedup_id": claim_id,
            "txn_id": claim_id,
            "commit": True,
            "participants": participants,
            "reason_message": json.dumps(record, sort_keys=True),
        }
        _, answer = await self.shards.post(cut.commit_point, "/v1/commands", {"commands": [body]})
        (result,) = answer["results"]
        if result["status"] == 200:
            return None
        if _code(result) != ErrorCode.DEDUP_ID_REUSED:
            raise ShardUnavailable(cut.commit_point, f"the commit point refused the claim: {result}")
        claim = await self._read_claim(cut.txn_id)
        if claim is None:
            raise ShardUnavailable(cut.commit_point, f"the commit point has no claim for {cut.txn_id}")
        if claim.dedup == tcc.dedup_fingerprint:
            message = f"dedup_id {cut.dedup_id!r} was used for another command"
            return Outcome(409, {"error": {"code": ErrorCode.DEDUP_ID_REUSED.value, "message": message}})
        message = f"transaction {tcc.client_txn_id} exists"
        return Outcome(409, {"error": {"code": ErrorCode.TXN_EXISTS.value, "message": message}})

    async def _read_claim(self, txn_id: str) -> Claim | None:
        """The claim of a client-held try at its commit point (None: never claimed)."""
        cached = self._claims.get(txn_id)
        if cached is not None:
            return cached
        commit_point = commit_point_of(txn_id)
        status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}{claim_suffix}")
        if status == 404:
            return None
        if status != 200 or view.get("decision") is None:
            raise ShardUnavailable(commit_point, f"reading the claim of {txn_id} answered {status}")
        decision = view["decision"]
        record = json.loads(decision["reason_message"])
        timeout_s = record["timeout_s"]
        deadline_ms = None if timeout_s is None else _time_ms(decision["time"]) + timeout_s * 1000
        claim = Claim(record["request"], record["dedup"], list(decision["participants"]), deadline_ms)
        if len(self._claims) >= claims_cached_max:
            self._claims.clear()
        self._claims[txn_id] = claim
        return claim

    def _expired(self, claim: Claim) -> bool:
        return claim.deadline_ms is not None and self.clock_ms() >= claim.deadline_ms

    async def tcc_finish(self, client_txn_id: str, commit: bool) -> Outcome | None:
        """A client's confirm or cancel of a cross-shard try; None if no such try was claimed."""
        commit_point = self.shard_map.shard_of(client_txn_id)
        txn_id = tcc_txn_id_of(client_txn_id, commit_point)
        claim = await self._read_claim(txn_id)
        if claim is None:
            return None
        parts = await asyncio.gather(*(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in claim.participants))
        views: dict[int, dict[str, Any]] = {}
        for shard, (status, view) in zip(claim.participants, parts, strict=True):
            if status == 200:
                views[shard] = view
            elif status != 404:
                raise ShardUnavailable(shard, f"reading {txn_id} answered {status}")
        proposal: dict[str, Any] = {"type": "decide", "txn_id": txn_id, "participants": claim.participants}
        if not commit:
            proposal.update(dedup_id=f"{txn_id}.cancelled", commit=False, reason_code=ErrorCode.TXN_ALREADY_CANCELLED.value)
            proposal["reason_message"] = "cancelled by the client"
        elif self._expired(claim):
            proposal.update(dedup_id=f"{txn_id}.expired", commit=False, reason_code=ErrorCode.TXN_ALREADY_CANCELLED.value)
            proposal["reason_message"] = "its timeout passed before a confirm"
        elif all(views.get(shard, {}).get("state") in ("TRIED", "CONFIRMED") for shard in claim.participants):
            proposal.update(dedup_id=f"{txn_id}.decide", commit=True)
        else:
            proposal.update(dedup_id=f"{txn_id}.incomplete", commit=False, reason_code=ErrorCode.TXN_ABORTED.value)
            proposal["reason_message"] = "a confirm found the try incomplete: it did not reach every shard it names"
        decision = await self._decide(commit_point, txn_id, proposal)
        if not decision["commit"]:
            # An earlier abort answers OK to this one too: its reason is the one that stands.
            status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
            if status != 200 or view.get("decision") is None:
                raise ShardUnavailable(commit_point, f"the commit point has no decision for {txn_id}")
            decision = view["decision"]
        accounts = [leg["account_id"] for shard in claim.participants for leg in views.get(shard, {}).get("legs", [])]
        first = min(claim.participants)
        if decision["commit"]:
            outcome = await self._finish(txn_id, claim.participants, accounts, first, commit=True, answer_txn_id=client_txn_id)
            if commit:
                return outcome
            return _error(ErrorCode.TXN_ALREADY_CONFIRMED, f"transaction {client_txn_id} was confirmed")
        if decision.get("reason_code") not in _held_abort_codes:
            # A participant rejected the try: it never existed, as on one shard.
            await self._finish_abort(txn_id, claim.participants)
            return _error(ErrorCode.TXN_NOT_FOUND, f"transaction {client_txn_id} not found")
        if commit:
            await self._finish_abort(txn_id, claim.participants)
            return _error(ErrorCode.TXN_ALREADY_CANCELLED, f"transaction {client_txn_id} was cancelled")
        outcome = await self._finish(txn_id, claim.participants, accounts, first, commit=False, answer_txn_id=client_txn_id)
        if not outcome.body["shard_seqs"]:
            # No participant ever held a part (the try reached none): as a lost try on one shard.
            return _error(ErrorCode.TXN_NOT_FOUND, f"transaction {client_txn_id} not found")
        return outcome

    async def transaction_view(self, client_txn_id: str) -> dict[str, Any] | None:
        """The claim of a cross-shard try under the client's txn_id (deadline, participants), or None."""
        commit_point = self.shard_map.shard_of(client_txn_id)
        txn_id = tcc_txn_id_of(client_txn_id, commit_point)
        claim = await self._read_claim(txn_id)
        if claim is None:
            return None
        deadline = None
        if claim.deadline_ms is not None:
            deadline = datetime.fromtimestamp(claim.deadline_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{claim.deadline_ms % 1000:03d}Z"
        return {"txn_id": txn_id, "participants": claim.participants, "deadline": deadline}

    async def _finish_abort(self, txn_id: str, held: list[int]) -> None:
        answers = await asyncio.gather(
            *(self.shards.post(shard, "/v1/tcc/cancel", {"dedup_id": f"{txn_id}.cancel", "txn_id": txn_id}) for shard in held)
        )
        for shard, (status, answer) in zip(held, answers, strict=True):
            if status != 200 and _code(answer) != ErrorCode.TXN_NOT_FOUND:
                raise ShardUnavailable(shard, f"cancel of an aborted transaction answered {status}: {answer}")

    # ------------------------------------------------------------------ recovery

    async def recover(self, in_doubt_s: float = in_doubt_after_s) -> int:
        """One round: finish every cross-shard try open longer than ``in_doubt_s`` on the shards
        this coordinator scans (its :attr:`scope`); how many."""
        now = time.monotonic()
        finished = 0
        seen: set[tuple[int, str]] = set()
        for shard in self.scope.shards_to_scan(self.shards.count):
            try:
                status, answer = await self.shards.get(
                    shard, "/v1/transactions", {"open": "true", "prefix": txn_prefix, "limit": recovery_batch_max}
                )
            except ShardUnavailable as error:
                logger.info("recovery: %s", error)
                continue
            if status != 200:
                continue
            for txn_id in answer["transactions"]:
                key = (shard, txn_id)
                seen.add(key)
                first_seen = self._first_seen.setdefault(key, now)
                if is_client_held(txn_id):
                    try:
                        done = await self._watch(shard, txn_id, look=now - first_seen >= in_doubt_s)
                    except ShardUnavailable as error:
                        logger.info("watching %s on shard %d postponed: %s", txn_id, shard, error)
                        continue
                    if done:
                        finished += 1
                    elif now - first_seen >= in_doubt_s:
                        self._first_seen[key] = now  # look at its commit point again after another bound
                    continue
                if now - first_seen < in_doubt_s:
                    continue
                try:
                    await self._resolve(shard, txn_id)
                except ShardUnavailable as error:
                    logger.info("recovery of %s on shard %d postponed: %s", txn_id, shard, error)
                    continue
                finished += 1
        # Forget what is no longer open.
        for key in [key for key in self._first_seen if key not in seen]:
            del self._first_seen[key]
        self.recovered += finished
        return finished

    async def _resolve(self, shard: int, txn_id: str, proposal: dict[str, Any] | None = None) -> None:
        """Read or force the decision at the commit point, then finish the try on ``shard``."""
        commit_point = commit_point_of(txn_id)
        if proposal is None:
            proposal = {
                "type": "decide",
                "dedup_id": f"{txn_id}.recover",
                "txn_id": txn_id,
                "commit": False,
                "reason_code": ErrorCode.TXN_ABORTED.value,
                "reason_message": f"a participant's try stayed open over {in_doubt_after_s} s without its coordinator",
            }
        decision = await self._decide(commit_point, txn_id, proposal)
        await self._finish_one(shard, txn_id, decision["commit"])

    async def _finish_one(self, shard: int, txn_id: str, commit: bool) -> None:
        # A fresh dedup_id: an earlier finish may have reached this shard before a late try did.
        # Confirm and cancel are idempotent on the transaction's state.
        dedup_id = f"{txn_id}.recovered.{time.time_ns()}"
        path = "/v1/tcc/confirm" if commit else "/v1/tcc/cancel"
        status, answer = await self.shards.post(shard, path, {"dedup_id": dedup_id, "txn_id": txn_id})
        if status != 200 and _code(answer) != ErrorCode.TXN_NOT_FOUND:
            raise ShardUnavailable(shard, f"{path} answered {status}: {answer}")
        logger.warning("recovered %s on shard %d: %s", txn_id, shard, "committed" if commit else "aborted")

    async def _watch(self, shard: int, txn_id: str, look: bool) -> bool:
        """A client-held try open on ``shard``: abort it once the client's timeout passed, finish
        it if its commit point decided (``look``: only every so often); True if it was finished.

        Before its deadline and undecided, the try is waiting for the client: it is left alone.
        """
        claim = await self._read_claim(txn_id)
        if claim is not None and self._expired(claim):
            proposal = {
                "type": "decide",
                "dedup_id": f"{txn_id}.expired",
                "txn_id": txn_id,
                "commit": False,
                "participants": claim.participants,
                "reason_code": ErrorCode.TXN_ALREADY_CANCELLED.value,
                "reason_message": "its timeout passed before a confirm",
            }
            await self._resolve(shard, txn_id, proposal)
            return True
        if not look:
            return False
        if claim is None:
            await self._resolve(shard, txn_id)  # no claim: not a client's try after all, no one waits for it
            return True
        commit_point = commit_point_of(txn_id)
        status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
        decision = view.get("decision") if status == 200 else None
        if decision is None:
            return False
        await self._finish_one(shard, txn_id, decision["commit"])
        return True

    async def run_recovery(self) -> None:
        while True:
            await asyncio.sleep(recovery_interval_s)
            try:
                await self.recover()
            except Exception:  # housekeeping: log it, the next round tries again
                logger.exception("cross-shard recovery round failed")


def _code(answer: dict[str, Any]) -> str | None:
    error = answer.get("error") if isinstance(answer, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _error(code: ErrorCode, message: str) -> Outcome:
    return Outcome(409, {"error": {"code": code.value, "message": message}})


def _abort_outcome(txn_id: str, decision: dict[str, Any]) -> Outcome:
    code = decision.get("reason_code") or ErrorCode.TXN_ABORTED.value
    error: dict[str, Any] = {"code": code, "message": decision.get("reason_message") or f"transaction {txn_id} was aborted"}
    if decision.get("reason_account_id") is not None:
        error["account_id"] = decision["reason_account_id"]
    return Outcome(422 if code in _malformed else 409, {"error": error})
