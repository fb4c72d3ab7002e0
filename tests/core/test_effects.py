"""What apply hands back per command (its effect) is what the command's event says, also when
later commands of the same entry change the same accounts; the newest effects are kept in two
generations, also in snapshots, and older ones are dropped a generation at a time."""

import pytest

from coffer.core import state_machine
from coffer.core.accounts import Effect
from coffer.core.commands import (
    BatchBalanceOperation,
    Command,
    CreateAccount,
    Leg,
    Release,
    Reserve,
    TccConfirm,
    TccTry,
    Transfer,
)
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine


def _ledger() -> StateMachine:
    machine = StateMachine()
    machine.apply(1, 1000, [CreateAccount(dedup_id=f"open-{name}", account_id=name, asset="USD") for name in "abc"])
    machine.apply(2, 1001, [BatchBalanceOperation(dedup_id="fund", legs=(Leg(account_id="a", amount=1000, asset="USD"),))])
    return machine


def test_each_effect_is_what_its_event_says_though_the_entry_changes_the_accounts_again() -> None:
    machine = _ledger()
    commands: list[Command] = [
        Transfer(dedup_id="t1", from_account_id="a", to_account_id="b", amount=10, asset="USD"),
        Transfer(dedup_id="t2", from_account_id="a", to_account_id="b", amount=20, asset="USD"),
        Reserve(dedup_id="r1", account_id="a", reservation_id="hold", amount=5),
        Reserve(dedup_id="r2", account_id="a", reservation_id="hold", amount=7),
        Release(dedup_id="r3", account_id="a", reservation_id="hold", amount=3),
        TccTry(dedup_id="x1", txn_id="txn", legs=(Leg(account_id="a", amount=-4, asset="USD"), Leg(account_id="c", amount=4, asset="USD"))),
        TccConfirm(dedup_id="x2", txn_id="txn"),
        Transfer(dedup_id="t3", from_account_id="a", to_account_id="b", amount=10**9, asset="USD"),  # rejected
        Transfer(dedup_id="t1", from_account_id="a", to_account_id="b", amount=10, asset="USD"),  # a retry
    ]
    results, events, effects = machine.apply_with_effects(3, 1002, commands)
    by_seq = {record.seq: record.decode() for record in events}
    for command, result, effect in zip(commands[:7], results, effects, strict=False):
        event = by_seq[result.seq]
        assert effect == Effect(event.log_index, event.accounts), command.dedup_id
        assert machine.effect_of(command.dedup_id) == effect
    assert [account.reservations for account in effects[3].accounts] == [{"hold": 12}]  # type: ignore[union-attr]
    assert not results[7].ok and effects[7] is None
    assert results[8] == results[0] and effects[8] == effects[0]


def test_only_the_newest_effects_are_kept_and_a_snapshot_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_machine, "effects_generation_max", 2)
    machine = _ledger()  # its 3 creations and the funding are the first 4 accepted commands
    transfers = [Transfer(dedup_id=f"t{number}", from_account_id="a", to_account_id="b", amount=1, asset="USD") for number in range(5)]
    machine.apply(3, 1002, transfers[:3])
    kept = [dedup_id for dedup_id in ["open-a", "open-b", "open-c", "fund", "t0", "t1", "t2"] if machine.effect_of(dedup_id)]
    assert kept == ["t0", "t1", "t2"]  # the newer generation holds t2, the older t0 and t1
    assert set(machine.effects) == {"t2"} and set(machine.effects_older) == {"t0", "t1"}
    restored = restore_snapshot(take_snapshot(machine))
    assert restored.effects == machine.effects and restored.effects_older == machine.effects_older
    for ledger in (machine, restored):
        ledger.apply(4, 1003, transfers[3:])
    assert take_snapshot(restored) == take_snapshot(machine)
    assert machine.effect_of("t1") is None and machine.effect_of("t2") is not None and machine.effect_of("t4") is not None
    # A retry is answered with its original effect, not with the accounts as they are now.
    _, _, effects = machine.apply_with_effects(5, 1004, [transfers[2]])
    assert effects == [machine.effect_of("t2")] and effects[0] is not None and effects[0].log_index == 3
    assert [account.available for account in effects[0].accounts] == [997, 3]
