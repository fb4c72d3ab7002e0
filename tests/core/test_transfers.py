"""Transfer: ``from.available -= x; to.available += x``, and every reason it can be rejected."""

import pytest

from coffer.core.errors import ErrorCode
from coffer.core.events import EventType

from .conftest import (
    account_copy,
    apply,
    assert_ok,
    assert_rejected,
    create,
    delete,
    leg,
    lock,
    reserve,
    tcc_try,
    transfer,
    update_limits,
)


def test_transfer_moves_available_money_and_bumps_both_versions(machine) -> None:
    command = transfer("alice", "bob", 2_550, metadata={"note": "rent"})
    _, event = assert_ok(machine, command)
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, bob.available) == (7_450, 7_550)
    assert (alice.version, bob.version) == (3, 3)
    assert event.type == EventType.TRANSFERRED
    assert event.command == command
    assert event.accounts == (alice, bob)


def test_transfer_leaves_other_sections_and_accounts_alone(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 1_000))
    carol = account_copy(machine, "carol")
    assert_ok(machine, transfer("alice", "bob", 9_000))  # all of the available money, not the reservation
    assert machine.accounts["alice"].available == 0
    assert machine.accounts["alice"].reservations == {"r": 1_000}
    assert machine.accounts["carol"] == carol


@pytest.mark.parametrize("amount", [0, -1, -10_000])
def test_transfer_amount_must_be_positive(machine, amount: int) -> None:
    assert_rejected(machine, transfer("alice", "bob", amount), ErrorCode.INVALID_AMOUNT)


def test_transfer_amount_is_checked_before_the_accounts(machine) -> None:
    assert_rejected(machine, transfer("nobody", "nowhere", 0), ErrorCode.INVALID_AMOUNT)


def test_transfer_to_the_same_account_is_rejected(machine) -> None:
    assert_rejected(machine, transfer("alice", "alice", 1), ErrorCode.SAME_ACCOUNT)


@pytest.mark.parametrize(("source", "target", "missing"), [("nobody", "bob", "nobody"), ("alice", "nobody", "nobody")])
def test_transfer_with_a_missing_account_names_it(machine, source: str, target: str, missing: str) -> None:
    assert_rejected(machine, transfer(source, target, 1), ErrorCode.ACCOUNT_NOT_FOUND, missing)


@pytest.mark.parametrize(("source", "target"), [("carol", "alice"), ("alice", "carol")])
def test_transfer_touching_a_locked_account_is_rejected(machine, source: str, target: str) -> None:
    assert_ok(machine, transfer("alice", "carol", 500))
    assert_ok(machine, lock("carol"))
    assert_rejected(machine, transfer(source, target, 1), ErrorCode.ACCOUNT_LOCKED, "carol")


@pytest.mark.parametrize(("source", "target"), [("carol", "alice"), ("alice", "carol")])
def test_transfer_touching_a_deleted_account_is_rejected(machine, source: str, target: str) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, transfer(source, target, 1), ErrorCode.ACCOUNT_DELETED, "carol")


@pytest.mark.parametrize(
    ("source", "target", "asset", "culprit"),
    [
        ("alice", "bob", "EUR", "alice"),  # both hold USD, the command says EUR
        ("alice", "erin", "USD", "erin"),  # erin holds EUR
        ("erin", "alice", "EUR", "alice"),
        ("erin", "alice", "USD", "erin"),
    ],
)
def test_transfer_asset_must_match_both_accounts(machine, source: str, target: str, asset: str, culprit: str) -> None:
    assert_rejected(machine, transfer(source, target, 1, asset), ErrorCode.ASSET_MISMATCH, culprit)


def test_check_order_is_per_account_in_the_order_named(machine) -> None:
    """SPEC check order 3: per account in command order — exists, state, asset — so `from` decides first."""
    assert_ok(machine, lock("carol"))
    assert_rejected(machine, transfer("carol", "nobody", 1), ErrorCode.ACCOUNT_LOCKED, "carol")
    assert_rejected(machine, transfer("nobody", "carol", 1), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    assert_rejected(machine, transfer("erin", "carol", 1), ErrorCode.ASSET_MISMATCH, "erin")
    # state and asset before preconditions and limits
    assert_rejected(machine, transfer("alice", "carol", 10**9, expected_from_balance=0), ErrorCode.ACCOUNT_LOCKED, "carol")
    # preconditions before limits
    assert_rejected(machine, transfer("alice", "bob", 10**9, expected_to_balance=0), ErrorCode.PRECONDITION_FAILED, "bob")


# ---------------------------------------------------------------- preconditions


def test_transfer_with_matching_expected_balances(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 100, expected_from_balance=10_000, expected_to_balance=5_000))
    assert (machine.accounts["alice"].available, machine.accounts["bob"].available) == (9_900, 5_100)


