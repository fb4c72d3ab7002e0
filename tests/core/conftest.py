"""Helpers for the core's rule tests: a machine with funded accounts, and log entries fed one at a time.

Amounts here are integers of the minor unit (the core never sees decimal strings): every asset in
these tests has scale 2, so ``10_000`` is 100.00. Expected outcomes come from the specification and
the contract (docs/api.md), not from the implementation.
"""

import itertools

import msgspec
import pytest

from coffer.core.accounts import Account, Result
from coffer.core.commands import (
    BatchBalanceOperation,
    Command,
    Compensate,
    CreateAccount,
    DeleteAccount,
    Leg,
    LockAccount,
    Precondition,
    Release,
    Reserve,
    TccCancel,
    TccConfirm,
    TccTry,
    Transfer,
    UnlockAccount,
    UpdateLimits,
)
from coffer.core.events import Event, EventRecord
from coffer.core.state_machine import StateMachine

start_time_ms = 1_700_000_000_000  # any log time; the machine's own clock starts at 0

_dedup_counter = itertools.count(1)


def fresh_dedup_id(prefix: str = "cmd") -> str:
    return f"{prefix}-{next(_dedup_counter)}"


# ---------------------------------------------------------------- feeding entries


def apply_entry(machine: StateMachine, *commands: Command, time_ms: int | None = None) -> tuple[list[Result], list[EventRecord]]:
    """Apply one log entry with the next log index; the time stays where it was unless given."""
    if time_ms is None:
        time_ms = max(machine.time_ms, start_time_ms)
    return machine.apply(machine.log_index + 1, time_ms, list(commands))


def apply(machine: StateMachine, *commands: Command, time_ms: int | None = None) -> list[Result]:
    results, _ = apply_entry(machine, *commands, time_ms=time_ms)
    assert len(results) == len(commands)
    return results


def apply_one(machine: StateMachine, command: Command, time_ms: int | None = None) -> Result:
    (result,) = apply(machine, command, time_ms=time_ms)
    return result


def ledger_state(machine: StateMachine) -> bytes:
    """Everything a command may change except the dedup store (where a rejection is kept)."""
    return msgspec.msgpack.encode(
        [
            machine.accounts,
            machine.asset_scales,
            machine.txns,
            machine.compensations,
            machine.seq,
            machine.head,
            machine.velocity,
            machine.velocity_holds,
            machine.flows,
            machine.flow_runs,
        ],
        order="deterministic",
    )


