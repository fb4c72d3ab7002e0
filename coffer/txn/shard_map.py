"""Which shard holds an account: a stable hash picks a slot, a versioned map assigns slots to shards.

Method. ``slot = CRC32C(account_id) mod slot_count`` with a fixed ``slot_count`` (16,384, as in
Redis Cluster): the hash never changes, so moving accounts between shards later means moving whole
slots in the map, never rehashing every account. The map is a list of slot ranges with the shard
that owns each; it has a version that grows with every change. Here it is a JSON file in the data
directory, written atomically (temporary file, fsync, rename, fsync of the directory); its JSON form
is what a cluster keeps in a JetStream key-value bucket.

A command's commit point (see :mod:`coffer.txn.coordinator`) is chosen by the same hash, applied
to the command's ``dedup_id``.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import crc32c

slot_count = 16_384
shard_map_file = "shardmap.json"
shard_map_format = 1
shards_max = 1_024  # a shard is a process with its own log: far more than one machine runs


class ShardMapError(ValueError):
    """The map file is missing, damaged, or disagrees with what the node was asked to run."""


def slot_of(key: str) -> int:
    return crc32c.crc32c(key.encode()) % slot_count


@dataclass(frozen=True)
class ShardMap:
    version: int
    shards: int
    ranges: tuple[tuple[int, int, int], ...]  # (first slot, last slot, shard), covering every slot once

    @classmethod
    def even(cls, shards: int) -> "ShardMap":
        """``shards`` shards with equal runs of slots: the map of a new sharded ledger."""
        if not 1 <= shards <= shards_max:
            raise ShardMapError(f"shards must be 1..{shards_max}, got {shards}")
        bounds = [slot_count * shard // shards for shard in range(shards + 1)]
        return cls(1, shards, tuple((bounds[shard], bounds[shard + 1] - 1, shard) for shard in range(shards)))

    def __post_init__(self) -> None:
        covered = 0
        for first, last, shard in self.ranges:
            if first != covered or last < first or not 0 <= shard < self.shards:
                raise ShardMapError("the shard map's ranges must cover every slot once, in order, with known shards")
            covered = last + 1
        if covered != slot_count:
            raise ShardMapError(f"the shard map covers {covered} of {slot_count} slots")
        object.__setattr__(self, "_slot_shards", _expand(self.ranges))

    def shard_of_slot(self, slot: int) -> int:
        return self._slot_shards[slot]  # type: ignore[attr-defined]

    def shard_of(self, key: str) -> int:
        """The shard of an account id (or of any key, such as a dedup_id)."""
        return self._slot_shards[slot_of(key)]  # type: ignore[attr-defined]

    def to_json(self) -> dict[str, object]:
        return {
            "format": shard_map_format,
            "version": self.version,
            "slot_count": slot_count,
            "shards": self.shards,
            "ranges": [list(item) for item in self.ranges],
        }

    @classmethod
    def from_json(cls, data: object) -> "ShardMap":
        if not isinstance(data, dict) or data.get("format") != shard_map_format or data.get("slot_count") != slot_count:
            raise ShardMapError(f"not a shard map of format {shard_map_format} with {slot_count} slots")
        try:
            ranges = tuple((int(first), int(last), int(shard)) for first, last, shard in data["ranges"])
            return cls(int(data["version"]), int(data["shards"]), ranges)
        except (KeyError, TypeError, ValueError) as error:
            raise ShardMapError(f"damaged shard map: {error}") from None


def _expand(ranges: tuple[tuple[int, int, int], ...]) -> list[int]:
    slots = [0] * slot_count
    for first, last, shard in ranges:
        slots[first : last + 1] = [shard] * (last - first + 1)
    return slots


def load_or_create(data_dir: Path, shards: int) -> ShardMap:
    """The data directory's map; a new directory gets an even map of ``shards``.

    An existing map with another number of shards is refused: until resharding exists, the
    accounts of a ledger stay where they are.
    """
    path = data_dir / shard_map_file
    if path.exists():
        try:
            found = ShardMap.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise ShardMapError(f"{path}: not JSON: {error}") from None
        if found.shards != shards:
            raise ShardMapError(
                f"{data_dir} holds a ledger of {found.shards} shards, not {shards}: start it with --shards {found.shards} "
                "(changing the number of shards of a ledger is not supported yet)"
            )
        return found
    if any(data_dir.glob("shard-*")) or (data_dir / "log").exists():
        raise ShardMapError(f"{data_dir} holds a ledger without a shard map: it was not started with --shards")
    created = ShardMap.even(shards)
    write(data_dir, created)
    return created


def write(data_dir: Path, shard_map: ShardMap) -> None:
    """Write ``shard_map`` to the data directory atomically (in a cluster: the node's copy of the
    bucket's map, so the directory is known as sharded)."""
    path = data_dir / shard_map_file
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        json.dump(shard_map.to_json(), file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    descriptor = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
