"""Every result code the core can give (docs/api.md), each reached once, with nothing changed.

The per-rule files test each code in depth; this table guards that no code of the contract is
left without a test when codes are added. NOT_AVAILABLE, UNAUTHORIZED and FORBIDDEN belong to
the edge (replica lag, credentials) and never come out of the state machine.
"""

import pytest

from coffer.core.commands import Decide, FinishFlowRun, PutFlow, SetVelocityLimits, StartFlowRun
from coffer.core.errors import ErrorCode

from .conftest import (
    assert_ok,
    assert_rejected,
    batch,
    cancel,
    compensate,
    confirm,
    create,
    delete,
    leg,
    lock,
    precondition,
    release,
    reserve,
    tcc_try,
    transfer,
    unlock,
    update_limits,
)

edge_only_codes = {ErrorCode.NOT_AVAILABLE, ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN}
# Decided by the transaction layer (a recovery task's reason for an abort), never by one shard's rules.
# Striped accounts live in the transaction layer too: its router refuses what they do not take.
txn_layer_codes = {ErrorCode.TXN_ABORTED, ErrorCode.STRIPED_ACCOUNT}
# The access layer judges flow definitions and a run's params against its flow before anything
# reaches the log (422); the core keeps definitions and params as opaque bytes and never reads them.
access_layer_codes = {ErrorCode.FLOW_INVALID, ErrorCode.FLOW_CHECK_FAILED}
# Webhook subscriptions are a node's own configuration, outside the replicated ledger.
notification_codes = {ErrorCode.WEBHOOK_NOT_FOUND}


def _deleted_carol(machine):
    assert_ok(machine, delete("carol"))
    return transfer("alice", "carol", 1), "carol"


def _locked_bob(machine):
    assert_ok(machine, lock("bob"))
    return transfer("alice", "bob", 1), "bob"


def _tried(machine):
    assert_ok(machine, tcc_try("t", leg("alice", -1)))
    return tcc_try("t", leg("bob", -1)), None


def _confirmed(machine):
    assert_ok(machine, tcc_try("t", leg("alice", -1)))
    assert_ok(machine, confirm("t"))
    return cancel("t"), None


def _cancelled(machine):
    assert_ok(machine, tcc_try("t", leg("alice", -1)))
    assert_ok(machine, cancel("t"))
    return confirm("t"), None


def _reserved(machine):
    assert_ok(machine, reserve("alice", "r", 10))
    return release("alice", "r", 11), "alice"


def _not_compensable(machine):
    assert_ok(machine, lock("bob", dedup_id="the-lock"))
    return compensate("the-lock"), None


def _compensated(machine):
    assert_ok(machine, transfer("alice", "bob", 1, dedup_id="pay"))
    assert_ok(machine, compensate("pay"))
    return compensate("pay"), None


def _reused(machine):
    assert_ok(machine, transfer("alice", "bob", 1, dedup_id="same"))
    return transfer("alice", "bob", 2, dedup_id="same"), None


def _decided(machine):
    assert_ok(machine, Decide(dedup_id="decide-first", txn_id="x-1", commit=True, participants=(0, 1)))
    return Decide(dedup_id="decide-second", txn_id="x-1", commit=False), None


def _velocity_capped(machine):
    assert_ok(machine, SetVelocityLimits(dedup_id="caps", account_id="alice", debits_per_day=1))
    assert_ok(machine, transfer("alice", "bob", 1))
    return transfer("alice", "bob", 1), "alice"


def _flow_version_missing(machine):
    assert_ok(machine, PutFlow(dedup_id="put-pay", name="pay", definition=b"{}"))
    return StartFlowRun(dedup_id="run-1", flow="pay", version=2), None


scenarios = {
    ErrorCode.ACCOUNT_NOT_FOUND: lambda machine: (transfer("alice", "nobody", 1), "nobody"),
    ErrorCode.ACCOUNT_EXISTS: lambda machine: (create("alice"), "alice"),
    ErrorCode.ACCOUNT_LOCKED: _locked_bob,
    ErrorCode.ACCOUNT_DELETED: _deleted_carol,
    ErrorCode.ACCOUNT_NOT_EMPTY: lambda machine: (delete("alice"), "alice"),
    ErrorCode.INVALID_STATE_TRANSITION: lambda machine: (unlock("alice"), "alice"),
    ErrorCode.ASSET_MISMATCH: lambda machine: (transfer("alice", "erin", 1), "erin"),
    ErrorCode.SAME_ACCOUNT: lambda machine: (transfer("bob", "bob", 1), None),
    ErrorCode.LOWER_LIMIT_EXCEEDED: lambda machine: (transfer("carol", "bob", 1), "carol"),
    ErrorCode.UPPER_LIMIT_EXCEEDED: lambda machine: (update_limits("alice", 0, 1), "alice"),
    ErrorCode.PRECONDITION_FAILED: lambda machine: (
        batch(leg("alice", -1), leg("bob", 1), preconditions=(precondition("bob", max_balance=0),)),
        "bob",
    ),
    ErrorCode.RESERVATION_NOT_FOUND: lambda machine: (release("alice", "nope"), "alice"),
    ErrorCode.INSUFFICIENT_RESERVATION: _reserved,
    ErrorCode.TXN_EXISTS: _tried,
    ErrorCode.TXN_NOT_FOUND: lambda machine: (confirm("nope"), None),
    ErrorCode.TXN_ALREADY_CONFIRMED: _confirmed,
    ErrorCode.TXN_ALREADY_CANCELLED: _cancelled,
    ErrorCode.ORIGINAL_NOT_COMPENSABLE: _not_compensable,
    ErrorCode.ALREADY_COMPENSATED: _compensated,
    ErrorCode.DEDUP_ID_REUSED: _reused,
    ErrorCode.INVALID_AMOUNT: lambda machine: (transfer("alice", "bob", 0), None),
    ErrorCode.TXN_ALREADY_DECIDED: _decided,
    # alice holds money and has no upper limit: one more maximal deposit passes the ledger's bound.
    ErrorCode.BALANCE_OUT_OF_RANGE: lambda machine: (batch(leg("alice", 2**127 - 1)), "alice"),
    ErrorCode.INVALID_REQUEST: lambda machine: (batch(), None),
    ErrorCode.VELOCITY_LIMIT_EXCEEDED: _velocity_capped,
    ErrorCode.FLOW_NOT_FOUND: _flow_version_missing,
    ErrorCode.FLOW_RUN_NOT_FOUND: lambda machine: (FinishFlowRun(dedup_id="finish", run_id="never-started", outcome=b"{}"), None),
}


def test_every_core_code_has_a_scenario() -> None:
    assert set(scenarios) == set(ErrorCode) - edge_only_codes - txn_layer_codes - access_layer_codes - notification_codes


@pytest.mark.parametrize("code", list(scenarios), ids=str)
def test_each_code_is_reached_and_changes_nothing(machine, code: ErrorCode) -> None:
    command, account_id = scenarios[code](machine)
    if account_id is None:
        assert_rejected(machine, command, code)
    else:
        assert_rejected(machine, command, code, account_id)


def test_codes_are_stable_upper_snake_case_strings() -> None:
    for code in ErrorCode:
        assert code.value == code.name
        assert code.value.replace("_", "").isalpha() and code.value.isupper()