def account_copy(machine: StateMachine, account_id: str) -> Account:
    """A detached copy of an account, to compare before/after."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(machine.accounts[account_id]), type=Account)


def assert_ok(machine: StateMachine, command: Command, time_ms: int | None = None) -> tuple[Result, Event]:
    """Apply ``command`` alone; it must be accepted with exactly one event, whose seq the result carries."""
    results, events = apply_entry(machine, command, time_ms=time_ms)
    (result,) = results
    assert result.ok, result
    assert len(events) == 1, events
    assert result.seq == events[0].seq == machine.seq
    return result, events[0].decode()


_any = object()


def assert_rejected(machine: StateMachine, command: Command, code: str, account_id: object = _any) -> Result:
    """Apply ``command`` alone; it must be rejected with ``code``, no event, and no change but the dedup store."""
    before = ledger_state(machine)
    results, events = apply_entry(machine, command)
    (result,) = results
    assert result.code == code, result
    assert not result.ok
    assert events == []
    assert ledger_state(machine) == before
    if account_id is not _any:
        assert result.account_id == account_id, result
    return result


# ---------------------------------------------------------------- command builders (fresh dedup ids unless given)


def create(account_id: str, asset: str = "USD", *, dedup_id: str | None = None, **fields) -> CreateAccount:
    return CreateAccount(dedup_id=dedup_id or fresh_dedup_id("create"), account_id=account_id, asset=asset, **fields)


def update_limits(account_id: str, lower: int = 0, upper: int | None = None, *, dedup_id: str | None = None) -> UpdateLimits:
    return UpdateLimits(
        dedup_id=dedup_id or fresh_dedup_id("limits"), account_id=account_id, lower_limit=lower, upper_limit=upper
    )


def lock(account_id: str, *, dedup_id: str | None = None) -> LockAccount:
    return LockAccount(dedup_id=dedup_id or fresh_dedup_id("lock"), account_id=account_id)


def unlock(account_id: str, *, dedup_id: str | None = None) -> UnlockAccount:
    return UnlockAccount(dedup_id=dedup_id or fresh_dedup_id("unlock"), account_id=account_id)


def delete(account_id: str, *, dedup_id: str | None = None) -> DeleteAccount:
    return DeleteAccount(dedup_id=dedup_id or fresh_dedup_id("delete"), account_id=account_id)


def transfer(source: str, target: str, amount: int, asset: str = "USD", *, dedup_id: str | None = None, **fields) -> Transfer:
    return Transfer(
        dedup_id=dedup_id or fresh_dedup_id("transfer"),
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        asset=asset,
        **fields,
    )


def leg(account_id: str, amount: int, asset: str = "USD") -> Leg:
    return Leg(account_id=account_id, amount=amount, asset=asset)


def batch(*legs: Leg, preconditions: tuple[Precondition, ...] = (), dedup_id: str | None = None) -> BatchBalanceOperation:
    return BatchBalanceOperation(
        dedup_id=dedup_id or fresh_dedup_id("batch"), legs=tuple(legs), preconditions=tuple(preconditions)
    )


def precondition(account_id: str, **conditions: int) -> Precondition:
    return Precondition(account_id=account_id, **conditions)


def reserve(account_id: str, reservation_id: str, amount: int, *, dedup_id: str | None = None) -> Reserve:
    return Reserve(
        dedup_id=dedup_id or fresh_dedup_id("reserve"), account_id=account_id, reservation_id=reservation_id, amount=amount
    )


def release(account_id: str, reservation_id: str, amount: int | None = None, *, dedup_id: str | None = None) -> Release:
    return Release(
        dedup_id=dedup_id or fresh_dedup_id("release"), account_id=account_id, reservation_id=reservation_id, amount=amount
    )


def tcc_try(txn_id: str, *legs: Leg, timeout_s: int | None = None, dedup_id: str | None = None) -> TccTry:
    return TccTry(dedup_id=dedup_id or fresh_dedup_id("try"), txn_id=txn_id, legs=tuple(legs), timeout_s=timeout_s)


def confirm(txn_id: str, *, dedup_id: str | None = None) -> TccConfirm:
    return TccConfirm(dedup_id=dedup_id or fresh_dedup_id("confirm"), txn_id=txn_id)


def cancel(txn_id: str, *, dedup_id: str | None = None) -> TccCancel:
    return TccCancel(dedup_id=dedup_id or fresh_dedup_id("cancel"), txn_id=txn_id)


def compensate(original_dedup_id: str, *, dedup_id: str | None = None) -> Compensate:
    return Compensate(dedup_id=dedup_id or fresh_dedup_id("compensate"), original_dedup_id=original_dedup_id)


# ---------------------------------------------------------------- fixtures

# The funded ledger every rule test starts from: (account_id, asset, balance in minor units).
funded_accounts = (
    ("alice", "USD", 10_000),
    ("bob", "USD", 5_000),
    ("carol", "USD", 0),
    ("erin", "EUR", 10_000),
)


def funded_machine() -> StateMachine:
    machine = StateMachine()
    results = apply(
        machine, *(create(account_id, asset, scale=2) for account_id, asset, _ in funded_accounts), time_ms=start_time_ms
    )
    assert all(result.ok for result in results), results
    deposits = [leg(account_id, amount, asset) for account_id, asset, amount in funded_accounts if amount]
    assert apply_one(machine, batch(*deposits, dedup_id="setup-funding")).ok
    for account_id, _, amount in funded_accounts:
        assert machine.accounts[account_id].available == amount
    return machine


@pytest.fixture
def machine() -> StateMachine:
    """A fresh machine with alice 100.00 USD, bob 50.00 USD, carol 0 USD and erin 100.00 EUR, all NORMAL."""
    return funded_machine()


@pytest.fixture
def empty_machine() -> StateMachine:
    return StateMachine()
