"""Does any shared component's work grow with the total rate? A deterministic count over many shards.

Job. Run the real transaction layer — the real :class:`~coffer.txn.coordinator.Coordinator`, its
real recovery rounds and the real cross-shard plan, over real state machines behind the edge's real
request translation (:class:`coffer.sim.shards.SimShard`) — for many shards (64 and more) at
several total rates, in logical time, and count the work of every component that more than one
shard shares:

- the **routers**: as many as the rate needs at a fixed number of transfers per router per tick
  (a router is a process with a bounded capacity; more load means more routers, never a busier
  one), each with its own coordinator; counted: transfers each router handles per tick, shard
  requests per transfer (forwards, tries, decisions, confirms);
- the **shard map**: read from the key-value bucket once by every router when it starts, then
  looked up in memory; counted: bucket reads per transfer, lookups per transfer;
- **coordinator recovery**: every router runs one recovery round per tick (a tick is the recovery
  interval, one second) over the shards the registry of live routers gives it (rendezvous hashing,
  :mod:`coffer.txn.scanners`: a bounded number of scanners per shard); counted: requests each
  round sends, and scans each shard receives per tick;
- the **shards**: requests the busiest shard receives per tick, over the rate's share per shard.

Method. One seeded ``random.Random`` draws the transfers (a share ``cross_shard`` between two
shards); each tick, ``rate`` transfers go round-robin to the routers, each runs to its end (logical
time: there is nothing to wait for), then every router runs its recovery round. No faults: this
simulation counts work; the fault-injecting one is :mod:`coffer.sim.shards`. At the end money is
checked to be conserved and nothing left open.
"""

import asyncio
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from coffer.server import transactions
from coffer.sim.shards import SimShard
from coffer.txn import coordinator as txn
from coffer.txn.coordinator import Coordinator, txn_prefix
from coffer.txn.scanners import LiveRouters, RendezvousScope
from coffer.txn.shard_map import ShardMap

router_transfers_per_tick_max = 64  # one router's capacity in the simulation's unit of time
accounts_per_shard = 4
opening_units = "1000000.00"


class CountingShardMap:
    """The shard map a router holds after its one read of the bucket; counts its lookups."""

    def __init__(self, shard_map: ShardMap) -> None:
        self._map = shard_map
        self.shards = shard_map.shards
        self.lookups = 0

    def shard_of(self, key: str) -> int:
        self.lookups += 1
        return self._map.shard_of(key)


