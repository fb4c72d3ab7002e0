"""Velocity limits: caps on the money and the number of debits leaving an account per window.

Why in the core: a cap is only a cap if it is checked with the movement, atomically, on every
replica the same way. The windows are calendar windows in UTC by *log time* (the ledger's clock,
never a wall clock): the hour ``[hh:00, hh+1:00)`` and the day ``[00:00, 24:00)`` that hold the
entry's time. Unix time counts from a UTC midnight, so a window starts where ``time_ms`` is a
multiple of its length.

What counts as a debit, once per command and account: the money a transfer takes from its source,
the net decrease a batch operation makes on an account (its legs summed per account), and the money
a TCC try holds in ``pending_out``. Reservations (the money stays on the account), confirms and
cancels (phase two must always finish) and compensations (an undo must never be blocked) are not
debits. A try that is cancelled or expires gives its debit back to the windows it was counted in,
if they are still the current ones: a cross-shard transfer that aborts did not move money.

Usage is tracked only for accounts that have limits, from the moment they were set: an account
without limits pays one dictionary test per command and nothing else.

Everything here is pure: integers, no clock; the state machine passes the log time in.
"""

import msgspec

hour_ms = 3_600_000
day_ms = 24 * hour_ms
debits_max = 2**63 - 1  # a count cap is a signed 64-bit integer in every store


class VelocityLimits(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The caps of one account; ``None`` is no cap. Amounts in the account's minor units."""

    amount_per_hour: int | None = None
    amount_per_day: int | None = None
    debits_per_hour: int | None = None
    debits_per_day: int | None = None

    def any(self) -> bool:
        return any(cap is not None for cap in msgspec.structs.astuple(self))


class Velocity(msgspec.Struct, array_like=True, gc=False):
    """An account's caps and its usage in the windows it last debited in."""

    limits: VelocityLimits
    hour_start_ms: int = 0
    hour_amount: int = 0
    hour_debits: int = 0
    day_start_ms: int = 0
    day_amount: int = 0
    day_debits: int = 0


class VelocityHold(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A TCC try's debit, kept until phase two so that a cancel can give it back."""

    account_id: str
    amount: int
    time_ms: int


def usage(velocity: Velocity, time_ms: int) -> tuple[int, int, int, int]:
    """(hour amount, hour debits, day amount, day debits) in the windows that hold ``time_ms``."""
    hour = (velocity.hour_amount, velocity.hour_debits) if velocity.hour_start_ms == time_ms - time_ms % hour_ms else (0, 0)
    day = (velocity.day_amount, velocity.day_debits) if velocity.day_start_ms == time_ms - time_ms % day_ms else (0, 0)
    return hour[0], hour[1], day[0], day[1]


def exceeded(velocity: Velocity, amount: int, time_ms: int) -> str | None:
    """Which cap a debit of ``amount`` at ``time_ms`` would break (a phrase), or None."""
    hour_amount, hour_debits, day_amount, day_debits = usage(velocity, time_ms)
    limits = velocity.limits
    if limits.amount_per_hour is not None and hour_amount + amount > limits.amount_per_hour:
        return f"its hourly amount cap ({hour_amount} of {limits.amount_per_hour} minor units used)"
    if limits.amount_per_day is not None and day_amount + amount > limits.amount_per_day:
        return f"its daily amount cap ({day_amount} of {limits.amount_per_day} minor units used)"
    if limits.debits_per_hour is not None and hour_debits + 1 > limits.debits_per_hour:
        return f"its hourly debit count cap ({hour_debits} of {limits.debits_per_hour} used)"
    if limits.debits_per_day is not None and day_debits + 1 > limits.debits_per_day:
        return f"its daily debit count cap ({day_debits} of {limits.debits_per_day} used)"
    return None


def record(velocity: Velocity, amount: int, time_ms: int) -> None:
    """Count a debit of ``amount`` at ``time_ms`` (after :func:`exceeded` said it fits)."""
    hour_start = time_ms - time_ms % hour_ms
    day_start = time_ms - time_ms % day_ms
    if velocity.hour_start_ms != hour_start:
        velocity.hour_start_ms, velocity.hour_amount, velocity.hour_debits = hour_start, 0, 0
    if velocity.day_start_ms != day_start:
        velocity.day_start_ms, velocity.day_amount, velocity.day_debits = day_start, 0, 0
    velocity.hour_amount += amount
    velocity.hour_debits += 1
    velocity.day_amount += amount
    velocity.day_debits += 1


def give_back(velocity: Velocity, amount: int, time_ms: int) -> None:
    """Undo the count of a debit made at ``time_ms``, in whichever of its windows are still current."""
    if velocity.hour_start_ms == time_ms - time_ms % hour_ms:
        velocity.hour_amount = max(0, velocity.hour_amount - amount)
        velocity.hour_debits = max(0, velocity.hour_debits - 1)
    if velocity.day_start_ms == time_ms - time_ms % day_ms:
        velocity.day_amount = max(0, velocity.day_amount - amount)
        velocity.day_debits = max(0, velocity.day_debits - 1)
