"""The shard map: a stable slot per account, a durable versioned map, and one number of shards per ledger."""

import json
from pathlib import Path

import pytest

from coffer.txn.shard_map import ShardMap, ShardMapError, load_or_create, slot_count, slot_of


def test_slots_are_stable_and_spread() -> None:
    # The hash is part of the data format: these values must never change.
    assert slot_of("alice") == slot_of("alice") and 0 <= slot_of("alice") < slot_count
    counts = [0, 0, 0, 0]
    even = ShardMap.even(4)
    for number in range(20_000):
        counts[even.shard_of(f"account-{number}")] += 1
    assert min(counts) > 4_500  # ~5,000 each


def test_an_even_map_covers_every_slot_once() -> None:
    for shards in (1, 2, 3, 7, 16):
        found = ShardMap.even(shards)
        assert found.ranges[0][0] == 0 and found.ranges[-1][1] == slot_count - 1
        assert sorted({found.shard_of_slot(slot) for slot in range(slot_count)}) == list(range(shards))


def test_a_map_with_holes_or_overlaps_is_refused() -> None:
    with pytest.raises(ShardMapError):
        ShardMap(1, 2, ((0, 100, 0), (102, slot_count - 1, 1)))
    with pytest.raises(ShardMapError):
        ShardMap(1, 2, ((0, 100, 0), (100, slot_count - 1, 1)))
    with pytest.raises(ShardMapError):
        ShardMap(1, 1, ((0, slot_count - 1, 3),))


def test_the_map_is_kept_and_another_number_of_shards_is_refused(tmp_path: Path) -> None:
    created = load_or_create(tmp_path, 3)
    assert load_or_create(tmp_path, 3) == created
    assert json.loads((tmp_path / "shardmap.json").read_text())["shards"] == 3
    with pytest.raises(ShardMapError, match="holds a ledger of 3 shards"):
        load_or_create(tmp_path, 4)


def test_a_single_shard_ledger_is_not_taken_for_a_sharded_one(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with pytest.raises(ShardMapError, match="without a shard map"):
        load_or_create(tmp_path, 2)


def test_a_damaged_map_is_refused(tmp_path: Path) -> None:
    (tmp_path / "shardmap.json").write_text("{not json")
    with pytest.raises(ShardMapError, match="not JSON"):
        load_or_create(tmp_path, 2)
