"""The shard map of a cluster, kept in a JetStream key-value bucket so that every node sees one map.

Method. The bucket ``coffer-shardmap`` (replicated like the shards' streams) holds the map's JSON
under the key ``map``; the map's own ``version`` says which map it is, the bucket keeps the last
``map_history`` versions. A node that finds no map writes an even map of the number of shards it
was started with, with a create (a write that succeeds only if the key does not exist): when
several nodes start at once, exactly one create wins and every node then reads the winner's map.
A node started with another number of shards than the map's is refused, as a data directory with
another number is refused on one machine: until resharding exists, accounts stay where they are.

The bucket may be unreachable for a while at start (no JetStream meta leader yet, a server
restarting): every call is retried until ``shard_map_wait_s_max``.
"""

import asyncio
import json
import logging
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from coffer.txn.shard_map import ShardMap, ShardMapError

logger = logging.getLogger(__name__)

shard_map_bucket = "coffer-shardmap"
shard_map_key = "map"
map_history = 16  # versions kept: enough to see how a map changed, a few KB
shard_map_wait_s_max = 60.0  # a cluster starting from scratch elects its meta leader within this
request_s_max = 2.0  # one JetStream API call
retry_wait_s = 0.25


class ShardMapUnavailable(RuntimeError):
    """The bucket could not be reached or created within the wait."""


def load_or_create_shared(
    servers: list[str], shards: int, replicas: int, wait_s_max: float = shard_map_wait_s_max, connect_options: dict[str, Any] | None = None
) -> ShardMap:
    """The cluster's map; an even map of ``shards`` when the cluster has none yet.

    Raises :class:`ShardMapError` when the cluster's map has another number of shards, and
    :class:`ShardMapUnavailable` when JetStream does not answer within ``wait_s_max``.
    """
    return asyncio.run(_load_or_create(servers, shards, replicas, wait_s_max, connect_options or {}))


def read_shared(servers: list[str], wait_s_max: float = shard_map_wait_s_max, connect_options: dict[str, Any] | None = None) -> ShardMap | None:
    """The cluster's map, or None if it has none."""
    return asyncio.run(_read(servers, wait_s_max, connect_options or {}))


async def _load_or_create(servers: list[str], shards: int, replicas: int, wait_s_max: float, connect_options: dict[str, Any]) -> ShardMap:
    wanted = ShardMap.even(shards)
    deadline = time.monotonic() + wait_s_max
    connection = await _connect(servers, deadline, connect_options)
    try:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                store = await connection.jetstream(timeout=request_s_max).create_key_value(
                    KeyValueConfig(bucket=shard_map_bucket, history=map_history, replicas=replicas, storage=StorageType.FILE)
                )
                try:
                    await store.create(shard_map_key, json.dumps(wanted.to_json()).encode())
                    logger.info("created the cluster's shard map: %d shards, version %d", shards, wanted.version)
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass  # another node created it first: read the winner's
                entry = await store.get(shard_map_key)
                assert entry.value is not None
                found = ShardMap.from_json(json.loads(entry.value))
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                last_error = error
                await asyncio.sleep(retry_wait_s)
        else:
            raise ShardMapUnavailable(f"the shard map bucket {shard_map_bucket} did not answer within {wait_s_max} s: {last_error!r}")
    finally:
        await connection.close()
    if found.shards != shards:
        raise ShardMapError(
            f"the cluster's ledger has {found.shards} shards (shard map version {found.version} in the JetStream bucket "
            f"{shard_map_bucket}), not {shards}: start this node with --shards {found.shards} "
            "(changing the number of shards of a ledger is not supported yet)"
        )
    return found


async def _read(servers: list[str], wait_s_max: float, connect_options: dict[str, Any]) -> ShardMap | None:
    deadline = time.monotonic() + wait_s_max
    connection = await _connect(servers, deadline, connect_options)
    try:
        while True:
            try:
                entry = await (await connection.jetstream(timeout=request_s_max).key_value(shard_map_bucket)).get(shard_map_key)
                assert entry.value is not None
                return ShardMap.from_json(json.loads(entry.value))
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
                return None
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise ShardMapUnavailable(f"the shard map bucket {shard_map_bucket} did not answer: {error!r}") from None
                await asyncio.sleep(retry_wait_s)
    finally:
        await connection.close()


async def _connect(servers: list[str], deadline: float, connect_options: dict[str, Any]) -> nats.NATS:
    while True:
        try:
            return await nats.connect(
                servers=servers, connect_timeout=request_s_max, max_reconnect_attempts=1, allow_reconnect=True, **connect_options
            )
        except (nats.errors.Error, TimeoutError, OSError) as error:
            if time.monotonic() >= deadline:
                raise ShardMapUnavailable(f"no NATS server reached among {servers}: {error!r}") from None
            await asyncio.sleep(retry_wait_s)
