"""The event feed of a node: ``GET /v1/events/stream?from_seq=N``, chunked JSON lines.

Job: hand every stored event, from ``from_seq`` on and then live, to a follower that keeps its
own copy of the history (the projector of :mod:`coffer.query.projector`, ``coffer audit verify
--url``). Followers check the hash chain themselves, so each line carries the event's canonical
bytes, not a view of them.

Wire format, one JSON object a line (``application/x-ndjson``):

- an event: ``{"seq": 17, "body": "<base64 of the canonical bytes>", "prev_hash": "<hex>",
  "hash": "<hex>"}``, in seq order, with no gap unless the node's own store has one;
- a heartbeat: ``{"heartbeat": <the node's stored seq>}``, sent after ``heartbeat_interval_s``
  without an event, so that a follower can tell a quiet node from a dead connection.

Method: stored events are read from the node's event store in pages (each page is one chunk on
the wire); once the stream has caught up it polls the store writer's ``stored_seq`` every
``poll_interval_s`` and sends what was added. The stream ends when the client disconnects, or
when :func:`close_streams` is called (a server that is shutting down: uvicorn waits for open
responses before it stops, and a feed never ends by itself).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.core.events import EventRecord
from coffer.server.inputs import InputError, Parameters

if TYPE_CHECKING:
    from coffer.server.app import Api

stream_path = "/v1/events/stream"
media_type = "application/x-ndjson"
page_events_max = 5_000  # one store read and one chunk; ~2 MB, a few ms of work per page
poll_interval_s = 0.02  # how stale a caught-up feed may be; one cheap attribute read per poll
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

# Set by close_streams(); every open stream ends at its next poll.
_closing = False


def close_streams() -> None:
    """End every open feed of this process (call when the server begins to shut down)."""
    global _closing
    _closing = True


def encode_events(records: list[EventRecord]) -> bytes:
    """Event lines for ``records``, newline-terminated."""
    return _encoder.encode_lines(
        [FeedEvent(record.seq, record.body, record.prev_hash.hex(), record.hash.hex()) for record in records]
    )


def encode_heartbeat(stored_seq: int) -> bytes:
    return _encoder.encode(_Heartbeat(stored_seq)) + b"\n"


class FeedRequestError(ValueError):
    """``from_seq`` is not a positive integer."""


def _from_seq(request: Request) -> int:
    try:
        from_seq = Parameters(request.query_params.multi_items(), ("from_seq",)).integer("from_seq", minimum=1)
    except InputError as error:
        raise FeedRequestError(error.message) from None
    return 1 if from_seq is None else from_seq


async def _lines(api: "Api", from_seq: int) -> AsyncIterator[bytes]:
    # No disconnect check here: Starlette cancels this generator when the client goes away.
    next_seq = from_seq
    last_sent = time.monotonic()
    while not _closing:
        writer = api.replica.writer  # None until the replica has recovered
        stored_seq = writer.stored_seq if writer is not None else 0
        if stored_seq >= next_seq:
            records = await asyncio.to_thread(api.replica.store.events, next_seq, None, None, None, page_events_max)
            if records:
                yield encode_events(records)
                next_seq = records[-1].seq + 1
                last_sent = time.monotonic()
                continue
        if time.monotonic() - last_sent >= heartbeat_interval_s:
            yield encode_heartbeat(stored_seq)
            last_sent = time.monotonic()
        await asyncio.sleep(poll_interval_s)


async def event_stream(request: Request, api: "Api") -> StreamingResponse:
    """``GET /v1/events/stream?from_seq=N`` (reader role): see the module docstring.

    A bad ``from_seq`` raises :class:`coffer.server.app.HttpError` (422 ``INVALID_REQUEST``).
    """
    from coffer.server.app import HttpError

    try:
        from_seq = _from_seq(request)
    except FeedRequestError as error:
        raise HttpError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
    # No buffering by proxies: a follower's lag is the poll interval, not a proxy's buffer.
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_lines(api, from_seq), media_type=media_type, headers=headers)


def add_event_stream_route(app: Any) -> None:
    """Serve the feed on ``app`` (made by :func:`coffer.server.app.create_app`) unless it already does.

    ``app`` is the Starlette app or an ASGI front that wraps it as ``.app``.
    """
    from coffer.server.auth import Role

    while not isinstance(app, Starlette):
        app = app.app
    if any(getattr(route, "path", None) == stream_path for route in app.routes):
        return
    api: Api = app.state.api

    async def handle(request: Request, role: Role) -> StreamingResponse:
        return await event_stream(request, api)

    route: Route = api.route(stream_path, "GET", Role.READER, handle)
    app.router.routes.insert(0, route)


def main_with_feed() -> None:
    """``coffer`` with the feed served even where ``create_app`` does not route it yet.

    Tests and ``coffer bench project`` start nodes this way (``python -c "from
    coffer.server.feed import main_with_feed; main_with_feed()" serve …``); once the route is in
    :mod:`coffer.server.app` this is plain ``coffer``.
    """
    import coffer.server.app as app_module

    create_app = app_module.create_app

    def create_app_with_feed(*arguments: Any, **options: Any) -> Any:
        app = create_app(*arguments, **options)
        add_event_stream_route(app)
        return app

    app_module.create_app = create_app_with_feed  # type: ignore[assignment]
    from coffer.cli import main

    main()
