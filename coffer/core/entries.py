"""The payload of a log entry: a batch of commands, who sent each, and the protocol of its writer.

The log stores opaque bytes; these are they. Formats (every entry says which it is in):

- 1: ``[origin, commands]`` — a MessagePack array of 2 whose first element is a string. Written
  before protocol versions existed: it carries protocol 1 and no actors.
- 2: ``[2, protocol_version, origin, commands, actors]`` — an array of 5, the format number first;
  ``actors`` is ``None`` (no credential was needed for any command) or one ``[key_id, role]`` or
  ``None`` per command. Integers beyond 64 bits as in :mod:`coffer.core.encoding`.

``origin`` names the appending node's request batch (empty for a single node), so that in a
cluster the node that appended an entry can match it to its waiting requests when it reads the
entry back from the shared log, whoever else appended around it.

An entry of a newer format, or of a protocol newer than this release applies, is refused with a
message that says so (:class:`EntryFormatError`): a replica must stop rather than guess.
"""

import msgspec

from coffer.core.commands import Command, CommandFormat1, from_format_1
from coffer.core.encoding import Decoder, encode
from coffer.core.events import Actor
from coffer.core.state_machine import protocol_version_max

entry_format_version = 2  # the format this release writes


class LogEntry(msgspec.Struct, array_like=True, gc=False):
    """A decoded entry, whatever its format."""

    format_version: int
    protocol_version: int
    origin: str
    commands: list[Command]
    actors: list[Actor | None] | None = None


class _EntryFormat1(msgspec.Struct, array_like=True, gc=False):
    origin: str
    commands: list[CommandFormat1]


class EntryFormatError(ValueError):
    """The payload is not an entry this release can apply."""


_decoder = Decoder(LogEntry)
_decoder_format_1 = Decoder(_EntryFormat1)


def encode_entry(
    commands: list[Command],
    origin: str = "",
    actors: list[Actor | None] | None = None,
    protocol_version: int = protocol_version_max,
) -> bytes:
    """The payload of an entry in the current format (``actors``: ``None`` or one per command)."""
    assert actors is None or len(actors) == len(commands), "one actor per command"
    if actors is not None and not any(actors):
        actors = None
    return encode((entry_format_version, protocol_version, origin, commands, actors))


def decode_entry(payload: bytes) -> LogEntry:
    if len(payload) >= 2 and payload[0] == 0x92 and (0xA0 <= payload[1] <= 0xBF or payload[1] in (0xD9, 0xDA, 0xDB)):
        old = _decoder_format_1.decode(payload)  # format 1: an array of 2 whose first element is a string
        return LogEntry(1, 1, old.origin, [from_format_1(command) for command in old.commands])
    if len(payload) < 2 or not 0x90 <= payload[0] <= 0x9F or payload[1] > 0x7F:
        raise EntryFormatError("not a Coffer log entry")
    format_version = payload[1]
    if format_version > entry_format_version:
        raise EntryFormatError(
            f"log entry format {format_version} is newer than this release understands (up to {entry_format_version}): "
            "upgrade Coffer on this node"
        )
    if format_version != 2:
        raise EntryFormatError(f"unknown log entry format {format_version}")
    entry = _decoder.decode(payload)
    if entry.protocol_version > protocol_version_max:
        raise EntryFormatError(
            f"log entry of protocol {entry.protocol_version} is newer than this release applies (up to {protocol_version_max}): "
            "upgrade Coffer on this node"
        )
    if entry.actors is not None and len(entry.actors) != len(entry.commands):
        raise EntryFormatError("a log entry must carry one actor per command")
    return entry
