"""Reads of the past, shared by the node and the query server: balances as of a time, statements, pages.

Job: answer the history questions of the API — an account or a batch of accounts as of a seq or a
time, an account's statement for a period, and pages of events and of an account's versions that
continue with a cursor — once, for both servers. The node reads its own event store, the query
server its SQL store; both hold the same events and answer the same bytes.

Method: a :class:`ReadSource` gives the store and says up to which seq it is complete
(:meth:`ReadSource.settle`); every answer states that seq. Everything else is plain reads of the
store's events and account versions, run in a worker thread by the caller. Times become seqs
through the events table: event times never go back (the state machine's clock only moves
forward), so "the state as of time T" is the state after the last event with ``time <= T``, and a
period ``[from_time, to_time)`` is the seq range of the events inside it.

Cursors are opaque to clients: a version, the seq to continue after, and a digest of the route
and of the filters that made the page. A cursor presented with another route or other filters is
refused (422) instead of silently paging through another question. ``limit`` may change between
pages. A cursor holds no secret and grants nothing: it is a position, readable by whoever may read
the route anyway.

Errors are :class:`ReadError`: the HTTP status and the stable code of the contract.
"""

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Protocol

from coffer.core.accounts import Account
from coffer.core.amounts import format_amount
from coffer.core.errors import ErrorCode
from coffer.core.events import EventRecord
from coffer.history.history_store import HistoryStore
from coffer.http.limits import query_integer_max, query_limit_default, query_limit_max
from coffer.http.views import account_view, event_view, time_text

time_text_length_max = 64  # the longest RFC 3339 text or epoch number worth parsing
cursor_length_max = 200  # a cursor we issue is under 60 characters; anything longer is not ours
cursor_version = "c1"
cursor_digest_length = 16  # hex characters of SHA-256: tells routes and filter sets apart, not a secret

_epoch = datetime(1970, 1, 1, tzinfo=UTC)


