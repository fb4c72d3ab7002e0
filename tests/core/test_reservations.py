"""Reserve and Release: ``available <-> reservations[rid]``."""

import pytest

from coffer.core.errors import ErrorCode
from coffer.core.events import EventType

from .conftest import assert_ok, assert_rejected, delete, lock, release, reserve, update_limits


def test_reserve_moves_available_into_the_reservation(machine) -> None:
    command = reserve("alice", "order-1", 2_500)
    _, event = assert_ok(machine, command)
    alice = machine.accounts["alice"]
    assert alice.available == 7_500
    assert alice.reservations == {"order-1": 2_500}
    assert alice.version == 3
    assert event.type == EventType.RESERVED
    assert event.command == command
    assert event.accounts == (alice,)


def test_reserve_adds_to_an_existing_reservation(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 1_000))
    assert_ok(machine, reserve("alice", "r", 500))
    assert_ok(machine, reserve("alice", "other", 100))
    alice = machine.accounts["alice"]
    assert alice.reservations == {"r": 1_500, "other": 100}
    assert alice.available == 8_400


def test_reserve_all_available_money_exactly(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 10_000))
    assert machine.accounts["alice"].available == 0


def test_reserve_beyond_the_lower_limit_is_rejected(machine) -> None:
    assert_rejected(machine, reserve("alice", "r", 10_001), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_reserve_on_a_credit_line_down_to_the_lower_limit(machine) -> None:
    assert_ok(machine, update_limits("carol", -1_000, None))
    assert_ok(machine, reserve("carol", "r", 1_000))
    assert machine.accounts["carol"].available == -1_000
    assert_rejected(machine, reserve("carol", "r", 1), ErrorCode.LOWER_LIMIT_EXCEEDED, "carol")


def test_reserve_at_the_upper_limit_is_allowed_because_the_total_stays(machine) -> None:
    assert_ok(machine, update_limits("alice", 0, 10_000))  # alice is exactly at her upper limit
    assert_ok(machine, reserve("alice", "r", 6_000))
    assert machine.accounts["alice"].reservations == {"r": 6_000}


@pytest.mark.parametrize("amount", [0, -1])
def test_reserve_amount_must_be_positive(machine, amount: int) -> None:
    assert_rejected(machine, reserve("alice", "r", amount), ErrorCode.INVALID_AMOUNT)


@pytest.mark.parametrize("reservation_id", ["", "a b", "x" * 129])
def test_reserve_with_a_malformed_reservation_id_is_an_invalid_request(machine, reservation_id: str) -> None:
    assert_rejected(machine, reserve("alice", reservation_id, 1), ErrorCode.INVALID_REQUEST)


def test_reserve_on_missing_locked_or_deleted_accounts(machine) -> None:
    assert_rejected(machine, reserve("nobody", "r", 1), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, reserve("bob", "r", 1), ErrorCode.ACCOUNT_LOCKED, "bob")
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, reserve("carol", "r", 1), ErrorCode.ACCOUNT_DELETED, "carol")


# ---------------------------------------------------------------- Release


def test_release_all_when_no_amount_is_given(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 2_500))
    assert_ok(machine, reserve("alice", "keep", 100))
    command = release("alice", "r")
    _, event = assert_ok(machine, command)
    alice = machine.accounts["alice"]
    assert alice.available == 9_900
    assert alice.reservations == {"keep": 100}
    assert alice.version == 5
    assert event.type == EventType.RELEASED
    assert event.command == command
    assert event.accounts == (alice,)


def test_release_a_part(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 2_500))
    assert_ok(machine, release("alice", "r", 1_000))
    alice = machine.accounts["alice"]
    assert alice.reservations == {"r": 1_500}
    assert alice.available == 8_500


def test_release_of_the_exact_remainder_removes_the_key(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 2_500))
    assert_ok(machine, release("alice", "r", 1_000))
    assert_ok(machine, release("alice", "r", 1_500))
    assert "r" not in machine.accounts["alice"].reservations
    assert machine.accounts["alice"].reservations == {}
    assert machine.accounts["alice"].available == 10_000
    assert_rejected(machine, release("alice", "r"), ErrorCode.RESERVATION_NOT_FOUND, "alice")


def test_release_of_an_unknown_reservation(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 100))
    assert_rejected(machine, release("alice", "other"), ErrorCode.RESERVATION_NOT_FOUND, "alice")
    assert_rejected(machine, release("bob", "r"), ErrorCode.RESERVATION_NOT_FOUND, "bob")  # reservations are per account


def test_release_of_more_than_reserved(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 100))
    assert_rejected(machine, release("alice", "r", 101), ErrorCode.INSUFFICIENT_RESERVATION, "alice")
    assert machine.accounts["alice"].reservations == {"r": 100}


@pytest.mark.parametrize("amount", [0, -1])
def test_release_amount_must_be_positive(machine, amount: int) -> None:
    assert_ok(machine, reserve("alice", "r", 100))
    assert_rejected(machine, release("alice", "r", amount), ErrorCode.INVALID_AMOUNT)


def test_release_on_missing_locked_or_deleted_accounts(machine) -> None:
    assert_rejected(machine, release("nobody", "r"), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    assert_ok(machine, reserve("bob", "r", 100))
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, release("bob", "r"), ErrorCode.ACCOUNT_LOCKED, "bob")
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, release("carol", "r"), ErrorCode.ACCOUNT_DELETED, "carol")


def test_release_never_breaks_a_limit(machine) -> None:
    """Release moves money within the account: the total does not change, available only grows."""
    assert_ok(machine, reserve("bob", "r", 5_000))
    assert_ok(machine, update_limits("bob", 0, 5_000))
    assert_ok(machine, release("bob", "r"))
    assert machine.accounts["bob"].available == 5_000
