"""Compensate(dedup_id): undo a Transfer / BatchBalanceOperation / Reserve, or pre-empt a late original."""

import pytest

from coffer.core.accounts import Compensation
from coffer.core.errors import ErrorCode
from coffer.core.events import EventType

from .conftest import (
    account_copy,
    apply_entry,
    apply_one,
    assert_ok,
    assert_rejected,
    batch,
    cancel,
    compensate,
    confirm,
    create,
    delete,
    leg,
    lock,
    release,
    reserve,
    tcc_try,
    transfer,
    unlock,
    update_limits,
)


def _accounts(machine) -> dict:
    return {account_id: account_copy(machine, account_id) for account_id in machine.accounts}


def test_compensate_a_transfer(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 1_000, dedup_id="pay"))
    command = compensate("pay", dedup_id="undo-pay")
    result, event = assert_ok(machine, command)
    assert result.compensation == Compensation.COMPENSATED
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, bob.available) == (10_000, 5_000)
    assert (alice.version, bob.version) == (4, 4)  # the undo is a change of its own
    assert event.type == EventType.COMPENSATED
    assert event.dedup_id == "undo-pay"
    assert event.command == command
    assert sorted(account.account_id for account in event.accounts) == ["alice", "bob"]


def test_compensate_a_batch_operation(machine) -> None:
    assert_ok(machine, batch(leg("alice", -3_000), leg("alice", 500), leg("bob", 1_000), leg("carol", 700), dedup_id="b"))
    assert_ok(machine, transfer("bob", "carol", 100))  # unrelated movement stays
    result, event = assert_ok(machine, compensate("b"))
    assert result.compensation == Compensation.COMPENSATED
    accounts = machine.accounts
    assert (accounts["alice"].available, accounts["bob"].available, accounts["carol"].available) == (10_000, 4_900, 100)
    assert sorted(account.account_id for account in event.accounts) == ["alice", "bob", "carol"]


def test_compensate_a_deposit_takes_the_money_out_again(machine) -> None:
    assert_ok(machine, batch(leg("carol", 2_000), dedup_id="deposit"))
    assert_ok(machine, compensate("deposit"))
    assert machine.accounts["carol"].available == 0


def test_compensate_a_reserve_undoes_only_that_reserve(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 3_000, dedup_id="hold-1"))
    assert_ok(machine, reserve("alice", "r", 2_000, dedup_id="hold-2"))
    result, event = assert_ok(machine, compensate("hold-1"))
    assert result.compensation == Compensation.COMPENSATED
    alice = machine.accounts["alice"]
    assert (alice.available, alice.reservations) == (8_000, {"r": 2_000})
    assert event.accounts == (alice,)
    assert_ok(machine, compensate("hold-2"))
    assert (alice.available, alice.reservations) == (10_000, {})


def test_the_original_retried_after_its_compensation_is_not_applied_again(machine) -> None:
    original = transfer("alice", "bob", 1_000, dedup_id="pay")
    first, _ = assert_ok(machine, original)
    assert_ok(machine, compensate("pay"))
    before = _accounts(machine)
    results, events = apply_entry(machine, original)
    assert results == [first]
    assert events == []
    assert _accounts(machine) == before


# ---------------------------------------------------------------- null compensation


def test_null_compensation_then_the_late_original_is_rejected(machine) -> None:
    before = _accounts(machine)
    command = compensate("late", dedup_id="undo-late")
    result, event = assert_ok(machine, command)
    assert result.compensation == Compensation.NULL_COMPENSATED
    assert event.type == EventType.NULL_COMPENSATED
    assert event.dedup_id == "undo-late"
    assert event.accounts == ()
    assert _accounts(machine) == before
    late = transfer("alice", "bob", 1_000, dedup_id="late")
    first = assert_rejected(machine, late, ErrorCode.ALREADY_COMPENSATED)
    # its retry gets the same answer, still without effect
    assert assert_rejected(machine, late, ErrorCode.ALREADY_COMPENSATED) == first
    assert _accounts(machine) == before


@pytest.mark.parametrize(
    "make_late",
    [
        pytest.param(lambda: batch(leg("carol", 500), dedup_id="late"), id="batch"),
        pytest.param(lambda: reserve("alice", "r", 500, dedup_id="late"), id="reserve"),
    ],
)
def test_null_compensation_rejects_any_late_original(machine, make_late) -> None:
    assert_ok(machine, compensate("late"))
    assert_rejected(machine, make_late(), ErrorCode.ALREADY_COMPENSATED)


