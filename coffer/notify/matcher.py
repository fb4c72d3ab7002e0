"""Which events a webhook subscription wants: by account, by event type, by a balance crossing.

Pure: an event and the subscription's filter in, a yes/no and the filter's new state out. A
threshold crossing needs the watched account's previous ``available``: that is the state, kept
with the subscription's cursor, so a restart or a replay judges every event as the first pass did.
Given filters all apply (an event must pass each one).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """Notify when ``account_id``'s available balance crosses ``amount`` (minor units) going
    ``below`` (from >= amount to < amount) or ``above`` (from <= amount to > amount)."""

    account_id: str
    amount: int
    direction: str  # "below" or "above"


@dataclass(frozen=True)
class Filter:
    account_ids: frozenset[str] = frozenset()  # empty: any account
    event_types: frozenset[str] = frozenset()  # empty: any type
    threshold: Threshold | None = None


@dataclass(frozen=True)
class Item:
    """An event as the matcher needs it: its type and the available balance of each account it changed."""

    seq: int
    type: str
    available: dict[str, int]  # account_id -> available after the event, in minor units
    view: dict[str, object]  # the event as the API shows it (what is posted)


def matches(event: Item, wanted: Filter, previous: int | None) -> tuple[bool, int | None]:
    """(whether to deliver ``event``, the watched account's available after it)."""
    touched = event.available
    current = previous
    crossed = True
    threshold = wanted.threshold
    if threshold is not None:
        account = touched.get(threshold.account_id)
        if account is not None:
            current = account
        crossed = False
        if account is not None and previous is not None:
            if threshold.direction == "below":
                crossed = previous >= threshold.amount > current  # type: ignore[operator]
            else:
                crossed = previous <= threshold.amount < current  # type: ignore[operator]
    if not crossed:
        return False, current
    if wanted.event_types and event.type not in wanted.event_types:
        return False, current
    if wanted.account_ids and not wanted.account_ids & touched.keys():
        return False, current
    return True, current
