"""BatchBalanceOperation: signed legs, net per account, all or nothing, and preconditions."""

import pytest

from coffer.core.errors import ErrorCode
from coffer.core.events import EventType

from .conftest import (
    account_copy,
    assert_ok,
    assert_rejected,
    batch,
    delete,
    leg,
    lock,
    precondition,
    reserve,
    update_limits,
)


def test_batch_moves_money_between_accounts(machine) -> None:
    command = batch(leg("alice", -3_000), leg("bob", 2_000), leg("carol", 1_000))
    _, event = assert_ok(machine, command)
    accounts = machine.accounts
    assert (accounts["alice"].available, accounts["bob"].available, accounts["carol"].available) == (7_000, 7_000, 1_000)
    # carol was not funded at setup: her version was 1
    assert (accounts["alice"].version, accounts["bob"].version, accounts["carol"].version) == (3, 3, 2)
    assert event.type == EventType.BALANCES_CHANGED
    assert event.command == command
    assert {account.account_id for account in event.accounts} == {"alice", "bob", "carol"}
    for account in event.accounts:
        assert account == accounts[account.account_id]


def test_money_may_enter_the_ledger(machine) -> None:
    assert_ok(machine, batch(leg("carol", 12_345)))  # a deposit
    assert machine.accounts["carol"].available == 12_345


def test_money_may_leave_the_ledger(machine) -> None:
    assert_ok(machine, batch(leg("alice", -2_500)))  # a withdrawal
    assert machine.accounts["alice"].available == 7_500


def test_legs_need_not_sum_to_zero_across_assets(machine) -> None:
    assert_ok(machine, batch(leg("alice", -100), leg("erin", -50, "EUR"), leg("bob", 90)))
    assert (machine.accounts["alice"].available, machine.accounts["erin"].available, machine.accounts["bob"].available) == (
        9_900,
        9_950,
        5_090,
    )


def test_several_legs_on_one_account_apply_as_their_net_with_one_version_bump(machine) -> None:
    _, event = assert_ok(machine, batch(leg("alice", -3_000), leg("alice", 1_000), leg("bob", 1_500), leg("alice", -500)))
    alice = machine.accounts["alice"]
    assert alice.available == 7_500
    assert alice.version == 3
    assert [account.account_id for account in event.accounts].count("alice") == 1


def test_limits_are_checked_on_the_net_of_each_account(machine) -> None:
    # carol holds 0 with lower limit 0: -10.00 then +10.00 nets to zero and breaks nothing.
    assert_ok(machine, batch(leg("carol", -1_000), leg("carol", 1_000)))
    assert machine.accounts["carol"].available == 0
    # carol with upper 10.00: +20.00 -15.00 nets to +5.00.
    assert_ok(machine, update_limits("carol", 0, 1_000))
    assert_ok(machine, batch(leg("carol", 2_000), leg("carol", -1_500), leg("alice", -500)))
    assert machine.accounts["carol"].available == 500


@pytest.mark.parametrize(
    ("legs", "code", "culprit"),
    [
        pytest.param((leg("alice", -100), leg("nobody", 100)), ErrorCode.ACCOUNT_NOT_FOUND, "nobody", id="missing"),
        pytest.param((leg("alice", -100), leg("bob", 100, "EUR")), ErrorCode.ASSET_MISMATCH, "bob", id="asset"),
        pytest.param((leg("alice", -100), leg("erin", 100)), ErrorCode.ASSET_MISMATCH, "erin", id="asset-of-account"),
        pytest.param((leg("bob", 100), leg("alice", -10_001)), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice", id="lower"),
        pytest.param((leg("alice", -1), leg("bob", 1), leg("carol", -1)), ErrorCode.LOWER_LIMIT_EXCEEDED, "carol", id="last-leg"),
    ],
)
def test_one_failing_leg_rejects_the_whole_batch(machine, legs, code, culprit: str) -> None:
    before = {account_id: account_copy(machine, account_id) for account_id in machine.accounts}
    assert_rejected(machine, batch(*legs), code, culprit)
    assert {account_id: machine.accounts[account_id] for account_id in before} == before


def test_a_locked_or_deleted_leg_rejects_the_whole_batch(machine) -> None:
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, batch(leg("alice", -100), leg("bob", 100)), ErrorCode.ACCOUNT_LOCKED, "bob")
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, batch(leg("alice", -100), leg("carol", 100)), ErrorCode.ACCOUNT_DELETED, "carol")


