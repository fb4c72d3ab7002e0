"""Views of two-phase transactions as one shard holds them: its tries and its decisions.

The transaction layer reads these to run and recover cross-shard transactions: a participant's
hold (state, legs, deadline) and, at the commit point, the decision. ``open_transactions`` lists the
tries still open, oldest first, which is where a recovery task looks for transactions in doubt.
"""

from typing import Any

from coffer.core.amounts import format_amount
from coffer.core.state_machine import StateMachine
from coffer.http.views import time_text

open_transactions_limit_max = 10_000


def transaction_view(machine: StateMachine, txn_id: str) -> dict[str, Any] | None:
    """The shard's part of a transaction, or None if this shard never heard of it."""
    txn = machine.txns.get(txn_id)
    decision = machine.decisions.get(txn_id)
    if txn is None and decision is None:
        return None
    legs = []
    if txn is not None:
        for leg in txn.legs:
            account = machine.accounts[leg.account_id]
            legs.append(
                {
                    "account_id": leg.account_id,
                    "asset": account.asset,
                    "amount_out": format_amount(leg.amount_out, account.scale),
                    "amount_in": format_amount(leg.amount_in, account.scale),
                }
            )
    return {
        "txn_id": txn_id,
        "state": None if txn is None else txn.state,
        "deadline": None if txn is None or txn.deadline_ms is None else time_text(txn.deadline_ms),
        "legs": legs,
        "decision": None
        if decision is None
        else {
            "commit": decision.commit,
            "participants": list(decision.participants),
            "reason_code": decision.reason_code,
            "reason_message": decision.reason_message,
            "reason_account_id": decision.reason_account_id,
            "time": time_text(decision.time_ms),
            "seq": decision.seq,
        },
        "seq": machine.seq,
    }


def open_transactions(machine: StateMachine, prefix: str, limit: int) -> list[str]:
    """Ids of the tries still open whose id starts with ``prefix``, in the order they were tried."""
    found = []
    for txn_id in machine.open_txns:
        if txn_id.startswith(prefix):
            found.append(txn_id)
            if len(found) >= limit:
                break
    return found