@pytest.mark.parametrize(
    ("conditions", "culprit"),
    [
        ({"expected_from_balance": 9_999}, "alice"),
        ({"expected_from_balance": 10_001}, "alice"),
        ({"expected_to_balance": 0}, "bob"),
        ({"expected_from_balance": 10_000, "expected_to_balance": 5_001}, "bob"),
        ({"expected_from_balance": 1, "expected_to_balance": 1}, "alice"),
    ],
)
def test_transfer_with_a_wrong_expected_balance_is_rejected(machine, conditions: dict, culprit: str) -> None:
    assert_rejected(machine, transfer("alice", "bob", 100, **conditions), ErrorCode.PRECONDITION_FAILED, culprit)


def test_expected_balance_compares_with_available_not_the_total(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 1_000))
    assert_rejected(machine, transfer("alice", "bob", 1, expected_from_balance=10_000), ErrorCode.PRECONDITION_FAILED, "alice")
    assert_ok(machine, transfer("alice", "bob", 1, expected_from_balance=9_000))


# ---------------------------------------------------------------- limits


def test_transfer_may_empty_the_source_exactly(machine) -> None:
    assert_ok(machine, transfer("alice", "bob", 10_000))
    assert machine.accounts["alice"].available == 0


def test_transfer_below_the_lower_limit_is_rejected(machine) -> None:
    assert_rejected(machine, transfer("alice", "bob", 10_001), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_transfer_lower_limit_ignores_reserved_money(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 1))
    assert_rejected(machine, transfer("alice", "bob", 10_000), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_negative_lower_limit_is_a_credit_line(machine) -> None:
    assert_ok(machine, update_limits("carol", -3_000, None))
    assert_ok(machine, transfer("carol", "bob", 2_000))
    assert machine.accounts["carol"].available == -2_000
    assert_ok(machine, transfer("carol", "bob", 1_000))  # exactly at the lower limit
    assert machine.accounts["carol"].available == -3_000
    assert_rejected(machine, transfer("carol", "bob", 1), ErrorCode.LOWER_LIMIT_EXCEEDED, "carol")


def test_transfer_up_to_the_upper_limit_inclusive(machine) -> None:
    assert_ok(machine, update_limits("carol", 0, 1_000))
    assert_ok(machine, transfer("alice", "carol", 1_000))
    assert_rejected(machine, transfer("alice", "carol", 1), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")


def test_upper_limit_counts_reservations(machine) -> None:
    assert_ok(machine, update_limits("bob", 0, 6_000))
    assert_ok(machine, reserve("bob", "r", 4_000))  # available 10.00 + reserved 40.00 = 50.00
    assert_rejected(machine, transfer("alice", "bob", 1_001), ErrorCode.UPPER_LIMIT_EXCEEDED, "bob")
    assert_ok(machine, transfer("alice", "bob", 1_000))


def test_upper_limit_counts_pending_in(machine) -> None:
    assert_ok(machine, update_limits("carol", 0, 1_000))
    assert_ok(machine, tcc_try("t", leg("carol", 600)))  # carol: available 0, pending_in 6.00
    assert_rejected(machine, transfer("alice", "carol", 401), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")
    assert_ok(machine, transfer("alice", "carol", 400))


def test_upper_limit_counts_pending_out(machine) -> None:
    assert_ok(machine, update_limits("bob", 0, 5_000))
    assert_ok(machine, tcc_try("t", leg("bob", -2_000)))  # bob: available 30.00, pending_out 20.00
    assert_rejected(machine, transfer("alice", "bob", 1), ErrorCode.UPPER_LIMIT_EXCEEDED, "bob")


def test_lower_limit_of_the_source_is_checked_before_the_upper_limit_of_the_target(machine) -> None:
    assert_ok(machine, update_limits("carol", 0, 0))
    assert_rejected(machine, transfer("alice", "carol", 10_001), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_rejected_transfers_change_no_account(machine) -> None:
    assert_ok(machine, create("dave", "USD"))
    snapshot = {account_id: account_copy(machine, account_id) for account_id in machine.accounts}
    bad = [
        transfer("alice", "bob", 0),
        transfer("alice", "alice", 1),
        transfer("alice", "nobody", 1),
        transfer("alice", "erin", 1),
        transfer("alice", "bob", 1, expected_to_balance=1),
        transfer("alice", "bob", 10**12),
    ]
    results = apply(machine, *bad)
    assert [result.ok for result in results] == [False] * len(bad)
    assert {account_id: machine.accounts[account_id] for account_id in snapshot} == snapshot
