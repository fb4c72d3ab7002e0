"""``coffer bench apply``: how fast the core state machine applies transfers, next to its floor.

Method: build ``accounts`` funded accounts, generate ``transfers`` random transfers between them
(generation is not timed) and apply them in log entries of ``entry_size`` commands. In the same
run, a bare loop goes over the same transfer objects doing only the irreducible work of a ledger
step — look up both accounts in a dict, check the lower limit, update both balances, insert the
dedup id into a dict, append an event tuple — which is the floor for pure Python on this machine.
Both keep their dedup dict for the whole run and hand their events of an entry off (drop them)
after the entry, as a replica hands them to its store. Each side runs ``repeat`` times on fresh
state, back to back per round; the medians of the rates are reported, and the ratio is the median
of the per-round ratios, because the machines are shared and noisy.
"""

import random
import statistics
import time
from collections.abc import Callable

from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.state_machine import StateMachine

asset = "USD"
opening_balance = 1_000_000_00  # large enough that random transfers rarely hit the lower limit
setup_legs_max = 1000


def _setup_entries(account_count: int) -> list[list]:
    ids = [f"acct-{number:07d}" for number in range(account_count)]
    entries: list[list] = []
    for start in range(0, account_count, setup_legs_max):
        chunk = ids[start : start + setup_legs_max]
        entries.append(
            [CreateAccount(dedup_id=f"create-{account_id}", account_id=account_id, asset=asset) for account_id in chunk]
        )
        legs = tuple(Leg(account_id=account_id, amount=opening_balance, asset=asset) for account_id in chunk)
        entries.append([BatchBalanceOperation(dedup_id=f"fund-{start}", legs=legs)])
    return entries


def _transfer_entries(account_count: int, transfer_count: int, entry_size: int, seed: int) -> list[list[Transfer]]:
    rng = random.Random(seed)
    ids = [f"acct-{number:07d}" for number in range(account_count)]
    transfers = []
    for number in range(transfer_count):
        source = rng.randrange(account_count)
        target = rng.randrange(account_count - 1)
        if target >= source:
            target += 1  # never the same account: that is a rejection, not a transfer
        transfers.append(
            Transfer(
                dedup_id=f"t-{number:09d}",
                from_account_id=ids[source],
                to_account_id=ids[target],
                amount=rng.randrange(1, 10_000),
                asset=asset,
            )
        )
    return [transfers[start : start + entry_size] for start in range(0, transfer_count, entry_size)]


def time_state_machine(setup: list[list], entries: list[list[Transfer]]) -> tuple[float, int]:
    machine = StateMachine()
    index = 0
    for commands in setup:
        index += 1
        machine.apply(index, 0, commands)
    applied = 0
    started = time.perf_counter()
    for commands in entries:
        index += 1
        _results, events = machine.apply(index, index, commands)
        applied += len(events)
    elapsed = time.perf_counter() - started
    return elapsed, applied


def time_bare_loop(account_count: int, entries: list[list[Transfer]]) -> tuple[float, int]:
    balances = {f"acct-{number:07d}": [opening_balance, 0] for number in range(account_count)}
    dedup: dict[str, None] = {}
    seq = 0
    started = time.perf_counter()
    for commands in entries:
        events = []
        for transfer in commands:
            source = balances[transfer.from_account_id]
            target = balances[transfer.to_account_id]
            amount = transfer.amount
            if source[0] - amount < source[1]:
                continue
            source[0] -= amount
            target[0] += amount
            dedup[transfer.dedup_id] = None
            seq += 1
            events.append((seq, transfer.dedup_id, transfer.from_account_id, transfer.to_account_id, amount))
    elapsed = time.perf_counter() - started
    return elapsed, seq


def run(account_count: int, transfer_count: int, entry_size: int, seed: int, repeat: int, echo: Callable[[str], None]) -> None:
    echo(f"generating {account_count} accounts and {transfer_count} transfers (entries of {entry_size})")
    setup = _setup_entries(account_count)
    entries = _transfer_entries(account_count, transfer_count, entry_size, seed)
    apply_rates, bare_rates = [], []
    for round_number in range(1, repeat + 1):
        bare_seconds, bare_applied = time_bare_loop(account_count, entries)
        apply_seconds, applied = time_state_machine(setup, entries)
        assert applied == bare_applied, f"state machine applied {applied}, bare loop {bare_applied}"
        apply_rates.append(applied / apply_seconds)
        bare_rates.append(bare_applied / bare_seconds)
        echo(
            f"round {round_number}: apply {apply_rates[-1]:,.0f}/s ({apply_seconds:.2f} s), bare {bare_rates[-1]:,.0f}/s ({bare_seconds:.2f} s)"
        )
    apply_per_s = statistics.median(apply_rates)
    bare_per_s = statistics.median(bare_rates)
    # Each round times both sides back to back, so their ratio is the comparison least disturbed
    # by what else the machine does; the median of those ratios is reported.
    ratio = statistics.median(apply / bare for apply, bare in zip(apply_rates, bare_rates, strict=True))
    echo(f"apply_per_s={apply_per_s:.0f} bare_per_s={bare_per_s:.0f} ratio={ratio:.3f}")
