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
value made of builtins with the wide integers replaced by extensions. Decoding works the other
way round: the typed decoder first, and only when it meets an extension, a generic decode with an
extension hook followed by ``msgspec.convert`` into the same type.
"""

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


def encode(value: Any) -> bytes:
    """Canonical MessagePack of ``value`` (map keys sorted), wide integers as extensions."""
    try:
        return _encode_plain(value)
    except OverflowError:
        return _encode_plain(_widen(msgspec.to_builtins(value, builtin_types=(bytes,), order="deterministic")))


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
        return msgspec.convert(_generic_decoder.decode(data), self.type)
