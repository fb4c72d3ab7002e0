"""What arrives over HTTP, checked before anything reads it: JSON bodies, query parameters, ids.

Job: both servers (the node, :mod:`coffer.server.app`, and the query server,
:mod:`coffer.query.query_app`) refuse malformed input here with :class:`InputError`, which they
answer as 422 ``INVALID_REQUEST`` in the documented error shape. No input may end as a 500: each
check below exists because a request once did.

Method, JSON bodies (:func:`decode_json`): msgspec decodes the body (strict UTF-8; its own guard
against deep nesting raises ``RecursionError``), then the key count proves that no object repeats
a key. msgspec keeps the last of repeated keys, so ``{"amount": "0.01", "amount": "500"}`` would
move 500.00 while a proxy, a log reader or an auditor that keeps the first sees 0.01: two parsers
must never read one request two ways, so a repeated key is refused wherever it is.

The duplicate check is exact and costs about 2 us on a transfer body (12 ms on 8190 commands):
every key of a JSON text is one colon outside its strings, and becomes one entry of one decoded
object; objects that repeat a key hold fewer entries than the text has keys. Without a backslash
in the body, splitting at the quotes separates strings from the rest exactly, so counting colons
is one C-level pass. A body with escapes (``"am\\u006funt"``) is rare; it goes through the
standard library's parser with a hook that compares each object's pairs with its keys.

Query parameters: each route declares the names it accepts (:func:`refuse_unknown_parameters`);
anything else, or a name given twice, is refused by name, so a typo (``form_seq``) or a parameter
another route has (``at_time``) is never silently ignored. Integers are refused by their length
before conversion (``int()`` of thousands of digits is slow, and Python refuses past 4300), and
every seq or time must fit the stores' signed 64-bit columns.
"""

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from starlette.routing import BaseRoute, Match

from coffer.core.errors import ErrorCode

T = TypeVar("T")

json_depth_max = 32  # the deepest valid body (POST /v1/commands: item, legs, leg, metadata) has 6 levels
query_integer_max = 2**63 - 1  # seqs, limits and times are stored as signed 64-bit integers
query_integer_digits_max = len(str(query_integer_max))  # longer text is out of range whatever it says
query_time_text_length_max = 64  # the longest RFC 3339 time with nanoseconds and an offset is 35 characters
reserved_ids = frozenset({".", ".."})  # path segments with a meaning of their own: never an account


