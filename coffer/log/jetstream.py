"""JetStreamLog: the command log of one shard as a replicated NATS JetStream stream.

Job. Keep a shard's entries on 3 or 5 servers (JetStream runs one Raft group per stream), so any
API node can append and every replica reads the same entries in the same order, and a crash of a
minority of servers loses nothing that was acknowledged. Consensus is JetStream's: this module
only maps the :class:`~coffer.log.base.CommandLog` promises onto a stream.

Mapping.
- One stream per shard (``coffer-shard-0``), one subject (``coffer.log.<stream>``), file storage,
  ``num_replicas`` 1, 3 or 5, limits retention with no limit at all and ``discard: new`` (were a
  limit ever set, JetStream would refuse new entries rather than drop old ones nobody applied),
  ``deny_delete`` (an index must never go missing in the middle), ``allow_direct`` (reads served
  by any replica without creating state) and ``allow_atomic`` (batches, below). The servers must
  run with ``jetstream { sync_interval: always }`` (see :mod:`coffer.cluster.nats_servers`).
- Log index = stream sequence. ``truncate_before`` is a purge below a sequence.
- Log time = the timestamp the stream leader gave the message, in whole milliseconds (floor), so
  every replica sees the same time without trusting its own clock. Leaders' clocks may disagree,
  so times are clamped on the way out: a record's time is ``max(its stamp, the previous record's
  time)``. A reader starting at ``from_index`` seeds the clamp with the stamp of
  ``from_index - 1`` (when still stored): readers that start at different indexes agree unless
  stamps stepped back across more than one record, and even then the replicated state does not
  differ, because the state machine's clock is the running maximum of these times (clamping with
  a running maximum again changes nothing). The time ``append`` returns is this instance's view
  of the same clamp; what ``read``/``follow`` yield is authoritative.
- ``append`` publishes with a ``Nats-Msg-Id`` header; JetStream drops a second message with the
  same id inside ``duplicate_window_s`` and acknowledges it with the first one's sequence. An
  append is retried with the same id until ``append_timeout_s``; then it raises
  :class:`LogUnavailableError`. If the caller then appends the very same payloads again, the
  same ids are reused, so a first attempt that did reach the stream is not stored twice.
- ``append_many`` is an atomic batch (ADR-50, NATS 2.12+): all messages of the batch are
  committed as one Raft entry, with consecutive sequences and one timestamp, or none is. The
  server caps a batch at ``atomic_batch_messages_max`` messages; a longer list is sent as several
  batches (each atomic, each with its own time). Only a batch's first message carries a
  ``Nats-Msg-Id``: a retried batch that was already committed is refused as a duplicate, and a
  probe finds where it went (a publish with the same id that cannot be stored, see
  ``_locate_committed``).
- The timestamp is not in the publish acknowledgement, so ``append`` reads it back (a direct get
  of the batch's last message, falling back to the leader's message get): one more round trip
  per call, which group commit amortizes.
- ``last_index`` and ``first_index`` come from STREAM.INFO as the stream's leader answers it.
  While a stream has no leader, each member answers with its own state, which lags behind what
  was acknowledged when that member was cut off or slow: such answers name no leader and are
  refused (retried until the deadline), so nobody takes a lagging member's end for the log's.
- ``read`` uses batched direct gets (no consumer, no meta-leader round trip), up to the
  ``last_index`` of the call. ``follow`` keeps one ephemeral pull consumer (in memory, R1, no
  acks) with one long-poll request outstanding, and recreates it when the caller jumps, when a
  delivery is missing or when the consumer falls silent (a killed or paused server).
- Shared snapshots live in a JetStream object store (``<stream>-snapshots``, the standard
  layout: chunks on ``$O.<bucket>.C.<nuid>``, a description on ``$O.<bucket>.M.<name>``), one
  object per log index. An upload publishes its chunks with message ids (a retry is stored
  once), then the description only if no replica published that index first; a failed upload
  purges its chunks. Afterwards the store keeps the newest ``shared_snapshots_kept`` objects and
  purges the rest, and purges chunks that no object names and that got nothing new for
  ``snapshot_orphan_age_s`` (an uploader killed half-way). The bucket's byte limit, a few
  snapshots, is the backstop: beyond it uploads are refused, the disk does not fill.

Method. The interface is synchronous (the service calls it from its writer thread), nats-py is
asyncio: the log runs a private event loop in a daemon thread and submits coroutines to it.
Every wait is bounded; nothing here can hang a caller for longer than its timeout plus
``loop_result_grace_s``.
"""

import asyncio
import base64
import calendar
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coffer.log.base import (
    CommandLog,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogRecord,
    LogTruncatedError,
    check_payload,
    check_read_index,
    check_truncate_index,
)

logger = logging.getLogger(__name__)

# Shared snapshots. A snapshot of millions of dedup records is tens of MB; a replica needs only
# the newest, and the one before it covers a reader that started just before a newer one landed.
shared_snapshots_kept = 2
# The bucket's byte limit, in snapshots of the largest size seen: the kept ones, one upload in
# flight per replica (they snapshot at the same index and may upload at once) and one of slack.
# Uploads beyond it are refused at once instead of filling the servers' disks.
shared_snapshot_slack = 1
shared_snapshot_bucket_bytes_min = 8 * 1024 * 1024  # room for the first small snapshots
snapshot_chunk_bytes = 1024 * 1024  # far below max_payload; 1 MiB keeps the round trips few
snapshot_chunks_in_flight_max = 4
snapshot_request_s_max = 10.0  # one chunk of 1 MiB, stored and fsynced on every replica
snapshot_upload_s_max = 120.0  # the whole upload; the object is not published after it
snapshot_fetch_s_max = 120.0
# Chunks that no object names and that got nothing new for this long belong to an upload that
# died (its node was killed): far beyond snapshot_upload_s_max, so clocks may differ a little.
snapshot_orphan_age_s = 600.0

subject_prefix = "coffer.log."
stream_name_default = "coffer-shard-0"
stream_replicas_allowed = (1, 3, 5)
_stream_name_pattern = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Longer than any retry a caller makes after a failed append (seconds), so a retried entry is
# always recognized; JetStream keeps one id per message for this long.
duplicate_window_s = 120.0
# The server refuses larger atomic batches (ADR-50: at most 1000 messages per batch).
atomic_batch_messages_max = 1000
# What the batch and dedup headers may take out of the server's max_payload.
header_bytes_reserved = 512

connect_timeout_s_default = 5.0
# An append fails with LogUnavailableError after this long without a leader or a quorum, so a
# node answers 503 quickly instead of hanging; a leader election takes 4 to 9 s, and callers
# retry across it.
append_timeout_s_default = 2.0
request_timeout_s_default = 1.0  # one publish attempt; retried with the same id when it expires
api_timeout_s_default = 2.0  # one JetStream API call (stream info, purge, get), retries included
retry_pause_s_min = 0.025
retry_pause_s_max = 0.25
loop_result_grace_s = 1.0  # beyond the coroutine's own deadline, before the caller gives up
close_timeout_s = 2.0
# A client that lost its server reconnects to another one after this pause.
reconnect_wait_s = 0.1
# Pings detect a server that holds the socket but answers nothing (paused, hung): dead after
# ping_interval_s * (pings_outstanding_max + 1) seconds, then the client moves to another server.
ping_interval_s = 1
pings_outstanding_max = 2

