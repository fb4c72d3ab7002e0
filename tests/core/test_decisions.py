"""Cross-shard building blocks in the core: decisions at a commit point, and tries with preconditions.

A decision is written once: the first ``Decide`` for a transaction wins, the same decision again
answers the original seq, the other one is ``TXN_ALREADY_DECIDED`` and changes nothing. A TCC try
checks its preconditions with its holds, all or nothing, in the same order as a batch operation.
"""

import msgspec

from coffer.core.commands import Decide, Precondition
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine
from tests.core.conftest import apply_one, assert_ok, assert_rejected, leg, tcc_try


def decide(txn_id: str, commit: bool, dedup_id: str, **fields) -> Decide:
    return Decide(dedup_id=dedup_id, txn_id=txn_id, commit=commit, **fields)


def test_the_first_decision_wins(machine: StateMachine) -> None:
    first, event = assert_ok(machine, decide("x-a", True, "coordinator", participants=(0, 2)))
    assert event.type == "txn_decided" and event.accounts == ()
    assert machine.decisions["x-a"].commit and machine.decisions["x-a"].participants == (0, 2)
    # The recovery task proposing abort later loses, and changes nothing.
    result = assert_rejected(machine, decide("x-a", False, "recovery", reason_code="TIMEOUT"), "TXN_ALREADY_DECIDED")
    assert "commit" in result.message
    # The same decision from another writer is answered with the original seq.
    again = apply_one(machine, decide("x-a", True, "coordinator-retry"))
    assert again.ok and again.seq == first.seq


def test_an_abort_keeps_its_reason(machine: StateMachine) -> None:
    assert_ok(machine, decide("x-b", False, "recovery", reason_code="LOWER_LIMIT_EXCEEDED", reason_message="m", reason_account_id="alice"))
    decision = machine.decisions["x-b"]
    assert (decision.commit, decision.reason_code, decision.reason_account_id) == (False, "LOWER_LIMIT_EXCEEDED", "alice")
    assert_rejected(machine, decide("x-b", True, "late-coordinator"), "TXN_ALREADY_DECIDED")


def test_decisions_survive_a_snapshot(machine: StateMachine) -> None:
    assert_ok(machine, decide("x-c", True, "d-c", participants=(1,)))
    restored = restore_snapshot(take_snapshot(machine))
    assert restored.decisions == machine.decisions
    assert take_snapshot(restored) == take_snapshot(machine)


def test_malformed_decisions_are_invalid_requests(machine: StateMachine) -> None:
    assert_rejected(machine, decide("not an id", True, "d1"), "INVALID_REQUEST")
    assert_rejected(machine, decide("x-d", True, "d2", participants=(-1,)), "INVALID_REQUEST")
    assert_rejected(machine, decide("x-d", False, "d3", reason_code="not a code"), "INVALID_REQUEST")


def test_a_try_checks_its_preconditions_with_its_holds(machine: StateMachine) -> None:
    # alice holds 100.00: a try that expects another balance changes nothing.
    condition = (Precondition(account_id="alice", expected_balance=9_999),)
    assert_rejected(machine, tcc_try_with("t1", condition, leg("alice", -100)), "PRECONDITION_FAILED", "alice")
    condition = (Precondition(account_id="nobody", min_balance=0),)
    assert_rejected(machine, tcc_try_with("t2", condition, leg("alice", -100)), "ACCOUNT_NOT_FOUND", "nobody")
    condition = (Precondition(account_id="alice", expected_balance=10_000, expected_version=machine.accounts["alice"].version),)
    assert_ok(machine, tcc_try_with("t3", condition, leg("alice", -100)))
    assert machine.accounts["alice"].pending_out == {"t3": 100}


def tcc_try_with(txn_id: str, preconditions: tuple[Precondition, ...], *legs):
    return msgspec.structs.replace(tcc_try(txn_id, *legs), preconditions=preconditions)
