"""The projector: follow a node's event feed into a SQL store, checking every link of the chain.

Job: keep :class:`coffer.query.sql_store.SqlStore` an exact copy of a node's history, and
optionally hand every stored event on to NATS. ``coffer project --source URL --store DSN``.

Method.
- Resume: the store's newest (seq, hash) is the starting point; the feed is asked from the
  next seq (``GET /v1/events/stream?from_seq=N``). After any disconnect — network error, a
  node restart, no heartbeat for ``silence_s_max`` — it reconnects from the last verified seq,
  to the next of the source URLs when several are given (replicas of one shard serve the same
  chain, and the chain check holds whichever answers).
- Verify before storing: every event must carry the next seq, link to the previous event's hash,
  hash to its own ``hash`` from its canonical bytes, and hold its own seq inside those bytes. The
  first event that fails stops the projector with :class:`ProjectionError` naming that seq; what
  came before it is stored, nothing after it. A restart fails the same way until the source is
  fixed: a wrong history is never stored.
- Three stages overlap: reading and verifying (the event loop), writing (one thread, one
  transaction per batch of whatever verified events are waiting), and publishing (NATS). Each
  committed batch is whole, so a kill -9 loses at most uncommitted work, which the feed sends
  again on restart; the store's primary key refuses any duplicate.
- Publishing (``--nats``): events are published after they are committed, in seq order, read
  back from the store, to the subject ``coffer.events.<shard>``, which a JetStream stream
  captures (created if missing), so that publishing is acknowledged: at least once. The store
  keeps the last acknowledged seq (``projector_state``); after a crash or a failed publish the
  events after it are published again. Each message carries the seq (header ``Coffer-Seq`` and
  the body, the event as ``GET /v1/events`` shows it) and ``Nats-Msg-Id: <shard>-<seq>``, so
  JetStream drops re-sends within its duplicate window and consumers drop any other duplicate
  by seq: apply seq == last + 1, skip seq <= last, hold seq > last + 1 until the gap fills.
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import httpx
import msgspec

from coffer.core.events import EventRecord, index_event
from coffer.http.feed_lines import heartbeat_interval_s, line_decoder, stream_path
from coffer.progress import Progress, progress
from coffer.query.sql_store import EventRow, SqlStore, VersionRow

logger = logging.getLogger(__name__)

# Verified events waiting for the writer before the reader stops reading: backpressure on the
# feed, and the size of a write transaction after a pause (~20 MB at most).
pending_events_max = 40_000
silence_s_max = 3 * heartbeat_interval_s + 1.0  # no byte for this long: the connection is dead
connect_timeout_s = 5.0
reconnect_delay_s_first = 0.1
reconnect_delay_s_max = 5.0
progress_interval_s = 10.0  # how often a running projector logs where it is

published_progress_name = "nats_published_seq"
publish_page_events_max = 2_000  # acknowledgements awaited together: pipelined, one page at a time
publish_ack_s_max = 10.0
publish_retry_delay_s = 1.0
stream_duplicate_window_s = 120.0  # JetStream drops re-sent message ids this recent


class ProjectionError(RuntimeError):
    """The feed broke the chain: ``seq`` is the first event that failed; nothing from it on was stored."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"seq {seq}: {message}")
        self.seq = seq
        self.reason = message


class _Pending:
    """Verified rows waiting for the writer; the reader waits while there are too many."""

    def __init__(self) -> None:
        self.event_rows: list[EventRow] = []
        self.version_rows: list[VersionRow] = []
        self.failure: ProjectionError | None = None
        self.has_work = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()

    def add(self, event_rows: list[EventRow], version_rows: list[VersionRow]) -> None:
        self.event_rows.extend(event_rows)
        self.version_rows.extend(version_rows)
        if self.event_rows:
            self.has_work.set()
        if len(self.event_rows) >= pending_events_max:
            self.has_room.clear()

    def fail(self, failure: ProjectionError) -> None:
        self.failure = failure
        self.has_work.set()

    def take(self) -> tuple[list[EventRow], list[VersionRow]]:
        taken = self.event_rows, self.version_rows
        self.event_rows, self.version_rows = [], []
        self.has_work.clear()
        self.has_room.set()
        return taken


