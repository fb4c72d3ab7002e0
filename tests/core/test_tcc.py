"""Two-phase (TCC) transactions: try / confirm / cancel, their states, and deterministic timeouts."""

import pytest

from coffer.core.errors import ErrorCode
from coffer.core.events import EventType

from .conftest import (
    account_copy,
    apply_entry,
    assert_ok,
    assert_rejected,
    cancel,
    confirm,
    delete,
    funded_machine,
    leg,
    lock,
    start_time_ms,
    tcc_try,
    transfer,
    unlock,
    update_limits,
)


def _usd_total(machine) -> int:
    """SPEC invariant 1: available + reserved + pending_out, summed over the asset's accounts."""
    return sum(
        account.available + sum(account.reservations.values()) + sum(account.pending_out.values())
        for account in machine.accounts.values()
        if account.asset == "USD"
    )


def _try_alice_to_bob(machine, txn_id: str = "t1", amount: int = 3_000, **kw) -> None:
    assert_ok(machine, tcc_try(txn_id, leg("alice", -amount), leg("bob", amount), **kw))


def test_try_holds_out_of_available_and_books_pending_in(machine) -> None:
    total = _usd_total(machine)
    command = tcc_try("t1", leg("alice", -3_000), leg("bob", 3_000))
    _, event = assert_ok(machine, command)
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, alice.pending_out, alice.pending_in) == (7_000, {"t1": 3_000}, {})
    assert (bob.available, bob.pending_out, bob.pending_in) == (5_000, {}, {"t1": 3_000})
    assert (alice.version, bob.version) == (3, 3)
    assert event.type == EventType.TCC_TRIED
    assert event.command == command
    assert sorted(account.account_id for account in event.accounts) == ["alice", "bob"]
    for account in event.accounts:
        assert account == machine.accounts[account.account_id]
    assert _usd_total(machine) == total


def test_confirm_lets_pending_out_leave_and_pending_in_become_available(machine) -> None:
    total = _usd_total(machine)
    _try_alice_to_bob(machine)
    command = confirm("t1")
    _, event = assert_ok(machine, command)
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, alice.pending_out, alice.pending_in) == (7_000, {}, {})
    assert (bob.available, bob.pending_out, bob.pending_in) == (8_000, {}, {})
    assert (alice.version, bob.version) == (4, 4)
    assert event.type == EventType.TCC_CONFIRMED
    assert event.command == command
    assert sorted(account.account_id for account in event.accounts) == ["alice", "bob"]
    assert _usd_total(machine) == total


def test_cancel_returns_pending_out_and_drops_pending_in(machine) -> None:
    alice_before, bob_before = account_copy(machine, "alice"), account_copy(machine, "bob")
    _try_alice_to_bob(machine)
    _, event = assert_ok(machine, cancel("t1"))
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, alice.pending_out, alice.pending_in) == (alice_before.available, {}, {})
    assert (bob.available, bob.pending_out, bob.pending_in) == (bob_before.available, {}, {})
    assert (alice.version, bob.version) == (alice_before.version + 2, bob_before.version + 2)
    assert event.type == EventType.TCC_CANCELLED
    assert sorted(account.account_id for account in event.accounts) == ["alice", "bob"]


def test_legs_need_not_sum_to_zero(machine) -> None:
    # a positive leg alone: money enters on confirm
    assert_ok(machine, tcc_try("in", leg("carol", 700)))
    assert machine.accounts["carol"].available == 0
    assert_ok(machine, confirm("in"))
    assert machine.accounts["carol"].available == 700
    # a negative leg alone: money leaves on confirm
    assert_ok(machine, tcc_try("out", leg("carol", -200)))
    assert machine.accounts["carol"].available == 500
    assert_ok(machine, confirm("out"))
    assert machine.accounts["carol"].available == 500
    assert machine.accounts["carol"].pending_out == {}


def test_both_directions_on_one_account(machine) -> None:
    assert_ok(machine, tcc_try("t", leg("alice", -1_000), leg("alice", 400), leg("bob", 600)))
    alice = machine.accounts["alice"]
    assert (alice.available, alice.pending_out, alice.pending_in, alice.version) == (9_000, {"t": 1_000}, {"t": 400}, 3)
    assert_ok(machine, confirm("t"))
    assert (alice.available, alice.pending_out, alice.pending_in) == (9_400, {}, {})
    assert machine.accounts["bob"].available == 5_600