def test_null_compensation_and_late_original_in_one_entry(machine) -> None:
    results, events = apply_entry(machine, compensate("late"), transfer("alice", "bob", 1, dedup_id="late"))
    assert results[0].compensation == Compensation.NULL_COMPENSATED
    assert results[1].code == ErrorCode.ALREADY_COMPENSATED
    assert len(events) == 1
    assert machine.accounts["alice"].available == 10_000


def test_compensating_a_rejected_original_is_a_null_compensation(machine) -> None:
    rejected = transfer("alice", "bob", 10**9, dedup_id="too-much")
    first = assert_rejected(machine, rejected, ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")
    before = _accounts(machine)
    result, event = assert_ok(machine, compensate("too-much"))
    assert result.compensation == Compensation.NULL_COMPENSATED
    assert event.accounts == ()
    assert _accounts(machine) == before
    # the original's retry still answers its own outcome and moves nothing
    assert apply_one(machine, rejected) == first
    assert _accounts(machine) == before


# ---------------------------------------------------------------- once only


def test_second_compensation_of_the_same_original_is_rejected(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 1_000, dedup_id="pay"))
    first = compensate("pay", dedup_id="undo-1")
    result, _ = assert_ok(machine, first)
    assert_rejected(machine, compensate("pay", dedup_id="undo-2"), ErrorCode.ALREADY_COMPENSATED)
    # a retry of the first compensation is not a second one: same answer, no event
    results, events = apply_entry(machine, first)
    assert results == [result]
    assert events == []
    assert (machine.accounts["alice"].available, machine.accounts["bob"].available) == (10_000, 5_000)


def test_second_compensation_after_a_null_compensation_is_rejected(machine) -> None:
    assert_ok(machine, compensate("never"))
    assert_rejected(machine, compensate("never"), ErrorCode.ALREADY_COMPENSATED)


# ---------------------------------------------------------------- not compensable


def _setup_create(machine) -> str:
    assert_ok(machine, create("dave", dedup_id="orig"))
    return "orig"


def _setup_update_limits(machine) -> str:
    assert_ok(machine, update_limits("alice", -10, None, dedup_id="orig"))
    return "orig"


def _setup_lock(machine) -> str:
    assert_ok(machine, lock("alice", dedup_id="orig"))
    return "orig"


def _setup_unlock(machine) -> str:
    assert_ok(machine, lock("alice"))
    assert_ok(machine, unlock("alice", dedup_id="orig"))
    return "orig"


def _setup_delete(machine) -> str:
    assert_ok(machine, delete("carol", dedup_id="orig"))
    return "orig"


def _setup_release(machine) -> str:
    assert_ok(machine, reserve("alice", "r", 100))
    assert_ok(machine, release("alice", "r", dedup_id="orig"))
    return "orig"


def _setup_tcc_try(machine) -> str:
    assert_ok(machine, tcc_try("t", leg("alice", -100), leg("bob", 100), dedup_id="orig"))
    return "orig"


def _setup_tcc_confirm(machine) -> str:
    assert_ok(machine, tcc_try("t", leg("alice", -100), leg("bob", 100)))
    assert_ok(machine, confirm("t", dedup_id="orig"))
    return "orig"


def _setup_tcc_cancel(machine) -> str:
    assert_ok(machine, tcc_try("t", leg("alice", -100), leg("bob", 100)))
    assert_ok(machine, cancel("t", dedup_id="orig"))
    return "orig"


def _setup_compensate(machine) -> str:
    assert_ok(machine, transfer("alice", "bob", 100, dedup_id="pay"))
    assert_ok(machine, compensate("pay", dedup_id="orig"))
    return "orig"


def _setup_null_compensate(machine) -> str:
    assert_ok(machine, compensate("never", dedup_id="orig"))
    return "orig"


@pytest.mark.parametrize(
    "setup",
    [
        _setup_create,
        _setup_update_limits,
        _setup_lock,
        _setup_unlock,
        _setup_delete,
        _setup_release,
        _setup_tcc_try,
        _setup_tcc_confirm,
        _setup_tcc_cancel,
        _setup_compensate,
        _setup_null_compensate,
    ],
)
def test_only_transfers_batches_and_reserves_are_compensable(machine, setup) -> None:
    original = setup(machine)
    assert_rejected(machine, compensate(original), ErrorCode.ORIGINAL_NOT_COMPENSABLE)


# ---------------------------------------------------------------- limits and states