class ChainFollower:
    """Checks feed lines against the chain head and turns them into rows (no I/O).

    This loop is the projector's CPU cost per event, so it is written flat: hashes are compared
    as the hex text the feed carries, and rows are built here rather than through
    :func:`coffer.query.sql_store.rows_of` (which the audit uses to check the same rows).
    """

    def __init__(self, seq: int, hash_: bytes) -> None:
        self.seq = seq
        self.hash = hash_
        self.node_stored_seq = 0

    def accept(self, data: bytes, event_rows: list[EventRow], version_rows: list[VersionRow]) -> None:
        """Verify the complete lines in ``data`` and add their rows; raise :class:`ProjectionError`
        at the first bad one (the rows of the events before it are added)."""
        try:
            lines = line_decoder.decode_lines(data)
        except msgspec.MsgspecError as error:
            raise ProjectionError(self.seq + 1, f"the feed sent a malformed line: {error}") from None
        seq, hash_ = self.seq, self.hash
        hash_hex = hash_.hex()
        try:
            for line in lines:
                line_seq = line.seq
                if line_seq is None:
                    if line.heartbeat is not None:
                        self.node_stored_seq = line.heartbeat
                    continue
                if line_seq != seq + 1:
                    raise ProjectionError(seq + 1, f"gap in the feed: expected seq {seq + 1}, got {line_seq}")
                body = line.body
                if body is None or line.hash is None:
                    raise ProjectionError(line_seq, "the feed line lacks body or hash")
                if line.prev_hash != hash_hex:
                    raise ProjectionError(line_seq, "broken chain: prev_hash is not the previous event's hash")
                digest = sha256(hash_ + body).digest()
                if digest.hex() != line.hash:
                    raise ProjectionError(line_seq, "broken chain: hash does not match the event's canonical bytes")
                try:
                    index = index_event(body)
                except (msgspec.MsgspecError, ValueError) as error:  # EventFormatError is a ValueError
                    raise ProjectionError(line_seq, f"the event's bytes are not an event: {error}") from None
                if index.seq != line_seq:
                    raise ProjectionError(line_seq, f"the event's bytes carry seq {index.seq}")
                time_ms = index.time_ms
                event_rows.append((line_seq, index.log_index, time_ms, index.dedup_id, index.type, body, hash_, digest))
                version_rows.extend(
                    [
                        (
                            account.account_id,
                            line_seq,
                            account.version,
                            time_ms,
                            account.asset,
                            account.scale,
                            str(account.available),
                        )
                        for account in index.accounts
                    ]
                )
                seq, hash_, hash_hex = line_seq, digest, line.hash
        finally:
            self.seq, self.hash = seq, hash_


