"""Which routers scan which shard: bounded per shard, every shard covered, a safe fallback."""

from collections import Counter

import pytest

from coffer.txn.scanners import EveryShard, LiveRouters, RendezvousScope, recovery_scanners_per_shard, scanners_of

shard_count = 64


def _routers(count: int, hosted: frozenset[int] | None = frozenset()) -> dict[str, frozenset[int] | None]:
    return {f"node-{number}.{1000 + number}": hosted for number in range(count)}


def _scans_per_shard(live: LiveRouters) -> Counter[int]:
    scans: Counter[int] = Counter()
    for router_id in live:
        scans.update(RendezvousScope(router_id, lambda: live).shards_to_scan(shard_count))
    return scans


@pytest.mark.parametrize("routers", [1, 2, 3, 16, 128])
def test_every_shard_has_a_bounded_number_of_scanners_whatever_the_number_of_routers(routers: int) -> None:
    scans = _scans_per_shard(_routers(routers))
    assert set(scans) == set(range(shard_count))
    assert set(scans.values()) == {min(routers, recovery_scanners_per_shard)}


def test_scanners_are_spread_over_the_routers() -> None:
    live = _routers(16)
    load = Counter(router_id for shard in range(shard_count) for router_id in scanners_of(shard, live))
    assert len(load) == 16 and max(load.values()) <= 3 * shard_count * recovery_scanners_per_shard // 16


def test_a_router_that_leaves_moves_only_its_own_shards() -> None:
    live = _routers(8)
    gone = next(iter(live))
    after = {router_id: hosted for router_id, hosted in live.items() if router_id != gone}
    for shard in range(shard_count):
        before = scanners_of(shard, live)
        now = scanners_of(shard, after)
        if gone not in before:
            assert now == before
        else:
            assert [router_id for router_id in before if router_id != gone] == now[: len(before) - 1]
    assert set(_scans_per_shard(after).values()) == {recovery_scanners_per_shard}


def test_hosts_of_a_shard_scan_it_and_a_shard_nobody_hosts_is_shared_out() -> None:
    live: dict[str, frozenset[int] | None] = {"a": frozenset({0}), "b": frozenset({1}), "c": frozenset({0, 1}), "d": None}
    assert set(scanners_of(0, live)) <= {"a", "c", "d"} and set(scanners_of(1, live)) <= {"b", "c", "d"}
    live = {"a": frozenset({0}), "b": frozenset({0})}
    assert set(scanners_of(0, live)) == {"a", "b"}
    assert len(scanners_of(5, live)) == recovery_scanners_per_shard  # hosted by none: any live router scans it


@pytest.mark.parametrize(
    "view",
    [None, {}, {"someone-else": frozenset()}],
    ids=["registry-unavailable", "registry-empty", "not-in-its-own-view"],
)
def test_a_router_without_a_trustworthy_view_scans_every_shard(view: LiveRouters | None) -> None:
    scope = RendezvousScope("me", lambda: view)
    assert scope.shards_to_scan(shard_count) == list(range(shard_count)) == EveryShard().shards_to_scan(shard_count)
