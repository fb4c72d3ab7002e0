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
open longer than a bound on every shard, proposes abort at the commit point (which only wins if
nothing was decided), and finishes the transaction as decided. No participant ever decides alone.

While a transaction is in flight every unit of money is in exactly one place: in the source
account's ``pending_out`` until confirm (it counts in ``available + reserved + pending_out``), and
then in the target's ``available``; ``pending_in`` is never counted. So the sum over all shards
only changes by deposits and withdrawals, at every moment.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from coffer.core.commands import transaction_id_prefix
from coffer.core.errors import ErrorCode
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


def txn_id_of(dedup_id: str, commit_point: int) -> str:
    return f"{txn_prefix}{commit_point}:{hashlib.sha256(dedup_id.encode()).hexdigest()[:40]}"


def commit_point_of(txn_id: str) -> int:
    return int(txn_id.split(":")[1])


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


class Outcome:
    """What the client is answered: a status and a body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


class Coordinator:
    def __init__(self, shards: ShardClients, shard_map: ShardMap) -> None:
        self.shards = shards
        self.shard_map = shard_map
        self._first_seen: dict[tuple[int, str], float] = {}
        self.recovered = 0

    # ------------------------------------------------------------------ the three phases

    async def run(self, plan_: Plan) -> Outcome:
        """Run (or replay) a cross-shard transaction to its end; ShardUnavailable if it cannot."""
        txn_id = plan_.txn_id
        participants = sorted(plan_.tries)

        async def try_on(shard: int) -> tuple[int, dict[str, Any]]:
            work = plan_.tries[shard]
            body = {"dedup_id": f"{txn_id}.try", "txn_id": txn_id, "legs": work["legs"], "preconditions": work["preconditions"]}
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
        for _, answer in answers.values():
            if _code(answer) == ErrorCode.DEDUP_ID_REUSED:
                return Outcome(409, answer)  # another command under this dedup_id: nothing decided here
        if unknown:
            # Whether those tries hold money is unknown: decide nothing, the client retries (the
            # same dedup_id replays every step), or recovery aborts the transaction later.
            raise ShardUnavailable(unknown[0], "a participant's try has no known outcome")
        failures = [(shard, answers[shard][1]) for shard in plan_.shard_order if answers[shard][0] != 200]
        commit = not failures
        decision_body: dict[str, Any] = {"type": "decide", "dedup_id": f"{txn_id}.decide", "txn_id": txn_id, "commit": commit}
        decision_body["participants"] = participants
        if failures:
            _, reason = min(failures, key=lambda item: (_step_of_code.get(_code(item[1]), 0), plan_.shard_order.index(item[0])))
            error = reason["error"]
            decision_body.update(
                reason_code=error["code"], reason_message=error.get("message", "")[:1024], reason_account_id=error.get("account_id")
            )
        decision = await self._decide(plan_.commit_point, txn_id, decision_body)
        if decision["commit"]:
            return await self._finish_commit(plan_, participants)
        await self._finish_abort(txn_id, [shard for shard in participants if answers[shard][0] == 200])
        return _abort_outcome(txn_id, decision)

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
        txn_id = plan_.txn_id
        confirmed = await asyncio.gather(
            *(self.shards.post(shard, "/v1/tcc/confirm", {"dedup_id": f"{txn_id}.confirm", "txn_id": txn_id}) for shard in participants)
        )
        seqs: dict[int, int] = {}
        log_indexes: dict[int, int] = {}
        views: dict[str, dict[str, Any]] = {}
        for shard, (status, answer) in zip(participants, confirmed, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"confirm of a committed transaction answered {status}: {answer}")
            seqs[shard] = answer["seq"]
            log_indexes[shard] = answer["log_index"]
            # The confirm's own event holds the accounts right after it, unless recovery had
            # confirmed first (then this confirm changed nothing): read them as of its seq.
            for view in answer["accounts"]:
                views[view["account_id"]] = view
        for shard in participants:
            ids = [
                account_id
                for account_id in plan_.account_order
                if self.shard_map.shard_of(account_id) == shard and account_id not in views
            ]
            if not ids:
                continue
            status, answer = await self.shards.get(shard, "/v1/accounts", {"ids": ",".join(ids), "at_seq": seqs[shard]})
            if status != 200:
                raise ShardUnavailable(shard, f"reading the accounts after confirm answered {status}")
            views.update(answer["accounts"])
        first = plan_.shard_order[0]
        return Outcome(
            200,
            {
                # seq and log_index of the first account's shard (its confirm); the others in shard_seqs.
                "seq": seqs[first],
                "log_index": log_indexes[first],
                "accounts": [views[account_id] for account_id in plan_.account_order if account_id in views],
                "txn_id": txn_id,
                "shard_seqs": {str(shard): seq for shard, seq in sorted(seqs.items())},
                # Pass it to reads (token=…) to read this write on every shard it touched.
                "token": ",".join(f"{shard}:{seq}" for shard, seq in sorted(seqs.items())),
            },
        )

    async def _finish_abort(self, txn_id: str, held: list[int]) -> None:
        answers = await asyncio.gather(
            *(self.shards.post(shard, "/v1/tcc/cancel", {"dedup_id": f"{txn_id}.cancel", "txn_id": txn_id}) for shard in held)
        )
        for shard, (status, answer) in zip(held, answers, strict=True):
            if status != 200 and _code(answer) != ErrorCode.TXN_NOT_FOUND:
                raise ShardUnavailable(shard, f"cancel of an aborted transaction answered {status}: {answer}")

    # ------------------------------------------------------------------ recovery

    async def recover(self, in_doubt_s: float = in_doubt_after_s) -> int:
        """One round: finish every cross-shard try open longer than ``in_doubt_s``; how many."""
        now = time.monotonic()
        finished = 0
        seen: set[tuple[int, str]] = set()
        for shard in range(self.shards.count):
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

    async def _resolve(self, shard: int, txn_id: str) -> None:
        """Read or force the decision at the commit point, then finish the try on ``shard``."""
        commit_point = commit_point_of(txn_id)
        proposal = {
            "type": "decide",
            "dedup_id": f"{txn_id}.recover",
            "txn_id": txn_id,
            "commit": False,
            "reason_code": ErrorCode.TXN_ABORTED.value,
            "reason_message": f"a participant's try stayed open over {in_doubt_after_s} s without its coordinator",
        }
        decision = await self._decide(commit_point, txn_id, proposal)
        # A fresh dedup_id: an earlier finish may have reached this shard before a late try did.
        # Confirm and cancel are idempotent on the transaction's state.
        dedup_id = f"{txn_id}.recovered.{time.time_ns()}"
        path = "/v1/tcc/confirm" if decision["commit"] else "/v1/tcc/cancel"
        status, answer = await self.shards.post(shard, path, {"dedup_id": dedup_id, "txn_id": txn_id})
        if status != 200 and _code(answer) != ErrorCode.TXN_NOT_FOUND:
            raise ShardUnavailable(shard, f"{path} answered {status}: {answer}")
        logger.warning("recovered %s on shard %d: %s", txn_id, shard, "committed" if decision["commit"] else "aborted")

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


def _abort_outcome(txn_id: str, decision: dict[str, Any]) -> Outcome:
    code = decision.get("reason_code") or ErrorCode.TXN_ABORTED.value
    error: dict[str, Any] = {"code": code, "message": decision.get("reason_message") or f"transaction {txn_id} was aborted"}
    if decision.get("reason_account_id") is not None:
        error["account_id"] = decision["reason_account_id"]
    return Outcome(422 if code in _malformed else 409, {"error": error})
