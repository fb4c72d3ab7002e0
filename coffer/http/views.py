"""JSON views of ledger records, exactly as the API shows them (docs/api.md)."""

from datetime import UTC, datetime
from typing import Any

from coffer.core.accounts import Account, Effect, Result
from coffer.core.amounts import format_amount
from coffer.core.events import Event, EventRecord
from coffer.core.velocity import Velocity, usage

# The shard this process serves, when it is one shard of a sharded node: account views say it.
shard_label: int | None = None


def _amounts(values: dict[str, int], scale: int) -> dict[str, str]:
    if not values:  # the common case: no reservation or transaction in flight
        return {}
    return {key: format_amount(value, scale) for key, value in sorted(values.items())}


def account_view(account: Account, seq: int) -> dict[str, Any]:
    scale = account.scale
    view = {
        "account_id": account.account_id,
        "asset": account.asset,
        "scale": scale,
        "state": account.state,
        "lower_limit": format_amount(account.lower_limit, scale),
        "upper_limit": None if account.upper_limit is None else format_amount(account.upper_limit, scale),
        "available": format_amount(account.available, scale),
        "reservations": _amounts(account.reservations, scale),
        "pending_in": _amounts(account.pending_in, scale),
        "pending_out": _amounts(account.pending_out, scale),
        "version": account.version,
        "seq": seq,
        "metadata": dict(account.metadata) if account.metadata else {},
    }
    if shard_label is not None:
        view["shard"] = shard_label
    return view


def command_answer(result: Result, effect: Effect) -> dict[str, Any]:
    """The answer to an accepted command, from what applying it did (never from its event's bytes)."""
    seq = result.seq
    body: dict[str, Any] = {"seq": seq, "log_index": effect.log_index, "accounts": [account_view(account, seq) for account in effect.accounts]}
    if result.compensation is not None:
        body["compensation"] = result.compensation
    return body


def velocity_view(velocity: Velocity, scale: int, time_ms: int) -> dict[str, Any]:
    """An account's velocity caps and its usage in the windows that hold the ledger's time."""
    limits = velocity.limits
    hour_amount, hour_debits, day_amount, day_debits = usage(velocity, time_ms)
    return {
        "amount_per_hour": None if limits.amount_per_hour is None else format_amount(limits.amount_per_hour, scale),
        "amount_per_day": None if limits.amount_per_day is None else format_amount(limits.amount_per_day, scale),
        "debits_per_hour": limits.debits_per_hour,
        "debits_per_day": limits.debits_per_day,
        "used": {
            "hour_start": time_text(time_ms - time_ms % 3_600_000),
            "hour_amount": format_amount(hour_amount, scale),
            "hour_debits": hour_debits,
            "day_start": time_text(time_ms - time_ms % 86_400_000),
            "day_amount": format_amount(day_amount, scale),
            "day_debits": day_debits,
        },
    }


def time_text(time_ms: int) -> str:
    """RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(time_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def event_view(record: EventRecord, event: Event | None = None) -> dict[str, Any]:
    event = event or record.decode()
    return {
        "seq": record.seq,
        "time": time_text(event.time_ms),
        "log_index": event.log_index,
        "dedup_id": event.dedup_id,
        "type": event.type,
        "accounts": [account_view(account, record.seq) for account in event.accounts],
        # Who sent the command (format 2 events): the key's id and role, never the key.
        "actor": None if event.actor is None else {"key_id": event.actor.key_id, "role": event.actor.role},
        "format": event.format_version,
        "prev_hash": record.prev_hash.hex(),
        "hash": record.hash.hex(),
    }


def error_body(code: str, message: str, account_id: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if account_id is not None:
        error["account_id"] = account_id
    return {"error": error}


def rejection_body(result: Result) -> dict[str, Any]:
    return error_body(result.code, result.message or result.code, result.account_id)
