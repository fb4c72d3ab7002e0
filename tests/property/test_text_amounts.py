"""Amounts the edge could not resolve (decimal text) never break the apply loop.

A command's amounts may travel as text when the node that took it did not know the scale (see
coffer/core/commands.py). Random commands of every type that can carry such amounts — with text
of any grammar-valid spelling, scale and sign, on known and unknown accounts and assets — must
never raise (a raising command would stop the write path and, replayed, every restart), must keep
every account within its limits — also when a later compensation, confirm or cancel acts on
them as the dedup store recorded them —, and must resolve exactly like the same command sent as integers
once the scale is known.
"""

from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coffer.core.commands import (
    BatchBalanceOperation,
    Compensate,
    CreateAccount,
    Leg,
    Precondition,
    Release,
    Reserve,
    TccCancel,
    TccConfirm,
    TccTry,
    Transfer,
    UpdateLimits,
)
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine

accounts = {"u1": ("USD", 2), "u2": ("USD", 2), "e1": ("ETH", 18), "e2": ("ETH", 18)}
ids = st.sampled_from([*accounts, "nobody", "x1"])
assets = st.sampled_from(["USD", "ETH", "NOPE"])


@st.composite
def texts(draw: st.DrawFn, signed: bool = True) -> str:
    whole = draw(st.integers(0, 10**22))
    decimals = draw(st.integers(0, 18))
    fraction = "" if decimals == 0 else "." + str(draw(st.integers(0, 10**decimals - 1))).rjust(decimals, "0")
    sign = "-" if signed and draw(st.booleans()) else ""
    return f"{sign}{whole}{fraction}"


amounts = st.one_of(st.integers(-(10**20), 10**20).filter(bool), texts())
positive = st.one_of(st.integers(1, 10**20), texts(signed=False).filter(lambda text: Decimal(text) > 0))
optional = st.one_of(st.none(), amounts)


def _conditions() -> st.SearchStrategy[tuple[Precondition, ...]]:
    return st.lists(st.builds(Precondition, account_id=ids, expected_balance=optional, min_balance=optional, max_balance=optional), max_size=2).map(tuple)


def _legs() -> st.SearchStrategy[tuple[Leg, ...]]:
    return st.lists(st.builds(Leg, account_id=ids, amount=amounts, asset=assets), min_size=1, max_size=3).map(tuple)