class ReadError(Exception):
    """A question that has no answer: ``status`` (404, 422, 503) with a stable ``code``."""

    def __init__(self, status: int, code: ErrorCode, message: str, subject_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.subject_id = subject_id


def _invalid(message: str) -> ReadError:
    return ReadError(422, ErrorCode.INVALID_REQUEST, message)


class ReadSource(Protocol):
    """A store and how far it is complete, as the server that owns it knows."""

    @property
    def store(self) -> HistoryStore: ...

    async def settle(self, min_seq: int | None, range_end_seq: int | None) -> int:
        """The seq up to which the store is complete, once it is at least ``min_seq`` (else
        ReadError 503). ``range_end_seq``: the last seq a range or an ``at_seq`` asks for; a server
        may wait for it too (the query server waits for its projector; a node answers what it has
        applied, and an ``at_seq`` beyond that is 503 at once)."""
        ...

    async def run(self, function: Callable[..., Any], *arguments: Any) -> Any:
        """Run a blocking store read off the event loop."""
        ...


# ------------------------------------------------------------------------------------ parameters


def int_param(params: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit():
        raise _invalid(f"{name} must be a non-negative integer")
    if len(text) > len(str(query_integer_max)):  # before int(): thousands of digits are refused, not parsed
        raise _invalid(f"{name} must be at most {query_integer_max}")
    value = int(text)
    if value < minimum:
        raise _invalid(f"{name} must be at least {minimum}")
    if value > query_integer_max:
        raise _invalid(f"{name} must be at most {query_integer_max}")
    return value


def limit_param(params: Mapping[str, str]) -> int:
    limit = int_param(params, "limit", minimum=1)
    if limit is None:
        return query_limit_default
    if limit > query_limit_max:
        raise _invalid(f"limit is at most {query_limit_max}")
    return limit


def parse_time_ms(text: str, name: str, *, round_up: bool) -> int:
    """RFC 3339 (with a zone) or Unix epoch seconds, as whole milliseconds since the epoch.

    Exact: no float on the way. A time between two milliseconds rounds up for a bound that
    compares ``time >= T`` or ``time < T`` (``round_up``), and down for ``time <= T``, so that the
    comparison on whole milliseconds means the same as on the exact time.
    """
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR
    if len(text) > time_text_length_max or not text.isascii():
        raise _invalid(f"{name} must be RFC 3339 or Unix seconds")
    if text.replace(".", "", 1).isdigit() and not text.startswith(".") and not text.endswith("."):
        try:
            value = int((Decimal(text) * 1000).to_integral_value(rounding))
        except InvalidOperation:
            raise _invalid(f"{name} must be RFC 3339 or Unix seconds") from None
    else:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(f"{name} must be RFC 3339 or Unix seconds") from None
        if moment.tzinfo is None or "T" not in text.upper():
            raise _invalid(f"{name} needs a date, a time and a zone (RFC 3339), e.g. 2025-01-31T12:00:00Z")
        since = moment - _epoch
        microseconds = (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds
        value = int((Decimal(microseconds) / 1000).to_integral_value(rounding))
    if not 0 <= value <= query_integer_max:
        raise _invalid(f"{name} is out of range")
    return value


def time_param(params: Mapping[str, str], name: str, *, round_up: bool = True) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    return parse_time_ms(text, name, round_up=round_up)


def bool_param(params: Mapping[str, str], name: str, default: bool) -> bool:
    text = params.get(name)
    if text is None or text == "":
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise _invalid(f"{name} is true or false")


def account_ids_param(params: Mapping[str, str]) -> list[str]:
    ids = [part for part in params.get("ids", "").split(",") if part]
    if not ids:
        raise _invalid("ids must name at least one account")
    if len(ids) > query_limit_max:
        raise _invalid(f"ids names at most {query_limit_max} accounts")
    return ids


class RangeBounds:
    """The half-open seq and time ranges of a history question: ``from_*`` inclusive, ``to_*`` exclusive."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.from_seq = int_param(params, "from_seq")
        self.to_seq = int_param(params, "to_seq")
        self.from_time_ms = time_param(params, "from_time")
        self.to_time_ms = time_param(params, "to_time")

    def filters(self) -> dict[str, int | None]:
        return {"from_seq": self.from_seq, "to_seq": self.to_seq, "from_time": self.from_time_ms, "to_time": self.to_time_ms}


# --------------------------------------------------------------------------------------- cursors


def _digest(route: str, filters: Mapping[str, object]) -> str:
    canonical = route + "\n" + "\n".join(f"{key}={filters[key]}" for key in sorted(filters))
    return hashlib.sha256(canonical.encode()).hexdigest()[:cursor_digest_length]


def encode_cursor(route: str, filters: Mapping[str, object], after_seq: int) -> str:
    """An opaque token: continue ``route`` with the same ``filters`` after ``after_seq``."""
    text = f"{cursor_version}.{after_seq}.{_digest(route, filters)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(token: str, route: str, filters: Mapping[str, object]) -> int:
    """The seq a cursor continues after; ReadError 422 for a cursor of another route or filter set."""
    if not token or len(token) > cursor_length_max or not token.isascii():
        raise _invalid("cursor is not a cursor this server issued")
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _invalid("cursor is not a cursor this server issued") from None
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != cursor_version or not parts[1].isdigit() or int(parts[1]) > query_integer_max:
        raise _invalid("cursor is not a cursor this server issued")
    if parts[2] != _digest(route, filters):
        raise _invalid("cursor belongs to another route or to other filters: repeat the first request's parameters")
    return int(parts[1])


def _cursor_after(params: Mapping[str, str], route: str, filters: Mapping[str, object]) -> int | None:
    token = params.get("cursor")
    if token is None or token == "":
        return None
    return decode_cursor(token, route, filters)


def _later(from_seq: int | None, after_seq: int | None) -> int | None:
    if after_seq is None:
        return from_seq
    return max(from_seq or 0, after_seq + 1)


# ------------------------------------------------------------------------------------ time → seq


def seq_at_time(store: HistoryStore, time_ms: int, settled_seq: int) -> int:
    """The seq of the last event with ``time <= time_ms`` (0 before the first event)."""
    if time_ms >= query_integer_max:
        return settled_seq
    after = store.events(from_time_ms=time_ms + 1, limit=1)
    return after[0].seq - 1 if after else settled_seq


def first_seq_from_time(store: HistoryStore, time_ms: int, settled_seq: int) -> int:
    """The seq of the first event with ``time >= time_ms`` (``settled_seq + 1`` if none is stored)."""
    found = store.events(from_time_ms=time_ms, limit=1)
    return found[0].seq if found else settled_seq + 1


def _as_of(params: Mapping[str, str]) -> tuple[int | None, int | None]:
    """``at_seq`` or ``at_time`` (milliseconds, rounded down), never both."""
    at_seq = int_param(params, "at_seq")
    at_time_ms = time_param(params, "at_time", round_up=False)
    if at_seq is not None and at_time_ms is not None:
        raise _invalid("give at_seq or at_time, not both")
    return at_seq, at_time_ms


async def _resolve_as_of(source: ReadSource, params: Mapping[str, str]) -> tuple[int, int | None]:
    """(seq to read at, the at_time asked in ms or None)."""
    at_seq, at_time_ms = _as_of(params)
    settled = await source.settle(int_param(params, "min_seq"), at_seq)
    if at_seq is not None:
        if at_seq > settled:
            raise ReadError(503, ErrorCode.NOT_AVAILABLE, f"seq {at_seq} is not applied here yet (this holds {settled})")
        return at_seq, None
    if at_time_ms is not None:
        return await source.run(seq_at_time, source.store, at_time_ms, settled), at_time_ms
    return settled, None


def needs_history(params: Mapping[str, str]) -> bool:
    """Whether an account read asks for the past (``at_seq`` or ``at_time``) rather than the latest state."""
    return bool(params.get("at_seq") or params.get("at_time"))


async def account_as_of(source: ReadSource, account_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/accounts/{id} with ``at_seq`` or ``at_time``: the account as it was then."""
    seq, at_time_ms = await _resolve_as_of(source, params)
    found = await source.run(source.store.accounts_at, [account_id], seq)
    account = found.get(account_id)
    if account is None:
        when = f"at {time_text(at_time_ms)}" if at_time_ms is not None else f"at seq {seq}"
        raise ReadError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} did not exist {when}", account_id)
    return account_view(account, seq)


async def accounts_as_of(source: ReadSource, params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/accounts?ids=… as of a seq or a time (or the latest the store holds)."""
    ids = account_ids_param(params)
    seq, _ = await _resolve_as_of(source, params)
    found = await source.run(source.store.accounts_at, ids, seq)
    views = {account_id: account_view(account, seq) for account_id, account in found.items()}
    return {"seq": seq, "accounts": views, "missing": [account_id for account_id in ids if account_id not in found]}


# ------------------------------------------------------------------------------------------ pages


async def events_page(source: ReadSource, params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/events: events in range, oldest first, and ``next`` to continue (null at the end)."""
    bounds = RangeBounds(params)
    limit = limit_param(params)
    after_seq = _cursor_after(params, "events", bounds.filters())
    min_seq = int_param(params, "min_seq")
    await source.settle(min_seq, None if bounds.to_seq is None else bounds.to_seq - 1)
    records: list[EventRecord] = await source.run(
        source.store.events, _later(bounds.from_seq, after_seq), bounds.to_seq, bounds.from_time_ms, bounds.to_time_ms, limit + 1
    )
    page = records[:limit]
    more = len(records) > limit
    return {
        "events": [event_view(record) for record in page],
        "next": encode_cursor("events", bounds.filters(), page[-1].seq) if more else None,
    }


async def history_page(source: ReadSource, account_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/accounts/{id}/history: versions in range, oldest first, and ``next``."""
    bounds = RangeBounds(params)
    limit = limit_param(params)
    route = f"history:{account_id}"
    after_seq = _cursor_after(params, route, bounds.filters())
    min_seq = int_param(params, "min_seq")
    settled = await source.settle(min_seq, None if bounds.to_seq is None else bounds.to_seq - 1)
    rows: list[tuple[int, int, Account]] = await source.run(
        source.store.history,
        account_id,
        _later(bounds.from_seq, after_seq),
        bounds.to_seq,
        bounds.from_time_ms,
        bounds.to_time_ms,
        limit + 1,
    )
    if not rows and not await source.run(source.store.accounts_at, [account_id], max(settled, after_seq or 0)):
        raise ReadError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
    page = rows[:limit]
    return {
        "versions": [{**account_view(account, seq), "time": time_text(time_ms)} for seq, time_ms, account in page],
        "next": encode_cursor(route, bounds.filters(), page[-1][0]) if len(rows) > limit else None,
    }


# ------------------------------------------------------------------------------------- statements


def _change(record: EventRecord, before: Account | None, after: Account) -> dict[str, Any]:
    event = record.decode()
    scale = after.scale
    delta = after.available - (0 if before is None else before.available)
    return {
        "seq": record.seq,
        "time": time_text(event.time_ms),
        "type": event.type,
        "dedup_id": event.dedup_id,
        "version": after.version,
        "state": after.state,
        "available_delta": format_amount(delta, scale),
        "available": format_amount(after.available, scale),
        "reservations": {key: format_amount(value, scale) for key, value in sorted(after.reservations.items())},
        "pending_in": {key: format_amount(value, scale) for key, value in sorted(after.pending_in.items())},
        "pending_out": {key: format_amount(value, scale) for key, value in sorted(after.pending_out.items())},
    }


def _account_of(record: EventRecord, account_id: str) -> Account:
    for account in record.decode().accounts:
        if account.account_id == account_id:
            return account
    raise AssertionError(f"event {record.seq} is indexed under account {account_id} but does not hold it")


def _statement(
    store: HistoryStore,
    account_id: str,
    bounds: RangeBounds,
    after_seq: int | None,
    limit: int,
    settled: int,
    route: str,
) -> dict[str, Any]:
    latest = store.accounts_at([account_id], settled).get(account_id)
    if latest is None:
        raise ReadError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
    start = bounds.from_seq or 1
    end = settled + 1 if bounds.to_seq is None else min(bounds.to_seq, settled + 1)
    if bounds.from_time_ms is not None:
        start = max(start, first_seq_from_time(store, bounds.from_time_ms, settled))
    if bounds.to_time_ms is not None:
        end = min(end, first_seq_from_time(store, bounds.to_time_ms, settled))
    start = max(start, 1)
    end = max(end, start)
    opening = store.accounts_at([account_id], start - 1).get(account_id) if start > 1 else None
    closing = store.accounts_at([account_id], end - 1).get(account_id) if end > 1 else None
    page_from = start if after_seq is None else max(start, after_seq + 1)
    records = store.account_events(account_id, page_from, end, limit + 1) if page_from < end else []
    page = records[:limit]
    changes = []
    if page:
        # The state just before the page: the opening on the first page, else as of the cursor.
        before = opening if page_from == start else store.accounts_at([account_id], page_from - 1).get(account_id)
        for record in page:
            after = _account_of(record, account_id)
            changes.append(_change(record, before, after))
            before = after
    return {
        "account_id": account_id,
        "asset": latest.asset,
        "scale": latest.scale,
        "seq": settled,
        "from_seq": start,
        "to_seq": end,
        "opening": None if opening is None else account_view(opening, start - 1),
        "closing": None if closing is None else account_view(closing, end - 1),
        "changes": changes,
        "next": encode_cursor(route, bounds.filters(), page[-1].seq) if len(records) > limit else None,
    }


async def statement(source: ReadSource, account_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """GET /v1/accounts/{id}/statement: opening balance, every change in the period, closing balance.

    The period is the intersection of the seq range and the time range (half-open each). The
    opening is the account as of just before the period (null if it did not exist yet), the
    closing as of its last event or of ``seq``, the last event the store holds, whichever is
    first. Changes are paged; every page repeats the opening and the closing.
    """
    bounds = RangeBounds(params)
    limit = limit_param(params)
    route = f"statement:{account_id}"
    after_seq = _cursor_after(params, route, bounds.filters())
    settled = await source.settle(int_param(params, "min_seq"), None if bounds.to_seq is None else bounds.to_seq - 1)
    result: dict[str, Any] = await source.run(_statement, source.store, account_id, bounds, after_seq, limit, settled, route)
    return result