read_records_per_request_max = 1024
read_bytes_per_request_max = 16 * 1024 * 1024  # above the 8 MiB max_payload: one message always fits
follow_records_per_request_max = 1024
follow_bytes_per_request_max = 16 * 1024 * 1024
follow_pull_s = 5.0  # one long-poll pull request lives this long; follow calls share it
follow_heartbeat_s = 1.0  # the server sends a heartbeat this often while the pull request waits
follow_heartbeats_missed_max = 2.5  # silence this many heartbeats long: the consumer is gone
follow_consumer_inactive_s = 60.0  # the server deletes a consumer nobody pulled from for this long
subscription_pending_bytes_max = 256 * 1024 * 1024

_sequence_unreachable = str(2**63 - 1)  # no stream ever has this last sequence
_error_duplicate_in_batch = 10201  # atomic publish batch contains a duplicate message id
_error_stream_not_found = 10059
_error_stream_name_in_use = 10058
_error_no_suitable_peers = 10005
_errors_wrong_last_sequence = frozenset({10071, 10164})  # with and without the sequence in the text
# Maximum bytes or messages exceeded, insufficient resources: the stream or the server is full.
_errors_storage_full = frozenset({10077, 10047, 10023})
# Publish errors a retry can fix: a message with the same id is still being proposed (the
# earlier attempt will commit or fail: retrying then gets its answer); an atomic batch was
# abandoned (leader change, timeout) or lost a message, or too many batches are in flight.
_error_duplicate_in_process = 10158
_errors_publish_retryable = frozenset({_error_duplicate_in_process, 10175, 10176, 10211, 10212})

T = TypeVar("T")


class LogUnavailableError(LogError):
    """The stream cannot take or serve the request now: no leader, no quorum, no server reached.

    Nothing is known to be stored or not stored. Retrying is safe: an append retried with the
    same payloads reuses the message ids of the failed attempt.
    """


class _Transient(Exception):
    """A failure a retry may fix (no responders, a timeout, 503, a lost batch)."""


class _ApiError(LogError):
    """JetStream answered a request with an error that a retry will not fix."""

    def __init__(self, subject: str, code: int, error_code: int, description: str) -> None:
        super().__init__(f"JetStream refused {subject}: {description} (code {code}, err_code {error_code})")
        self.code = code
        self.error_code = error_code
        self.description = description


@dataclass
class _StreamState:
    first_index: int
    last_index: int
    last_time_ns: int | None


@dataclass
class _Stored:
    """A message as read from the stream, before the time clamp."""

    index: int
    time_ns: int
    payload: bytes