class Projector:
    """Follows ``source`` (a node's base URL, or several, comma-separated) into ``store``; see the module docstring."""

    def __init__(
        self,
        source: str,
        store: SqlStore,
        *,
        api_key: str | None = None,
        nats_url: str | None = None,
        shard: int = 0,
        on_progress: Callable[[str], None] | None = None,
        tls: ssl.SSLContext | None = None,
        nats_options: dict[str, Any] | None = None,
    ) -> None:
        """``tls``: verify https sources with it (default: the system's CAs); ``nats_options``: more
        keyword arguments of ``nats.connect`` (credentials, TLS: :func:`coffer.log.jetstream.connect_options`)."""
        self.sources = [part.strip().rstrip("/") for part in source.split(",") if part.strip()]
        if not self.sources:
            raise ValueError("the projector needs a source URL")
        self.store = store
        self.api_key = api_key
        self.nats_url = nats_url
        self.shard = shard
        self.tls = tls
        self.nats_options = nats_options or {}
        self.on_progress = on_progress or logger.info
        self.stored_seq = 0
        self.published_seq = 0
        self._stored = asyncio.Event()
        # One thread writes (writes stay in order); the publisher reads back and records on another.
        self._writer_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._publisher_thread: concurrent.futures.ThreadPoolExecutor | None = None

    async def _in_store(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, function, *arguments)

    async def _in_publisher_thread(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._publisher_thread, function, *arguments)

    async def run(self, until_seq: int | None = None) -> int:
        """Project until ``until_seq`` is stored (and published), or forever; return the stored seq."""
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coffer-projector-write")
        self._publisher_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coffer-projector-publish")
        try:
            return await self._run(until_seq)
        finally:
            # Waits for a write in flight: a batch that started to commit commits whole.
            self._writer_thread.shutdown(wait=True)
            self._publisher_thread.shutdown(wait=True)

    async def _run(self, until_seq: int | None) -> int:
        seq, hash_ = await self._in_store(self.store.head)
        self.stored_seq = seq
        follower = ChainFollower(seq, hash_)
        pending = _Pending()
        reader = asyncio.create_task(self._read(follower, pending), name="projector-read")
        last = writer = asyncio.create_task(self._write(pending, until_seq), name="projector-write")
        tasks = [reader, writer, asyncio.create_task(self._report(follower), name="projector-report")]
        if self.nats_url is not None:
            last = asyncio.create_task(self._publish(until_seq), name="projector-publish")
            tasks.append(last)
        try:
            running = set(tasks)
            while last in running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failed stage stops the projector with its error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.stored_seq

    # ------------------------------------------------------------------ reading

    async def _read(self, follower: ChainFollower, pending: _Pending) -> None:
        """Feed verified rows to ``pending`` until the chain breaks (then return), reconnecting as needed."""
        headers = {"x-api-key": self.api_key} if self.api_key else {}
        timeout = httpx.Timeout(connect=connect_timeout_s, read=silence_s_max, write=connect_timeout_s, pool=connect_timeout_s)
        delay = reconnect_delay_s_first
        attempt = 0
        async with httpx.AsyncClient(timeout=timeout, headers=headers, verify=self.tls or True) as client:
            while True:
                source = self.sources[attempt % len(self.sources)]
                attempt += 1
                url = f"{source}{stream_path}"
                try:
                    async with client.stream("GET", url, params={"from_seq": str(follower.seq + 1)}) as response:
                        if response.status_code != 200:
                            body = (await response.aread()).decode(errors="replace")[:500]
                            if response.status_code in (401, 403, 404, 422):
                                raise RuntimeError(f"the node refused the event feed: {response.status_code} {body}")
                            raise httpx.TransportError(f"the node answered {response.status_code}: {body}")
                        delay = reconnect_delay_s_first
                        await self._consume(response, follower, pending)
                except ProjectionError as error:
                    pending.fail(error)  # the writer stores what came before it, then stops
                    return
                except (httpx.TransportError, httpx.StreamError) as error:
                    logger.warning("event feed from %s interrupted at seq %d (%s); reconnecting", source, follower.seq, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, reconnect_delay_s_max)

    async def _consume(self, response: httpx.Response, follower: ChainFollower, pending: _Pending) -> None:
        partial = bytearray()
        async for chunk in response.aiter_raw():
            partial += chunk
            end = partial.rfind(b"\n")
            if end < 0:
                continue
            complete = bytes(partial[: end + 1])
            del partial[: end + 1]
            event_rows: list[EventRow] = []
            version_rows: list[VersionRow] = []
            try:
                follower.accept(complete, event_rows, version_rows)
            finally:
                pending.add(event_rows, version_rows)
            await pending.has_room.wait()

    # ------------------------------------------------------------------ writing

    async def _write(self, pending: _Pending, until_seq: int | None) -> None:
        while until_seq is None or self.stored_seq < until_seq:
            await pending.has_work.wait()
            event_rows, version_rows = pending.take()
            if event_rows:
                await self._in_store(self.store.append, event_rows, version_rows)
                self.stored_seq = event_rows[-1][0]
                self._stored.set()
            if pending.failure is not None:
                raise pending.failure

    # ------------------------------------------------------------------ publishing

    async def _publish(self, until_seq: int | None) -> None:
        publisher = NatsPublisher(self.nats_url or "", self.shard, self.nats_options)
        await publisher.connect()
        try:
            progress = await self._in_publisher_thread(self.store.progress, f"{published_progress_name}.{self.shard}")
            self.published_seq = progress or 0
            while until_seq is None or self.published_seq < until_seq:
                if self.published_seq >= self.stored_seq:
                    self._stored.clear()
                    await self._stored.wait()
                    continue
                records = await self._in_publisher_thread(
                    self.store.events, self.published_seq + 1, self.stored_seq + 1, None, None, publish_page_events_max
                )
                try:
                    await publisher.publish(records)
                except Exception as error:  # an unacknowledged page is sent again, whole
                    logger.warning("publishing seq %d.. to NATS failed (%s); retrying", records[0].seq, error)
                    await asyncio.sleep(publish_retry_delay_s)
                    continue
                self.published_seq = records[-1].seq
                await self._in_publisher_thread(
                    self.store.set_progress, f"{published_progress_name}.{self.shard}", self.published_seq
                )
        finally:
            await publisher.close()

    async def _report(self, follower: ChainFollower) -> None:
        with progress("projecting", None, unit="events") as shown:
            await self._report_every_interval(follower, shown)

    async def _report_every_interval(self, follower: ChainFollower, shown: Progress) -> None:
        last_seq, last_time = self.stored_seq, time.monotonic()
        while True:
            await asyncio.sleep(progress_interval_s)
            shown.update(self.stored_seq, max(follower.node_stored_seq, self.stored_seq) or None)
            now = time.monotonic()
            rate = (self.stored_seq - last_seq) / (now - last_time)
            message = f"stored seq {self.stored_seq} ({rate:.0f} events/s), node stored seq {follower.node_stored_seq}"
            if self.nats_url is not None:
                message += f", published seq {self.published_seq}"
            if 0 < follower.node_stored_seq < self.stored_seq:
                # A node restarts with its whole history, so this is another node, or one that lost data.
                message += "; WARNING: the node's history is shorter than this store's"
            self.on_progress(message)
            last_seq, last_time = self.stored_seq, now