class InputError(ValueError):
    """Malformed input: HTTP 422 ``INVALID_REQUEST`` with this message."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------------------ JSON bodies


def decode_json(
    data: bytes,
    decode: Callable[[bytes], T] = msgspec.json.decode,  # type: ignore[assignment]
    plain: Callable[[T], Any] | None = None,
) -> T:
    """``decode(data)`` for a body that is valid UTF-8 JSON without repeated keys.

    ``plain`` gives the decoded value as dicts and lists, equal to the generic decoding, when that
    is cheap (else the duplicate check decodes the body a second time). ``msgspec.ValidationError``
    (a valid JSON text of the wrong shape) passes through for the caller to word; every other
    failure is an :class:`InputError`.
    """
    try:
        value = decode(data)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as error:
        raise InputError(f"body is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"body is not valid UTF-8 (byte {error.start})") from None
    except RecursionError:
        raise InputError(f"body is nested deeper than {json_depth_max} levels") from None
    if decode is msgspec.json.decode:
        refuse_duplicate_keys(data, value)
    else:
        refuse_duplicate_keys(data, _not_decoded if plain is None else plain(value))
    return value


_not_decoded: Any = object()


def refuse_duplicate_keys(data: bytes, decoded: Any = _not_decoded) -> None:
    """Raise :class:`InputError` if an object of the JSON text ``data`` repeats a key.

    ``data`` must be a JSON text msgspec accepted; ``decoded`` is its plain decoding (dicts and
    lists) when the caller has it. Also refuses nesting deeper than :data:`json_depth_max`.
    """
    if b"\\" in data:
        _refuse_duplicate_escaped_keys(data)
        return
    if decoded is _not_decoded:
        decoded = msgspec.json.decode(data)
    # Without escapes a quote always opens or closes a string: the even parts are outside them.
    keys_in_text = b"".join(data.split(b'"')[0::2]).count(b":")
    entries = _entries(decoded, 1) if type(decoded) is dict or type(decoded) is list else 0
    if entries != keys_in_text:
        raise InputError("an object of the body repeats a key")


def _entries(value: Any, depth: int) -> int:
    """Entries of every object in ``value`` (a dict or a list); InputError past the depth bound."""
    if depth > json_depth_max:
        raise InputError(f"body is nested deeper than {json_depth_max} levels")
    items = value.values() if type(value) is dict else value
    count = len(value) if type(value) is dict else 0
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            count += _entries(item, depth + 1)
    return count


def _refuse_duplicate_escaped_keys(data: bytes) -> None:
    # Keys with escapes compare as decoded text, which the standard library's parser gives.
    def pairs_hook(pairs: list[tuple[str, Any]]) -> None:
        if len({key for key, _ in pairs}) != len(pairs):
            raise InputError("an object of the body repeats a key")

    try:
        json.loads(data, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise InputError(f"body is nested deeper than {json_depth_max} levels") from None
    except InputError:
        raise
    except ValueError as error:  # msgspec accepted the text; a disagreement is refused, not guessed
        raise InputError(f"body is not valid JSON: {error}") from None


# ----------------------------------------------------------------------------- query parameters


class Parameters:
    """The query parameters of one request, each given once, of the names its route accepts."""

    def __init__(self, pairs: Collection[tuple[str, str]], accepted: Collection[str]) -> None:
        self.values: dict[str, str] = {}
        for name, value in pairs:
            if name not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise InputError(f"unknown query parameter {name!r} (this route takes: {known})")
            if name in self.values:
                raise InputError(f"query parameter {name!r} is given twice")
            self.values[name] = value

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None or value == "" else value

    def integer(self, name: str, minimum: int = 0, maximum: int = query_integer_max) -> int | None:
        """A decimal integer in ``minimum..maximum``, or None when absent or empty."""
        text = self.text(name)
        if text is None:
            return None
        if not text.isascii() or not text.isdigit():
            raise InputError(f"{name} must be a non-negative integer")
        if len(text) > query_integer_digits_max or int(text) > maximum:
            raise InputError(f"{name} must be at most {maximum}")
        value = int(text)
        if value < minimum:
            raise InputError(f"{name} must be at least {minimum}")
        return value

    def time_ms(self, name: str) -> int | None:
        """RFC 3339 with a zone, or Unix epoch seconds, as milliseconds in 0..2**63-1."""
        text = self.text(name)
        if text is None:
            return None
        return time_ms(name, text)

    def boolean(self, name: str, default: bool) -> bool:
        text = self.text(name)
        if text is None:
            return default
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise InputError(f"{name} is true or false")


def time_ms(name: str, text: str) -> int:
    """``text`` (RFC 3339 with a zone, or Unix epoch seconds) as milliseconds in 0..2**63-1."""
    if len(text) > query_time_text_length_max or not text.isascii():
        raise InputError(f"{name} must be RFC 3339 or Unix seconds")
    whole, _, fraction = text.partition(".")
    if whole.isdigit() and (fraction == "" or fraction.isdigit()) and not text.endswith("."):
        # Exact decimal arithmetic: a float would overflow (1e400) or round the milliseconds.
        value = int(whole) * 1000 + int((fraction + "000")[:3])
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{name} must be RFC 3339 or Unix seconds") from None
        if moment.tzinfo is None:
            raise InputError(f"{name} needs a time zone (RFC 3339)")
        try:
            value = int(moment.timestamp() * 1000)
        except (OverflowError, ValueError):
            raise InputError(f"{name} is out of range") from None
    if not 0 <= value <= query_integer_max:
        raise InputError(f"{name} is out of range")
    return value


# ------------------------------------------------------------------------------------------- ids


def refuse_reserved_id(value: str, name: str = "account_id") -> str:
    """``value``, unless it is ``.`` or ``..``: as a path segment it would name another route."""
    if value in reserved_ids:
        raise InputError(f"{name} {value!r} is reserved")
    return value


# --------------------------------------------------------------------------------------- methods


def allowed_methods(routes: Sequence[BaseRoute], scope: Mapping[str, Any]) -> str:
    """The ``Allow`` header of a 405: every method some route serves on the request's path."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(dict(scope))
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))