class _Clamp:
    """Times never decrease: each record gets ``max(its stamp, the previous record's time)``."""

    def __init__(self, time_ms_last: int = 0) -> None:
        self.time_ms_last = time_ms_last

    def seed(self, time_ns: int) -> None:
        self.time_ms_last = max(self.time_ms_last, time_ns // 1_000_000)

    def record(self, stored: _Stored) -> LogRecord:
        self.time_ms_last = max(self.time_ms_last, stored.time_ns // 1_000_000)
        return LogRecord(stored.index, self.time_ms_last, stored.payload)


@dataclass
class _Follower:
    """The consumer ``follow`` keeps between calls. Touched only on the event loop thread."""

    consumer: str
    subscription: Subscription
    next_index: int
    clamp: _Clamp
    # Deliveries land here (the subscription's callback) until _follow takes them.
    inbox: collections.deque[Msg] = field(default_factory=collections.deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    pull_remaining: int = 0  # messages the outstanding pull request may still deliver
    pull_expires_at: float = 0.0  # monotonic; the request is dead after this
    heard_at: float = 0.0  # monotonic; the last message or heartbeat
    broken: bool = False
    ready: list[_Stored] = field(default_factory=list)


def read_credentials(path: Path) -> dict[str, str]:
    """How a node signs in to NATS, from ``--nats-credentials``: keyword arguments of ``nats.connect``.

    A ``.creds`` file (a user JWT and its NKey seed, as ``nsc`` writes them; nats-py reads it
    itself and needs the ``nkeys`` package) is passed as ``user_credentials``; any other file holds
    one line ``user:password`` (what ``coffer cluster up`` writes). ValueError if it holds neither.
    """
    if path.suffix == ".creds":
        return {"user_credentials": str(path)}
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    user, separator, password = lines[0].partition(":") if len(lines) == 1 else ("", "", "")
    if not separator or not user or not password:
        raise ValueError(f"{path} must hold one line 'user:password' (or be a .creds file)")
    return {"user": user, "password": password}


def connect_options(credentials: Path | None, ca_file: Path | None) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` from ``--nats-credentials`` and ``--nats-ca-file``."""
    options: dict[str, Any] = {}
    if credentials is not None:
        options.update(read_credentials(credentials))
    if ca_file is not None:
        options["tls"] = ssl.create_default_context(cafile=str(ca_file))
    return options


class JetStreamLog(CommandLog):
    """The command log of one shard on a JetStream stream (see the module docstring)."""

    def __init__(
        self,
        servers: list[str],
        stream: str = stream_name_default,
        replicas: int = 3,
        *,
        connect_timeout_s: float = connect_timeout_s_default,
        append_timeout_s: float = append_timeout_s_default,
        request_timeout_s: float = request_timeout_s_default,
        api_timeout_s: float = api_timeout_s_default,
        client_name: str = "coffer-log",
        connect_lazily: bool = False,
        credentials: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``connect_lazily``: connect and open the stream on first use, not here (a node starts
        while NATS is unreachable and reports what it waits for); a failed first use raises
        :class:`LogUnavailableError` and the next one tries again. ``credentials``: how to sign
        in, as :func:`read_credentials` gives them; ``tls``: verify the servers with it (they speak
        TLS: ``tls://`` URLs, or servers that require it)."""
        if not servers:
            raise ValueError("servers must name at least one nats:// URL")
        if not _stream_name_pattern.fullmatch(stream):
            raise ValueError(f"stream name {stream!r} must be 1-200 letters, digits, '-' or '_'")
        if replicas not in stream_replicas_allowed:
            raise ValueError(f"replicas must be one of {stream_replicas_allowed}, got {replicas}")
        self.stream = stream
        self.subject = subject_prefix + stream
        self.replicas = replicas
        self._servers = list(servers)
        self._client_name = client_name
        self._credentials = dict(credentials or {})
        self._tls = tls
        self._append_timeout_s = append_timeout_s
        self._request_timeout_s = request_timeout_s
        self._api_timeout_s = api_timeout_s
        self._api_prefix = "$JS.API"
        self._closed = False
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._futures_lock = threading.Lock()
        # One appender at a time: the message ids kept for a retry and the time clamp are its.
        self._append_lock = threading.Lock()
        self._follow_lock = threading.Lock()
        self._unacknowledged: tuple[list[bytes], list[str]] | None = None
        self._message_id_prefix = uuid.uuid4().hex
        self._message_id_count = 0
        self._follower: _Follower | None = None
        self._connection: NatsClient | None = None
        self._payload_bytes_max = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"coffer-jetstream-{stream}", daemon=True)
        self._thread.start()
        self._connect_timeout_s = connect_timeout_s
        self._opened = False
        self._open_lock = threading.Lock()
        self._append_clamp = _Clamp()
        if not connect_lazily:
            try:
                self._open()
            except BaseException:
                self.close()
                raise

    def _open(self) -> None:
        """Connect and open (or create) the stream, once; retried by the next call if it fails."""
        with self._open_lock:
            if self._opened:
                return
            if self._connection is None:
                self._run(self._connect(self._connect_timeout_s), self._connect_timeout_s)
            state = self._run(self._open_stream(), self._api_timeout_s * 2)
            if state.last_time_ns is not None:
                self._append_clamp.seed(state.last_time_ns)
            self._opened = True

    # -- the CommandLog interface -------------------------------------------------------------

    def append(self, payload: bytes) -> LogRecord:
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[LogRecord]:
        for payload in payloads:
            check_payload(payload)
            if self._payload_bytes_max and len(payload) > self._payload_bytes_max:
                raise ValueError(
                    f"payload of {len(payload)} bytes exceeds what the NATS servers take ({self._payload_bytes_max} bytes:"
                    f" their max_payload less {header_bytes_reserved} for headers)"
                )
        with self._append_lock:
            self._check_open()
            if not payloads:
                return []
            payloads = list(payloads)
            if self._unacknowledged is not None and self._unacknowledged[0] == payloads:
                # The caller retries the append that failed: the same ids make JetStream drop
                # whatever of the first attempt reached the stream.
                message_ids = self._unacknowledged[1]
            else:
                message_ids = [self._next_message_id() for _ in range(0, len(payloads), atomic_batch_messages_max)]
            self._unacknowledged = (payloads, message_ids)
            placed = self._run(self._append(payloads, message_ids), self._append_timeout_s + self._api_timeout_s)
            self._unacknowledged = None
            records: list[LogRecord] = []
            for (first_index, time_ns), chunk_start in zip(
                placed, range(0, len(payloads), atomic_batch_messages_max), strict=True
            ):
                chunk = payloads[chunk_start : chunk_start + atomic_batch_messages_max]
                stored = [_Stored(first_index + offset, time_ns, payload) for offset, payload in enumerate(chunk)]
                records.extend(self._append_clamp.record(item) for item in stored)
            return records

    def publish(self, payload: bytes, message_id: str) -> int:
        """Append one entry under the caller's unique id; return its index once acknowledged.

        For a node that learns its entries' times by reading the log back (the follower
        pipeline): no time read-back and no appender lock, so several publishes may be in
        flight at once and land in any order. Retries reuse ``message_id``, and so may the
        caller, so JetStream stores the entry at most once within ``duplicate_window_s``.
        """
        check_payload(payload)
        self._check_open()
        deadline = self._deadline(self._append_timeout_s)
        return self._run(self._publish_with_retries([payload], message_id, deadline), self._append_timeout_s + self._api_timeout_s)

    def read(self, from_index: int) -> Iterator[LogRecord]:
        check_read_index(from_index)
        self._check_open()
        state = self._run(self._stream_state(), self._api_timeout_s)
        if from_index < state.first_index:
            raise LogTruncatedError(f"index {from_index} is below first_index {state.first_index}")
        # Computed now, not on first iteration: the records are those up to last_index *at the call*.
        return self._records(from_index, state.first_index, state.last_index)

    def follow(self, from_index: int, timeout_s: float) -> list[LogRecord]:
        """The records from ``from_index`` that are stored now; if none, wait up to ``timeout_s``.

        Returns ``[]`` when nothing came in time. Made to be called in a loop by one thread
        (the replica's apply loop): a call that continues where the previous one stopped reuses
        the consumer and its outstanding pull request, so a new record is delivered as soon as
        it is committed. A call that has to start a consumer (the first, or after a jump) may
        return ``[]`` with ``timeout_s=0`` even though records exist: nothing was delivered yet.
        Raises :class:`LogTruncatedError` below ``first_index`` and :class:`LogUnavailableError`
        when no consumer can be started (no stream leader or meta leader): call again.
        """
        check_read_index(from_index)
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        with self._follow_lock:
            self._check_open()
            return self._run(self._follow(from_index, timeout_s), timeout_s + 2 * self._api_timeout_s)

    @property
    def last_index(self) -> int:
        self._check_open()
        return self._run(self._stream_state(), self._api_timeout_s).last_index

    @property
    def first_index(self) -> int:
        self._check_open()
        return self._run(self._stream_state(), self._api_timeout_s).first_index

    def truncate_before(self, index: int) -> None:
        self._check_open()
        self._run(self._truncate_before(index), self._api_timeout_s * 2)

    def close(self) -> None:
        with self._futures_lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._futures)
        for future in pending:
            future.cancel()
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop).result(close_timeout_s + loop_result_grace_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(close_timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    # -- beyond the interface: cluster operations ---------------------------------------------

    def leader(self) -> str | None:
        """The name of the server leading the stream now (None during an election)."""
        self._check_open()
        info = self._run(self._api(f"STREAM.INFO.{self.stream}", None, self._deadline(self._api_timeout_s)), self._api_timeout_s)
        return info.get("cluster", {}).get("leader") or None

    def step_down(self) -> str:
        """Ask the stream leader to hand over (before a planned restart); return the new leader.

        Waits until another server leads, at most ``api_timeout_s``; JetStream transfers the
        leadership directly, so this costs well under a second instead of a 4-9 s election.
        """
        self._check_open()
        return self._run(self._step_down(), self._api_timeout_s * 2)

    # -- snapshots shared through a JetStream object store -----------------------------------

    @property
    def snapshot_bucket(self) -> str:
        return f"{self.stream}-snapshots"

    def put_snapshot(self, index: int, data: bytes) -> bool:
        """Share ``data`` as the snapshot at log ``index``, unless one as new is there already.

        Replicas produce byte-identical snapshots at the same index (the state machine is
        deterministic), so it does not matter which of them uploads one. Returns whether this
        call stored it. Afterwards the store keeps the newest ``shared_snapshots_kept`` snapshots
        and drops the rest, and the chunks of uploads that died (see the module docstring).
        Raises :class:`LogUnavailableError` after ``snapshot_upload_s_max``; a failed upload
        removes what it stored.
        """
        self._check_open()
        return self._run(self._put_snapshot(index, data), snapshot_upload_s_max + self._api_timeout_s)

    def shared_snapshot_index(self) -> int:
        """The log index of the newest shared snapshot, 0 if there is none."""
        self._check_open()
        return self._run(self._shared_snapshot_index(), self._api_timeout_s * 2)

    def fetch_snapshot(self) -> tuple[int, bytes] | None:
        """The newest shared snapshot ``(log index, bytes)``, or None."""
        self._check_open()
        return self._run(self._fetch_snapshot(), snapshot_fetch_s_max + self._api_timeout_s)

    def shared_snapshots(self) -> list[tuple[int, int]]:
        """``(log index, bytes)`` of every snapshot in the shared store, oldest first."""
        self._check_open()
        objects = self._run(self._snapshot_objects(self._deadline(self._api_timeout_s * 2)), self._api_timeout_s * 2)
        return [(item.index, item.size) for item in objects]

    def snapshot_bucket_bytes(self) -> int:
        """Bytes the shared snapshot store holds now (its stream's size), 0 if it does not exist."""
        self._check_open()
        return self._run(self._snapshot_bucket_bytes(), self._api_timeout_s * 2)

    @property
    def shared_snapshot_room(self) -> int:
        """How many snapshots the bucket's byte limit holds (see ``shared_snapshot_slack``)."""
        return shared_snapshots_kept + self.replicas + shared_snapshot_slack

    @property
    def _snapshot_stream(self) -> str:
        return f"OBJ_{self.snapshot_bucket}"

    def _chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.snapshot_bucket}.C.{nuid}"

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.snapshot_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    async def _snapshot_bucket_bytes(self) -> int:
        try:
            info = await self._stream_info(self._snapshot_stream, None, self._deadline(self._api_timeout_s))
        except _ApiError as error:
            if error.error_code == _error_stream_not_found:
                return 0
            raise
        return int(info["state"].get("bytes", 0))

    async def _ensure_snapshot_bucket(self, snapshot_bytes: int, deadline: float) -> None:
        """Create the bucket's stream, or raise its byte limit to fit ``snapshot_bytes``-sized snapshots.

        The limit (:attr:`shared_snapshot_room` snapshots of the largest size seen) is a
        backstop: were the clean-up ever to fail, uploads would be refused instead of filling
        the disk.
        """
        bytes_max = max(snapshot_bytes * self.shared_snapshot_room, shared_snapshot_bucket_bytes_min)
        try:
            info = await self._stream_info(self._snapshot_stream, None, deadline)
        except _ApiError as error:
            if error.error_code != _error_stream_not_found:
                raise
            config = {
                "name": self._snapshot_stream,
                "subjects": [f"$O.{self.snapshot_bucket}.C.>", f"$O.{self.snapshot_bucket}.M.>"],
                "retention": "limits",
                "max_bytes": bytes_max,
                "discard": "new",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": int(duplicate_window_s * 1e9),
                "allow_rollup_hdrs": True,
                "allow_direct": True,
            }
            try:
                await self._api(f"STREAM.CREATE.{self._snapshot_stream}", config, deadline)
            except _ApiError as create_error:
                if create_error.error_code != _error_stream_name_in_use:
                    raise
            return
        config = info["config"]
        current = int(config.get("max_bytes", -1))
        if current == -1 or current < bytes_max:
            # Made by an earlier version without a limit, or for smaller snapshots.
            await self._api(f"STREAM.UPDATE.{self._snapshot_stream}", {**config, "max_bytes": bytes_max}, deadline)

    async def _snapshot_objects(self, deadline: float) -> list["_SharedSnapshot"]:
        """The snapshots the store holds (not deleted), oldest first, from the stream leader."""
        subjects = await self._subjects(f"$O.{self.snapshot_bucket}.M.>", deadline)
        objects = []
        for subject in subjects:
            message = await self._last_message(self._snapshot_stream, subject, deadline)
            if message is None:
                continue
            try:
                meta = json.loads(message[0])
                item = _SharedSnapshot(
                    index=int(meta.get("description") or 0),
                    name=str(meta["name"]),
                    nuid=str(meta.get("nuid") or ""),
                    size=int(meta.get("size") or 0),
                    chunks=int(meta.get("chunks") or 0),
                    digest=str(meta.get("digest") or ""),
                    meta_subject=subject,
                    deleted=bool(meta.get("deleted")),
                )
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("shared snapshot store: unreadable object description on %s: %s", subject, error)
                continue
            objects.append(item)
        return sorted(objects, key=lambda item: (item.deleted, item.index))

    async def _subjects(self, subjects_filter: str, deadline: float) -> dict[str, int]:
        """Subjects of the snapshot stream matching ``subjects_filter``, with their message counts."""
        subjects: dict[str, int] = {}
        offset = 0
        while True:
            try:
                info = await self._stream_info(self._snapshot_stream, {"subjects_filter": subjects_filter, "offset": offset}, deadline)
            except _ApiError as error:
                if error.error_code == _error_stream_not_found:
                    return {}
                raise
            page = info["state"].get("subjects") or {}
            subjects.update(page)
            offset += len(page)
            if not page or offset >= int(info.get("total", 0)):
                return subjects

    async def _last_message(self, stream: str, subject: str, deadline: float) -> tuple[bytes, int] | None:
        """The data and time (ns) of the last message on ``subject``, from the stream leader."""
        try:
            answer = await self._api(f"STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, deadline)
        except _ApiError as error:
            if error.code == 404:
                return None
            raise
        message = answer["message"]
        return base64.b64decode(message.get("data") or ""), _nanoseconds_of(message["time"])

    async def _shared_snapshot_index(self) -> int:
        objects = [item for item in await self._snapshot_objects(self._deadline(self._api_timeout_s * 2)) if not item.deleted]
        return objects[-1].index if objects else 0

    async def _put_snapshot(self, index: int, data: bytes) -> bool:
        started = time.monotonic()
        deadline = started + snapshot_upload_s_max
        objects = [item for item in await self._snapshot_objects(deadline) if not item.deleted]
        if objects and objects[-1].index >= index:
            return False
        await self._ensure_snapshot_bucket(len(data), deadline)
        nuid = uuid.uuid4().hex
        chunk_subject = self._chunk_subject(nuid)
        name = f"snapshot-{index:020d}"
        try:
            digest = hashlib.sha256()
            chunks = 0
            # A window of chunk publishes in flight: one connection keeps them in order, and a
            # retried one carries the same message id, so JetStream stores it once.
            window: list[asyncio.Task[None]] = []
            for offset in range(0, len(data), snapshot_chunk_bytes):
                chunk = data[offset : offset + snapshot_chunk_bytes]
                digest.update(chunk)
                chunks += 1
                headers = {"Nats-Msg-Id": f"{nuid}.{chunks}"}
                window.append(asyncio.ensure_future(self._store_message(chunk_subject, chunk, headers, deadline)))
                if len(window) >= snapshot_chunks_in_flight_max:
                    await window.pop(0)
            for pending in window:
                await pending
            window.clear()
            # A sweep takes chunks no object names for dead after snapshot_orphan_age_s; past
            # this deadline they may be, so the object must not be published any more.
            if time.monotonic() >= deadline:
                raise _Transient(f"the upload took longer than {snapshot_upload_s_max} s")
            # A newer snapshot may have been shared (and this index pruned) meanwhile.
            newest = [item for item in await self._snapshot_objects(deadline) if not item.deleted]
            if newest and newest[-1].index >= index:
                raise _SharedFirst
            meta = {
                "name": name,
                "description": str(index),
                "bucket": self.snapshot_bucket,
                "nuid": nuid,
                "size": len(data),
                "chunks": chunks,
                "digest": "SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
                "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "options": {"max_chunk_size": snapshot_chunk_bytes},
            }
            # Only if no replica published this index first: its object would lose its chunks'
            # name, and they would linger until a sweep.
            # (A retry that finds its own first attempt stored is answered as a duplicate of it.)
            headers = {"Nats-Msg-Id": f"{nuid}.meta", "Nats-Expected-Last-Subject-Sequence": "0"}
            await self._store_message(self._meta_subject(name), json.dumps(meta).encode(), headers, deadline)
        except _SharedFirst:
            await self._purge_quietly(self._snapshot_stream, chunk_subject)
            return False
        except BaseException as error:
            for pending in window:
                pending.cancel()
            await self._purge_quietly(self._snapshot_stream, chunk_subject)
            if isinstance(error, _Transient):
                raise LogUnavailableError(
                    f"snapshot upload failed after {time.monotonic() - started:.1f} s: {error}"
                ) from None
            raise
        logger.info("shared the snapshot at log index %d (%d bytes in %.1f s)", index, len(data), time.monotonic() - started)
        await self._prune_snapshots(self._deadline(self._api_timeout_s * 4))
        return True

    async def _store_message(self, subject: str, data: bytes, headers: dict[str, str], deadline: float) -> None:
        """Publish one message to a stream and wait for its acknowledgement, retrying until ``deadline``."""
        pause_s = retry_pause_s_min
        while True:
            try:
                reply = await self._request(subject, data, min(snapshot_request_s_max, deadline - time.monotonic()), headers)
                error_code = json.loads(reply.data).get("error", {}).get("err_code")
                if error_code in _errors_wrong_last_sequence:
                    raise _SharedFirst
                if error_code in _errors_storage_full:
                    # Waiting will not make room (only this upload's clean-up does): fail now.
                    raise LogUnavailableError(f"the shared snapshot store is full: {json.loads(reply.data)['error']}")
                _acknowledged_index(reply)
                return
            except _Transient:
                if time.monotonic() + pause_s >= deadline:
                    raise
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    async def _purge_quietly(self, stream: str, subject: str) -> None:
        try:
            await self._api(f"STREAM.PURGE.{stream}", {"filter": subject}, self._deadline(self._api_timeout_s))
        except Exception as error:  # a sweep after a later upload removes what is left
            logger.warning("could not remove %s from %s: %s", subject, stream, error)

    async def _prune_snapshots(self, deadline: float) -> None:
        """Keep the newest ``shared_snapshots_kept`` snapshots; drop the rest and dead chunks."""
        try:
            objects = await self._snapshot_objects(deadline)
            live = [item for item in objects if not item.deleted]
            doomed = [item for item in objects if item.deleted] + live[: max(len(live) - shared_snapshots_kept, 0)]
            for item in doomed:
                # The description first: nobody starts reading an object whose chunks are going.
                await self._api(f"STREAM.PURGE.{self._snapshot_stream}", {"filter": item.meta_subject}, deadline)
                if item.nuid:
                    await self._api(f"STREAM.PURGE.{self._snapshot_stream}", {"filter": self._chunk_subject(item.nuid)}, deadline)
            named = {self._chunk_subject(item.nuid) for item in live[-shared_snapshots_kept:]}
            for subject in await self._subjects(f"$O.{self.snapshot_bucket}.C.>", deadline):
                if subject in named:
                    continue
                last = await self._last_message(self._snapshot_stream, subject, deadline)
                if last is not None and time.time() - last[1] / 1e9 < snapshot_orphan_age_s:
                    continue  # maybe an upload still in progress
                await self._api(f"STREAM.PURGE.{self._snapshot_stream}", {"filter": subject}, deadline)
                logger.info("removed the chunks of a snapshot upload that never finished (%s)", subject)
        except (LogError, _Transient) as error:  # housekeeping: the next upload tries again
            logger.warning("could not clean the shared snapshot store: %s", error)

    async def _fetch_snapshot(self) -> tuple[int, bytes] | None:
        deadline = self._deadline(snapshot_fetch_s_max)
        pause_s = retry_pause_s_min
        while True:
            objects = [item for item in await self._snapshot_objects(deadline) if not item.deleted]
            if not objects:
                return None
            newest = objects[-1]
            data = await self._read_chunks(newest, deadline)
            if data is not None:
                return newest.index, data
            # Pruned or replaced while being read: look again.
            if time.monotonic() + pause_s >= deadline:
                raise LogUnavailableError(f"the shared snapshot at {newest.index} could not be read whole")
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    async def _read_chunks(self, item: "_SharedSnapshot", deadline: float) -> bytes | None:
        """The object's bytes from the stream leader, or None if they are not all there (any more)."""
        subject = self._chunk_subject(item.nuid)
        parts: list[bytes] = []
        next_sequence = 1
        for _ in range(item.chunks):
            try:
                answer = await self._api(
                    f"STREAM.MSG.GET.{self._snapshot_stream}", {"seq": next_sequence, "next_by_subj": subject}, deadline
                )
            except _ApiError as error:
                if error.code == 404:
                    return None
                raise
            message = answer["message"]
            parts.append(base64.b64decode(message.get("data") or ""))
            next_sequence = int(message["seq"]) + 1
        data = b"".join(parts)
        expected = item.digest.removeprefix("SHA-256=").removeprefix("sha-256=")
        if len(data) != item.size or base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode() != expected:
            return None
        return data

    def broadcast(self, subject: str, data: bytes) -> None:
        """Publish a best-effort note (core NATS, not the stream): replicas' checkpoints."""
        self._check_open()
        self._run(self._broadcast(subject, data), self._api_timeout_s)

    def listen(self, subject: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(data)`` (on the log's own thread) for every note on ``subject``."""
        self._check_open()

        async def deliver(message: Msg) -> None:
            try:
                handler(message.data)
            except Exception:
                logger.exception("a note handler on %s failed", subject)

        async def subscribe() -> None:
            assert self._connection is not None
            await self._connection.subscribe(subject, cb=deliver)

        self._run(subscribe(), self._api_timeout_s)

    async def _broadcast(self, subject: str, data: bytes) -> None:
        assert self._connection is not None
        await self._connection.publish(subject, data)

    # -- the event loop thread ----------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coroutine`` on the log's event loop; wait at most ``timeout_s`` (and a grace)."""
        return self._wait(self._submit(coroutine), timeout_s)

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Start ``coroutine`` on the log's event loop; :meth:`_wait` for it (or cancel it)."""
        with self._futures_lock:
            if self._closed:
                coroutine.close()
                raise LogClosedError("the log is closed")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            self._futures.add(future)
        return future

    def _wait(self, future: "concurrent.futures.Future[T]", timeout_s: float) -> T:
        started = time.monotonic()
        try:
            return future.result(timeout_s + loop_result_grace_s)
        except concurrent.futures.TimeoutError as error:
            waited_s = time.monotonic() - started
            if future.done():
                # The coroutine's own timeout (nats-py raises TimeoutError), not this wait's:
                # report what timed out and after how long, not the limit of the whole call.
                raise LogUnavailableError(f"JetStream timed out after {waited_s:.1f} s: {error!r}") from None
            future.cancel()
            raise LogUnavailableError(f"no answer from JetStream within {waited_s:.1f} s (limit {timeout_s} s)") from None
        except concurrent.futures.CancelledError:
            raise LogClosedError("the log was closed during the call") from None
        finally:
            with self._futures_lock:
                self._futures.discard(future)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the log is closed")
        if not self._opened:
            self._open()

    def _next_message_id(self) -> str:
        self._message_id_count += 1
        return f"{self._message_id_prefix}-{self._message_id_count}"

    def _deadline(self, timeout_s: float) -> float:
        return time.monotonic() + timeout_s

    @property
    def _nc(self) -> NatsClient:
        assert self._connection is not None, "used before connecting"
        return self._connection

    # -- connection and stream ----------------------------------------------------------------

    async def _connect(self, timeout_s: float) -> None:
        # With endless reconnect attempts nats-py would try forever to make the first connection.
        try:
            self._connection = await asyncio.wait_for(self._connect_once(), timeout_s)
        except (TimeoutError, OSError, nats.errors.Error) as error:
            raise LogUnavailableError(f"no NATS server reached among {self._servers}: {error!r}") from None
        self._payload_bytes_max = self._connection.max_payload - header_bytes_reserved

    async def _connect_once(self) -> NatsClient:
        return await nats.connect(
            servers=self._servers,
            name=self._client_name,
            connect_timeout=self._request_timeout_s,
            reconnect_time_wait=reconnect_wait_s,  # annotated int, used as float seconds
            max_reconnect_attempts=-1,
            ping_interval=ping_interval_s,
            max_outstanding_pings=pings_outstanding_max,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            tls=self._tls,
            **self._credentials,  # type: ignore[arg-type]
        )

    async def _disconnect(self) -> None:
        await self._drop_follower()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), close_timeout_s)

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError) and self._follower is not None:
            # A delivery was dropped: the follower must start again from its next index.
            self._follower.broken = True
        logger.debug("nats client error on %s: %r", self.stream, error)

    async def _on_disconnected(self) -> None:
        logger.info("command log %s: disconnected from NATS", self.stream)

    async def _on_reconnected(self) -> None:
        # Deliveries sent while the client was away are lost (the consumer does not wait for
        # acks); starting the follower again from its next index finds them.
        if self._follower is not None:
            self._follower.broken = True
        url = self._connection.connected_url if self._connection is not None else None
        logger.info("command log %s: reconnected to %s", self.stream, url.netloc if url else "?")

    def _stream_config(self) -> dict[str, Any]:
        return {
            "name": self.stream,
            "subjects": [self.subject],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "discard": "new",
            "storage": "file",
            "num_replicas": self.replicas,
            "duplicate_window": int(duplicate_window_s * 1e9),
            "deny_delete": True,
            "deny_purge": False,
            "allow_direct": True,
            "allow_atomic": True,
        }

    async def _open_stream(self) -> _StreamState:
        """Create the stream if missing; check that an existing one keeps our promises."""
        deadline = self._deadline(self._api_timeout_s)
        try:
            info = await self._stream_info(self.stream, None, deadline)
        except _ApiError as error:
            if error.error_code != _error_stream_not_found:
                raise
            try:
                info = await self._create_stream(self._deadline(self._api_timeout_s * 2))
            except _ApiError as create_error:
                if create_error.error_code != _error_stream_name_in_use:
                    raise
                # Another node created it first; check what it made.
                info = await self._stream_info(self.stream, None, self._deadline(self._api_timeout_s))
        self._check_stream_config(info["config"])
        return _state_of(info)

    async def _create_stream(self, deadline: float) -> dict[str, Any]:
        pause_s = retry_pause_s_min
        while True:
            try:
                return await self._api(f"STREAM.CREATE.{self.stream}", self._stream_config(), deadline)
            except _ApiError as error:
                # Servers that just started may not know all their peers yet.
                if error.error_code != _error_no_suitable_peers or time.monotonic() + pause_s >= deadline:
                    raise
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    def _check_stream_config(self, config: dict[str, Any]) -> None:
        expected = self._stream_config()
        problems = [
            f"{key} is {config.get(key)!r}, expected {expected[key]!r}"
            for key in (
                "retention",
                "max_msgs",
                "max_bytes",
                "max_age",
                "max_msgs_per_subject",
                "storage",
                "num_replicas",
                "allow_direct",
                "allow_atomic",
            )
            if config.get(key, False) != expected[key]
        ]
        if self.subject not in config.get("subjects", []):
            problems.append(f"subjects {config.get('subjects')!r} do not include {self.subject!r}")
        if not config.get("duplicate_window"):
            problems.append("duplicate_window is 0: retried appends would be stored twice")
        if problems:
            raise LogError(f"stream {self.stream} exists but cannot hold a command log: " + "; ".join(problems))

    async def _stream_state(self) -> _StreamState:
        return _state_of(await self._stream_info(self.stream, None, self._deadline(self._api_timeout_s)))

    async def _stream_info(self, stream: str, body: dict[str, Any] | None, deadline: float) -> dict[str, Any]:
        """STREAM.INFO as the stream's leader answers it.

        While a replicated stream has no leader, every member answers STREAM.INFO with its own
        state (nats-server, ``jsStreamInfoRequest``: "if the group has no leader"), and a member
        that lagged or was cut off reports a ``last_seq`` below what was acknowledged. Such an
        answer names no leader; it is not trusted, and the call asks again until a leader
        answers or the deadline passes (then :class:`LogUnavailableError`).
        """
        pause_s = retry_pause_s_min
        while True:
            info = await self._api(f"STREAM.INFO.{stream}", body, deadline)
            cluster = info.get("cluster")
            if cluster is None or cluster.get("leader"):
                return info
            if time.monotonic() + pause_s >= deadline:
                raise LogUnavailableError(f"stream {stream} has no leader; a member's own, possibly lagging, view is not used")
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    # -- requests -----------------------------------------------------------------------------

    async def _request(self, subject: str, payload: bytes, timeout_s: float, headers: dict[str, str] | None = None) -> Msg:
        """One request; every failure a retry may fix becomes :class:`_Transient`."""
        if timeout_s <= 0:
            raise _Transient("deadline passed")
        try:
            return await self._nc.request(subject, payload, timeout=timeout_s, headers=headers)
        except nats.errors.NoRespondersError:
            raise _Transient(f"no responders on {subject}") from None
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ) as error:
            raise _Transient(f"{type(error).__name__} on {subject}") from None
        except nats.errors.ConnectionClosedError:
            if self._closed:
                raise LogClosedError("the log is closed") from None
            raise _Transient(f"connection closed during {subject}") from None

    async def _api(self, operation: str, body: dict[str, Any] | None, deadline: float) -> dict[str, Any]:
        """A JetStream API call, retried on transient failures until ``deadline``."""
        subject = f"{self._api_prefix}.{operation}"
        payload = b"" if body is None else json.dumps(body).encode()
        pause_s = retry_pause_s_min
        while True:
            try:
                reply = await self._request(subject, payload, min(self._request_timeout_s, deadline - time.monotonic()))
                answer: dict[str, Any] = json.loads(reply.data)
                error = answer.get("error")
                if error is None:
                    return answer
                if error.get("code") == 503:
                    raise _Transient(error.get("description", "unavailable"))
                raise _ApiError(subject, error.get("code", 0), error.get("err_code", 0), error.get("description", ""))
            except _Transient as problem:
                if time.monotonic() + pause_s >= deadline:
                    raise LogUnavailableError(f"JetStream did not answer {subject}: {problem}") from None
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    # -- appending ----------------------------------------------------------------------------

    async def _append(self, payloads: list[bytes], message_ids: list[str]) -> list[tuple[int, int]]:
        """Store the payloads as atomic batches; return each batch's first index and time (ns)."""
        deadline = self._deadline(self._append_timeout_s)
        placed: list[tuple[int, int]] = []
        for message_id, chunk_start in zip(message_ids, range(0, len(payloads), atomic_batch_messages_max), strict=True):
            chunk = payloads[chunk_start : chunk_start + atomic_batch_messages_max]
            first_index = await self._publish_with_retries(chunk, message_id, deadline)
            # The time is the last message's: all messages of a batch carry the same one.
            time_ns = await self._time_ns_of(first_index + len(chunk) - 1, max(deadline, self._deadline(self._request_timeout_s)))
            placed.append((first_index, time_ns))
        return placed

    async def _publish_with_retries(self, chunk: list[bytes], message_id: str, deadline: float) -> int:
        pause_s = retry_pause_s_min
        while True:
            attempt_s = min(self._request_timeout_s, deadline - time.monotonic())
            try:
                if len(chunk) == 1:
                    return await self._publish_one(chunk[0], message_id, attempt_s)
                return await self._publish_batch(chunk, message_id, attempt_s)
            except _Transient as problem:
                if time.monotonic() + pause_s >= deadline:
                    raise LogUnavailableError(
                        f"append to {self.stream} not acknowledged within {self._append_timeout_s} s: {problem}"
                    ) from None
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    async def _publish_one(self, payload: bytes, message_id: str, timeout_s: float) -> int:
        reply = await self._request(self.subject, payload, timeout_s, {"Nats-Msg-Id": message_id})
        return _acknowledged_index(reply)

    async def _publish_batch(self, chunk: list[bytes], message_id: str, timeout_s: float) -> int:
        """Publish ``chunk`` as one atomic batch; return the index of its first message."""
        batch_id = uuid.uuid4().hex
        started = time.monotonic()
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "1", "Nats-Msg-Id": message_id}
        # The first message is a request: its empty reply says the leader accepted the batch.
        reply = await self._request(self.subject, chunk[0], timeout_s, headers)
        if reply.data:
            _acknowledged_index(reply)  # raises the error it carries
        for position in range(2, len(chunk)):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(position)}
            await self._nc.publish(self.subject, chunk[position - 1], headers=headers)
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(len(chunk)), "Nats-Batch-Commit": "1"}
        reply = await self._request(self.subject, chunk[-1], timeout_s - (time.monotonic() - started), headers)
        try:
            last_index = _acknowledged_index(reply)
        except _DuplicateBatch:
            # An earlier attempt of this batch was committed (its acknowledgement was lost).
            return await self._locate_committed(chunk[0], message_id, timeout_s)
        return last_index - len(chunk) + 1

    async def _locate_committed(self, first_payload: bytes, message_id: str, timeout_s: float) -> int:
        """The index of an already committed batch, from its first message's id.

        A publish with the same id is acknowledged as a duplicate with the original index. It
        also expects an impossible last sequence, so in the unexpected case that the id is not
        known (any more), JetStream refuses it instead of storing a stray message.
        """
        headers = {"Nats-Msg-Id": message_id, "Nats-Expected-Last-Sequence": _sequence_unreachable}
        reply = await self._request(self.subject, first_payload, timeout_s, headers)
        answer = json.loads(reply.data)
        if answer.get("duplicate"):
            return int(answer["seq"])
        raise LogError(f"stream {self.stream} refused a batch as already stored, but does not know its id: {answer}")

    async def _time_ns_of(self, index: int, deadline: float) -> int:
        """The stamp of the message at ``index``: any replica's direct get, else the leader's get."""
        pause_s = retry_pause_s_min
        while True:
            timeout_s = min(self._request_timeout_s, deadline - time.monotonic())
            try:
                reply = await self._request(
                    f"{self._api_prefix}.DIRECT.GET.{self.stream}", json.dumps({"seq": index}).encode(), timeout_s
                )
                headers = reply.headers or {}
                if not headers.get("Status"):
                    return _nanoseconds_of(headers["Nats-Time-Stamp"])
                # A follower that has not applied the message yet: the leader has it.
                answer = await self._api(f"STREAM.MSG.GET.{self.stream}", {"seq": index}, deadline)
                return _nanoseconds_of(answer["message"]["time"])
            except _Transient as problem:
                if time.monotonic() + pause_s >= deadline:
                    raise LogUnavailableError(f"stored at {index}, but its time could not be read: {problem}") from None
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    # -- reading ------------------------------------------------------------------------------

    def _records(self, from_index: int, first_index: int, end_index: int) -> Iterator[LogRecord]:
        clamp = _Clamp()
        # Start one early when that record is stored: its stamp seeds the clamp.
        request_index = from_index - 1 if from_index - 1 >= first_index else from_index
        next_index = from_index
        # The next batch is asked for while the caller works through this one (a replay is
        # otherwise half waiting for the network).
        ahead: tuple[int, concurrent.futures.Future[list[_Stored]]] | None = None
        try:
            while next_index <= end_index:
                if ahead is not None and ahead[0] == next_index:
                    stored = self._wait(ahead[1], self._api_timeout_s)
                else:
                    if ahead is not None:
                        ahead[1].cancel()
                    stored = self._run(self._get_range(request_index, next_index, end_index), self._api_timeout_s)
                ahead = None
                following = stored[-1].index + 1 if stored else next_index
                if stored and following <= end_index:
                    ahead = (following, self._submit(self._get_range(following, following, end_index)))
                for item in stored:
                    if item.index < next_index:
                        clamp.seed(item.time_ns)
                        continue
                    if item.index > next_index:
                        self._raise_missing(next_index, item.index)
                    yield clamp.record(item)
                    next_index += 1
                request_index = next_index
        finally:
            if ahead is not None:
                ahead[1].cancel()

    def _raise_missing(self, index: int, found_index: int) -> None:
        first_index = self.first_index
        if index < first_index:
            raise LogTruncatedError(f"index {index} was truncated while being read (first_index is now {first_index})")
        raise LogCorruptError(self.stream, index, f"record {index} is missing: the next stored one is {found_index}")

    async def _get_range(self, request_index: int, next_index: int, end_index: int) -> list[_Stored]:
        """Messages from ``request_index`` on, until one answer brings ``next_index`` or later."""
        deadline = self._deadline(self._api_timeout_s)
        pause_s = retry_pause_s_min
        while True:
            try:
                stored = await self._direct_get_batch(request_index, end_index, deadline)
                if stored and stored[-1].index >= next_index:
                    return stored
                problem = f"no record from {next_index} on"  # a lagging replica answered
            except _Transient as transient:
                problem = str(transient)
            if time.monotonic() + pause_s >= deadline:
                raise LogUnavailableError(f"reading {self.stream} from {next_index}: {problem}")
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, retry_pause_s_max)

    async def _direct_get_batch(self, start_index: int, end_index: int, deadline: float) -> list[_Stored]:
        """One batched direct get: the stored messages from ``start_index`` to at most ``end_index``."""
        count = min(end_index - start_index + 1, read_records_per_request_max)
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox, pending_bytes_limit=subscription_pending_bytes_max)
        try:
            body = {"seq": start_index, "batch": count, "max_bytes": read_bytes_per_request_max}
            await self._nc.publish(f"{self._api_prefix}.DIRECT.GET.{self.stream}", json.dumps(body).encode(), reply=inbox)
            stored: list[_Stored] = []
            while True:
                try:
                    message = await subscription.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
                except (TimeoutError, nats.errors.TimeoutError):
                    raise _Transient("direct get timed out") from None
                headers = message.headers or {}
                status = headers.get("Status")
                if not status:
                    index = int(headers["Nats-Sequence"])
                    if index <= end_index:
                        stored.append(_Stored(index, _nanoseconds_of(headers["Nats-Time-Stamp"]), message.data))
                    if index >= end_index or len(stored) >= count:
                        return stored
                elif status == "204" or status == "404":  # end of batch; nothing (more) stored
                    return stored
                elif status == "503":
                    raise _Transient("no responders for direct get")
                else:
                    raise LogError(f"direct get on {self.stream} answered {status} {headers.get('Description', '')}")
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    # -- following ----------------------------------------------------------------------------

    async def _follow(self, from_index: int, timeout_s: float) -> list[LogRecord]:
        follower = self._follower
        if follower is None or follower.broken or follower.next_index != from_index:
            follower = await self._start_follower(from_index)
        deadline = time.monotonic() + timeout_s
        while True:
            follower.arrived.clear()  # before taking: a delivery after this sets it again
            while follower.inbox and not follower.broken:
                self._handle_delivery(follower, follower.inbox.popleft())
            if follower.ready:
                # Valid even when the follower just broke: the next call starts after them.
                records = [follower.clamp.record(item) for item in follower.ready]
                follower.next_index += len(records)
                follower.ready.clear()
                return records
            if follower.broken:
                follower = await self._start_follower(follower.next_index)
                continue
            now = time.monotonic()
            if follower.pull_remaining <= 0 or now >= follower.pull_expires_at:
                await self._pull(follower)
                now = time.monotonic()
            if now >= deadline:
                return []
            silence_limit_at = follower.heard_at + follow_heartbeat_s * follow_heartbeats_missed_max
            try:
                await asyncio.wait_for(follower.arrived.wait(), max(min(deadline, silence_limit_at) - now, 0.001))
            except TimeoutError:
                if time.monotonic() >= silence_limit_at:
                    logger.info("command log %s: the follow consumer fell silent; starting a new one", self.stream)
                    follower.broken = True

    def _handle_delivery(self, follower: _Follower, message: Msg) -> None:
        follower.heard_at = time.monotonic()
        headers = message.headers or {}
        status = headers.get("Status")
        if status:
            if status == "100":  # a heartbeat: the consumer and its pull request are alive
                return
            follower.pull_remaining = 0  # 404 no messages, 408 expired, 409 ended: the request is over
            description = str(headers.get("Description", "")).lower()
            if status == "503" or "deleted" in description or "push" in description:
                follower.broken = True
            return
        follower.pull_remaining -= 1
        index, time_ns = _delivery_metadata(message.reply)
        expected = follower.next_index + len(follower.ready)
        if index < expected:
            return  # delivered twice around a restart of the follower; already taken
        if index > expected:
            # A delivery was lost, or the records were truncated: start again at the gap (the
            # new consumer's start raises LogTruncatedError in the second case).
            logger.info("command log %s: follow expected %d, got %d; starting a new consumer", self.stream, expected, index)
            follower.broken = True
            return
        follower.ready.append(_Stored(index, time_ns, message.data))

    async def _pull(self, follower: _Follower) -> None:
        """Send the long-poll request the consumer answers with up to a batch of deliveries."""
        body = {
            "batch": follow_records_per_request_max,
            "max_bytes": follow_bytes_per_request_max,
            "expires": int(follow_pull_s * 1e9),
            "idle_heartbeat": int(follow_heartbeat_s * 1e9),
        }
        subject = f"{self._api_prefix}.CONSUMER.MSG.NEXT.{self.stream}.{follower.consumer}"
        await self._nc.publish(subject, json.dumps(body).encode(), reply=follower.subscription.subject)
        now = time.monotonic()
        follower.pull_remaining = follow_records_per_request_max
        follower.pull_expires_at = now + follow_pull_s
        follower.heard_at = now

    async def _start_follower(self, from_index: int) -> _Follower:
        await self._drop_follower()
        deadline = self._deadline(self._api_timeout_s)
        state = await self._stream_state()
        if from_index < state.first_index:
            raise LogTruncatedError(f"index {from_index} is below first_index {state.first_index}")
        clamp = _Clamp()
        if state.first_index <= from_index - 1 <= state.last_index:
            clamp.seed(await self._time_ns_of(from_index - 1, deadline))
        config = {
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": from_index,
            "ack_policy": "none",
            "replay_policy": "instant",
            "inactive_threshold": int(follow_consumer_inactive_s * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
        }
        answer = await self._api(f"CONSUMER.CREATE.{self.stream}", {"stream_name": self.stream, "config": config}, deadline)
        inbox: collections.deque[Msg] = collections.deque()
        arrived = asyncio.Event()

        async def deliver(message: Msg) -> None:
            inbox.append(message)
            arrived.set()

        subscription = await self._nc.subscribe(
            self._nc.new_inbox(), cb=deliver, pending_bytes_limit=subscription_pending_bytes_max
        )
        follower = _Follower(answer["name"], subscription, from_index, clamp, inbox, arrived, heard_at=time.monotonic())
        self._follower = follower
        return follower

    async def _drop_follower(self) -> None:
        follower, self._follower = self._follower, None
        if follower is None:
            return
        with contextlib.suppress(Exception):
            await follower.subscription.unsubscribe()
        with contextlib.suppress(Exception):
            # No reply wanted: the consumer's inactive threshold removes it anyway.
            await self._nc.publish(f"{self._api_prefix}.CONSUMER.DELETE.{self.stream}.{follower.consumer}", b"")

    # -- truncation and leadership ------------------------------------------------------------

    async def _truncate_before(self, index: int) -> None:
        state = await self._stream_state()
        check_truncate_index(index, state.last_index)
        # Keep the last record, as the file backends do (see CommandLog.truncate_before).
        keep_from = min(index, max(state.last_index, 1))
        if keep_from > state.first_index:
            await self._api(f"STREAM.PURGE.{self.stream}", {"seq": keep_from}, self._deadline(self._api_timeout_s))

    async def _step_down(self) -> str:
        deadline = self._deadline(self._api_timeout_s)
        info = await self._api(f"STREAM.INFO.{self.stream}", None, deadline)
        previous = info.get("cluster", {}).get("leader")
        await self._api(f"STREAM.LEADER.STEPDOWN.{self.stream}", None, deadline)
        while True:
            info = await self._api(f"STREAM.INFO.{self.stream}", None, deadline)
            leader = info.get("cluster", {}).get("leader")
            if leader and leader != previous:
                return str(leader)
            if time.monotonic() >= deadline:
                raise LogUnavailableError(f"no new leader for {self.stream} within {self._api_timeout_s} s of the step-down")
            await asyncio.sleep(retry_pause_s_min)


@dataclass
class _SharedSnapshot:
    """One object of the shared snapshot store, as its description (meta message) says."""

    index: int
    name: str
    nuid: str
    size: int
    chunks: int
    digest: str
    meta_subject: str
    deleted: bool


class _SharedFirst(Exception):
    """Another replica published the snapshot at the same index first."""


class _DuplicateBatch(Exception):
    """The batch's message id is already stored: an earlier attempt was committed."""


def _acknowledged_index(reply: Msg) -> int:
    """The sequence in a publish acknowledgement, or the error it carries."""
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error is None:
        return int(answer["seq"])
    code, error_code, description = error.get("code", 0), error.get("err_code", 0), error.get("description", "")
    if error_code == _error_duplicate_in_batch:
        raise _DuplicateBatch(description)
    if code == 503 or error_code in _errors_publish_retryable:
        raise _Transient(f"{description} (err_code {error_code})")
    raise LogError(f"JetStream refused the append: {description} (code {code}, err_code {error_code})")


def _state_of(info: dict[str, Any]) -> _StreamState:
    state = info["state"]
    last_index = int(state.get("last_seq", 0))
    first_index = int(state.get("first_seq", 0)) if state.get("messages", 0) > 0 else last_index + 1
    last_time = state.get("last_ts")
    last_time_ns = _nanoseconds_of(last_time) if state.get("messages", 0) > 0 and last_time else None
    return _StreamState(first_index, last_index, last_time_ns)


def _delivery_metadata(reply: str) -> tuple[int, int]:
    """Stream sequence and timestamp (ns) from a consumer delivery's ``$JS.ACK`` reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``, or
    the newer form with a domain and an account hash after ``ACK`` (and a token at the end).
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[9])
    raise LogError(f"unexpected JetStream delivery reply subject {reply!r}")


_seconds_cache: dict[str, int] = {}


def _nanoseconds_of(timestamp: str) -> int:
    """Nanoseconds since the epoch of a Go RFC 3339 time in UTC (``2026-01-02T15:04:05.123456789Z``).

    Python's parsers stop at microseconds; the fraction is read as digits. Consecutive records
    mostly share their second, so the whole-second part is cached.
    """
    if not timestamp.endswith("Z"):
        raise LogError(f"unexpected JetStream timestamp {timestamp!r} (expected UTC)")
    whole, _, fraction = timestamp[:-1].partition(".")
    seconds = _seconds_cache.get(whole)
    if seconds is None:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        if len(_seconds_cache) > 1024:
            _seconds_cache.clear()
        _seconds_cache[whole] = seconds
    return seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")[:9]) if fraction else 0)
