"""Which node serves which shard: the live routers of a cluster, in a JetStream key-value bucket.

Job. A sharded node may host only some of the shards (``coffer serve --host-shards``); its router
still takes any request and forwards what belongs to a shard it does not host to a node that does.
To find one, and to share the recovery scans out (:mod:`coffer.txn.scanners`), every router
process keeps an entry in the bucket ``coffer-nodes``: its id, its node's advertised URL and the
shards that node hosts.

Method. The bucket's entries expire ``entry_ttl_s`` after they were last written (the stream's max
age), and each router writes its own every ``heartbeat_interval_s``: an entry is there while its
router lives, and gone a few seconds after it dies (a ``kill -9`` writes no goodbye). Each round
the router also reads the whole bucket afresh (an ordered consumer from the last value of every
key, which sees only entries that have not expired) and keeps that view in memory: forwarding and
the scanners' choice read it without a network call.

Failure. The bucket may be unreachable (NATS restarting, no meta leader yet): the router keeps its
last view for forwarding, which may name a node that died meanwhile (the forward then fails over
to the next host), but after ``view_trusted_s_max`` without a fresh read it no longer trusts it to
share the recovery scans out, and scans every shard (see :class:`~coffer.txn.scanners.RendezvousScope`).
"""

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from coffer.txn.scanners import LiveRouters

logger = logging.getLogger(__name__)

node_bucket = "coffer-nodes"
entry_ttl_s = 6.0  # an entry outlives its last heartbeat by this: a dead router leaves the view after it
heartbeat_interval_s = 2.0  # three heartbeats per TTL: one lost write does not drop a live router
view_trusted_s_max = entry_ttl_s  # past this without a fresh read, the view may miss a change of routers
request_s_max = 2.0  # one JetStream call
_key_unsafe = re.compile(r"[^-_=.a-zA-Z0-9]")


@dataclass(frozen=True)
class RouterEntry:
    """What one router process says of itself in the bucket."""

    router_id: str
    node: str
    url: str  # where other nodes forward to (this node's advertised API address)
    shards: frozenset[int]  # the shards this node's processes host

    def encode(self) -> bytes:
        return json.dumps({"router_id": self.router_id, "node": self.node, "url": self.url, "shards": sorted(self.shards)}).encode()

    @staticmethod
    def decode(data: bytes) -> "RouterEntry":
        """An entry as a router wrote it; ValueError for anything else (it is then ignored)."""
        try:
            fields = json.loads(data)
            entry = RouterEntry(str(fields["router_id"]), str(fields["node"]), str(fields["url"]), frozenset(int(shard) for shard in fields["shards"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a router's entry: {error!r}") from None
        check_url(entry.url)
        return entry


def check_url(url: str) -> str:
    """An advertised URL: ``http://host:port`` (a sharded node serves plain HTTP); ValueError if not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"{url!r} is not http://HOST:PORT")
    return url


def router_key(node: str, process_id: int) -> str:
    """The bucket key of a router process: its node's name (made a valid key) and its process id."""
    return f"{_key_unsafe.sub('_', node)}.{process_id}"


class NodeDirectory:
    """This router's entry in the bucket, kept alive, and its view of every live router's entry."""

    def __init__(
        self,
        servers: list[str],
        replicas: int,
        entry: RouterEntry,
        connect_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = servers
        self.replicas = replicas
        self.entry = entry
        self.connect_options = connect_options or {}
        self.clock = clock
        self.entries: dict[str, RouterEntry] = {}
        self.read_at: float | None = None  # when the view was last read in full
        self._connection: nats.NATS | None = None
        self._turn = 0

    # ------------------------------------------------------------------ the view

    def hosts_of(self, shard: int) -> list[str]:
        """The URLs of other nodes hosting ``shard``, a different one first on each call (spread)."""
        urls = sorted({entry.url for entry in self.entries.values() if shard in entry.shards and entry.url != self.entry.url})
        if not urls:
            return []
        self._turn += 1
        start = self._turn % len(urls)
        return urls[start:] + urls[:start]

    def live_routers(self) -> LiveRouters | None:
        """The live routers and the shards each hosts; None when the view is not fresh."""
        if self.read_at is None or self.clock() - self.read_at > view_trusted_s_max:
            return None
        return {router_id: entry.shards for router_id, entry in self.entries.items()}

    # ------------------------------------------------------------------ the heartbeat

    async def run(self) -> None:
        """Write this router's entry and read the others', every ``heartbeat_interval_s``, forever."""
        while True:
            try:
                await self.beat()
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                logger.warning("node directory: %r (keeping the view read %s)", error, "never" if self.read_at is None else "before")
                await self._drop_connection()
            await asyncio.sleep(heartbeat_interval_s)

    async def beat(self) -> None:
        """One round: write this router's entry, then read every live entry."""
        store = await self._store()
        await asyncio.wait_for(store.put(self.entry.router_id, self.entry.encode()), request_s_max)
        self.entries = await asyncio.wait_for(self._read_all(store), request_s_max * 2)
        self.read_at = self.clock()

    async def leave(self) -> None:
        """On a clean stop: remove this router's entry at once rather than after its TTL."""
        if self._connection is not None:
            try:
                store = await self._store()
                await asyncio.wait_for(store.delete(self.entry.router_id), request_s_max)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                logger.info("node directory: leaving: %r", error)
        await self._drop_connection()

    async def _store(self) -> Any:
        if self._connection is None:
            self._connection = await nats.connect(
                servers=self.servers, connect_timeout=request_s_max, max_reconnect_attempts=-1, **self.connect_options
            )
        js = self._connection.jetstream(timeout=request_s_max)
        try:
            return await js.key_value(node_bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(bucket=node_bucket, history=1, ttl=entry_ttl_s, replicas=self.replicas, storage=StorageType.MEMORY)
            return await js.create_key_value(config)

    @staticmethod
    async def _read_all(store: Any) -> dict[str, RouterEntry]:
        entries: dict[str, RouterEntry] = {}
        watcher = await store.watchall(ignore_deletes=True)
        try:
            async for found in watcher:
                if found is None:  # the end of what the bucket holds now
                    break
                if found.value:
                    try:
                        entries[found.key] = RouterEntry.decode(found.value)
                    except ValueError as error:
                        logger.warning("node directory: ignoring the entry %s: %s", found.key, error)
        finally:
            await watcher.stop()
        return entries

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await connection.close()
