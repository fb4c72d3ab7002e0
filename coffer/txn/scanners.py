"""Which routers scan which shard for cross-shard tries left in doubt: a bounded set per shard.

Why. Every router runs a recovery task (:meth:`coffer.txn.coordinator.Coordinator.recover`). If
each scanned every shard, a shard would receive one scan per router per round, so the scans a
shard serves would grow with the number of routers, that is with the total rate. Here each shard
is scanned by ``recovery_scanners_per_shard`` routers only, whatever their number.

Method. Rendezvous (highest-random-weight) hashing: each router ranks ``(shard, router id)`` by a
hash, and the ``k`` highest among the live routers scan the shard. Every router computes the same
choice from the same list with no coordination, and a router that joins or leaves moves only the
shards it ranks first or second. Routers that host a shard's process are preferred for it (their
scan stays on loopback); a shard no live router hosts is shared out among all live routers.

Safety. Recovery is idempotent and its decisions are first-written-wins at the commit point, so a
shard scanned by more routers than needed costs load, never correctness. The risk is the other way:
a shard scanned by nobody. So a router that does not know the live set (no registry, or its view is
stale, or it does not see itself in it) scans every shard, as before. A router that died is in the
others' lists until its registry entry expires: its shards wait that long for a scan, then move.
"""

import hashlib
from collections.abc import Callable, Mapping
from typing import Protocol

recovery_scanners_per_shard = 2  # one is enough for progress; the second covers a router's death

# The live routers as a registry shows them: router id -> the shards it hosts (None: all of them).
LiveRouters = Mapping[str, frozenset[int] | None]


def _weight(shard: int, router_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}\0{router_id}".encode()).digest()[:8], "big")


def scanners_of(shard: int, live: LiveRouters, scanners_max: int = recovery_scanners_per_shard) -> list[str]:
    """The routers that scan ``shard``: the highest-ranked hosts of it, or of all live routers."""
    assert scanners_max >= 1
    hosts = [router_id for router_id, hosted in live.items() if hosted is None or shard in hosted]
    candidates = hosts or list(live)
    return sorted(candidates, key=lambda router_id: (_weight(shard, router_id), router_id), reverse=True)[:scanners_max]


class RecoveryScope(Protocol):
    """The shards one router's recovery round scans."""

    def shards_to_scan(self, shard_count: int) -> list[int]: ...


class EveryShard:
    """Scan every shard: a router alone, or one that knows no registry of routers."""

    def shards_to_scan(self, shard_count: int) -> list[int]:
        return list(range(shard_count))


class RendezvousScope:
    """Scan the shards this router ranks among the first ``scanners_max`` of the live routers.

    ``live`` answers the registry's current view, or None when it has no fresh one.
    """

    def __init__(
        self, router_id: str, live: Callable[[], LiveRouters | None], scanners_max: int = recovery_scanners_per_shard
    ) -> None:
        self.router_id = router_id
        self.live = live
        self.scanners_max = scanners_max

    def shards_to_scan(self, shard_count: int) -> list[int]:
        live = self.live()
        if not live or self.router_id not in live:
            return list(range(shard_count))  # no trustworthy view: leave no shard unscanned
        return [shard for shard in range(shard_count) if self.router_id in scanners_of(shard, live, self.scanners_max)]
