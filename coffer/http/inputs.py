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

MessagePack bodies (:func:`decode_msgpack`, ``POST /v1/commands`` with ``Content-Type:
application/msgpack``) are held to the JSON rules: the same fields, amounts as decimal strings,
map keys only strings and never repeated, the same depth bound, and only values JSON has (no
binary, extension or timestamp values, no NaN or infinity), so a command reads the same whichever
encoding carried it. Repeated keys: msgspec keeps the last here too. Encoding the decoded value
again gives the canonical form (shortest headers, in order); a body equal to it cannot repeat a key,
since a repeat would shrink a map. Every bulk encoder we know writes that form, so the check is
one C-level encode and a compare (about 1 ms for 1,000 transfers); any other body is walked
exactly by :func:`_refuse_duplicate_msgpack_keys`.

Query parameters: each route declares the names it accepts (:func:`refuse_unknown_parameters`);
anything else, or a name given twice, is refused by name, so a typo (``form_seq``) or a parameter
another route has (``at_time``) is never silently ignored. Integers are refused by their length
before conversion (``int()`` of thousands of digits is slow, and Python refuses past 4300), and
every seq or time must fit the stores' signed 64-bit columns.
"""

import json
import math
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from starlette.routing import BaseRoute, Match

from coffer.core.errors import ErrorCode
from coffer.http.limits import query_integer_max

T = TypeVar("T")

json_depth_max = 32  # the deepest valid body (POST /v1/commands: item, legs, leg, metadata) has 6 levels
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
    value = _decoded(data, decode, "JSON", "body is not valid UTF-8")
    if decode is msgspec.json.decode:
        refuse_duplicate_keys(data, value)
    else:
        refuse_duplicate_keys(data, _not_decoded if plain is None else plain(value))
    return value


def _decoded(data: bytes, decode: Callable[[bytes], T], encoding: str, not_utf8: str) -> T:
    """``decode(data)``, its failures worded for a body in ``encoding`` (``not_utf8``: for a bad
    string), as :func:`decode_json` and :func:`decode_msgpack` promise."""
    try:
        return decode(data)
    except msgspec.ValidationError as error:
        if decode is msgspec.json.decode or decode is msgspec.msgpack.decode:
            # The generic decodings have no schema: only what they cannot hold fails this way (an
            # integer beyond 64 bits, a MessagePack timestamp out of range), and that is the
            # body's fault, not a shape to word.
            raise InputError(f"body is not valid: {error}") from None
        raise
    except msgspec.DecodeError as error:
        raise InputError(f"body is not valid {encoding}: {error}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{not_utf8} (byte {error.start})") from None
    except RecursionError:
        raise InputError(f"body is nested deeper than {json_depth_max} levels") from None


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


# ----------------------------------------------------------------------------- MessagePack bodies

msgpack_media_type = "application/msgpack"
_msgpack_encode = msgspec.msgpack.Encoder().encode


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def is_msgpack(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header says the body is MessagePack."""
    return _media_type(content_type) == msgpack_media_type


def answers_msgpack(headers: Mapping[str, str]) -> bool:
    """Whether the answer goes in MessagePack: the request is, or ``Accept`` asks for it."""
    if is_msgpack(headers.get("content-type")):
        return True
    return any(_media_type(part) == msgpack_media_type for part in headers.get("accept", "").split(","))


def decode_msgpack(
    data: bytes,
    decode: Callable[[bytes], T] = msgspec.msgpack.decode,  # type: ignore[assignment]
    plain: Callable[[T], Any] | None = None,
) -> T:
    """``decode(data)`` for a MessagePack body that holds only what a JSON body could.

    As :func:`decode_json`: ``plain`` gives the decoded value as dicts and lists (the identity for
    the generic decoding); ``msgspec.ValidationError`` passes through, every other failure is an
    :class:`InputError`.
    """
    value = _decoded(data, decode, "MessagePack", "body is not valid MessagePack: a string is not UTF-8")
    decoded = value if plain is None else plain(value)
    _refuse_non_json(decoded, 1)
    if _msgpack_encode(decoded) != data:
        _refuse_duplicate_msgpack_keys(data)
    return value


