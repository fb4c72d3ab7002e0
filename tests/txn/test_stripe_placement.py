"""Where a striped account's stripes go, and how its definition is kept: pure functions, table-driven."""

from collections import Counter

import pytest

from coffer.core.commands import metadata_keys_max, metadata_value_length_max, reserved_account_id_refusal, stripes_max
from coffer.txn.shard_map import ShardMap
from coffer.txn.stripes import Striped, place, stripe_for, stripe_id


@pytest.mark.parametrize(
    ("shards", "count"),
    [(2, 2), (3, 2), (3, 3), (3, 7), (16, 5), (16, 16), (16, 1023), (1000, 64), (1000, 1000), (1024, 1023)],
)
def test_every_shard_gets_an_equal_share(shards: int, count: int) -> None:
    shard_map = ShardMap.even(shards)
    numbers = place("merchant", count, shard_map)
    assert len(set(numbers)) == count and list(numbers) == sorted(numbers)
    held = Counter(shard_map.shard_of(stripe_id("merchant", number)) for number in numbers)
    share, extra = divmod(count, shards)
    assert sorted(held.values(), reverse=True) == [share + 1] * extra + [share] * (len(held) - extra)
    assert len(held) == min(count, shards)  # fewer stripes than shards: all on different shards
    assert place("merchant", count, shard_map) == numbers  # the same request places them the same


@pytest.mark.parametrize("count", [2, 64, 300, stripes_max])
def test_the_definition_survives_the_records_metadata(count: int) -> None:
    striped = Striped("merchant", "USD", place("merchant", count, ShardMap.even(1024)))
    metadata = striped.metadata()
    assert all(len(value) <= metadata_value_length_max for value in metadata.values()) and len(metadata) < metadata_keys_max
    assert Striped.from_view({"account_id": "merchant", "asset": "USD", "metadata": {"team": "x", **metadata}}) == striped
    assert Striped.from_view({"account_id": "merchant", "asset": "USD", "metadata": {"team": "coffer.stripes"}}) is None


def test_stripe_ids_are_reserved_and_short() -> None:
    identifier = stripe_id("m" * 128, 1022)
    assert identifier.startswith("st:") and len(identifier) <= 33
    assert reserved_account_id_refusal(identifier) is not None and reserved_account_id_refusal("merchant") is None
    assert stripe_id("a", 0) != stripe_id("b", 0)


def test_a_credit_goes_to_the_payers_shard_else_where_the_dedup_id_points() -> None:
    shard_map = ShardMap.even(8)
    striped = Striped("merchant", "USD", place("merchant", 3, shard_map))
    held = {shard_map.shard_of(stripe): stripe for stripe in striped.stripe_ids}
    for shard, stripe in held.items():
        assert stripe_for(striped, shard_map, shard, "any") == stripe
    bare = next(shard for shard in range(8) if shard not in held)
    chosen = {stripe_for(striped, shard_map, bare, f"d-{number}") for number in range(60)}
    assert chosen == set(striped.stripe_ids)  # spread over every stripe
    assert stripe_for(striped, shard_map, bare, "d-7") == stripe_for(striped, shard_map, None, "d-7")  # the request decides
