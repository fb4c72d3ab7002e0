"""Velocity limits: caps on money and debits leaving an account per UTC hour and day, by log time.

Expected outcomes come from the specification: caps are checked with the movement, atomically
(a rejected command counts nothing), windows are calendar windows of the log's time, and only
debits count (transfers out, net decreases of batch operations, TCC holds).
"""

import pytest

from coffer.core.commands import SetVelocityLimits
from coffer.core.errors import ErrorCode
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.velocity import day_ms, hour_ms, usage

from .conftest import (
    apply_one,
    assert_ok,
    assert_rejected,
    batch,
    cancel,
    compensate,
    confirm,
    leg,
    reserve,
    start_time_ms,
    tcc_try,
    transfer,
)

# A log time at the start of a UTC day (2023-11-15T00:00:00Z), so windows are easy to name.
day_start = start_time_ms - start_time_ms % day_ms + day_ms


def caps(account_id: str = "alice", *, dedup_id: str | None = None, **limits: int | None) -> SetVelocityLimits:
    return SetVelocityLimits(dedup_id=dedup_id or f"caps-{account_id}-{sorted(limits.items())}", account_id=account_id, **limits)


def at(machine, command, time_ms: int):
    """Apply ``command`` alone at log time ``time_ms``."""
    return apply_one(machine, command, time_ms=time_ms)


def test_setting_caps_bumps_the_version_and_emits_an_event(machine) -> None:
    version = machine.accounts["alice"].version
    _, event = assert_ok(machine, caps(amount_per_hour=100, debits_per_day=3))
    assert event.type == "velocity_limits_set"
    assert [account.account_id for account in event.accounts] == ["alice"]
    assert machine.accounts["alice"].version == version + 1
    assert machine.velocity["alice"].limits.amount_per_hour == 100


def test_hourly_amount_cap(machine) -> None:
    assert_ok(machine, caps(amount_per_hour=1_000))
    assert at(machine, transfer("alice", "bob", 600), day_start).ok
    assert at(machine, transfer("alice", "bob", 400), day_start + 1).ok  # exactly at the cap
    before = machine.accounts["alice"].available
    rejected = at(machine, transfer("alice", "bob", 1), day_start + 2)
    assert rejected.code == ErrorCode.VELOCITY_LIMIT_EXCEEDED and rejected.account_id == "alice"
    assert "hourly amount cap" in rejected.message
    assert machine.accounts["alice"].available == before
    # The next UTC hour is a new window.
    assert at(machine, transfer("alice", "bob", 1_000), day_start + hour_ms).ok


def test_daily_amount_cap_spans_hours(machine) -> None:
    assert_ok(machine, caps(amount_per_day=1_000))
    assert at(machine, transfer("alice", "bob", 700), day_start + 3 * hour_ms).ok
    assert at(machine, transfer("alice", "bob", 301), day_start + 20 * hour_ms).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED
    assert at(machine, transfer("alice", "bob", 300), day_start + 20 * hour_ms).ok
    assert at(machine, transfer("alice", "bob", 1_000), day_start + day_ms).ok  # next UTC day


def test_debit_count_caps(machine) -> None:
    assert_ok(machine, caps(debits_per_hour=2, debits_per_day=3))
    assert at(machine, transfer("alice", "bob", 1), day_start).ok
    assert at(machine, transfer("alice", "bob", 1), day_start + 10).ok
    third = at(machine, transfer("alice", "bob", 1), day_start + 20)
    assert third.code == ErrorCode.VELOCITY_LIMIT_EXCEEDED and "hourly debit count" in third.message
    assert at(machine, transfer("alice", "bob", 1), day_start + hour_ms).ok
    fourth = at(machine, transfer("alice", "bob", 1), day_start + 2 * hour_ms)
    assert fourth.code == ErrorCode.VELOCITY_LIMIT_EXCEEDED and "daily debit count" in fourth.message


