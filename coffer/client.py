"""Client and AsyncClient: the HTTP API of Coffer (docs/api.md) over httpx.

Method: every operation is described once, by a builder below, as a :class:`_Call` — HTTP method,
path, query, body (JSON; MessagePack for batches, ``POST /v1/commands``, where the node reads
and writes it several times faster), the dedup_id it carries and how to decode the answer. ``Client`` and
``AsyncClient`` are thin twins that only differ in how they send a call and wait between attempts.

Exactly-once from the caller's side: a command gets its ``dedup_id`` (given, or a fresh uuid4)
when the call is built, before the first attempt. Every retry — after a network error, a timeout
or a 503, possibly on another node — resends the very same body, so the ledger applies it at most
once and a retry answers the original outcome. Only network errors and 503 are retried; every
other answer is final.

Amounts go out as decimal strings. Arguments take ``str`` (sent as written) or
``decimal.Decimal`` (spelled without exponent); ``float`` is refused because it has already lost
exactness, and so is ``int``, which is too easily meant as minor units (1050 for 10.50).
"""

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

__all__ = [
    "AccountView",
    "AccountsView",
    "AsyncClient",
    "AuditHead",
    "AuthError",
    "Client",
    "CofferError",
    "CommandOutcome",
    "CommandResult",
    "ErrorDetail",
    "EventView",
    "EventsPage",
    "FlowRegistered",
    "FlowRunView",
    "FlowSummary",
    "Health",
    "HistoryPage",
    "InvalidRequestError",
    "Leg",
    "NotAvailableError",
    "NotFoundError",
    "Precondition",
    "RejectedError",
    "RetryPolicy",
    "Statement",
    "StatementChange",
    "TransportError",
]

Amount = str | Decimal
Time = datetime | str | int  # RFC 3339 text, an aware datetime, or Unix epoch seconds

default_url = "http://127.0.0.1:8080"
timeout_s_default = 10.0  # longer than the server's own waits (min_seq 2 s, event store 5 s)
transport_error_code = "TRANSPORT_ERROR"  # client-side only: the server was not reached or did not answer
invalid_response_code = "INVALID_RESPONSE"  # client-side only: a 2xx answer that is not the API's shape


# ------------------------------------------------------------------------------------------ errors