dedup_ids = st.integers(0, 40).map(lambda number: f"d{number}")
commands = st.one_of(
    st.builds(
        Transfer,
        dedup_id=dedup_ids,
        from_account_id=ids,
        to_account_id=ids,
        amount=positive,
        asset=assets,
        expected_from_balance=optional,
        expected_to_balance=optional,
    ),
    st.builds(BatchBalanceOperation, dedup_id=dedup_ids, legs=_legs(), preconditions=_conditions()),
    st.builds(TccTry, dedup_id=dedup_ids, txn_id=st.sampled_from(["t1", "t2"]), legs=_legs(), preconditions=_conditions()),
    st.builds(Reserve, dedup_id=dedup_ids, account_id=ids, reservation_id=st.just("r"), amount=positive),
    st.builds(Release, dedup_id=dedup_ids, account_id=ids, reservation_id=st.just("r"), amount=st.one_of(st.none(), positive)),
    st.builds(UpdateLimits, dedup_id=dedup_ids, account_id=ids, lower_limit=optional, upper_limit=optional),
    # Commands that act on an earlier one as the dedup store recorded it (text amounts and all).
    st.builds(Compensate, dedup_id=dedup_ids, original_dedup_id=dedup_ids),
    st.builds(TccConfirm, dedup_id=dedup_ids, txn_id=st.sampled_from(["t1", "t2"])),
    st.builds(TccCancel, dedup_id=dedup_ids, txn_id=st.sampled_from(["t1", "t2"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(entries=st.lists(st.lists(commands, min_size=1, max_size=4), min_size=1, max_size=8))
def test_text_amounts_never_break_the_apply_loop(entries: list[list]) -> None:
    machine = StateMachine()
    opening = [CreateAccount(dedup_id=f"open-{key}", account_id=key, asset=asset, scale=scale) for key, (asset, scale) in accounts.items()]
    funding = BatchBalanceOperation(dedup_id="fund", legs=tuple(Leg(account_id=key, amount=10**21, asset=asset) for key, (asset, _) in accounts.items()))
    machine.apply(1, 1_000, [*opening, funding])
    for number, batch in enumerate(entries, start=2):
        results, _ = machine.apply(number, 1_000 + number, batch)
        assert len(results) == len(batch)
        for account in machine.accounts.values():
            assert account.available >= account.lower_limit
            assert account.upper_limit is None or account.available + account.held() <= account.upper_limit
            assert all(isinstance(value, int) for value in (account.available, *account.reservations.values(), *account.pending_out.values()))
        for result, command in zip(results, batch, strict=True):
            if result.ok and "nobody" in repr(command) and not isinstance(command, UpdateLimits | Release):
                raise AssertionError(f"a command on an account that does not exist was accepted: {command}")
    snapshot = take_snapshot(machine)
    assert take_snapshot(restore_snapshot(snapshot)) == snapshot


def test_text_and_integers_of_one_amount_are_the_same_command() -> None:
    machine = StateMachine()
    machine.apply(1, 1_000, [CreateAccount(dedup_id="o", account_id="u1", asset="USD"), CreateAccount(dedup_id="p", account_id="u2", asset="USD")])
    machine.apply(2, 1_001, [BatchBalanceOperation(dedup_id="f", legs=(Leg(account_id="u1", amount=10_000, asset="USD"),))])
    as_text = TccTry(dedup_id="same", txn_id="t", legs=(Leg(account_id="u1", amount="-1.5", asset="USD"),), preconditions=(Precondition(account_id="u1", min_balance="1"),))
    (first,), _ = machine.apply(3, 1_002, [as_text])
    assert first.ok and machine.accounts["u1"].pending_out == {"t": 150}
    as_integers = TccTry(dedup_id="same", txn_id="t", legs=(Leg(account_id="u1", amount=-150, asset="USD"),), preconditions=(Precondition(account_id="u1", min_balance=100),))
    (again,), _ = machine.apply(4, 1_003, [as_integers])
    assert again == first


# Compensable originals on existing accounts with their own asset, amounts as text of the asset's
# scale or as integers: most of them apply, so the compensations below really undo something.
def _usd(signed: bool) -> st.SearchStrategy[int | str]:
    cents = st.integers(-5_000, 5_000).filter(bool) if signed else st.integers(1, 5_000)
    return st.one_of(cents, cents.map(lambda value: f"{Decimal(value) / 100:.2f}"))


compensable = st.one_of(
    st.builds(Transfer, from_account_id=st.just("u1"), to_account_id=st.just("u2"), amount=_usd(False), asset=st.just("USD")),
    st.builds(
        BatchBalanceOperation,
        legs=st.lists(st.builds(Leg, account_id=st.sampled_from(["u1", "u2"]), amount=_usd(True), asset=st.just("USD")), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Reserve, account_id=st.just("u1"), reservation_id=st.sampled_from(["r1", "r2", "r3"]), amount=_usd(False)),
)


@settings(max_examples=200, deadline=None)
@given(originals=st.lists(compensable, min_size=1, max_size=6))
def test_compensating_originals_sent_as_text_restores_the_balances(originals: list) -> None:
    machine = StateMachine()
    machine.apply(1, 1_000, [CreateAccount(dedup_id=f"open-{key}", account_id=key, asset="USD", scale=2) for key in ("u1", "u2")])
    machine.apply(2, 1_001, [BatchBalanceOperation(dedup_id="fund", legs=(Leg(account_id="u1", amount=10**6, asset="USD"),))])
    start = {key: (account.available, dict(account.reservations)) for key, account in machine.accounts.items()}
    originals = [msgspec.structs.replace(command, dedup_id=f"o{number}") for number, command in enumerate(originals)]
    results, _ = machine.apply(3, 1_002, originals)
    # Undo in reverse order, so each compensation finds the balances its original left.
    undo = [Compensate(dedup_id=f"u{number}", original_dedup_id=f"o{number}") for number in reversed(range(len(originals)))]
    undone, _ = machine.apply(4, 1_003, undo)
    assert all(result.ok for result in undone), undone
    assert {key: (account.available, dict(account.reservations)) for key, account in machine.accounts.items()} == start, results
