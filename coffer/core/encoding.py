"""MessagePack for the ledger's records, with integers wider than 64 bits.

Amounts and balances reach 2^127 (see :mod:`coffer.core.amounts`), but MessagePack's integers
stop at 64 bits. Every record Coffer writes (log entries, snapshots, events' canonical bytes)
therefore uses one rule, part of the data formats from version 2 on:

- an integer in ``[-2^63, 2^64 - 1]`` is a plain MessagePack integer, exactly as before;
- any other integer is the extension type ``wide_int_ext_code`` (1) whose data is the integer's
  two's-complement big-endian bytes in the fewest bytes that hold it (always 9 or more).

So a record whose numbers all fit 64 bits is byte for byte what the plain encoder writes — the hot
path pays one ``try`` — and the encoding stays canonical: one value, one spelling.

Method: encode with msgspec's typed encoder and fall back, on ``OverflowError``, to a copy of the
value made of builtins with the wide integers replaced by extensions — but only of the smallest
parts that hold one. A snapshot of a ledger whose balances are wide is mostly made of parts that
are not (dedup records of narrow transfers): the fallback descends into maps, arrays and
array-like structs, encodes runs of their items that fit 64 bits with the typed encoder, and
writes the headers itself, so the bytes are exactly those of the whole-value fallback. (Copying
the whole state as builtins made such a snapshot 48 times slower to write and 4 times bigger in
memory than a narrow one.) Decoding works the other way round: the typed decoder first, and only
when it meets an extension, a generic decode with an extension hook followed by
``msgspec.convert`` into the same type. Both fallbacks build millions of short-lived containers,
so they run with the cyclic garbage collector paused: its passes over them, not the work itself,
took most of the time (a 29 MiB snapshot: 14.4 s to decode generically, 2.1 s with it paused).
"""

import contextlib
import gc
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import msgspec
from msgspec.msgpack import Ext

wide_int_ext_code = 1
_plain_min = -(2**63)
_plain_max = 2**64 - 1

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_encode_plain = _encoder.encode
encode_plain = _encode_plain  # for hot paths that inline the fallback below: the same bytes when it succeeds


def _widen(value: Any) -> Any:
    """``value`` (builtins only) with every integer beyond 64 bits replaced by its extension."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _plain_min <= value <= _plain_max:
            return value
        length = (value.bit_length() + 8) // 8  # one more bit for the sign
        return Ext(wide_int_ext_code, value.to_bytes(length, "big", signed=True))
    if isinstance(value, list | tuple):
        return [_widen(item) for item in value]
    if isinstance(value, dict):
        return {key: _widen(item) for key, item in value.items()}
    return value


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic collector paused (for bulk work that builds many containers and no cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def encode(value: Any) -> bytes:
    """Canonical MessagePack of ``value`` (map keys sorted), wide integers as extensions."""
    try:
        return _encode_plain(value)
    except OverflowError:
        # One growing buffer, not a list of pieces: a snapshot has millions of pieces, and their
        # object headers alone outweighed its bytes.
        out = bytearray()
        with _collector_paused():
            _encode_widening(value, out)
        return bytes(out)


_run_items = 256  # items a fallback encodes at once before it looks at them one by one


def _header(length: int, small: int, sixteen: int, thirty_two: int) -> bytes:
    if length <= 15:
        return bytes((small | length,))
    if length <= 0xFFFF:
        return bytes((sixteen,)) + length.to_bytes(2, "big")
    return bytes((thirty_two,)) + length.to_bytes(4, "big")


def _map_header(length: int) -> bytes:
    return _header(length, 0x80, 0xDE, 0xDF)


def _array_header(length: int) -> bytes:
    return _header(length, 0x90, 0xDC, 0xDD)


def _encode_item(value: Any, out: bytearray) -> None:
    try:
        out += _encode_plain(value)
    except OverflowError:
        _encode_widening(value, out)


def _encode_widening(value: Any, out: bytearray) -> None:
    """Append to ``out`` the canonical bytes of ``value``, which holds a wide integer somewhere.

    Maps with text keys, arrays and array-like structs get their header written here and their
    items encoded in runs (a run that fits 64 bits costs one typed encode, its own header cut
    off); anything else, and any item of a failed run, is encoded through builtins.
    """
    if isinstance(value, dict) and all(type(key) is str for key in value):
        out += _map_header(len(value))
        # msgspec's deterministic order sorts text keys by their UTF-8 bytes, which is the order
        # of their code points: Python's own order of str.
        items = sorted(value.items())
        for start in range(0, len(items), _run_items):
            run = items[start : start + _run_items]
            try:
                encoded = _encode_plain(dict(run))
            except OverflowError:
                for key, item in run:
                    out += _encode_plain(key)
                    _encode_item(item, out)
            else:
                out += encoded[len(_map_header(len(run))) :]
        return
    if isinstance(value, list | tuple):
        out += _array_header(len(value))
        for start in range(0, len(value), _run_items):
            run = list(value[start : start + _run_items])
            try:
                encoded = _encode_plain(run)
            except OverflowError:
                for item in run:
                    _encode_item(item, out)
            else:
                out += encoded[len(_array_header(len(run))) :]
        return
    config = getattr(value, "__struct_config__", None)
    if isinstance(value, msgspec.Struct) and config is not None and config.array_like and not config.omit_defaults:
        fields = [getattr(value, name) for name in value.__struct_fields__]
        if config.tag is not None:
            fields.insert(0, config.tag)  # a tagged array-like struct is [tag, *fields]
        out += _array_header(len(fields))
        for item in fields:
            _encode_item(item, out)
        return
    out += _encode_plain(_widen(msgspec.to_builtins(value, builtin_types=(bytes,), order="deterministic")))


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != wide_int_ext_code:
        raise ValueError(f"unknown MessagePack extension type {code}")
    if len(data) < 9:
        raise ValueError("a wide integer extension holds an integer that fits 64 bits")
    return int.from_bytes(data, "big", signed=True)


_generic_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)

T = TypeVar("T")


class Decoder(Generic[T]):
    """A typed decoder that also reads wide integers (see the module docstring)."""

    def __init__(self, type_: type[T] | Any) -> None:
        self.type = type_
        self._typed = msgspec.msgpack.Decoder(type_, ext_hook=_ext_hook)

    def decode(self, data: bytes) -> T:
        try:
            return self._typed.decode(data)
        except msgspec.ValidationError as error:
            if "got `ext`" not in str(error):
                raise
        # Rare: the record holds an integer beyond 64 bits.
        with _collector_paused():
            return msgspec.convert(_generic_decoder.decode(data), self.type)
