"""64 shards in logical time: the work of every shared component per transfer does not grow with
the total rate; what grows is the number of routers, each as busy as before."""

from coffer.sim.scale import router_transfers_per_tick_max, scale_report
from coffer.txn.scanners import recovery_scanners_per_shard


def test_shared_work_per_transfer_stays_flat_as_the_total_rate_grows() -> None:
    # From two routers up, every shard has its full set of recovery scanners.
    low, high = scale_report(seed=7, shard_count=64, rates=[128, 1024], ticks=3)
    assert high.rate_per_tick == 8 * low.rate_per_tick and high.committed == high.transfers
    # Routers: more of them, never a busier one.
    assert high.routers == 8 * low.routers
    assert low.router_transfers_per_tick_max == high.router_transfers_per_tick_max == router_transfers_per_tick_max
    # Shard requests per transfer depend on the cross-shard share, not on the rate (sampling noise only).
    assert abs(high.shard_requests_per_transfer - low.shard_requests_per_transfer) < 0.25
    assert low.cross_shard_requests_per_transfer == high.cross_shard_requests_per_transfer
    # The shard map: one bucket read per router start, in-memory lookups per transfer constant.
    assert high.map_reads_per_transfer == low.map_reads_per_transfer
    assert abs(high.map_lookups_per_transfer - low.map_lookups_per_transfer) < 0.25
    # Recovery: each shard is scanned by a bounded set of routers, whatever their number (nothing is
    # left in doubt here, so a scan is one request) ...
    assert low.recovery_scans_per_shard_tick == high.recovery_scans_per_shard_tick == recovery_scanners_per_shard
    # ... so the routers share the scans out: a round costs fewer requests as routers are added.
    for figures in (low, high):
        assert figures.recovery_requests_per_router_round * figures.routers == 64 * recovery_scanners_per_shard
    # The busiest shard takes its share of the rate, no more as the rate grows (it evens out).
    assert high.busiest_shard_load <= low.busiest_shard_load