def test_a_compensation_that_breaks_a_lower_limit_is_rejected_and_can_be_retried_later(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 1_000, dedup_id="pay"))
    assert_ok(machine, transfer("carol", "bob", 600))  # carol spent part of it
    attempt = compensate("pay", dedup_id="undo-1")
    rejection = assert_rejected(machine, attempt, ErrorCode.LOWER_LIMIT_EXCEEDED, "carol")
    assert_ok(machine, transfer("bob", "carol", 600))  # the money arrives
    # the same dedup_id is a retry: it answers the stored rejection and does nothing
    results, events = apply_entry(machine, attempt)
    assert results == [rejection]
    assert events == []
    assert machine.accounts["carol"].available == 1_000
    # a new dedup_id is a new attempt, and it succeeds
    result, _ = assert_ok(machine, compensate("pay", dedup_id="undo-2"))
    assert result.compensation == Compensation.COMPENSATED
    assert (machine.accounts["alice"].available, machine.accounts["carol"].available) == (10_000, 0)


def test_a_compensation_that_breaks_an_upper_limit_is_rejected(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 1_000, dedup_id="pay"))
    assert_ok(machine, update_limits("alice", 0, 9_500))
    assert_rejected(machine, compensate("pay"), ErrorCode.UPPER_LIMIT_EXCEEDED, "alice")


def test_compensating_a_reserve_at_the_upper_limit_is_allowed(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 500))
    assert_ok(machine, reserve("carol", "r", 500, dedup_id="hold"))
    assert_ok(machine, update_limits("carol", 0, 500))
    assert_ok(machine, compensate("hold"))  # reserved money back to available: the total stays at the limit
    assert (machine.accounts["carol"].available, machine.accounts["carol"].reservations) == (500, {})


def test_a_compensation_touching_a_locked_account_is_rejected(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 1_000, dedup_id="pay"))
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, compensate("pay"), ErrorCode.ACCOUNT_LOCKED, "bob")
    assert_ok(machine, unlock("bob"))
    assert_ok(machine, compensate("pay"))


def test_a_rejected_compensation_leaves_the_original_compensable(machine) -> None:
    assert_ok(machine, batch(leg("carol", 1_000), dedup_id="deposit"))
    assert_ok(machine, transfer("carol", "bob", 1))
    assert_rejected(machine, compensate("deposit"), ErrorCode.LOWER_LIMIT_EXCEEDED, "carol")
    assert_ok(machine, transfer("bob", "carol", 1))
    assert_ok(machine, compensate("deposit"))
    assert machine.accounts["carol"].available == 0


def test_a_late_original_is_rejected_before_its_own_shape_is_looked_at(machine) -> None:
    """Check order 1: the dedup_id decides first, so even a malformed late original is ALREADY_COMPENSATED."""
    assert_ok(machine, compensate("late"))
    assert_rejected(machine, transfer("alice", "bob", 0, dedup_id="late"), ErrorCode.ALREADY_COMPENSATED)


def test_a_retried_null_compensation_answers_the_same(machine) -> None:
    command = compensate("late", dedup_id="undo-late")
    first, _ = assert_ok(machine, command)
    results, events = apply_entry(machine, command)
    assert results == [first]
    assert results[0].compensation == Compensation.NULL_COMPENSATED
    assert events == []


def test_a_compensation_touching_a_deleted_account_is_rejected(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 100, dedup_id="pay"))
    assert_ok(machine, transfer("carol", "alice", 100))
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, compensate("pay"), ErrorCode.ACCOUNT_DELETED, "carol")


# Amounts may reach the core as text (a node that did not know the asset's scale yet passes them
# on; the core resolves them when it applies). The dedup record keeps the command as sent, so a
# compensation must resolve them again — a text amount here once crashed every replica at apply.
@pytest.mark.parametrize(
    ("original", "undone"),
    [
        (transfer("alice", "bob", "10.00", dedup_id="orig"), {"alice": 10_000, "bob": 5_000}),  # type: ignore[arg-type]
        (batch(leg("alice", "-30.00"), leg("bob", "30.00"), dedup_id="orig"), {"alice": 10_000, "bob": 5_000}),  # type: ignore[arg-type]
        (reserve("alice", "r1", "25.50", dedup_id="orig"), {"alice": 10_000}),  # type: ignore[arg-type]
    ],
    ids=["transfer", "batch", "reserve"],
)
def test_compensate_an_original_whose_amounts_were_sent_as_text(machine, original, undone) -> None:
    before = _accounts(machine)
    assert_ok(machine, original)
    assert _accounts(machine) != before
    result, _ = assert_ok(machine, compensate("orig"))
    assert result.compensation == Compensation.COMPENSATED
    assert {account_id: machine.accounts[account_id].available for account_id in undone} == undone
    assert all(not machine.accounts[account_id].reservations for account_id in undone)
    after = _accounts(machine)
    assert apply_one(machine, original).ok  # a retry answers its first outcome and moves nothing
    assert _accounts(machine) == after
