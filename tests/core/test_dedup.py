"""Exactly-once: a dedup_id is applied at most once; a retry answers the original outcome."""

import pytest

from coffer.core.commands import Transfer
from coffer.core.errors import ErrorCode

from .conftest import (
    apply_entry,
    assert_ok,
    assert_rejected,
    batch,
    create,
    ledger_state,
    leg,
    lock,
    release,
    reserve,
    start_time_ms,
    tcc_try,
    transfer,
    update_limits,
)


def _retry(machine, command, time_ms=None):
    """Apply a retry; it must answer without an event and without changing anything but time."""
    before = ledger_state(machine)
    results, events = apply_entry(machine, command, time_ms=time_ms)
    assert events == []
    assert ledger_state(machine) == before
    return results[0]


@pytest.mark.parametrize(
    "make_command",
    [
        pytest.param(lambda: transfer("alice", "bob", 100, dedup_id="d"), id="transfer"),
        pytest.param(lambda: batch(leg("carol", 100), leg("alice", -50), dedup_id="d"), id="batch"),
        pytest.param(lambda: reserve("alice", "r", 100, dedup_id="d"), id="reserve"),
        pytest.param(lambda: tcc_try("t", leg("alice", -100), dedup_id="d"), id="tcc-try"),
        pytest.param(lambda: create("dave", dedup_id="d"), id="create"),
        pytest.param(lambda: lock("bob", dedup_id="d"), id="lock"),
    ],
)
def test_a_retried_success_returns_the_same_result_without_applying_again(machine, make_command) -> None:
    first, _ = assert_ok(machine, make_command())
    for _ in range(3):
        assert _retry(machine, make_command()) == first


def test_a_retry_is_recognised_across_many_entries(machine) -> None:
    first, _ = assert_ok(machine, transfer("alice", "bob", 100, dedup_id="d"))
    for index in range(20):
        assert_ok(machine, transfer("bob", "carol", 1, dedup_id=f"other-{index}"), time_ms=start_time_ms + index * 1_000)
    assert _retry(machine, transfer("alice", "bob", 100, dedup_id="d"), time_ms=start_time_ms + 10**9) == first
    assert machine.accounts["alice"].available == 9_900


def test_a_retry_in_the_same_entry_is_applied_once(machine) -> None:
    command = transfer("alice", "bob", 100, dedup_id="d")
    results, events = apply_entry(machine, command, command, command)
    assert results[0].ok
    assert results == [results[0]] * 3
    assert len(events) == 1
    assert machine.accounts["alice"].available == 9_900


def test_a_retried_rejection_returns_the_same_rejection_even_when_it_would_now_succeed(machine) -> None:
    command = transfer("carol", "bob", 500, dedup_id="d")
    first = assert_rejected(machine, command, ErrorCode.LOWER_LIMIT_EXCEEDED, "carol")
    assert_ok(machine, transfer("alice", "carol", 1_000))  # now carol could pay
    assert _retry(machine, command) == first
    assert machine.accounts["carol"].available == 1_000


def test_a_retried_try_answers_ok_even_after_its_txn_expired(machine) -> None:
    command = tcc_try("t", leg("alice", -100), timeout_s=1, dedup_id="d")
    first, _ = assert_ok(machine, command, time_ms=start_time_ms)
    apply_entry(machine, time_ms=start_time_ms + 1_000)  # expires
    assert _retry(machine, command) == first
    assert machine.accounts["alice"].pending_out == {}


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: transfer("alice", "bob", 101, dedup_id="d"), id="amount"),
        pytest.param(lambda: transfer("alice", "carol", 100, dedup_id="d"), id="target"),
        pytest.param(lambda: transfer("alice", "bob", 100, dedup_id="d", metadata={"k": "v"}), id="metadata"),
        pytest.param(lambda: transfer("alice", "bob", 100, dedup_id="d", expected_from_balance=10_000), id="condition"),
        pytest.param(lambda: batch(leg("alice", -100), leg("bob", 100), dedup_id="d"), id="other-type-same-effect"),
        pytest.param(lambda: update_limits("alice", 0, None, dedup_id="d"), id="other-type"),
    ],
)
def test_same_dedup_id_with_another_payload_is_rejected_and_not_stored(machine, other) -> None:
    original = transfer("alice", "bob", 100, dedup_id="d")
    first, _ = assert_ok(machine, original)
    reused = assert_rejected(machine, other(), ErrorCode.DEDUP_ID_REUSED)
    # not stored: the id still belongs to the first command, and the reuse is rejected again
    assert _retry(machine, original) == first
    assert assert_rejected(machine, other(), ErrorCode.DEDUP_ID_REUSED) == reused
    assert machine.accounts["alice"].available == 9_900


def test_same_dedup_id_with_another_payload_after_a_rejection(machine) -> None:
    original = release("alice", "none", dedup_id="d")
    first = assert_rejected(machine, original, ErrorCode.RESERVATION_NOT_FOUND, "alice")
    assert_rejected(machine, reserve("alice", "none", 100, dedup_id="d"), ErrorCode.DEDUP_ID_REUSED)
    assert _retry(machine, original) == first
    assert machine.accounts["alice"].reservations == {}


def test_dedup_ids_are_independent_of_each_other(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 100, dedup_id="d1"))
    assert_ok(machine, transfer("alice", "bob", 100, dedup_id="d2"))  # same payload, other id: a second transfer
    assert machine.accounts["alice"].available == 9_800


@pytest.mark.parametrize("dedup_id", ["", "x" * 129])
def test_a_malformed_dedup_id_is_an_invalid_request(machine, dedup_id: str) -> None:
    command = Transfer(dedup_id=dedup_id, from_account_id="alice", to_account_id="bob", amount=100, asset="USD")
    assert_rejected(machine, command, ErrorCode.INVALID_REQUEST)
    assert machine.accounts["alice"].available == 10_000


def test_a_reused_dedup_id_is_rejected_before_the_payload_is_looked_at(machine) -> None:
    """Check order 1: the dedup_id decides before the command's shape or accounts."""
    assert_ok(machine, transfer("alice", "bob", 100, dedup_id="d"))
    assert_rejected(machine, transfer("alice", "bob", 0, dedup_id="d"), ErrorCode.DEDUP_ID_REUSED)
    assert_rejected(machine, transfer("alice", "nobody", 1, dedup_id="d"), ErrorCode.DEDUP_ID_REUSED)