def test_credits_do_not_count(machine) -> None:
    assert_ok(machine, caps(debits_per_day=1))
    assert at(machine, transfer("bob", "alice", 10), day_start).ok
    assert at(machine, batch(leg("alice", 10)), day_start).ok
    assert at(machine, transfer("alice", "bob", 1), day_start).ok
    assert at(machine, transfer("alice", "bob", 1), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED


def test_batch_counts_the_net_decrease_once_per_account(machine) -> None:
    assert_ok(machine, caps(amount_per_day=100, debits_per_day=1))
    # -150 and +60 on alice: a net decrease of 90, one debit.
    assert at(machine, batch(leg("alice", -150), leg("alice", 60), leg("bob", 90)), day_start).ok
    assert usage(machine.velocity["alice"], day_start) == (90, 1, 90, 1)
    # A batch whose net on alice is an increase is no debit.
    assert at(machine, batch(leg("alice", -5), leg("alice", 10), leg("bob", -5)), day_start).ok
    assert at(machine, batch(leg("alice", -1), leg("bob", 1)), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED


def test_a_rejected_batch_counts_nothing_on_any_account(machine) -> None:
    assert_ok(machine, caps("alice", amount_per_day=100))
    assert_ok(machine, caps("bob", amount_per_day=10))
    rejected = at(machine, batch(leg("alice", -50), leg("bob", -20), leg("carol", 70)), day_start)
    assert rejected.code == ErrorCode.VELOCITY_LIMIT_EXCEEDED and rejected.account_id == "bob"
    assert usage(machine.velocity["alice"], day_start) == (0, 0, 0, 0)


def test_limits_come_before_velocity(machine) -> None:
    assert_ok(machine, caps("carol", debits_per_day=1))
    assert at(machine, transfer("carol", "bob", 1), day_start).code == ErrorCode.LOWER_LIMIT_EXCEEDED
    assert usage(machine.velocity["carol"], day_start) == (0, 0, 0, 0)


def test_tcc_hold_counts_and_a_cancel_or_expiry_gives_it_back(machine) -> None:
    assert_ok(machine, caps(amount_per_day=100))
    assert at(machine, tcc_try("t1", leg("alice", -80), leg("bob", 80)), day_start).ok
    assert at(machine, tcc_try("t2", leg("alice", -30)), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED
    assert at(machine, cancel("t1"), day_start + 1).ok
    assert usage(machine.velocity["alice"], day_start + 1) == (0, 0, 0, 0)
    assert at(machine, tcc_try("t3", leg("alice", -90), timeout_s=5), day_start + 2).ok
    assert usage(machine.velocity["alice"], day_start + 2)[2] == 90
    at(machine, transfer("bob", "carol", 1), day_start + 10_000)  # any entry past the deadline
    assert machine.txns["t3"].state == "CANCELLED"
    assert usage(machine.velocity["alice"], day_start + 10_000)[2] == 0
    # A confirmed hold stays counted.
    assert at(machine, tcc_try("t4", leg("alice", -100)), day_start + 10_001).ok
    assert at(machine, confirm("t4"), day_start + 10_002).ok
    assert "t4" not in machine.velocity_holds
    assert at(machine, transfer("alice", "bob", 1), day_start + 10_003).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED


def test_a_cancel_in_a_later_window_gives_nothing_back(machine) -> None:
    assert_ok(machine, caps(amount_per_day=100))
    assert at(machine, tcc_try("t1", leg("alice", -80)), day_start).ok
    assert at(machine, transfer("alice", "bob", 50), day_start + day_ms).ok  # the next day's window
    assert at(machine, cancel("t1"), day_start + day_ms + 1).ok
    assert usage(machine.velocity["alice"], day_start + day_ms + 1)[2] == 50


def test_reservations_and_compensations_are_not_debits(machine) -> None:
    assert_ok(machine, caps("alice", debits_per_day=1))
    assert_ok(machine, caps("bob", debits_per_day=1))
    assert at(machine, reserve("alice", "r1", 10), day_start).ok
    original = transfer("alice", "bob", 10)
    assert at(machine, original, day_start).ok
    # The undo takes money from bob: an undo is never blocked, and it counts on nobody.
    assert at(machine, compensate(original.dedup_id), day_start).ok
    assert usage(machine.velocity["bob"], day_start) == (0, 0, 0, 0)
    assert at(machine, transfer("bob", "alice", 1), day_start).ok


def test_changing_caps_keeps_usage_and_removing_them_drops_it(machine) -> None:
    assert_ok(machine, caps(amount_per_day=100))
    assert at(machine, transfer("alice", "bob", 60), day_start).ok
    assert at(machine, caps(amount_per_day=80), day_start).ok
    assert at(machine, transfer("alice", "bob", 21), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED
    assert at(machine, caps(), day_start).ok
    assert "alice" not in machine.velocity
    assert at(machine, transfer("alice", "bob", 1_000), day_start).ok


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"amount_per_hour": 0}, ErrorCode.INVALID_AMOUNT),
        ({"amount_per_day": -5}, ErrorCode.INVALID_AMOUNT),
        ({"amount_per_day": 2**127}, ErrorCode.INVALID_AMOUNT),
        ({"debits_per_hour": 0}, ErrorCode.INVALID_REQUEST),
        ({"debits_per_day": 2**63}, ErrorCode.INVALID_REQUEST),
    ],
)
def test_malformed_caps_are_rejected(machine, limits, code) -> None:
    assert_rejected(machine, caps(**limits), code)


def test_caps_on_a_missing_or_deleted_account(machine) -> None:
    assert_rejected(machine, caps("nobody", debits_per_day=1), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    from .conftest import delete

    assert_ok(machine, delete("carol"))
    assert_rejected(machine, caps("carol", debits_per_day=1), ErrorCode.ACCOUNT_DELETED, "carol")


def test_caps_given_as_text_take_the_accounts_scale(machine) -> None:
    result = apply_one(machine, SetVelocityLimits(dedup_id="text-caps", account_id="alice", amount_per_day="1.50"))
    assert result.ok
    assert machine.velocity["alice"].limits.amount_per_day == 150
    assert at(machine, transfer("alice", "bob", 151), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED


def test_caps_and_usage_survive_a_snapshot(machine) -> None:
    assert_ok(machine, caps(amount_per_day=100))
    assert at(machine, transfer("alice", "bob", 60), day_start).ok
    assert at(machine, tcc_try("t1", leg("alice", -30)), day_start).ok
    restored = restore_snapshot(take_snapshot(machine))
    assert take_snapshot(restored) == take_snapshot(machine)
    assert at(restored, transfer("alice", "bob", 11), day_start).code == ErrorCode.VELOCITY_LIMIT_EXCEEDED
    assert at(restored, cancel("t1"), day_start).ok
    assert at(restored, transfer("alice", "bob", 40), day_start).ok
