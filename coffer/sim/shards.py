"""Deterministic simulation of the transaction layer: shards, coordinators, recovery, and faults.

Job. Run the real coordinator (:class:`coffer.txn.coordinator.Coordinator`) and the real
recovery task against several shards — each a real :class:`StateMachine` behind the real request
translation of the HTTP edge (:mod:`coffer.server.requests`) and the real transaction views — in one
process, driven by one seeded ``random.Random``: no clock, no sockets, no threads. Every call from a
coordinator to a shard may be lost before it arrives, or its answer lost after the shard applied
it, and a coordinator may crash between any two of its calls (the simulator stops it there). Clients
retry with the same ``dedup_id``; recovery rounds run between steps and also in the middle of a
live coordinator (racing it to the commit point).

After every step (and after every call a coordinator makes) the checker verifies, over all shards:
money conserved (``available + reserved + pending_out`` per asset, plus what is in flight inside a
committed transaction some participants have confirmed and others not yet, equals what was
deposited), every account within its limits, and no
transaction confirmed on one shard and cancelled on another, or finished against its decision. At
the end (every client retries until it has a final answer, recovery runs until nothing is open):
nothing in doubt, every acknowledged answer unchanged on retry, and the balances equal to the
opening balances plus exactly the committed transfers — nothing lost, nothing applied twice.

Clients also send TCC tries across shards (legs on two or three shards, some with a timeout) and
later confirm or cancel them by their txn_id, through the same faults. The simulated clock moves
between steps (the shards' log time follows it, and the coordinator judges a client's timeout by
it), so deadlines pass while tries wait, while coordinators are dead and while recovery races them;
the checker then also sees that no participant finished a try against its commit point's decision
and that a committed try was committed before the client's deadline.
"""

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from coffer.core.accounts import Result
from coffer.core.errors import ErrorCode
from coffer.core.events import EventRecord
from coffer.core.state_machine import StateMachine
from coffer.http.views import account_view, rejection_body
from coffer.server import requests as bodies
from coffer.server import transactions
from coffer.server.command_table import routes_by_kind, routes_by_path, to_command
from coffer.txn import coordinator as txn
from coffer.txn.coordinator import Coordinator, txn_prefix
from coffer.txn.shard_map import ShardMap
from coffer.txn.shards import ShardUnavailable

accounts_per_shard = 3
opening_minor_units = 10_000  # 100.00 USD per account
lose_request_chance = 0.04  # per call: it never arrives
lose_answer_chance = 0.04  # per call: it was applied, the answer is lost
crash_chance = 0.03  # per call: the coordinator dies before sending it
race_recovery_chance = 0.05  # per call: a recovery round runs first, racing this coordinator
start_time_ms = 1_700_000_000_000
step_ms_max = 600  # the clock moves up to this much between two steps
tcc_timeout_s_max = 4  # a try's timeout, when it has one, is 1..this


class CoordinatorCrash(BaseException):
    """The simulated coordinator process died: nothing after this call happens."""


class ShardViolation(AssertionError):
    pass


