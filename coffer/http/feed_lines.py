"""The wire format of the event feed, ``GET /v1/events/stream``: what the node sends, what followers read.

The node serves the feed (:mod:`coffer.server.feed`); the projector and the audit of the read side
(:mod:`coffer.query.projector`, :mod:`coffer.query.audit`) follow it. Both sides import the format
from here, so that neither imports the other.

One JSON object a line (``application/x-ndjson``):

- an event: ``{"seq": 17, "body": "<base64 of the canonical bytes>", "prev_hash": "<hex>",
  "hash": "<hex>"}``, in seq order, with no gap unless the node's own store has one;
- a heartbeat: ``{"heartbeat": <the node's stored seq>}``, sent after ``heartbeat_interval_s``
  without an event, so that a follower can tell a quiet node from a dead connection.
"""

import msgspec

from coffer.core.events import EventRecord

stream_path = "/v1/events/stream"
media_type = "application/x-ndjson"
heartbeat_interval_s = 3.0  # followers treat ~3 missed heartbeats as a dead connection


class FeedEvent(msgspec.Struct, frozen=True, gc=False):
    """One event line. msgspec spells ``bytes`` as base64 in JSON."""

    seq: int
    body: bytes
    prev_hash: str
    hash: str


class FeedLine(msgspec.Struct, frozen=True, gc=False):
    """Any line of the feed, as a follower decodes it: an event, or a heartbeat."""

    seq: int | None = None
    body: bytes | None = None
    prev_hash: str | None = None
    hash: str | None = None
    heartbeat: int | None = None


class _Heartbeat(msgspec.Struct, frozen=True):
    heartbeat: int


_encoder = msgspec.json.Encoder()
line_decoder = msgspec.json.Decoder(FeedLine)


def encode_events(records: list[EventRecord]) -> bytes:
    """Event lines for ``records``, newline-terminated."""
    return _encoder.encode_lines(
        [FeedEvent(record.seq, record.body, record.prev_hash.hex(), record.hash.hex()) for record in records]
    )


def encode_heartbeat(stored_seq: int) -> bytes:
    return _encoder.encode(_Heartbeat(stored_seq)) + b"\n"