class CofferError(Exception):
    """Any failed call. ``status`` is the HTTP status (None when no answer came), ``code`` the
    API's error code, ``dedup_id`` the command's id when the call was a command: retrying with it
    later is safe."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        account_id: str | None = None,
        dedup_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.account_id = account_id
        self.dedup_id = dedup_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


class RejectedError(CofferError):
    """409: a ledger rule rejected the command; nothing changed. The same dedup_id answers the same."""


class InvalidRequestError(CofferError):
    """422 (also 400, 413): the request is malformed; it never reached the log."""


class NotFoundError(CofferError):
    """404: the account (or route) does not exist."""


class NotAvailableError(CofferError):
    """503 after every attempt: the node is behind ``min_seq``, starting, or its log is unreachable."""


class AuthError(CofferError):
    """401 (missing or unknown key) or 403 (the key's role may not do this)."""


class TransportError(CofferError):
    """No answer after every attempt: connection refused, reset, or timed out. A command's fate is
    unknown; retry it with the same ``dedup_id`` to learn it."""


_error_types: dict[int, type[CofferError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: RejectedError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    503: NotAvailableError,
}


# ----------------------------------------------------------------------------------------- results


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the API shows it; amounts are decimal strings at the asset's full scale."""

    account_id: str
    asset: str
    scale: int
    state: str
    lower_limit: str
    upper_limit: str | None
    available: str
    reservations: dict[str, str]
    pending_in: dict[str, str]
    pending_out: dict[str, str]
    version: int
    seq: int
    metadata: dict[str, str] = {}
    time: str | None = None  # only on the versions of an account's history
    velocity: dict[str, Any] | None = None  # caps and current usage; only with caps, only on the latest view
    stripes: list[dict[str, Any]] | None = None  # a striped account only: each stripe's id, shard and available


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """An applied command: the last event seq, the log index, the accounts it changed."""

    seq: int
    log_index: int
    accounts: list[AccountView]
    compensation: str | None = None  # "COMPENSATED" or "NULL_COMPENSATED", for compensate only
    swept: str | None = None  # sweep only: the money moved out of the striped account's stripes
    dedup_id: str = ""  # not in the answer: the id this client sent, kept for compensate()


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str = ""
    account_id: str | None = None


class FlowRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A flow version registered by PUT /v1/flows/{name}."""

    name: str
    version: int
    seq: int


class FlowSummary(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int  # the latest
    mode: str | None = None
    description: str = ""


class _FlowList(msgspec.Struct, frozen=True):
    flows: list[FlowSummary]


class FlowRunView(msgspec.Struct, frozen=True, kw_only=True):
    """A flow run: the commands it produced (``steps``, ``compensations``: each with its ``command``
    body and, once sent, its ``status`` and ``seq`` or ``error``) and how it ended (``status``:
    SUCCEEDED, FAILED, COMPENSATED, COMPENSATION_FAILED, RUNNING or DRY_RUN)."""

    run_id: str
    flow: str
    version: int
    status: str
    dry_run: bool = False
    params: dict[str, Any] = {}
    computed: dict[str, str] = {}
    steps: list[dict[str, Any]] = []
    compensations: list[dict[str, Any]] = []
    error: ErrorDetail | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("SUCCEEDED", "DRY_RUN")


class CommandOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One answer of POST /v1/commands: a result (status 200) or an error (409, 422, ...)."""

    status: int
    dedup_id: str
    result: CommandResult | None = None
    error: ErrorDetail | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def exception(self) -> CofferError | None:
        """The error this outcome would have raised on the command's own endpoint."""
        if self.error is None:
            return None
        return _error_types.get(self.status, CofferError)(
            self.error.message,
            status=self.status,
            code=self.error.code,
            account_id=self.error.account_id,
            dedup_id=self.dedup_id,
        )


class AccountsView(msgspec.Struct, frozen=True, kw_only=True):
    """Several accounts, all as of the same ``seq``; ``missing`` lists ids that do not exist."""

    seq: int
    accounts: dict[str, AccountView]
    missing: list[str]


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """The credential that sent a command: the key's id (never the key) and its role."""

    key_id: str
    role: str


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    """One event; ``dedup_id`` is None for an event no command caused (``tcc_expired``)."""

    seq: int
    time: str
    log_index: int
    dedup_id: str | None
    type: str
    accounts: list[AccountView]
    prev_hash: str
    hash: str
    actor: Actor | None = None  # who sent the command (events of format 2 with a key)
    format: int = 1


class EventsPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of events; ``next`` continues it (pass it as ``cursor``), None at the end."""

    events: list[EventView]
    next: str | None = None


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of an account's versions; ``next`` continues it, None at the end."""

    versions: list[AccountView]
    next: str | None = None


class StatementChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a statement: the event, the change of ``available``, the sections after it."""

    seq: int
    time: str
    type: str
    dedup_id: str | None
    version: int
    state: str
    available_delta: str
    available: str
    reservations: dict[str, str] = {}
    pending_in: dict[str, str] = {}
    pending_out: dict[str, str] = {}


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """An account's statement for the period ``[from_seq, to_seq)``: ``opening`` (None if the account
    did not exist yet), ``changes`` (one page; ``next`` continues), ``closing``."""

    account_id: str
    asset: str
    scale: int
    seq: int
    from_seq: int
    to_seq: int
    opening: AccountView | None
    closing: AccountView | None
    changes: list[StatementChange]
    next: str | None = None


class AuditHead(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    hash: str
    log_index: int | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    seq: int | None = None


class _ErrorBody(msgspec.Struct):
    error: ErrorDetail


class _LogLevel(msgspec.Struct):
    level: str


class _RawOutcome(msgspec.Struct, kw_only=True):
    status: int
    seq: int | None = None
    log_index: int | None = None
    accounts: list[AccountView] = []
    compensation: str | None = None
    error: ErrorDetail | None = None


class _RawOutcomes(msgspec.Struct):
    results: list[_RawOutcome]


# ------------------------------------------------------------------------------------------ inputs


class Leg(msgspec.Struct, frozen=True, kw_only=True):
    """A signed amount on one account, for batch_operation and tcc_try."""

    account_id: str
    amount: Amount
    asset: str
    metadata: dict[str, str] | None = None


class Precondition(msgspec.Struct, frozen=True, kw_only=True):
    """Conditions on one account before a batch_operation; every one given must hold."""

    account_id: str
    expected_balance: Amount | None = None
    min_balance: Amount | None = None
    max_balance: Amount | None = None
    expected_version: int | None = None


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how patiently to retry network errors and 503.

    With several base URLs, a failed attempt moves to the next URL, and a URL not yet tried in
    this call is tried at once; otherwise the wait is exponential with full jitter, but at least
    what the server's ``Retry-After`` asks (up to ``retry_after_s_max``).
    """

    attempts_max: int = 4
    backoff_s_first: float = 0.1
    backoff_s_max: float = 2.0
    retry_after_s_max: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")

    def delay_s(self, waits_so_far: int, retry_after_s: float | None) -> float:
        backoff = random.uniform(0, min(self.backoff_s_max, self.backoff_s_first * 2**waits_so_far))
        if retry_after_s is not None:
            backoff = max(backoff, min(retry_after_s, self.retry_after_s_max))
        return backoff


# ------------------------------------------------------------------------------------ conversions


def amount_text(value: Amount) -> str:
    """The API spelling of an amount argument: ``str`` as is, ``Decimal`` without exponent."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"amount {value} is not a finite number")
        if value.is_zero():
            return "0"
        text = format(value, "f")
        if "." in text:
            # Trailing zeros do not change the value, but could exceed the asset's scale.
            text = text.rstrip("0").rstrip(".")
        return text
    raise TypeError(
        f"amount must be a str or decimal.Decimal, not {type(value).__name__}"
        " (floats are inexact; ints would be ambiguous with minor units)"
    )


def _optional_amount(value: Amount | None) -> str | None:
    return None if value is None else amount_text(value)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a free-form command: Decimals spelled as amounts, floats refused."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Decimal | float):
        return amount_text(value)  # type: ignore[arg-type]  # raises TypeError for float
    if isinstance(value, Leg | Precondition):
        return _plain(msgspec.structs.asdict(value))
    return value


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _leg(leg: Leg | Mapping[str, Any]) -> dict[str, Any]:
    fields = msgspec.structs.asdict(leg) if isinstance(leg, Leg) else dict(leg)
    fields["amount"] = amount_text(fields["amount"])
    return _without_none(fields)


def _precondition(condition: Precondition | Mapping[str, Any]) -> dict[str, Any]:
    fields = msgspec.structs.asdict(condition) if isinstance(condition, Precondition) else dict(condition)
    for name in ("expected_balance", "min_balance", "max_balance"):
        if fields.get(name) is not None:
            fields[name] = amount_text(fields[name])
    return _without_none(fields)


def _time_text(value: Time | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a datetime for the API needs a time zone")
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a time is a datetime, RFC 3339 text or Unix seconds, not {type(value).__name__}")


def _query(**fields: Any) -> dict[str, str]:
    return {key: str(value) for key, value in fields.items() if value is not None}


def new_dedup_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ calls

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API operation, ready to send as many times as needed: the body never changes."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    params: dict[str, str] | None = None
    body: bytes | None = None
    dedup_id: str | None = None
    retry: bool = True
    decodes_409: Callable[[bytes], bool] | None = None  # a 409 whose body is a result, not only an error
    headers: Mapping[str, str] | None = None  # beside the client's own: the media types of a MessagePack call

    def answer(self, status: int, content: bytes, reason: str) -> T:
        if not 200 <= status < 300 and not (status == 409 and self.decodes_409 is not None and self.decodes_409(content)):
            raise _error(status, content, reason, self.dedup_id)
        try:
            return self.decode(content)
        except (msgspec.DecodeError, ValueError) as error:  # not a Coffer node, or a newer one that bent the contract
            raise CofferError(
                f"unexpected answer to {self.method} {self.path}: {error}",
                status=status,
                code=invalid_response_code,
                dedup_id=self.dedup_id,
            ) from error


def _error(status: int, content: bytes, reason: str, dedup_id: str | None) -> CofferError:
    error_type = _error_types.get(status, CofferError)
    try:
        # A MessagePack call is answered in MessagePack, its errors too; other answers are JSON.
        decode = msgspec.msgpack.decode if content[:1] >= b"\x80" else msgspec.json.decode
        detail = decode(content, type=_ErrorBody).error
    except msgspec.DecodeError:
        # Not the documented shape (an unknown route, a proxy): keep what there is to read.
        text = content.decode("utf-8", "replace").strip()[:200] or reason
        return error_type(text, status=status, code=f"HTTP_{status}", dedup_id=dedup_id)
    return error_type(detail.message, status=status, code=detail.code, account_id=detail.account_id, dedup_id=dedup_id)


def _decoder(result_type: type[T]) -> Callable[[bytes], T]:
    decoder = msgspec.json.Decoder(result_type)
    return decoder.decode


_decode_account = _decoder(AccountView)
_decode_accounts = _decoder(AccountsView)
_decode_audit_head = _decoder(AuditHead)
_decode_health = _decoder(Health)
_decode_result = _decoder(CommandResult)
_decode_history_page = _decoder(HistoryPage)
_decode_events_page = _decoder(EventsPage)
_decode_statement = _decoder(Statement)
_decode_log_level = _decoder(_LogLevel)
_decode_outcomes = msgspec.msgpack.Decoder(_RawOutcomes).decode
_encode = msgspec.json.Encoder().encode
_encode_msgpack = msgspec.msgpack.Encoder().encode
_msgpack_headers = {"content-type": "application/msgpack", "accept": "application/msgpack"}


def _command(path: str, fields: dict[str, Any], dedup_id: str | None) -> _Call[CommandResult]:
    dedup_id = dedup_id or new_dedup_id()
    body = _encode({"dedup_id": dedup_id, **fields})

    def decode(content: bytes) -> CommandResult:
        return msgspec.structs.replace(_decode_result(content), dedup_id=dedup_id)

    return _Call("POST", path, decode, body=body, dedup_id=dedup_id)


reserved_path_segments = frozenset({"", ".", ".."})  # an id spelled so would name another path


def _account_path(account_id: str, action: str = "") -> str:
    # Ids are [A-Za-z0-9._:-]; quoting keeps a malformed id inside its path segment, but
    # "." and ".." stay as they are and would climb out of it: such an id is refused here.
    if account_id in reserved_path_segments:
        raise InvalidRequestError(f"account id {account_id!r} is not valid", code="INVALID_REQUEST")
    path = "/v1/accounts/" + quote(account_id, safe="")
    return f"{path}/{action}" if action else path


def _create_account(
    account_id: str,
    asset: str,
    scale: int,
    lower_limit: Amount | None,
    upper_limit: Amount | None,
    metadata: Mapping[str, str] | None,
    dedup_id: str | None,
    stripes: int | None = None,
) -> _Call[CommandResult]:
    fields = _without_none(
        {
            "account_id": account_id,
            "asset": asset,
            "scale": scale,
            "lower_limit": _optional_amount(lower_limit),
            "upper_limit": _optional_amount(upper_limit),
            "metadata": None if metadata is None else dict(metadata),
            "stripes": stripes,
        }
    )
    return _command("/v1/accounts", fields, dedup_id)


def _sweep(account_id: str, to_account_id: str, dedup_id: str | None) -> _Call[CommandResult]:
    return _command(_account_path(account_id, "sweep"), {"to_account_id": to_account_id}, dedup_id)


def _update_limits(
    account_id: str, lower_limit: Amount | None, upper_limit: Amount | msgspec.UnsetType | None, dedup_id: str | None
) -> _Call[CommandResult]:
    fields: dict[str, Any] = _without_none({"lower_limit": _optional_amount(lower_limit)})
    if upper_limit is not msgspec.UNSET:
        fields["upper_limit"] = _optional_amount(upper_limit)  # type: ignore[arg-type]  # None: no upper limit
    return _command(_account_path(account_id, "limits"), fields, dedup_id)


def _transfer(
    from_account_id: str,
    to_account_id: str,
    amount: Amount,
    asset: str,
    metadata: Mapping[str, str] | None,
    expected_from_balance: Amount | None,
    expected_to_balance: Amount | None,
    dedup_id: str | None,
) -> _Call[CommandResult]:
    fields = _without_none(
        {
            "from_account_id": from_account_id,
            "to_account_id": to_account_id,
            "amount": amount_text(amount),
            "asset": asset,
            "metadata": None if metadata is None else dict(metadata),
            "expected_from_balance": _optional_amount(expected_from_balance),
            "expected_to_balance": _optional_amount(expected_to_balance),
        }
    )
    return _command("/v1/transfers", fields, dedup_id)


def _batch_operation(
    legs: Sequence[Leg | Mapping[str, Any]],
    preconditions: Sequence[Precondition | Mapping[str, Any]] | None,
    dedup_id: str | None,
) -> _Call[CommandResult]:
    fields: dict[str, Any] = {"legs": [_leg(leg) for leg in legs]}
    if preconditions:
        fields["preconditions"] = [_precondition(condition) for condition in preconditions]
    return _command("/v1/batch-operations", fields, dedup_id)


def _reserve(account_id: str, reservation_id: str, amount: Amount, dedup_id: str | None) -> _Call[CommandResult]:
    fields = {"account_id": account_id, "reservation_id": reservation_id, "amount": amount_text(amount)}
    return _command("/v1/reservations", fields, dedup_id)


def _release(account_id: str, reservation_id: str, amount: Amount | None, dedup_id: str | None) -> _Call[CommandResult]:
    fields = _without_none({"account_id": account_id, "reservation_id": reservation_id, "amount": _optional_amount(amount)})
    return _command("/v1/releases", fields, dedup_id)


def _tcc_try(
    txn_id: str, legs: Sequence[Leg | Mapping[str, Any]], timeout_s: int | None, dedup_id: str | None
) -> _Call[CommandResult]:
    fields = _without_none({"txn_id": txn_id, "legs": [_leg(leg) for leg in legs], "timeout_s": timeout_s})
    return _command("/v1/tcc/try", fields, dedup_id)


def _commands(commands: Sequence[Mapping[str, Any]]) -> _Call[list[CommandOutcome]]:
    items = []
    for command in commands:
        item = _plain(command)
        if item.get("dedup_id") is None:
            item["dedup_id"] = new_dedup_id()
        items.append(item)
    dedup_ids = [item["dedup_id"] for item in items]

    def decode(content: bytes) -> list[CommandOutcome]:
        outcomes = []
        for dedup_id, raw in zip(dedup_ids, _decode_outcomes(content).results, strict=True):
            result = None
            if raw.status == 200 and raw.seq is not None and raw.log_index is not None:
                result = CommandResult(
                    seq=raw.seq, log_index=raw.log_index, accounts=raw.accounts, compensation=raw.compensation, dedup_id=dedup_id
                )
            outcomes.append(CommandOutcome(status=raw.status, dedup_id=dedup_id, result=result, error=raw.error))
        return outcomes

    return _Call("POST", "/v1/commands", decode, body=_encode_msgpack({"commands": items}), headers=_msgpack_headers)


def _get_account(account_id: str, min_seq: int | None, at_seq: int | None, at_time: Time | None) -> _Call[AccountView]:
    params = _query(min_seq=min_seq, at_seq=at_seq, at_time=_time_text(at_time))
    return _Call("GET", _account_path(account_id), _decode_account, params=params)


def _get_accounts(account_ids: Sequence[str], at_seq: int | None, at_time: Time | None) -> _Call[AccountsView]:
    if isinstance(account_ids, str):
        raise TypeError("account_ids is a sequence of ids, not one string")
    params = _query(ids=",".join(account_ids), at_seq=at_seq, at_time=_time_text(at_time))
    return _Call("GET", "/v1/accounts", _decode_accounts, params=params)


def _range(
    from_seq: int | None, to_seq: int | None, from_time: Time | None, to_time: Time | None, limit: int | None, cursor: str | None
) -> dict[str, str]:
    return _query(
        from_seq=from_seq, to_seq=to_seq, from_time=_time_text(from_time), to_time=_time_text(to_time), limit=limit, cursor=cursor
    )


def _history_page(
    account_id: str,
    from_seq: int | None,
    to_seq: int | None,
    from_time: Time | None,
    to_time: Time | None,
    limit: int | None,
    cursor: str | None,
) -> _Call[HistoryPage]:
    params = _range(from_seq, to_seq, from_time, to_time, limit, cursor)
    return _Call("GET", _account_path(account_id, "history"), _decode_history_page, params=params)


def _events_page(
    from_seq: int | None, to_seq: int | None, from_time: Time | None, to_time: Time | None, limit: int | None, cursor: str | None
) -> _Call[EventsPage]:
    return _Call("GET", "/v1/events", _decode_events_page, params=_range(from_seq, to_seq, from_time, to_time, limit, cursor))


def _statement(
    account_id: str,
    from_seq: int | None,
    to_seq: int | None,
    from_time: Time | None,
    to_time: Time | None,
    limit: int | None,
    cursor: str | None,
) -> _Call[Statement]:
    params = _range(from_seq, to_seq, from_time, to_time, limit, cursor)
    return _Call("GET", _account_path(account_id, "statement"), _decode_statement, params=params)


_decode_flow_run = _decoder(FlowRunView)


def _is_run(content: bytes) -> bool:
    try:
        return "run_id" in msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False


def _flow_path(name: str, action: str = "") -> str:
    return f"/v1/flows/{quote(name, safe='')}{action}"


def _put_flow(name: str, definition: Mapping[str, Any], dedup_id: str | None) -> _Call[FlowRegistered]:
    dedup_id = dedup_id or new_dedup_id()
    body = _encode({**_plain(definition), "dedup_id": dedup_id})
    return _Call("PUT", _flow_path(name), _decoder(FlowRegistered), body=body, dedup_id=dedup_id)


def _get_flow(name: str, version: int | None) -> _Call[dict[str, Any]]:
    params = None if version is None else {"version": str(version)}
    return _Call("GET", _flow_path(name), msgspec.json.decode, params=params)


_list_flows: "_Call[list[FlowSummary]]" = _Call("GET", "/v1/flows", lambda content: msgspec.json.decode(content, type=_FlowList).flows)


def _run_flow(
    name: str, params: Mapping[str, Any], dedup_id: str | None, version: int | None, dry_run: bool
) -> _Call[FlowRunView]:
    dedup_id = dedup_id or new_dedup_id()
    fields = _without_none({"dedup_id": dedup_id, "params": _plain(params), "version": version})
    if dry_run:
        fields["dry_run"] = True
    return _Call("POST", _flow_path(name, "/runs"), _decode_flow_run, body=_encode(fields), dedup_id=dedup_id, decodes_409=_is_run)


def _get_flow_run(run_id: str) -> _Call[FlowRunView]:
    return _Call("GET", f"/v1/flows/runs/{quote(run_id, safe='')}", _decode_flow_run)


def _set_velocity_limits(
    account_id: str,
    amount_per_hour: Amount | None,
    amount_per_day: Amount | None,
    debits_per_hour: int | None,
    debits_per_day: int | None,
    dedup_id: str | None,
) -> _Call[CommandResult]:
    fields = _without_none(
        {
            "amount_per_hour": _optional_amount(amount_per_hour),
            "amount_per_day": _optional_amount(amount_per_day),
            "debits_per_hour": debits_per_hour,
            "debits_per_day": debits_per_day,
        }
    )
    return _command(_account_path(account_id, "velocity-limits"), fields, dedup_id)


def _create_webhook(
    url: str,
    account_ids: Sequence[str] | None,
    event_types: Sequence[str] | None,
    threshold: Mapping[str, str] | None,
    timeout_ms: int | None,
    secret: str | None,
    from_seq: int | None,
) -> _Call[dict[str, Any]]:
    fields = _without_none(
        {
            "url": url,
            "account_ids": None if account_ids is None else list(account_ids),
            "event_types": None if event_types is None else list(event_types),
            "threshold": None if threshold is None else dict(threshold),
            "timeout_ms": timeout_ms,
            "secret": secret,
            "from_seq": from_seq,
        }
    )
    return _Call("POST", "/v1/webhooks", msgspec.json.decode, body=_encode(fields), retry=False)


_list_webhooks: "_Call[list[dict[str, Any]]]" = _Call("GET", "/v1/webhooks", lambda content: msgspec.json.decode(content)["webhooks"])


def _webhook_path(subscription_id: str, action: str = "") -> str:
    return f"/v1/webhooks/{quote(subscription_id, safe='')}{action}"


def _set_log_level(level: str) -> _Call[str]:
    return _Call("PUT", "/admin/log-level", lambda content: _decode_log_level(content).level, body=_encode({"level": level}))


def _raw(method: str, path: str, params: Mapping[str, Any] | None, json: Any, retry: bool | None) -> _Call[Any]:
    body = None if json is None else _encode(json)  # raw: floats too, to let a caller test the server
    return _Call(
        method.upper(),
        path,
        lambda content: msgspec.json.decode(content) if content else None,
        params=None if params is None else _query(**params),
        body=body,
        retry=method.upper() == "GET" if retry is None else retry,
    )


_healthz: _Call[Health] = _Call("GET", "/healthz", _decode_health)
_readyz: _Call[Health] = _Call("GET", "/readyz", _decode_health, retry=False)
_audit_head: _Call[AuditHead] = _Call("GET", "/v1/audit/head", _decode_audit_head)
_metrics: _Call[str] = _Call("GET", "/metrics", lambda content: content.decode())


def _retry_after_s(headers: httpx.Headers) -> float | None:
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        return None  # an HTTP date: rare from our servers; the backoff applies


# ----------------------------------------------------------------------------------------- clients


class _Base:
    def __init__(
        self, urls: str | Sequence[str], api_key: str | None, retry: RetryPolicy | None, ca_file: str | Path | None = None
    ) -> None:
        # One string may name several nodes, comma-separated, as COFFER_URL and --url do.
        urls = [part.strip() for part in urls.split(",") if part.strip()] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("give at least one base URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.retry = retry or RetryPolicy()
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._current = 0  # the URL that answered last; failures move on to the next
        # Only https needs the CA bundle, and loading it costs about 0.1 s per client (every CLI
        # call would pay it). Plain http URLs never use TLS, and redirects are not followed.
        self._verify_tls: bool | ssl.SSLContext = any(url.startswith("https:") for url in self.urls)
        if ca_file is not None:
            # A node with a certificate of a private CA (or self-signed): trust that CA only.
            self._verify_tls = ssl.create_default_context(cafile=str(ca_file))

    def _attempts(self, call: _Call[Any]) -> int:
        return self.retry.attempts_max if call.retry else 1

    def _failed(self, index: int, tried: set[int], waits: int, retry_after_s: float | None) -> float:
        """Move on to the next URL; return how long to wait before the next attempt."""
        self._current = (index + 1) % len(self.urls)
        if self._current not in tried:
            return 0.0
        return self.retry.delay_s(waits, retry_after_s)

    def _transport_error(self, call: _Call[Any], url: str, error: httpx.TransportError) -> TransportError:
        return TransportError(
            f"{call.method} {url}{call.path}: {type(error).__name__}: {error}", code=transport_error_code, dedup_id=call.dedup_id
        )


class Client(_Base):
    """Synchronous client. ``urls``: one base URL or several nodes (a sequence, or one string with
    comma-separated URLs), tried in turn on failure.

    Commands return :class:`CommandResult` or raise a :class:`CofferError`. Every command takes
    ``dedup_id``; without one a fresh id is drawn once per call and reused by its retries.
    ``https://`` URLs are verified against the system's CAs, or only against ``ca_file`` (PEM)
    when given: the CA that signed the nodes' certificates, or a node's self-signed one.
    """

    def __init__(
        self,
        urls: str | Sequence[str] = default_url,
        *,
        api_key: str | None = None,
        timeout_s: float = timeout_s_default,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        super().__init__(urls, api_key, retry, ca_file)
        self._http = httpx.Client(timeout=timeout_s, transport=transport, headers=self._headers, verify=self._verify_tls)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, call: _Call[T]) -> T:
        tried: set[int] = set()
        waits = 0
        error: CofferError | None = None
        for attempt in range(self._attempts(call)):
            index = self._current
            tried.add(index)
            url = self.urls[index]
            try:
                response = self._http.request(call.method, url + call.path, params=call.params, content=call.body, headers=call.headers)
            except httpx.TransportError as failure:
                error, retry_after_s = self._transport_error(call, url, failure), None
            else:
                if response.status_code != 503:
                    return call.answer(response.status_code, response.content, response.reason_phrase)
                error = _error(503, response.content, response.reason_phrase, call.dedup_id)
                retry_after_s = _retry_after_s(response.headers)
            if attempt + 1 < self._attempts(call):
                delay_s = self._failed(index, tried, waits, retry_after_s)
                if delay_s > 0:
                    waits += 1
                    time.sleep(delay_s)
        assert error is not None
        raise error

    # -------------------------------------------------------------------------------- commands

    def create_account(
        self,
        account_id: str,
        asset: str,
        *,
        scale: int = 2,
        lower_limit: Amount | None = None,
        upper_limit: Amount | None = None,
        metadata: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        stripes: int | None = None,
    ) -> CommandResult:
        """Open an account (admin). ``lower_limit`` defaults to 0, ``upper_limit`` to none.

        ``stripes`` (sharded nodes): a credit-only account spread over that many shards, read as one balance.
        """
        return self._run(_create_account(account_id, asset, scale, lower_limit, upper_limit, metadata, dedup_id, stripes))

    def sweep(self, account_id: str, to_account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        """Move every stripe's available of a striped account to an ordinary account, all or nothing."""
        return self._run(_sweep(account_id, to_account_id, dedup_id))

    def update_limits(
        self,
        account_id: str,
        *,
        lower_limit: Amount | None = None,
        upper_limit: Amount | msgspec.UnsetType | None = msgspec.UNSET,
        dedup_id: str | None = None,
    ) -> CommandResult:
        """Change limits (admin). Omitted limits stay; ``upper_limit=None`` removes the upper limit."""
        return self._run(_update_limits(account_id, lower_limit, upper_limit, dedup_id))

    def lock_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_command(_account_path(account_id, "lock"), {}, dedup_id))

    def unlock_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_command(_account_path(account_id, "unlock"), {}, dedup_id))

    def delete_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_command(_account_path(account_id, "delete"), {}, dedup_id))

    def transfer(
        self,
        from_account_id: str,
        to_account_id: str,
        amount: Amount,
        asset: str,
        *,
        metadata: Mapping[str, str] | None = None,
        expected_from_balance: Amount | None = None,
        expected_to_balance: Amount | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        """Move ``amount`` of ``asset``; the expected balances (of ``available``) are preconditions."""
        return self._run(
            _transfer(
                from_account_id, to_account_id, amount, asset, metadata, expected_from_balance, expected_to_balance, dedup_id
            )
        )

    def batch_operation(
        self,
        legs: Sequence[Leg | Mapping[str, Any]],
        *,
        preconditions: Sequence[Precondition | Mapping[str, Any]] | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        """Signed legs on many accounts, all or nothing; money may enter or leave the ledger here."""
        return self._run(_batch_operation(legs, preconditions, dedup_id))

    def reserve(self, account_id: str, reservation_id: str, amount: Amount, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_reserve(account_id, reservation_id, amount, dedup_id))

    def release(
        self, account_id: str, reservation_id: str, amount: Amount | None = None, *, dedup_id: str | None = None
    ) -> CommandResult:
        """Release part of a reservation, or all of it when ``amount`` is None."""
        return self._run(_release(account_id, reservation_id, amount, dedup_id))

    def tcc_try(
        self,
        txn_id: str,
        legs: Sequence[Leg | Mapping[str, Any]],
        *,
        timeout_s: int | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        return self._run(_tcc_try(txn_id, legs, timeout_s, dedup_id))

    def tcc_confirm(self, txn_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_command("/v1/tcc/confirm", {"txn_id": txn_id}, dedup_id))

    def tcc_cancel(self, txn_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return self._run(_command("/v1/tcc/cancel", {"txn_id": txn_id}, dedup_id))

    def compensate(self, original_dedup_id: str, *, dedup_id: str | None = None) -> CommandResult:
        """Undo the command sent with ``original_dedup_id`` (``CommandResult.dedup_id``)."""
        return self._run(_command("/v1/compensations", {"original_dedup_id": original_dedup_id}, dedup_id))

    def commands(self, commands: Sequence[Mapping[str, Any]]) -> list[CommandOutcome]:
        """POST /v1/commands: each item is ``{"type": ..., fields of that command's endpoint}``.

        Items without a ``dedup_id`` get one. Outcomes come back in order, one per command; a
        rejected or malformed item does not raise (see :meth:`CommandOutcome.exception`).
        """
        return self._run(_commands(commands))

    # --------------------------------------------------------------------------------- queries

    def get_account(
        self, account_id: str, *, min_seq: int | None = None, at_seq: int | None = None, at_time: Time | None = None
    ) -> AccountView:
        """The account; with ``min_seq``, NotAvailableError rather than a view older than that seq.

        With ``at_seq`` or ``at_time`` (not both), the account as it was then: after that seq, or
        after the last event with time <= ``at_time``; NotFoundError if it did not exist yet.
        """
        return self._run(_get_account(account_id, min_seq, at_seq, at_time))

    def get_accounts(
        self, account_ids: Sequence[str], *, at_seq: int | None = None, at_time: Time | None = None
    ) -> AccountsView:
        """Several accounts, all as of one seq: the latest, ``at_seq``, or the last event at or before ``at_time``."""
        return self._run(_get_accounts(account_ids, at_seq, at_time))

    def history(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> list[AccountView]:
        """The account's versions, oldest first, each with ``time``; ranges are half-open. One page:
        see :meth:`history_page` and :meth:`iter_history` for more."""
        page = self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, None))
        return page.versions

    def history_page(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> HistoryPage:
        """One page of the account's versions; pass its ``next`` as ``cursor``, with the same ranges, for the next."""
        return self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))

    def iter_history(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> Iterator[AccountView]:
        """Every version in range, following ``next`` page after page (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))
            yield from page.versions
            if page.next is None:
                return
            cursor = page.next

    def events(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> list[EventView]:
        """Events in range, oldest first (one page: see :meth:`events_page` and :meth:`iter_events`)."""
        page = self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, None))
        return page.events

    def events_page(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> EventsPage:
        """One page of events; pass its ``next`` as ``cursor``, with the same ranges, for the next."""
        return self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, cursor))

    def iter_events(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> Iterator[EventView]:
        """Every event in range, following ``next`` page after page (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, cursor))
            yield from page.events
            if page.next is None:
                return
            cursor = page.next

    def statement(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Statement:
        """The account's statement for a period: opening balance, changes (one page), closing balance.

        The period is ``[from_seq, to_seq)`` and ``[from_time, to_time)`` together. Pass ``next``
        as ``cursor``, with the same bounds, for the next page of changes.
        """
        return self._run(_statement(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))

    def audit_head(self) -> AuditHead:
        return self._run(_audit_head)

    # ------------------------------------------------------------------------------ operations

    def healthz(self) -> Health:
        return self._run(_healthz)

    def readyz(self) -> Health:
        """Ready, or NotAvailableError at once (no retry: the answer is the point)."""
        return self._run(_readyz)

    def metrics(self) -> str:
        return self._run(_metrics)

    def set_log_level(self, level: str) -> str:
        return self._run(_set_log_level(level))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: bool | None = None,
    ) -> Any:
        """Any route, raw JSON in and out, with the same errors. Retried only for GET unless ``retry``."""
        return self._run(_raw(method, path, params, json, retry))

    # -------------------------------------------------------------------------------- flows and velocity

    def put_flow(self, name: str, definition: Mapping[str, Any], *, dedup_id: str | None = None) -> FlowRegistered:
        """Register the next version of a flow (admin); a retry with the same dedup_id registers nothing new."""
        return self._run(_put_flow(name, definition, dedup_id))

    def list_flows(self) -> list[FlowSummary]:
        """The registered flows, each with its latest version."""
        return self._run(_list_flows)

    def get_flow(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A flow's definition (the latest, or ``version``), in the form ``put_flow`` takes, with its version."""
        return self._run(_get_flow(name, version))

    def run_flow(
        self,
        name: str,
        params: Mapping[str, Any],
        *,
        dedup_id: str | None = None,
        version: int | None = None,
        dry_run: bool = False,
    ) -> FlowRunView:
        """Run a flow, exactly once by ``dedup_id``. A run the ledger rejected (FAILED, COMPENSATED,
        COMPENSATION_FAILED) is returned too, with its ``error``; other errors raise."""
        return self._run(_run_flow(name, params, dedup_id, version, dry_run))

    def get_flow_run(self, run_id: str) -> FlowRunView:
        """A run's outcome, or its record while it is RUNNING."""
        return self._run(_get_flow_run(run_id))

    def set_velocity_limits(
        self,
        account_id: str,
        *,
        amount_per_hour: Amount | None = None,
        amount_per_day: Amount | None = None,
        debits_per_hour: int | None = None,
        debits_per_day: int | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        """Replace an account's velocity caps (admin); none given removes them."""
        return self._run(
            _set_velocity_limits(account_id, amount_per_hour, amount_per_day, debits_per_hour, debits_per_day, dedup_id)
        )

    # -------------------------------------------------------------------------------- webhooks

    def create_webhook(
        self,
        url: str,
        *,
        account_ids: Sequence[str] | None = None,
        event_types: Sequence[str] | None = None,
        threshold: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        secret: str | None = None,
        from_seq: int | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``url`` to this node's events (admin); the answer holds the signing ``secret``.
        ``threshold``: ``{"account_id", "amount", "direction": "below" | "above"}``."""
        return self._run(_create_webhook(url, account_ids, event_types, threshold, timeout_ms, secret, from_seq))

    def list_webhooks(self) -> list[dict[str, Any]]:
        """This node's webhook subscriptions, with their cursors."""
        return self._run(_list_webhooks)

    def webhook_deliveries(self, subscription_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The delivery log of a subscription, newest attempt first."""
        return self._run(_raw("GET", _webhook_path(subscription_id, "/deliveries"), {"limit": limit}, None, None))["deliveries"]

    def replay_webhook(self, subscription_id: str, from_seq: int) -> dict[str, Any]:
        """Deliver a subscription's events again from ``from_seq`` on (admin)."""
        return self._run(_raw("POST", _webhook_path(subscription_id, "/replay"), None, {"from_seq": from_seq}, True))

    def delete_webhook(self, subscription_id: str) -> None:
        """Unsubscribe (admin)."""
        self._run(_raw("DELETE", _webhook_path(subscription_id), None, None, True))


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited."""

    def __init__(
        self,
        urls: str | Sequence[str] = default_url,
        *,
        api_key: str | None = None,
        timeout_s: float = timeout_s_default,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        super().__init__(urls, api_key, retry, ca_file)
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport, headers=self._headers, verify=self._verify_tls)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run(self, call: _Call[T]) -> T:
        tried: set[int] = set()
        waits = 0
        error: CofferError | None = None
        for attempt in range(self._attempts(call)):
            index = self._current
            tried.add(index)
            url = self.urls[index]
            try:
                response = await self._http.request(
                    call.method, url + call.path, params=call.params, content=call.body, headers=call.headers
                )
            except httpx.TransportError as failure:
                error, retry_after_s = self._transport_error(call, url, failure), None
            else:
                if response.status_code != 503:
                    return call.answer(response.status_code, response.content, response.reason_phrase)
                error = _error(503, response.content, response.reason_phrase, call.dedup_id)
                retry_after_s = _retry_after_s(response.headers)
            if attempt + 1 < self._attempts(call):
                delay_s = self._failed(index, tried, waits, retry_after_s)
                if delay_s > 0:
                    waits += 1
                    await asyncio.sleep(delay_s)
        assert error is not None
        raise error

    # -------------------------------------------------------------------------------- commands

    async def create_account(
        self,
        account_id: str,
        asset: str,
        *,
        scale: int = 2,
        lower_limit: Amount | None = None,
        upper_limit: Amount | None = None,
        metadata: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        stripes: int | None = None,
    ) -> CommandResult:
        """Open an account (admin). ``lower_limit`` defaults to 0, ``upper_limit`` to none.

        ``stripes`` (sharded nodes): a credit-only account spread over that many shards, read as one balance.
        """
        return await self._run(_create_account(account_id, asset, scale, lower_limit, upper_limit, metadata, dedup_id, stripes))

    async def sweep(self, account_id: str, to_account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        """Move every stripe's available of a striped account to an ordinary account, all or nothing."""
        return await self._run(_sweep(account_id, to_account_id, dedup_id))

    async def update_limits(
        self,
        account_id: str,
        *,
        lower_limit: Amount | None = None,
        upper_limit: Amount | msgspec.UnsetType | None = msgspec.UNSET,
        dedup_id: str | None = None,
    ) -> CommandResult:
        return await self._run(_update_limits(account_id, lower_limit, upper_limit, dedup_id))

    async def lock_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command(_account_path(account_id, "lock"), {}, dedup_id))

    async def unlock_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command(_account_path(account_id, "unlock"), {}, dedup_id))

    async def delete_account(self, account_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command(_account_path(account_id, "delete"), {}, dedup_id))

    async def transfer(
        self,
        from_account_id: str,
        to_account_id: str,
        amount: Amount,
        asset: str,
        *,
        metadata: Mapping[str, str] | None = None,
        expected_from_balance: Amount | None = None,
        expected_to_balance: Amount | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        return await self._run(
            _transfer(
                from_account_id, to_account_id, amount, asset, metadata, expected_from_balance, expected_to_balance, dedup_id
            )
        )

    async def batch_operation(
        self,
        legs: Sequence[Leg | Mapping[str, Any]],
        *,
        preconditions: Sequence[Precondition | Mapping[str, Any]] | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        return await self._run(_batch_operation(legs, preconditions, dedup_id))

    async def reserve(
        self, account_id: str, reservation_id: str, amount: Amount, *, dedup_id: str | None = None
    ) -> CommandResult:
        return await self._run(_reserve(account_id, reservation_id, amount, dedup_id))

    async def release(
        self, account_id: str, reservation_id: str, amount: Amount | None = None, *, dedup_id: str | None = None
    ) -> CommandResult:
        return await self._run(_release(account_id, reservation_id, amount, dedup_id))

    async def tcc_try(
        self,
        txn_id: str,
        legs: Sequence[Leg | Mapping[str, Any]],
        *,
        timeout_s: int | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        return await self._run(_tcc_try(txn_id, legs, timeout_s, dedup_id))

    async def tcc_confirm(self, txn_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command("/v1/tcc/confirm", {"txn_id": txn_id}, dedup_id))

    async def tcc_cancel(self, txn_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command("/v1/tcc/cancel", {"txn_id": txn_id}, dedup_id))

    async def compensate(self, original_dedup_id: str, *, dedup_id: str | None = None) -> CommandResult:
        return await self._run(_command("/v1/compensations", {"original_dedup_id": original_dedup_id}, dedup_id))

    async def commands(self, commands: Sequence[Mapping[str, Any]]) -> list[CommandOutcome]:
        return await self._run(_commands(commands))

    # --------------------------------------------------------------------------------- queries

    async def get_account(
        self, account_id: str, *, min_seq: int | None = None, at_seq: int | None = None, at_time: Time | None = None
    ) -> AccountView:
        """The account; with ``min_seq``, NotAvailableError rather than a view older than that seq.

        With ``at_seq`` or ``at_time`` (not both), the account as it was then: after that seq, or
        after the last event with time <= ``at_time``; NotFoundError if it did not exist yet.
        """
        return await self._run(_get_account(account_id, min_seq, at_seq, at_time))

    async def get_accounts(
        self, account_ids: Sequence[str], *, at_seq: int | None = None, at_time: Time | None = None
    ) -> AccountsView:
        """Several accounts, all as of one seq: the latest, ``at_seq``, or the last event at or before ``at_time``."""
        return await self._run(_get_accounts(account_ids, at_seq, at_time))

    async def history(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> list[AccountView]:
        """The account's versions, oldest first, each with ``time``; ranges are half-open. One page:
        see :meth:`history_page` and :meth:`iter_history` for more."""
        page = await self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, None))
        return page.versions

    async def history_page(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> HistoryPage:
        """One page of the account's versions; pass its ``next`` as ``cursor``, with the same ranges, for the next."""
        return await self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))

    async def iter_history(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[AccountView]:
        """Every version in range, following ``next`` page after page (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = await self._run(_history_page(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))
            for version in page.versions:
                yield version
            if page.next is None:
                return
            cursor = page.next

    async def events(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> list[EventView]:
        """Events in range, oldest first (one page: see :meth:`events_page` and :meth:`iter_events`)."""
        page = await self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, None))
        return page.events

    async def events_page(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> EventsPage:
        """One page of events; pass its ``next`` as ``cursor``, with the same ranges, for the next."""
        return await self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, cursor))

    async def iter_events(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[EventView]:
        """Every event in range, following ``next`` page after page (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = await self._run(_events_page(from_seq, to_seq, from_time, to_time, limit, cursor))
            for event in page.events:
                yield event
            if page.next is None:
                return
            cursor = page.next

    async def statement(
        self,
        account_id: str,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time: Time | None = None,
        to_time: Time | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Statement:
        """The account's statement for a period: opening balance, changes (one page), closing balance.

        The period is ``[from_seq, to_seq)`` and ``[from_time, to_time)`` together. Pass ``next``
        as ``cursor``, with the same bounds, for the next page of changes.
        """
        return await self._run(_statement(account_id, from_seq, to_seq, from_time, to_time, limit, cursor))

    async def audit_head(self) -> AuditHead:
        return await self._run(_audit_head)

    # ------------------------------------------------------------------------------ operations

    async def healthz(self) -> Health:
        return await self._run(_healthz)

    async def readyz(self) -> Health:
        return await self._run(_readyz)

    async def metrics(self) -> str:
        return await self._run(_metrics)

    async def set_log_level(self, level: str) -> str:
        return await self._run(_set_log_level(level))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: bool | None = None,
    ) -> Any:
        return await self._run(_raw(method, path, params, json, retry))

    # -------------------------------------------------------------------------------- flows and velocity

    async def put_flow(self, name: str, definition: Mapping[str, Any], *, dedup_id: str | None = None) -> FlowRegistered:
        """Register the next version of a flow (admin); a retry with the same dedup_id registers nothing new."""
        return await self._run(_put_flow(name, definition, dedup_id))

    async def list_flows(self) -> list[FlowSummary]:
        """The registered flows, each with its latest version."""
        return await self._run(_list_flows)

    async def get_flow(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A flow's definition (the latest, or ``version``), in the form ``put_flow`` takes, with its version."""
        return await self._run(_get_flow(name, version))

    async def run_flow(
        self,
        name: str,
        params: Mapping[str, Any],
        *,
        dedup_id: str | None = None,
        version: int | None = None,
        dry_run: bool = False,
    ) -> FlowRunView:
        """Run a flow, exactly once by ``dedup_id``. A run the ledger rejected (FAILED, COMPENSATED,
        COMPENSATION_FAILED) is returned too, with its ``error``; other errors raise."""
        return await self._run(_run_flow(name, params, dedup_id, version, dry_run))

    async def get_flow_run(self, run_id: str) -> FlowRunView:
        """A run's outcome, or its record while it is RUNNING."""
        return await self._run(_get_flow_run(run_id))

    async def set_velocity_limits(
        self,
        account_id: str,
        *,
        amount_per_hour: Amount | None = None,
        amount_per_day: Amount | None = None,
        debits_per_hour: int | None = None,
        debits_per_day: int | None = None,
        dedup_id: str | None = None,
    ) -> CommandResult:
        """Replace an account's velocity caps (admin); none given removes them."""
        return await self._run(
            _set_velocity_limits(account_id, amount_per_hour, amount_per_day, debits_per_hour, debits_per_day, dedup_id)
        )

    # -------------------------------------------------------------------------------- webhooks

    async def create_webhook(
        self,
        url: str,
        *,
        account_ids: Sequence[str] | None = None,
        event_types: Sequence[str] | None = None,
        threshold: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        secret: str | None = None,
        from_seq: int | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``url`` to this node's events (admin); the answer holds the signing ``secret``.
        ``threshold``: ``{"account_id", "amount", "direction": "below" | "above"}``."""
        return await self._run(_create_webhook(url, account_ids, event_types, threshold, timeout_ms, secret, from_seq))

    async def list_webhooks(self) -> list[dict[str, Any]]:
        """This node's webhook subscriptions, with their cursors."""
        return await self._run(_list_webhooks)

    async def webhook_deliveries(self, subscription_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The delivery log of a subscription, newest attempt first."""
        return (await self._run(_raw("GET", _webhook_path(subscription_id, "/deliveries"), {"limit": limit}, None, None)))["deliveries"]

    async def replay_webhook(self, subscription_id: str, from_seq: int) -> dict[str, Any]:
        """Deliver a subscription's events again from ``from_seq`` on (admin)."""
        return await self._run(_raw("POST", _webhook_path(subscription_id, "/replay"), None, {"from_seq": from_seq}, True))

    async def delete_webhook(self, subscription_id: str) -> None:
        """Unsubscribe (admin)."""
        await self._run(_raw("DELETE", _webhook_path(subscription_id), None, None, True))