class SimShard:
    """One shard: a state machine behind the edge's real request translation and views."""

    def __init__(self, number: int, clock_ms: Callable[[], int] = lambda: start_time_ms) -> None:
        self.number = number
        self.machine = StateMachine()
        self.events: list[EventRecord] = []
        self.time_ms = start_time_ms
        self.clock_ms = clock_ms  # the simulation's clock: the shard's log time follows it

    def apply(self, command: Any) -> Result:
        self.time_ms = max(self.time_ms + 1, self.clock_ms())
        results, events = self.machine.apply(self.machine.log_index + 1, self.time_ms, [command])
        self.events.extend(events)
        return results[0]

    def _scales(self) -> bodies.Scales:
        machine = self.machine

        def account_scale(account_id: str) -> tuple[str, int] | None:
            account = machine.accounts.get(account_id)
            return None if account is None else (account.asset, account.scale)

        return bodies.Scales(account_scale, machine.asset_scales.get)

    def answer(self, result: Result) -> tuple[int, dict[str, Any]]:
        if not result.ok:
            return 409, rejection_body(result)
        event = self.events[result.seq - 1].decode()
        return 200, {"seq": result.seq, "log_index": event.log_index, "accounts": [account_view(a, result.seq) for a in event.accounts]}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/commands":
            results = []
            for item in body["commands"]:
                fields = dict(item)
                kind = fields.pop("type")
                status, answer = self._command(kind, fields)
                results.append({"status": status, **answer})
            return 200, {"results": results}
        return self._command(routes_by_path[path].kind, body)

    def _command(self, kind: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            body = bodies.convert_body(routes_by_kind[kind].body_type, fields)
            command = to_command(kind, body, self._scales())
        except bodies.RequestError as error:
            return 422, {"error": {"code": error.code, "message": error.message}}
        return self.answer(self.apply(command))

    def get(self, path: str, params: Any) -> tuple[int, dict[str, Any]]:
        query = dict(params.items()) if isinstance(params, dict) else dict(params or [])
        if path == "/v1/transactions":
            found = transactions.open_transactions(self.machine, str(query.get("prefix", "")), int(query.get("limit", 1000)))
            return 200, {"seq": self.machine.seq, "transactions": found}
        if path.startswith("/v1/transactions/"):
            view = transactions.transaction_view(self.machine, path.rsplit("/", 1)[1])
            return (404, {"error": {"code": "TXN_NOT_FOUND", "message": "not here"}}) if view is None else (200, view)
        if path == "/v1/accounts":
            ids = str(query["ids"]).split(",")
            seq = self.machine.seq
            found = {key: account_view(self.machine.accounts[key], seq) for key in ids if key in self.machine.accounts}
            return 200, {"seq": seq, "accounts": found, "missing": [key for key in ids if key not in found]}
        raise AssertionError(f"the simulation does not serve GET {path}")


class SimShards:
    """The coordinator's view of the shards, with faults drawn from the run's RNG."""

    def __init__(self, shards: list[SimShard], rng: random.Random, run: "ShardSimulation") -> None:
        self.shards = shards
        self.rng = rng
        self.run = run
        self.urls = [f"sim://shard-{shard.number}" for shard in shards]
        self.faults = True
        self.calls_before_crash: int | None = None

    @property
    def count(self) -> int:
        return len(self.shards)

    def _maybe_fail(self, shard: int) -> bool:
        """Before a call: crash, lose it, or race recovery; True if the answer is to be lost."""
        if not self.faults:
            return False
        if self.calls_before_crash is not None:
            if self.calls_before_crash == 0:
                raise CoordinatorCrash()
            self.calls_before_crash -= 1
        if self.run.racing and self.rng.random() < race_recovery_chance:
            self.run.recovery_round(racing=True)
        if self.rng.random() < lose_request_chance:
            self.run.faults += 1
            raise ShardUnavailable(shard, "simulated: the request was lost")
        return self.rng.random() < lose_answer_chance

    async def post(self, shard: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        lose = self._maybe_fail(shard)
        answer = self.shards[shard].post(path, msgspec.json.decode(msgspec.json.encode(body)))
        self.run.check()
        if lose:
            self.run.faults += 1
            raise ShardUnavailable(shard, "simulated: the answer was lost")
        return answer

    async def get(self, shard: int, path: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        lose = self._maybe_fail(shard)
        answer = self.shards[shard].get(path, params)
        if lose:
            self.run.faults += 1
            raise ShardUnavailable(shard, "simulated: the answer was lost")
        return answer


@dataclass
class _Request:
    body: dict[str, Any]
    kind: str = "transfer"  # or tcc_try, tcc_confirm, tcc_cancel
    first: tuple[int, dict[str, Any]] | None = None  # the first answer the client got
    final: tuple[int, dict[str, Any]] | None = None


@dataclass
class ShardSimReport:
    seed: int
    steps: int
    shards: int
    transfers: int
    committed: int
    faults: int
    recovered: int
    tcc_tries: int = 0
    tcc_committed: int = 0
    tcc_expired: int = 0
    violations: list[str] = field(default_factory=list)


class ShardSimulation:
    def __init__(self, seed: int, shard_count: int = 3, *, bug: Callable[[Coordinator], None] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.shard_map = ShardMap.even(shard_count)
        self.now_ms = start_time_ms
        self.shards = [SimShard(number, self._clock_ms) for number in range(shard_count)]
        self.sim_shards = SimShards(self.shards, self.rng, self)
        self.coordinator = Coordinator(self.sim_shards, self.shard_map, clock_ms=self._clock_ms)  # type: ignore[arg-type]
        if bug is not None:
            bug(self.coordinator)
        self.accounts: list[str] = []
        self.requests: list[_Request] = []
        self.faults = 0
        self.racing = False
        self.in_recovery = False
        self.loop = asyncio.new_event_loop()
        self._open_accounts()

    def _clock_ms(self) -> int:
        return self.now_ms

    def _open_accounts(self) -> None:
        number = 0
        for shard in range(len(self.shards)):
            found = 0
            while found < accounts_per_shard:
                account_id = f"a{number}"
                number += 1
                if self.shard_map.shard_of(account_id) != shard:
                    continue
                found += 1
                self.accounts.append(account_id)
                target = self.shards[shard]
                upper = None if self.rng.random() < 0.7 else f"{self.rng.randrange(100, 300)}.00"
                for kind, fields in (
                    ("create_account", {"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "USD", "upper_limit": upper}),
                    ("batch_operation", {"dedup_id": f"fund-{account_id}", "legs": [{"account_id": account_id, "amount": "100.00", "asset": "USD"}]}),
                ):
                    status, answer = target._command(kind, fields)
                    assert status == 200, answer

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        total = 0
        for shard in self.shards:
            for account in shard.machine.accounts.values():
                if account.available < account.lower_limit:
                    raise ShardViolation(f"{account.account_id} below its lower limit")
                if account.upper_limit is not None and account.available + account.held() > account.upper_limit:
                    raise ShardViolation(f"{account.account_id} above its upper limit")
                total += account.available + sum(account.reservations.values()) + sum(account.pending_out.values())
            # Money in flight inside a decided transaction: a participant that confirmed has
            # let its holds go (out left, in arrived) while another may not have yet.
            for txn_id, held in shard.machine.txns.items():
                if txn_id.startswith(txn_prefix) and held.state == "CONFIRMED":
                    total += sum(leg.amount_out - leg.amount_in for leg in held.legs)
        if total != opening_minor_units * len(self.accounts):
            raise ShardViolation(f"money not conserved across shards: {total} != {opening_minor_units * len(self.accounts)}")
        decisions = {txn_id: decision for shard in self.shards for txn_id, decision in shard.machine.decisions.items()}
        for shard in self.shards:
            for txn_id, held in shard.machine.txns.items():
                if not txn_id.startswith(txn_prefix):
                    continue
                decision = decisions.get(txn_id)
                if held.state == "CONFIRMED" and (decision is None or not decision.commit):
                    raise ShardViolation(f"{txn_id} confirmed on shard {shard.number} without a commit decision")
                if held.state == "CANCELLED" and decision is not None and decision.commit:
                    raise ShardViolation(f"{txn_id} cancelled on shard {shard.number} though decided commit")
                if held.state == "CANCELLED" and decision is None:
                    raise ShardViolation(f"{txn_id} cancelled on shard {shard.number} with no decision: a participant decided alone")
        states: dict[str, set[str]] = {}
        for shard in self.shards:
            for txn_id, held in shard.machine.txns.items():
                states.setdefault(txn_id, set()).add(held.state)
        for txn_id, found in states.items():
            if {"CONFIRMED", "CANCELLED"} <= found:
                raise ShardViolation(f"{txn_id} confirmed on one shard and cancelled on another")
        # A client's timeout is one deadline: a commit written after it would let one shard confirm
        # what the client was told had expired. (The commit point's log time can run a step past the
        # coordinator's clock: one step's worth of slack.)
        # A try held for its client is aborted by the client, a rejection, or its deadline: never
        # by recovery before that deadline.
        for txn_id, decision in decisions.items():
            if not txn.is_client_held(txn_id):
                continue
            claim = decisions.get(f"{txn_id}{txn.claim_suffix}")
            if claim is None:
                raise ShardViolation(f"{txn_id} decided without a claim at its commit point")
            timeout_s = json.loads(claim.reason_message)["timeout_s"]
            deadline_ms = None if timeout_s is None else claim.time_ms + timeout_s * 1000
            if decision.commit and deadline_ms is not None and decision.time_ms > deadline_ms + step_ms_max:
                raise ShardViolation(f"{txn_id} committed after the client's deadline")
            if not decision.commit and decision.reason_code == ErrorCode.TXN_ABORTED and "confirm" not in decision.reason_message:
                raise ShardViolation(f"{txn_id} aborted by recovery while it waited for its client: {decision.reason_message}")
            expired = not decision.commit and "timeout" in decision.reason_message
            if expired and (deadline_ms is None or decision.time_ms < deadline_ms):
                raise ShardViolation(f"{txn_id} expired before the client's deadline")

    # ------------------------------------------------------------------ steps

    def _transfer_body(self, number: int) -> dict[str, Any]:
        source, target = self.rng.sample(self.accounts, 2)
        amount = f"{self.rng.randrange(1, 60)}.{self.rng.randrange(100):02d}"
        return {"dedup_id": f"t{number}", "from_account_id": source, "to_account_id": target, "amount": amount, "asset": "USD"}

    def _send(self, request: _Request, faults: bool) -> tuple[int, dict[str, Any]] | None:
        """One attempt of a client: through the coordinator (cross-shard) or straight to a shard."""
        body = request.body
        self.sim_shards.faults = faults
        self.sim_shards.calls_before_crash = self.rng.randrange(0, 8) if faults and self.rng.random() < crash_chance * 8 else None
        try:
            if request.kind == "tcc_try":
                tcc = txn.plan_tcc(body, self.shard_map)
                assert tcc is not None, "the simulation's tries span shards"
                outcome = self.loop.run_until_complete(self.coordinator.tcc_try(tcc))
                return outcome.status, outcome.body
            if request.kind in ("tcc_confirm", "tcc_cancel"):
                finished = self.loop.run_until_complete(self.coordinator.tcc_finish(body["txn_id"], request.kind == "tcc_confirm"))
                if finished is None:
                    return 409, {"error": {"code": "TXN_NOT_FOUND", "message": f"transaction {body['txn_id']} not found"}}
                return finished.status, finished.body
            plan = txn.plan("transfer", body, self.shard_map)
            if plan is None:
                shard = self.shard_map.shard_of(body["from_account_id"])
                return self.loop.run_until_complete(self.sim_shards.post(shard, "/v1/transfers", body))
            outcome = self.loop.run_until_complete(self.coordinator.run(plan))
            return outcome.status, outcome.body
        except ShardUnavailable:
            return None
        except CoordinatorCrash:
            self.faults += 1
            return None
        finally:
            self.sim_shards.calls_before_crash = None
            self.sim_shards.faults = True

    def recovery_round(self, racing: bool = False) -> int:
        if self.in_recovery:
            return 0
        self.in_recovery = True
        saved = self.sim_shards.calls_before_crash
        self.sim_shards.calls_before_crash = None
        try:
            return self.loop.run_until_complete(self.coordinator.recover(in_doubt_s=0.0)) if not racing else self._recover_nested()
        finally:
            self.sim_shards.calls_before_crash = saved
            self.in_recovery = False

    def _recover_nested(self) -> int:
        # Inside a running coordinator's call: run the recovery's coroutine to its end by hand.
        coroutine = self.coordinator.recover(in_doubt_s=0.0)
        try:
            while True:
                coroutine.send(None)
        except StopIteration as done:
            return int(done.value)

    def _try_body(self, number: int) -> dict[str, Any]:
        """A try across shards: one debit, two or three credits that add up to it."""
        shards = self.rng.sample(range(len(self.shards)), min(len(self.shards), self.rng.choice((2, 3))))
        by_shard = [[a for a in self.accounts if self.shard_map.shard_of(a) == shard] for shard in shards]
        source = self.rng.choice(by_shard[0])
        targets = [self.rng.choice(group) for group in by_shard[1:]]
        parts = [self.rng.randrange(1, 3000) for _ in targets]
        legs = [{"account_id": source, "amount": _text(-sum(parts)), "asset": "USD"}]
        legs += [{"account_id": target, "amount": _text(part), "asset": "USD"} for target, part in zip(targets, parts, strict=True)]
        body: dict[str, Any] = {"dedup_id": f"t{number}", "txn_id": f"order-{number}", "legs": legs}
        if self.rng.random() < 0.6:
            body["timeout_s"] = self.rng.randrange(1, tcc_timeout_s_max + 1)
        return body

    def _finish_body(self, number: int) -> tuple[str, dict[str, Any]] | None:
        """A client's confirm or cancel of a try it has an answer for."""
        tried = [request for request in self.requests if request.kind == "tcc_try" and request.first is not None]
        if not tried:
            return None
        target = self.rng.choice(tried)
        kind = "tcc_confirm" if self.rng.random() < 0.7 else "tcc_cancel"
        return kind, {"dedup_id": f"t{number}", "txn_id": target.body["txn_id"]}

    def step(self, number: int) -> None:
        self.now_ms += self.rng.randrange(step_ms_max + 1)
        roll = self.rng.random()
        finish = self._finish_body(number) if 0.35 <= roll < 0.5 else None
        if roll < 0.35 or not self.requests or (0.5 <= roll < 0.6):
            kind = "tcc_try" if roll >= 0.5 or self.rng.random() < 0.3 else "transfer"
            body = self._try_body(number) if kind == "tcc_try" else self._transfer_body(number)
            request = _Request(body, kind)
            self.requests.append(request)
            request.first = self._send(request, faults=True)
        elif finish is not None:
            request = _Request(finish[1], finish[0])
            self.requests.append(request)
            request.first = self._send(request, faults=True)
        elif roll < 0.85:
            request = self.rng.choice(self.requests)
            answer = self._send(request, faults=True)
            if request.first is None:
                request.first = answer
            elif answer is not None:
                self._same(request, answer)
        else:
            self.recovery_round()
        self.check()

    def _same(self, request: _Request, answer: tuple[int, dict[str, Any]]) -> None:
        first = request.first
        assert first is not None
        if first[0] != answer[0] or (first[0] != 200 and first[1]["error"]["code"] != answer[1]["error"]["code"]):
            raise ShardViolation(f"{request.body['dedup_id']}: first answered {first}, a retry {answer}")

    def _final(self, request: _Request) -> None:
        for _ in range(100):
            answer = self._send(request, faults=False)
            if answer is not None:
                request.final = answer
                break
        if request.final is None:
            raise ShardViolation(f"{request.body['dedup_id']} has no final answer")
        if request.first is not None:
            self._same(request, request.final)

    def settle(self) -> None:
        """Every client retries until it has a final answer, then finishes the tries it holds;
        recovery runs until nothing is open."""
        for request in list(self.requests):
            self._final(request)
        finished = {request.body["txn_id"] for request in self.requests if request.kind != "tcc_try" and request.kind != "transfer"}
        for number, request in enumerate([request for request in self.requests if request.kind == "tcc_try"]):
            if request.body["txn_id"] in finished:
                continue
            kind = "tcc_confirm" if self.rng.random() < 0.5 else "tcc_cancel"
            closing = _Request({"dedup_id": f"settle-{number}", "txn_id": request.body["txn_id"]}, kind)
            self.requests.append(closing)
            self._final(closing)
        self.recovery_round()
        for shard in self.shards:
            still = transactions.open_transactions(shard.machine, txn_prefix, 1000)
            if still:
                raise ShardViolation(f"shard {shard.number} still holds transactions in doubt: {still}")
        expected = {account_id: Decimal(100) for account_id in self.accounts}
        decisions = {txn_id: decision for shard in self.shards for txn_id, decision in shard.machine.decisions.items()}
        for request in self.requests:
            assert request.final is not None
            if request.kind == "tcc_try":
                txn_id = txn.tcc_txn_id_of(request.body["txn_id"], self.shard_map.shard_of(request.body["txn_id"]))
                decision = decisions.get(txn_id)
                if decision is not None and decision.commit:
                    for leg in request.body["legs"]:
                        expected[leg["account_id"]] += Decimal(leg["amount"])
            elif request.kind == "transfer" and request.final[0] == 200:
                amount = Decimal(request.body["amount"])
                expected[request.body["from_account_id"]] -= amount
                expected[request.body["to_account_id"]] += amount
        for account_id in self.accounts:
            account = self.shards[self.shard_map.shard_of(account_id)].machine.accounts[account_id]
            if Decimal(account.available) / 100 != expected[account_id] or account.pending_in or account.pending_out:
                raise ShardViolation(f"{account_id}: holds {account.available} (pending {account.pending_in}/{account.pending_out}), expected {expected[account_id]}")
        self.check()

    def run(self, steps: int) -> ShardSimReport:
        report = ShardSimReport(self.seed, steps, len(self.shards), 0, 0, 0, 0)
        try:
            self.racing = True
            for number in range(steps):
                self.step(number)
            self.racing = False
            self.settle()
        except AssertionError as violation:  # a ShardViolation, or an assertion of the real code
            report.violations.append(str(violation))
        finally:
            self.loop.close()
        transfers = [request for request in self.requests if request.kind == "transfer"]
        report.transfers = len(transfers)
        report.committed = sum(1 for request in transfers if request.final is not None and request.final[0] == 200)
        decisions = {txn_id: decision for shard in self.shards for txn_id, decision in shard.machine.decisions.items()}
        tries = [request.body["txn_id"] for request in self.requests if request.kind == "tcc_try"]
        decided = [decisions.get(txn.tcc_txn_id_of(txn_id, self.shard_map.shard_of(txn_id))) for txn_id in tries]
        report.tcc_tries = len(tries)
        report.tcc_committed = sum(1 for decision in decided if decision is not None and decision.commit)
        report.tcc_expired = sum(1 for decision in decided if decision is not None and "timeout" in decision.reason_message)
        report.faults = self.faults
        report.recovered = self.coordinator.recovered
        return report



def _text(minor_units: int) -> str:
    sign = "-" if minor_units < 0 else ""
    return f"{sign}{abs(minor_units) // 100}.{abs(minor_units) % 100:02d}"