class NatsPublisher:
    """Acknowledged, ordered publishing of events to ``coffer.events.<shard>`` (JetStream)."""

    def __init__(self, url: str, shard: int, connect_options: dict[str, Any] | None = None) -> None:
        self.urls = [part.strip() for part in url.split(",") if part.strip()]
        self.shard = shard
        self.connect_options = connect_options or {}
        self.subject = f"coffer.events.{shard}"
        self.stream = f"COFFER_EVENTS_{shard}"
        self._connection: Any = None
        self._jetstream: Any = None

    async def connect(self) -> None:
        import nats
        import nats.js.errors

        self._connection = await nats.connect(
            servers=self.urls, max_reconnect_attempts=-1, connect_timeout=connect_timeout_s, **self.connect_options
        )
        self._jetstream = self._connection.jetstream(timeout=publish_ack_s_max)
        manager = self._connection.jsm(timeout=publish_ack_s_max)
        try:
            self.stream = await manager.find_stream_name_by_subject(self.subject)
        except nats.js.errors.NotFoundError:
            await manager.add_stream(name=self.stream, subjects=[self.subject], duplicate_window=stream_duplicate_window_s)
        except nats.errors.NoRespondersError:
            raise RuntimeError(f"NATS at {self.urls} has no JetStream: at-least-once publishing needs it") from None

    async def publish(self, records: list[EventRecord]) -> None:
        """Publish in seq order, pipelined; return once every message is acknowledged."""
        from coffer.http.views import event_view

        encoder = msgspec.json.Encoder()
        acknowledgements = []
        for record in records:
            view = event_view(record)
            view["shard"] = self.shard
            headers = {"Nats-Msg-Id": f"{self.shard}-{record.seq}", "Coffer-Seq": str(record.seq)}
            acknowledgements.append(await self._jetstream.publish_async(self.subject, encoder.encode(view), headers=headers))
        await asyncio.wait_for(asyncio.gather(*acknowledgements), publish_ack_s_max)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