def test_several_transactions_on_one_account_are_kept_apart(machine) -> None:
    _try_alice_to_bob(machine, "t1", 1_000)
    _try_alice_to_bob(machine, "t2", 2_000)
    assert machine.accounts["alice"].pending_out == {"t1": 1_000, "t2": 2_000}
    assert_ok(machine, cancel("t1"))
    assert_ok(machine, confirm("t2"))
    assert machine.accounts["alice"].available == 8_000
    assert machine.accounts["bob"].available == 7_000
    assert machine.accounts["alice"].pending_out == {} and machine.accounts["bob"].pending_in == {}


# ---------------------------------------------------------------- rejections of try


def test_try_beyond_the_lower_limit_is_rejected(machine) -> None:
    assert_rejected(machine, tcc_try("t", leg("alice", -10_001), leg("bob", 10_001)), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_try_upper_limit_counts_pending_in(machine) -> None:
    assert_ok(machine, update_limits("carol", 0, 1_000))
    assert_ok(machine, tcc_try("t1", leg("carol", 800)))
    assert_rejected(machine, tcc_try("t2", leg("carol", 201)), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")
    assert_rejected(machine, transfer("alice", "carol", 201), ErrorCode.UPPER_LIMIT_EXCEEDED, "carol")
    assert_ok(machine, tcc_try("t2", leg("carol", 200)))  # inclusive


def test_try_upper_limit_counts_money_moved_to_pending_out(machine) -> None:
    assert_ok(machine, update_limits("bob", 0, 5_000))
    assert_ok(machine, tcc_try("t1", leg("bob", -5_000)))
    assert_rejected(machine, tcc_try("t2", leg("bob", 1)), ErrorCode.UPPER_LIMIT_EXCEEDED, "bob")


def test_try_with_an_existing_txn_id_is_rejected_in_every_state(machine) -> None:
    _try_alice_to_bob(machine, "tried")
    _try_alice_to_bob(machine, "confirmed")
    assert_ok(machine, confirm("confirmed"))
    _try_alice_to_bob(machine, "cancelled")
    assert_ok(machine, cancel("cancelled"))
    for txn_id in ("tried", "confirmed", "cancelled"):
        assert_rejected(machine, tcc_try(txn_id, leg("carol", 1)), ErrorCode.TXN_EXISTS)


def test_try_on_locked_deleted_or_missing_accounts_is_rejected(machine) -> None:
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, tcc_try("t", leg("alice", -1), leg("bob", 1)), ErrorCode.ACCOUNT_LOCKED, "bob")
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, tcc_try("t", leg("alice", -1), leg("carol", 1)), ErrorCode.ACCOUNT_DELETED, "carol")
    assert_rejected(machine, tcc_try("t", leg("alice", -1), leg("nobody", 1)), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    assert_rejected(machine, tcc_try("t", leg("alice", -1), leg("erin", 1)), ErrorCode.ASSET_MISMATCH, "erin")


def test_try_with_a_zero_leg_or_no_legs(machine) -> None:
    assert_rejected(machine, tcc_try("t", leg("alice", -1), leg("bob", 0)), ErrorCode.INVALID_AMOUNT)
    assert_rejected(machine, tcc_try("t"), ErrorCode.INVALID_REQUEST)


def test_a_rejected_try_does_not_use_up_its_txn_id(machine) -> None:
    assert_rejected(machine, tcc_try("t", leg("alice", -(10**9))), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")
    _try_alice_to_bob(machine, "t")


# ---------------------------------------------------------------- confirm / cancel states


def test_confirm_and_cancel_of_an_unknown_txn(machine) -> None:
    assert_rejected(machine, confirm("nope"), ErrorCode.TXN_NOT_FOUND)
    assert_rejected(machine, cancel("nope"), ErrorCode.TXN_NOT_FOUND)


def test_cancel_after_confirm_is_rejected(machine) -> None:
    _try_alice_to_bob(machine)
    assert_ok(machine, confirm("t1"))
    assert_rejected(machine, cancel("t1"), ErrorCode.TXN_ALREADY_CONFIRMED)
    assert machine.accounts["bob"].available == 8_000


def test_confirm_after_cancel_is_rejected(machine) -> None:
    _try_alice_to_bob(machine)
    assert_ok(machine, cancel("t1"))
    assert_rejected(machine, confirm("t1"), ErrorCode.TXN_ALREADY_CANCELLED)
    assert machine.accounts["bob"].available == 5_000


@pytest.mark.parametrize("finish", [confirm, cancel])
def test_repeating_the_same_phase_two_succeeds_without_change(machine, finish) -> None:
    _try_alice_to_bob(machine)
    assert_ok(machine, finish("t1"))
    alice, bob = account_copy(machine, "alice"), account_copy(machine, "bob")
    _, event = assert_ok(machine, finish("t1"))  # a new dedup_id: not a retry, a second command
    assert machine.accounts["alice"] == alice
    assert machine.accounts["bob"] == bob
    assert event.accounts == ()  # accepted, but it changed no account


@pytest.mark.parametrize("finish", [confirm, cancel])
def test_phase_two_finishes_on_locked_accounts(machine, finish) -> None:
    _try_alice_to_bob(machine)
    assert_ok(machine, lock("alice"))
    assert_ok(machine, lock("bob"))
    assert_ok(machine, finish("t1"))
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert alice.pending_out == {} and bob.pending_in == {}
    assert (alice.available, bob.available) == ((7_000, 8_000) if finish is confirm else (10_000, 5_000))
    assert alice.state == bob.state == "LOCKED"


def test_confirm_is_not_stopped_by_limits_changed_after_the_try(machine) -> None:
    _try_alice_to_bob(machine)
    assert_ok(machine, update_limits("bob", 0, 8_000))  # bob's total is 80.00 already
    assert_ok(machine, confirm("t1"))
    assert machine.accounts["bob"].available == 8_000


def test_locked_account_with_a_finished_txn_can_be_unlocked_and_deleted(machine) -> None:
    assert_ok(machine, tcc_try("t", leg("carol", 100)))
    assert_ok(machine, lock("carol"))
    assert_ok(machine, cancel("t"))
    assert_ok(machine, unlock("carol"))
    assert_ok(machine, delete("carol"))


# ---------------------------------------------------------------- timeouts


def test_an_expired_try_is_cancelled_before_the_commands_of_the_entry(machine) -> None:
    t0 = start_time_ms
    assert_ok(machine, tcc_try("t1", leg("alice", -3_000), leg("bob", 3_000), timeout_s=10), time_ms=t0)
    # one millisecond early: still tried, a confirm would win
    results, events = apply_entry(machine, transfer("bob", "carol", 1), time_ms=t0 + 9_999)
    assert results[0].ok and len(events) == 1
    assert machine.accounts["alice"].pending_out == {"t1": 3_000}
    # at the deadline: the expiry comes first, then the confirm finds a cancelled txn
    results, events = apply_entry(machine, confirm("t1"), time_ms=t0 + 10_000)
    assert results[0].code == ErrorCode.TXN_ALREADY_CANCELLED
    assert len(events) == 1
    expired = events[0].decode()
    assert expired.type == EventType.TCC_EXPIRED
    assert expired.dedup_id is None
    assert expired.command is None
    assert expired.time_ms == t0 + 10_000
    assert expired.log_index == machine.log_index
    assert sorted(account.account_id for account in expired.accounts) == ["alice", "bob"]
    alice, bob = machine.accounts["alice"], machine.accounts["bob"]
    assert (alice.available, alice.pending_out) == (10_000, {})
    assert (bob.available, bob.pending_in) == (4_999, {})


def test_expiry_happens_in_an_entry_well_after_the_deadline(machine) -> None:
    assert_ok(machine, tcc_try("t1", leg("alice", -100), timeout_s=1), time_ms=start_time_ms)
    results, events = apply_entry(machine, cancel("t1"), time_ms=start_time_ms + 3_600_000)
    assert results[0].ok  # cancel of a cancelled txn: same state, succeeds
    assert [event.decode().type for event in events] == [EventType.TCC_EXPIRED, EventType.TCC_CANCELLED]
    assert events[1].decode().accounts == ()
    assert machine.accounts["alice"].available == 10_000


def test_expiry_runs_even_for_an_entry_without_commands(machine) -> None:
    assert_ok(machine, tcc_try("t1", leg("alice", -100), timeout_s=1), time_ms=start_time_ms)
    results, events = apply_entry(machine, time_ms=start_time_ms + 1_000)
    assert results == []
    assert [event.decode().type for event in events] == [EventType.TCC_EXPIRED]
    assert machine.accounts["alice"].pending_out == {}


def test_a_confirm_in_an_earlier_entry_wins_over_the_timeout(machine) -> None:
    assert_ok(machine, tcc_try("t1", leg("alice", -3_000), leg("bob", 3_000), timeout_s=5), time_ms=start_time_ms)
    assert_ok(machine, confirm("t1"), time_ms=start_time_ms + 4_999)
    results, events = apply_entry(machine, cancel("t1"), time_ms=start_time_ms + 60_000)
    assert results[0].code == ErrorCode.TXN_ALREADY_CONFIRMED
    assert events == []  # no tcc_expired for a finished txn
    assert (machine.accounts["alice"].available, machine.accounts["bob"].available) == (7_000, 8_000)


def test_a_cancelled_try_does_not_expire_again(machine) -> None:
    assert_ok(machine, tcc_try("t1", leg("alice", -100), timeout_s=5), time_ms=start_time_ms)
    assert_ok(machine, cancel("t1"))
    _, events = apply_entry(machine, time_ms=start_time_ms + 60_000)
    assert events == []
    assert machine.accounts["alice"].available == 10_000


def test_a_try_without_timeout_never_expires(machine) -> None:
    _try_alice_to_bob(machine)
    _, events = apply_entry(machine, time_ms=start_time_ms + 10 * 365 * 24 * 3600 * 1000)
    assert events == []
    assert machine.accounts["alice"].pending_out == {"t1": 3_000}


def test_the_deadline_counts_from_the_log_time_of_the_try(machine) -> None:
    later = start_time_ms + 50_000
    assert_ok(machine, tcc_try("t1", leg("alice", -100), timeout_s=10), time_ms=later)
    _, events = apply_entry(machine, time_ms=start_time_ms + 59_999)  # 10 s after the *first* entry, not the try
    assert events == []
    _, events = apply_entry(machine, time_ms=later + 9_999)
    assert events == []
    _, events = apply_entry(machine, time_ms=later + 10_000)
    assert [event.decode().type for event in events] == [EventType.TCC_EXPIRED]


def test_expiry_order_is_by_deadline_then_txn_id(machine) -> None:
    t0 = start_time_ms
    tries = [
        tcc_try("b", leg("alice", -1), timeout_s=10),
        tcc_try("a", leg("alice", -2), timeout_s=10),
        tcc_try("c", leg("alice", -3), timeout_s=5),
        tcc_try("z", leg("alice", -4), timeout_s=20),
    ]
    results, _ = apply_entry(machine, *tries, time_ms=t0)
    assert all(result.ok for result in results)
    results, events = apply_entry(machine, confirm("a"), time_ms=t0 + 20_000)
    assert results[0].code == ErrorCode.TXN_ALREADY_CANCELLED
    decoded = [event.decode() for event in events]
    assert [event.type for event in decoded] == [EventType.TCC_EXPIRED] * 4
    # each expiry shows alice right after giving back that txn's hold
    assert [event.accounts[0].available for event in decoded] == [10_000 - 10 + 3, 10_000 - 10 + 5, 10_000 - 10 + 6, 10_000]
    assert [event.seq for event in decoded] == list(range(decoded[0].seq, decoded[0].seq + 4))


def test_expiry_is_the_same_whatever_order_the_tries_were_made_in(machine) -> None:
    other = funded_machine()
    t0 = start_time_ms
    first = [
        tcc_try("x", leg("alice", -1), timeout_s=3, dedup_id="d-x"),
        tcc_try("w", leg("bob", -1), timeout_s=3, dedup_id="d-w"),
    ]
    apply_entry(machine, *first, time_ms=t0)
    apply_entry(other, *reversed(first), time_ms=t0)
    _, events_machine = apply_entry(machine, time_ms=t0 + 3_000)
    _, events_other = apply_entry(other, time_ms=t0 + 3_000)
    bodies = [[event.decode().accounts[0].account_id for event in events] for events in (events_machine, events_other)]
    assert bodies[0] == bodies[1] == ["bob", "alice"]  # txn "w" before txn "x"


def test_timeouts_are_by_log_time_only(machine) -> None:
    """Log time that steps back (a new leader) never brings an expiry earlier or undoes one."""
    t0 = start_time_ms
    assert_ok(machine, tcc_try("t1", leg("alice", -100), timeout_s=10), time_ms=t0)
    _, events = apply_entry(machine, time_ms=t0 - 1_000_000)
    assert events == []
    _, events = apply_entry(machine, time_ms=t0 + 10_000)
    assert len(events) == 1


def test_accounts_are_checked_before_the_txn_id_lookup(machine) -> None:
    """state_machine.py check order: 3. accounts (exists, state, asset) before 4. transaction lookups."""
    assert_ok(machine, tcc_try("t", leg("alice", -1)))
    assert_rejected(machine, tcc_try("t", leg("nobody", 1)), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")
    assert_ok(machine, lock("bob"))
    assert_rejected(machine, tcc_try("t", leg("bob", 1)), ErrorCode.ACCOUNT_LOCKED, "bob")
