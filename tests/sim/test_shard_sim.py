"""The transaction layer under simulated faults, and planted bugs the checker must catch.

The simulation (coffer/sim/shards.py) runs the real coordinator and recovery against real state
machines behind the real request translation, losing requests and answers, crashing
coordinators between any two calls and racing recovery against live coordinators.
"""

import logging
from typing import Any

import pytest

from coffer.sim.shards import ShardSimulation
from coffer.txn.coordinator import Coordinator

logging.getLogger("coffer.txn").setLevel(logging.ERROR)


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_many_seeds_keep_every_invariant(shards: int) -> None:
    transfers = committed = faults = recovered = 0
    for seed in range(1, 31):
        report = ShardSimulation(seed, shards).run(250)
        assert report.violations == [], f"seed {seed}: {report.violations}"
        transfers += report.transfers
        committed += report.committed
        faults += report.faults
        recovered += report.recovered
    # The runs did what they are for: many transfers, faults, commits, and recoveries.
    assert transfers > 3_000 and committed > 1_000 and faults > 1_000 and recovered > 100


def _decides_alone(coordinator: Coordinator) -> None:
    """A participant decides alone: nothing is written at the commit point."""

    async def decide(commit_point: int, txn_id: str, decision_body: dict[str, Any]) -> dict[str, Any]:
        return {key: decision_body.get(key) for key in ("commit", "reason_code", "reason_message", "reason_account_id")}

    coordinator._decide = decide  # type: ignore[method-assign]


def _commits_regardless(coordinator: Coordinator) -> None:
    """A coordinator that commits although a try was rejected."""
    original = coordinator._decide

    async def decide(commit_point: int, txn_id: str, decision_body: dict[str, Any]) -> dict[str, Any]:
        return await original(commit_point, txn_id, {**decision_body, "commit": True})

    coordinator._decide = decide  # type: ignore[method-assign]


@pytest.mark.parametrize("bug", [_decides_alone, _commits_regardless], ids=lambda bug: bug.__name__.strip("_"))
def test_a_planted_bug_is_caught(bug: Any) -> None:
    caught = []
    for seed in range(1, 21):
        report = ShardSimulation(seed, 3, bug=bug).run(250)
        if report.violations:
            caught.append((seed, report.violations[0]))
    assert caught, "no seed caught the planted bug"
