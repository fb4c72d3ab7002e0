"""The stable result codes of the ledger (docs/api.md), one enum for the core and the edge.

A rejected command is not an exception: its code is data, returned for that command, stored in
the replicated dedup store and answered again on retry. The values never change once published:
clients branch on them.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
    ACCOUNT_LOCKED = "ACCOUNT_LOCKED"
    ACCOUNT_DELETED = "ACCOUNT_DELETED"
    ACCOUNT_NOT_EMPTY = "ACCOUNT_NOT_EMPTY"
    INVALID_STATE_TRANSITION = "INVALID_STATE_TRANSITION"
    ASSET_MISMATCH = "ASSET_MISMATCH"
    SAME_ACCOUNT = "SAME_ACCOUNT"
    LOWER_LIMIT_EXCEEDED = "LOWER_LIMIT_EXCEEDED"
    UPPER_LIMIT_EXCEEDED = "UPPER_LIMIT_EXCEEDED"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    RESERVATION_NOT_FOUND = "RESERVATION_NOT_FOUND"
    INSUFFICIENT_RESERVATION = "INSUFFICIENT_RESERVATION"
    TXN_EXISTS = "TXN_EXISTS"
    TXN_NOT_FOUND = "TXN_NOT_FOUND"
    TXN_ALREADY_CONFIRMED = "TXN_ALREADY_CONFIRMED"
    TXN_ALREADY_CANCELLED = "TXN_ALREADY_CANCELLED"
    ORIGINAL_NOT_COMPENSABLE = "ORIGINAL_NOT_COMPENSABLE"
    # The original of a compensation arrived after it (or a second compensation arrived):
    # a saga's undo must win over a late original, and an undo applies once.
    ALREADY_COMPENSATED = "ALREADY_COMPENSATED"
    # A cross-shard transaction's commit point already holds the other decision: the first wins.
    TXN_ALREADY_DECIDED = "TXN_ALREADY_DECIDED"
    # A cross-shard transaction was aborted by recovery: a participant's try stayed open without
    # its coordinator (a crash, or shards that did not answer) longer than the bound.
    TXN_ABORTED = "TXN_ABORTED"
    DEDUP_ID_REUSED = "DEDUP_ID_REUSED"
    # A debit would pass one of the account's velocity caps (money or debits per hour or day).
    VELOCITY_LIMIT_EXCEEDED = "VELOCITY_LIMIT_EXCEEDED"
    # The access layer: no flow (or version) by that name; no run by that id.
    FLOW_NOT_FOUND = "FLOW_NOT_FOUND"
    FLOW_RUN_NOT_FOUND = "FLOW_RUN_NOT_FOUND"
    # A flow definition that fails validation (422, never reaches the log).
    FLOW_INVALID = "FLOW_INVALID"
    # A run's params fail one of the flow's own checks (422, never reaches the log).
    FLOW_CHECK_FAILED = "FLOW_CHECK_FAILED"
    # No webhook subscription by that id on this node (404).
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    # A command a striped account does not take (a debit, a hold, a limit, a precondition...): it
    # is credit-only, and its money leaves by a sweep (422, never reaches a log).
    STRIPED_ACCOUNT = "STRIPED_ACCOUNT"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    # A balance would leave the range every amount lives in (|x| < 2^127 minor units), with no
    # limit of the account's own in the way: not a limit the user set, so not *_LIMIT_EXCEEDED.
    BALANCE_OUT_OF_RANGE = "BALANCE_OUT_OF_RANGE"
    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_AVAILABLE = "NOT_AVAILABLE"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