def _refuse_non_json(value: Any, depth: int) -> None:
    """InputError for a map key that is not a string, a value JSON lacks, or nesting past the bound."""
    if depth > json_depth_max:
        raise InputError(f"body is nested deeper than {json_depth_max} levels")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise InputError(f"a map key of the body is not a string: {key!r:.40}")
            kind = type(item)
            if kind is dict or kind is list:
                _refuse_non_json(item, depth + 1)
            elif not (kind is str or kind is int or kind is bool or item is None):
                _refuse_non_json(item, depth)
    elif kind is list:
        for item in value:
            kind = type(item)
            if kind is dict or kind is list:
                _refuse_non_json(item, depth + 1)
            elif not (kind is str or kind is int or kind is bool or item is None):
                _refuse_non_json(item, depth)
    elif kind is float:
        if not math.isfinite(value):
            raise InputError("body holds a number that is not finite")
    elif not (kind is str or kind is int or kind is bool or value is None):
        raise InputError(f"body holds a MessagePack value JSON has no equivalent of ({kind.__name__})")


# MessagePack head bytes: how long the length field of a string, binary, array, map or extension is.
_str_lengths = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_fixed_sizes = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_length_formats = {1: ">B", 2: ">H", 4: ">I"}


def _refuse_duplicate_msgpack_keys(data: bytes) -> None:
    """InputError if a map of ``data`` (MessagePack that msgspec accepted) repeats a key."""

    def length(at: int, size: int) -> tuple[int, int]:
        (value,) = struct.unpack_from(_length_formats[size], data, at)
        return value, at + size

    def skip(at: int, depth: int) -> int:
        if depth > json_depth_max:
            raise InputError(f"body is nested deeper than {json_depth_max} levels")
        head = data[at]
        at += 1
        if head <= 0x7F or head >= 0xE0 or head in (0xC0, 0xC2, 0xC3):
            return at
        if 0xA0 <= head <= 0xBF:
            return at + (head & 0x1F)
        if 0x90 <= head <= 0x9F or head in (0xDC, 0xDD):
            count, at = (head & 0x0F, at) if head <= 0x9F else length(at, 2 if head == 0xDC else 4)
            for _ in range(count):
                at = skip(at, depth + 1)
            return at
        if 0x80 <= head <= 0x8F or head in (0xDE, 0xDF):
            count, at = (head & 0x0F, at) if head <= 0x8F else length(at, 2 if head == 0xDE else 4)
            keys: set[str] = set()
            for _ in range(count):
                key_head = data[at]
                if 0xA0 <= key_head <= 0xBF:
                    size, start = key_head & 0x1F, at + 1
                elif key_head in _str_lengths:
                    size, start = length(at + 1, _str_lengths[key_head])
                else:
                    raise InputError("a map key of the body is not a string")
                key = data[start : start + size].decode()
                if key in keys:
                    raise InputError("an object of the body repeats a key")
                keys.add(key)
                at = skip(start + size, depth + 1)
            return at
        if head in _str_lengths or head in (0xC4, 0xC5, 0xC6):
            size, at = length(at, _str_lengths.get(head) or {0xC4: 1, 0xC5: 2, 0xC6: 4}[head])
            return at + size
        if head in _fixed_sizes:
            return at + _fixed_sizes[head]
        raise InputError("body holds a MessagePack value JSON has no equivalent of (extension)")

    try:
        end = skip(0, 1)
    except (IndexError, struct.error, UnicodeDecodeError):
        raise InputError("body is not valid MessagePack") from None
    if end != len(data):
        raise InputError("body is not valid MessagePack: trailing bytes")


# ----------------------------------------------------------------------------- query parameters


def query_parameters(document: Mapping[str, Any], path: str, method: str) -> frozenset[str]:
    """The query parameters an operation of an OpenAPI ``document`` lists: what its route accepts, and only that."""
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    return frozenset(parameter["name"] for parameter in operation.get("parameters", []) if parameter.get("in") == "query")


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