def test_upper_limit_of_a_leg_rejects_the_whole_batch(machine) -> None:
    assert_ok(machine, update_limits("carol", 0, 1_000))
    assert_ok(machine, reserve("bob", "r", 5_000))
    assert_ok(machine, update_limits("bob", 0, 5_000))
    assert_rejected(machine, batch(leg("alice", -1_001), leg("carol", 1_001)), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")
    # bob's reservation counts toward his upper limit
    assert_rejected(machine, batch(leg("alice", -1), leg("bob", 1)), ErrorCode.UPPER_LIMIT_EXCEEDED, "bob")


def test_limits_are_checked_per_account_in_the_order_named(machine) -> None:
    """SPEC check order 5: per account in command order, lower first then upper."""
    assert_ok(machine, update_limits("carol", 0, 0))
    assert_rejected(machine, batch(leg("carol", 1), leg("alice", -10_001)), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")
    assert_rejected(machine, batch(leg("alice", -10_001), leg("carol", 1)), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_a_zero_leg_is_an_invalid_amount(machine) -> None:
    assert_rejected(machine, batch(leg("alice", -100), leg("bob", 0), leg("carol", 100)), ErrorCode.INVALID_AMOUNT)


def test_a_zero_leg_is_rejected_before_the_accounts_are_looked_at(machine) -> None:
    assert_rejected(machine, batch(leg("nobody", 0)), ErrorCode.INVALID_AMOUNT)


def test_empty_legs_are_an_invalid_request(machine) -> None:
    assert_rejected(machine, batch(), ErrorCode.INVALID_REQUEST)
    assert_rejected(machine, batch(preconditions=(precondition("alice", expected_balance=10_000),)), ErrorCode.INVALID_REQUEST)


# ---------------------------------------------------------------- preconditions


def _move(*conditions) -> object:
    return batch(leg("alice", -100), leg("bob", 100), preconditions=tuple(conditions))


@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param({"expected_balance": 10_000}, id="expected"),
        pytest.param({"min_balance": 10_000}, id="min-inclusive"),
        pytest.param({"min_balance": -5}, id="min-below"),
        pytest.param({"max_balance": 10_000}, id="max-inclusive"),
        pytest.param({"max_balance": 10**12}, id="max-above"),
        pytest.param({"expected_version": 2}, id="version"),
        pytest.param({"expected_balance": 10_000, "min_balance": 10_000, "max_balance": 10_000, "expected_version": 2}, id="all"),
    ],
)
def test_batch_with_holding_preconditions_applies(machine, conditions: dict) -> None:
    assert_ok(machine, _move(precondition("alice", **conditions)))
    assert machine.accounts["alice"].available == 9_900


@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param({"expected_balance": 9_999}, id="expected-below"),
        pytest.param({"expected_balance": 10_001}, id="expected-above"),
        pytest.param({"min_balance": 10_001}, id="min"),
        pytest.param({"max_balance": 9_999}, id="max"),
        pytest.param({"expected_version": 1}, id="version-old"),
        pytest.param({"expected_version": 3}, id="version-future"),
        pytest.param(
            {"expected_balance": 10_000, "min_balance": 10_000, "max_balance": 10_000, "expected_version": 7}, id="one-of-all"
        ),
    ],
)
def test_batch_with_a_failing_precondition_changes_nothing(machine, conditions: dict) -> None:
    assert_rejected(machine, _move(precondition("alice", **conditions)), ErrorCode.PRECONDITION_FAILED, "alice")


def test_every_precondition_must_hold(machine) -> None:
    command = _move(precondition("alice", expected_balance=10_000), precondition("bob", expected_balance=1))
    assert_rejected(machine, command, ErrorCode.PRECONDITION_FAILED, "bob")


def test_preconditions_compare_with_available_only(machine) -> None:
    assert_ok(machine, reserve("alice", "r", 4_000))
    assert_rejected(machine, _move(precondition("alice", min_balance=10_000)), ErrorCode.PRECONDITION_FAILED, "alice")
    assert_ok(machine, _move(precondition("alice", expected_balance=6_000, max_balance=6_000)))


def test_precondition_on_an_account_outside_the_legs(machine) -> None:
    carol_before = account_copy(machine, "carol")
    assert_rejected(machine, _move(precondition("carol", min_balance=1)), ErrorCode.PRECONDITION_FAILED, "carol")
    _, event = assert_ok(machine, _move(precondition("carol", expected_balance=0, expected_version=1)))
    assert machine.accounts["carol"] == carol_before  # conditioned on, not changed
    assert "carol" not in {account.account_id for account in event.accounts}


def test_precondition_on_a_missing_account_rejects_the_batch(machine) -> None:
    assert_rejected(machine, _move(precondition("nobody", min_balance=0)), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")


def test_expected_version_is_optimistic_locking(machine) -> None:
    version = machine.accounts["alice"].version
    assert_ok(machine, _move(precondition("alice", expected_version=version)))
    # a second writer that read the same version loses
    assert_rejected(machine, _move(precondition("alice", expected_version=version)), ErrorCode.PRECONDITION_FAILED, "alice")


def test_preconditions_are_checked_before_limits(machine) -> None:
    command = batch(leg("alice", -(10**9)), leg("bob", 10**9), preconditions=(precondition("bob", expected_balance=0),))
    assert_rejected(machine, command, ErrorCode.PRECONDITION_FAILED, "bob")


def test_account_existence_is_checked_before_preconditions(machine) -> None:
    command = batch(leg("nobody", 1), preconditions=(precondition("alice", expected_balance=0),))
    assert_rejected(machine, command, ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
