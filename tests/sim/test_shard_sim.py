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
    transfers = committed = faults = recovered = tries = tries_committed = tries_expired = 0
    for seed in range(1, 31):
        report = ShardSimulation(seed, shards).run(250)
        assert report.violations == [], f"seed {seed}: {report.violations}"
        transfers += report.transfers
        committed += report.committed
        faults += report.faults
        recovered += report.recovered
        tries += report.tcc_tries
        tries_committed += report.tcc_committed
        tries_expired += report.tcc_expired
    # The runs did what they are for: transfers and client-held tries across shards, faults,
    # commits, deadlines that passed, and recoveries.
    assert transfers > 1_200 and committed > 600 and faults > 1_000 and recovered > 100
    assert tries > 1_000 and tries_committed > 150 and tries_expired > 150


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


def _participants_expire_alone(coordinator: Coordinator) -> None:
    """A participant's try carries the client's timeout: its shard expires it on its own."""
    coordinator.participant_timeout_s = lambda tcc: tcc.timeout_s  # type: ignore[method-assign]


def _recovery_aborts_waiting_tries(coordinator: Coordinator) -> None:
    """Recovery takes a client-held try waiting for its confirm for one its coordinator left."""
    watch = coordinator._watch

    async def aborting(shard: int, txn_id: str, look: bool) -> bool:
        if look:
            await coordinator._resolve(shard, txn_id)
            return True
        return await watch(shard, txn_id, look)

    coordinator._watch = aborting  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "bug",
    [_decides_alone, _commits_regardless, _participants_expire_alone, _recovery_aborts_waiting_tries],
    ids=lambda bug: bug.__name__.strip("_"),
)
def test_a_planted_bug_is_caught(bug: Any) -> None:
    caught = []
    for seed in range(1, 21):
        report = ShardSimulation(seed, 3, bug=bug).run(250)
        if report.violations:
            caught.append((seed, report.violations[0]))
    assert caught, "no seed caught the planted bug"
