"""The event feed of a node: ``GET /v1/events/stream?from_seq=N``, chunked JSON lines.

Job: hand every stored event, from ``from_seq`` on and then live, to a follower that keeps its
own copy of the history (the projector of :mod:`coffer.query.projector`, ``coffer audit verify
--url``). Followers check the hash chain themselves, so each line carries the event's canonical
bytes, not a view of them.

The wire format is :mod:`coffer.http.feed_lines` (the followers read it from there too).

Method: stored events are read from the node's event store in pages (each page is one chunk on
the wire); once the stream has caught up it polls the store writer's ``stored_seq`` every
``poll_interval_s`` and sends what was added. The stream ends when the client disconnects, or
when :func:`close_streams` is called (a server that is shutting down: uvicorn waits for open
responses before it stops, and a feed never ends by itself).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.requests import Request
from starlette.responses import StreamingResponse

from coffer.core.errors import ErrorCode
from coffer.http.feed_lines import encode_events, encode_heartbeat, heartbeat_interval_s, media_type
from coffer.http.inputs import InputError, Parameters
from coffer.http.responses import HttpError
from coffer.replica import Replica

page_events_max = 5_000  # one store read and one chunk; ~2 MB, a few ms of work per page
poll_interval_s = 0.02  # how stale a caught-up feed may be; one cheap attribute read per poll


class Node(Protocol):
    """What the feed reads from the node's API object (:class:`coffer.server.app.Api`): its replica."""

    replica: Replica


# Set by close_streams(); every open stream ends at its next poll.
_closing = False


def close_streams() -> None:
    """End every open feed of this process (call when the server begins to shut down)."""
    global _closing
    _closing = True


class FeedRequestError(ValueError):
    """``from_seq`` is not a positive integer."""


def _from_seq(request: Request) -> int:
    try:
        from_seq = Parameters(request.query_params.multi_items(), ("from_seq",)).integer("from_seq", minimum=1)
    except InputError as error:
        raise FeedRequestError(error.message) from None
    return 1 if from_seq is None else from_seq


async def _lines(api: Node, from_seq: int) -> AsyncIterator[bytes]:
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


async def event_stream(request: Request, api: Node) -> StreamingResponse:
    """``GET /v1/events/stream?from_seq=N`` (reader role): see the module docstring.

    A bad ``from_seq`` raises :class:`coffer.http.responses.HttpError` (422 ``INVALID_REQUEST``).
    """
    try:
        from_seq = _from_seq(request)
    except FeedRequestError as error:
        raise HttpError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
    # No buffering by proxies: a follower's lag is the poll interval, not a proxy's buffer.
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_lines(api, from_seq), media_type=media_type, headers=headers)