class CountingShards:
    """The shards as one router sees them (the interface the coordinator calls): counts requests."""

    def __init__(self, shards: list[SimShard]) -> None:
        self.shards = shards
        self.urls = [f"sim://shard-{shard.number}" for shard in shards]
        self.requests = 0
        self.per_shard: Counter[int] = Counter()

    @property
    def count(self) -> int:
        return len(self.shards)

    async def post(self, shard: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        self.per_shard[shard] += 1
        return self.shards[shard].post(path, body)

    async def get(self, shard: int, path: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        self.per_shard[shard] += 1
        return self.shards[shard].get(path, params)


@dataclass
class SimRouter:
    shard_map: CountingShardMap
    shards: CountingShards
    coordinator: Coordinator
    transfers: int = 0
    recovery_requests: int = 0


@dataclass
class ScaleFigures:
    """The counts of one run at one total rate."""

    shards: int
    rate_per_tick: int
    ticks: int
    cross_shard: float
    routers: int
    transfers: int
    committed: int
    router_transfers_per_tick_max: float
    shard_requests_per_transfer: float
    cross_shard_requests_per_transfer: float
    map_reads_per_transfer: float
    map_lookups_per_transfer: float
    recovery_requests_per_router_round: float
    recovery_scans_per_shard_tick: float
    busiest_shard_load: float  # requests per tick of the busiest shard, over the mean shard's
    per_shard_requests_per_tick: dict[int, float] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"scale: shards={self.shards} rate={self.rate_per_tick}/tick routers={self.routers} transfers={self.transfers} "
            f"router_load_max={self.router_transfers_per_tick_max:.1f}/tick "
            f"shard_requests_per_transfer={self.shard_requests_per_transfer:.3f} "
            f"per_cross_shard_transfer={self.cross_shard_requests_per_transfer:.3f} "
            f"map_reads_per_transfer={self.map_reads_per_transfer:.5f} map_lookups_per_transfer={self.map_lookups_per_transfer:.2f} "
            f"recovery_requests_per_round={self.recovery_requests_per_router_round:.1f} "
            f"recovery_scans_per_shard_tick={self.recovery_scans_per_shard_tick:.1f} busiest_shard_load={self.busiest_shard_load:.2f}"
        )


class ScaleSimulation:
    def __init__(self, seed: int, shard_count: int, rate_per_tick: int, cross_shard: float = 0.1) -> None:
        assert shard_count >= 2 and rate_per_tick >= 1 and 0.0 <= cross_shard <= 1.0
        self.rng = random.Random(seed)
        self.shard_map = ShardMap.even(shard_count)
        self.shards = [SimShard(number) for number in range(shard_count)]
        self.rate_per_tick = rate_per_tick
        self.cross_shard = cross_shard
        self.by_shard: list[list[str]] = [[] for _ in range(shard_count)]
        self.loop = asyncio.new_event_loop()
        self._open_accounts()
        router_count = math.ceil(rate_per_tick / router_transfers_per_tick_max)
        # The registry of live routers as every router reads it: none hosts a shard process here.
        self.live: dict[str, frozenset[int] | None] = {f"router-{number}": frozenset() for number in range(router_count)}
        self.routers = []
        for number in range(router_count):
            shard_map = CountingShardMap(self.shard_map)  # one read of the bucket, at the router's start
            shards = CountingShards(self.shards)
            scope = RendezvousScope(f"router-{number}", self._live_routers)
            self.routers.append(SimRouter(shard_map, shards, Coordinator(shards, shard_map, scope=scope)))  # type: ignore[arg-type]
        self.map_reads = router_count

    def _live_routers(self) -> LiveRouters:
        return self.live

    def _open_accounts(self) -> None:
        number = 0
        while any(len(found) < accounts_per_shard for found in self.by_shard):
            account_id = f"s{number}"
            number += 1
            shard = self.shard_map.shard_of(account_id)
            if len(self.by_shard[shard]) >= accounts_per_shard:
                continue
            self.by_shard[shard].append(account_id)
            target = self.shards[shard]
            for kind, fields in (
                ("create_account", {"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "USD"}),
                ("batch_operation", {"dedup_id": f"fund-{account_id}", "legs": [{"account_id": account_id, "amount": opening_units, "asset": "USD"}]}),
            ):
                status, answer = target._command(kind, fields)
                assert status == 200, answer

    def _transfer(self, number: int) -> dict[str, Any]:
        rng = self.rng
        shard = rng.randrange(len(self.shards))
        if rng.random() < self.cross_shard:
            other = (shard + rng.randrange(1, len(self.shards))) % len(self.shards)
            source, target = rng.choice(self.by_shard[shard]), rng.choice(self.by_shard[other])
        else:
            source, target = rng.sample(self.by_shard[shard], 2)
        amount = f"{rng.randrange(1, 100)}.{rng.randrange(100):02d}"
        return {"dedup_id": f"x{number}", "from_account_id": source, "to_account_id": target, "amount": amount, "asset": "USD"}

    async def _handle(self, router: SimRouter, body: dict[str, Any]) -> tuple[int, bool]:
        """What the router does with one transfer: forward it, or coordinate it; (status, cross-shard)."""
        router.transfers += 1
        plan = txn.plan("transfer", body, router.shard_map)  # type: ignore[arg-type]
        if plan is None:
            status, _ = await router.shards.post(router.shard_map.shard_of(body["from_account_id"]), "/v1/transfers", body)
            return status, False
        outcome = await router.coordinator.run(plan)
        return outcome.status, True

    def run(self, ticks: int) -> ScaleFigures:
        number = 0
        committed = 0
        cross_requests = 0
        cross_transfers = 0
        router_load_max = 0
        recovery_requests = 0
        for _ in range(ticks):
            per_router: Counter[int] = Counter()
            for index in range(self.rate_per_tick):
                router = self.routers[index % len(self.routers)]
                per_router[index % len(self.routers)] += 1
                before = router.shards.requests
                status, cross = self.loop.run_until_complete(self._handle(router, self._transfer(number)))
                number += 1
                committed += status == 200
                if cross:
                    cross_transfers += 1
                    cross_requests += router.shards.requests - before
            router_load_max = max(router_load_max, max(per_router.values()))
            for router in self.routers:
                before = router.shards.requests
                self.loop.run_until_complete(router.coordinator.recover(in_doubt_s=0.0))
                recovery_requests += router.shards.requests - before
        self.loop.close()
        self._check()
        shard_count = len(self.shards)
        total_requests = sum(router.shards.requests for router in self.routers)
        per_shard: Counter[int] = Counter()
        for router in self.routers:
            per_shard.update(router.shards.per_shard)
        transfer_requests = total_requests - recovery_requests
        rounds = ticks * len(self.routers)
        mean_shard = total_requests / shard_count
        return ScaleFigures(
            shards=shard_count,
            rate_per_tick=self.rate_per_tick,
            ticks=ticks,
            cross_shard=self.cross_shard,
            routers=len(self.routers),
            transfers=number,
            committed=committed,
            router_transfers_per_tick_max=float(router_load_max),
            shard_requests_per_transfer=transfer_requests / number,
            cross_shard_requests_per_transfer=cross_requests / max(1, cross_transfers),
            map_reads_per_transfer=self.map_reads / number,
            map_lookups_per_transfer=sum(router.shard_map.lookups for router in self.routers) / number,
            recovery_requests_per_router_round=recovery_requests / rounds,
            recovery_scans_per_shard_tick=recovery_requests / (shard_count * ticks),
            busiest_shard_load=max(per_shard.values()) / mean_shard,
            per_shard_requests_per_tick={shard: count / ticks for shard, count in sorted(per_shard.items())},
        )

    def _check(self) -> None:
        """Money conserved over all shards, nothing left open, nothing pending."""
        total = 0
        for shard in self.shards:
            assert not transactions.open_transactions(shard.machine, txn_prefix, 10), f"shard {shard.number} holds open transactions"
            for account in shard.machine.accounts.values():
                assert not account.pending_in and not account.pending_out, account.account_id
                total += account.available + sum(account.reservations.values())
        opening = int(opening_units.replace(".", ""))
        assert total == opening * accounts_per_shard * len(self.shards), "money not conserved across shards"


def scale_report(seed: int, shard_count: int, rates: list[int], ticks: int, cross_shard: float = 0.1) -> list[ScaleFigures]:
    """One run per total rate, same shards and seed."""
    return [ScaleSimulation(seed, shard_count, rate, cross_shard).run(ticks) for rate in rates]
