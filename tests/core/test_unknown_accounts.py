"""One rule for commands naming accounts the node that took them had not seen.

Every command reaches the log; its outcome there is final for its ``dedup_id``. A node that does
not know an account's scale sends its amounts as decimal text, and the ledger resolves them with
the scale it knows at that log position. So, for every command type: a command on an account that
does not exist is ACCOUNT_NOT_FOUND, kept in the dedup store, and a retry after the account was
created answers that same rejection; a command sent as text whose account does exist by the time
it is applied is applied with the right amount.
"""

from collections.abc import Callable

import pytest

from coffer.core.commands import Command
from coffer.core.state_machine import StateMachine
from tests.core.conftest import (
    apply_one,
    assert_ok,
    assert_rejected,
    batch,
    create,
    leg,
    precondition,
    release,
    reserve,
    tcc_try,
    transfer,
    update_limits,
)

# Each builder takes an amount (int: resolved at the edge; str: text) and returns a command that
# names the account "newbie" (asset "NEW" for the asset-based ones) with a fixed dedup_id.
builders: dict[str, Callable[[int | str], Command]] = {
    "transfer_from": lambda amount: transfer("newbie", "alice", amount, "NEW", dedup_id="same"),
    "transfer_to": lambda amount: transfer("alice", "newbie", amount, "NEW", dedup_id="same"),
    "batch_leg": lambda amount: batch(leg("newbie", amount, "NEW"), dedup_id="same"),
    "batch_precondition": lambda amount: batch(
        leg("alice", 1), preconditions=(precondition("newbie", min_balance=amount),), dedup_id="same"
    ),
    "reserve": lambda amount: reserve("newbie", "r1", amount, dedup_id="same"),
    "release": lambda amount: release("newbie", "r1", amount, dedup_id="same"),
    "tcc_try": lambda amount: tcc_try("txn-new", leg("newbie", amount, "NEW"), dedup_id="same"),
    "update_limits": lambda amount: update_limits("newbie", lower=amount, dedup_id="same"),
}


@pytest.mark.parametrize("kind", list(builders))
def test_an_unknown_account_is_a_final_rejection_for_its_dedup_id(machine: StateMachine, kind: str) -> None:
    build = builders[kind]
    # Checked in the command's own order: transfer_to names alice first, who holds USD, not NEW.
    code, account_id = ("ASSET_MISMATCH", "alice") if kind == "transfer_to" else ("ACCOUNT_NOT_FOUND", "newbie")
    first = assert_rejected(machine, build("1.50"), code, account_id)
    assert_ok(machine, create("newbie", "NEW", scale=2))
    # The retry, now resolved to minor units at the edge, is the same command: the same answer.
    again = apply_one(machine, build(150))
    assert again == first
    # Another spelling of the same amount is the same payload too.
    assert apply_one(machine, build("1.5")) == first
    # A different amount is another command under a used dedup_id.
    assert apply_one(machine, build(151)).code == "DEDUP_ID_REUSED"


def test_text_amounts_resolve_with_the_scale_known_at_their_log_position(machine: StateMachine) -> None:
    assert_ok(machine, create("newbie", "NEW", scale=3))
    _, event = assert_ok(machine, batch(leg("newbie", "2.5", "NEW")))
    assert machine.accounts["newbie"].available == 2500
    assert event.command.legs[0].amount == 2500  # the event records the resolved command
    assert_ok(machine, reserve("newbie", "r1", "0.125"))
    assert machine.accounts["newbie"].reservations == {"r1": 125}
    assert_ok(machine, update_limits("newbie", lower="-1"))
    assert machine.accounts["newbie"].lower_limit == -1000


def test_text_with_more_decimals_than_the_scale_is_invalid_amount(machine: StateMachine) -> None:
    assert_ok(machine, create("newbie", "NEW", scale=0))
    assert_rejected(machine, batch(leg("newbie", "1.5", "NEW")), "INVALID_AMOUNT", "newbie")
    assert_rejected(machine, reserve("newbie", "r", "0.1"), "INVALID_AMOUNT", "newbie")


def test_text_beyond_the_bound_at_its_scale_is_invalid_amount(machine: StateMachine) -> None:
    assert_ok(machine, create("newbie", "NEW", scale=0))
    assert_rejected(machine, batch(leg("newbie", str(2**127), "NEW")), "INVALID_AMOUNT", "newbie")


def test_a_text_command_on_an_unknown_asset_never_moves_money(machine: StateMachine) -> None:
    # "alice" exists but holds USD: a transfer of an unknown asset is ASSET_MISMATCH, as always.
    assert_rejected(machine, transfer("alice", "bob", "5", "NOPE"), "ASSET_MISMATCH", "alice")
    assert_rejected(machine, tcc_try("t-nope", leg("alice", "-5", "NOPE")), "ASSET_MISMATCH", "alice")


def test_a_try_with_text_amounts_in_its_preconditions_is_resolved_not_a_crash(machine) -> None:
    """A node that has not seen a precondition's account sends its amounts as text; the ledger
    reads them with the scale it knows (here: none, so ACCOUNT_NOT_FOUND), as for a batch."""
    from coffer.core.commands import Precondition, TccTry

    from .conftest import apply_one, leg

    missing = TccTry(
        dedup_id="try-text-condition",
        txn_id="t-text",
        legs=(leg("alice", -1),),
        preconditions=(Precondition(account_id="nobody", expected_balance="-0.08"),),
    )
    assert apply_one(machine, missing).code == "ACCOUNT_NOT_FOUND"
    known = TccTry(
        dedup_id="try-text-condition-2",
        txn_id="t-text-2",
        legs=(leg("alice", -1),),
        preconditions=(Precondition(account_id="bob", min_balance="50.00"),),
    )
    assert apply_one(machine, known).ok
    too_fine = TccTry(
        dedup_id="try-text-condition-3",
        txn_id="t-text-3",
        legs=(leg("alice", -1),),
        preconditions=(Precondition(account_id="bob", min_balance="0.001"),),
    )
    assert apply_one(machine, too_fine).code == "INVALID_AMOUNT"
