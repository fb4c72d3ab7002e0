"""The deterministic simulator: invariants hold under faults, runs repeat, and the checker bites.

- Many seeds, each a few hundred steps of clients, replicas and faults, break no invariant, and
  together they meet every kind of fault and every kind of command, accepted and rejected; so do
  runs full of amounts at the edge of 64 bits, and runs with 1 or 5 replicas.
- The simulated path is the real one with its time, threads and processes taken away: it runs
  with the clock, ``Thread.start`` and ``fork`` made to fail.
- The same seed gives the same digest, also in other processes with other string-hash seeds
  (so no set or hash order can leak into a run); other seeds give other digests.
- A bug planted in the code the service runs (in the test only) is reported as a violation of the
  invariant it breaks, with the command that replays it: in the state machine (double apply, a
  skipped version bump, a retry applied again, no TCC expiry, no limit check), in the replica (a
  recovery that forgets the TCC deadlines, a store writer that reports events stored before they
  are, or that loses part of what it coalesces, the log dropped when a snapshot starts rather
  than once it is active, a snapshot activated without syncing its directory) and in the group
  commit (answers or credentials shifted between the requests of one entry).

Budget: ``seed_count`` x ``steps_per_seed`` below takes about 25 s of CPU on the 2-core CI machine
(about 0.2 ms per step); the whole file about 40 s.
"""

import collections
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from click.testing import CliRunner

import coffer.log.base
import coffer.replica
import coffer.server.pipeline
from coffer.core.accounts import Account, DedupRecord, Effect, Result
from coffer.core.commands import Command
from coffer.core.events import EventRecord
from coffer.core.snapshot import restore_snapshot
from coffer.core.state_machine import StateMachine
from coffer.disk import Disk
from coffer.replica import Replica, StoreWriter
from coffer.server.pipeline import Outcome, RequestT, gather, outcomes_by_request
from coffer.sim.cli import sim
from coffer.sim.simulator import SeedReport, Simulation, fault_names, run_seed

seed_count = 400
steps_per_seed = 300
bug_seeds = range(1, 41)  # a planted bug must show within these seeds
bug_steps = 300
summary_pattern = re.compile(r"^sim: seeds=(\d+) steps=(\d+) faults=(\d+) violations=(\d+)$")


def first_violation(seeds: range = bug_seeds, steps: int = bug_steps) -> SeedReport | None:
    for seed in seeds:
        report = run_seed(seed, steps)
        if report.violation is not None:
            return report
    return None


def violated_invariants(seeds: range = bug_seeds, steps: int = bug_steps) -> set[str]:
    invariants = set()
    for seed in seeds:
        violation = run_seed(seed, steps).violation
        if violation is not None:
            invariants.add(violation.invariant)
    return invariants


# ------------------------------------------------------------------ invariants hold


def test_hundreds_of_seeds_under_faults_break_no_invariant() -> None:
    faults: collections.Counter[str] = collections.Counter()
    failures = []
    outcomes: collections.Counter[tuple[str, bool]] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    for seed in range(1, seed_count + 1):
        simulation = Simulation(seed, steps_per_seed)
        report = simulation.run()
        faults.update(report.faults)
        if report.violation is not None:
            violation = report.violation
            failures.append(f"seed {seed} step {violation.step}: {violation.invariant}: {violation.detail}")
        for outcome in simulation.auditor.outcomes.values():
            if outcome.command is not None and outcome.result is not None:
                outcomes[(type(outcome.command).__name__, outcome.result.ok)] += 1
                codes[outcome.result.code] += 1
    assert not failures, "\n".join(failures[:10])
    assert all(faults[name] > 0 for name in fault_names), f"a fault never happened: {dict(faults)}"
    command_kinds = {kind for kind, _ in outcomes}
    assert len(command_kinds) == 14, f"not every command was sent: {sorted(command_kinds)}"
    assert codes["VELOCITY_LIMIT_EXCEEDED"] > 0, "no velocity cap ever bit"
    never_accepted = sorted(kind for kind in command_kinds if not outcomes[(kind, True)])
    never_rejected = sorted(kind for kind in command_kinds if not outcomes[(kind, False)])
    assert not never_accepted, f"never accepted: {never_accepted}"
    # Compensate only fails on its own rules now and then; every other kind must also be rejected.
    assert set(never_rejected) <= {"Compensate"}, f"never rejected: {never_rejected}"


def test_balances_at_the_64_bit_edge_are_refused_not_crashed() -> None:
    # Amounts of 2**62 and 2**63 - 1 minor units, often: their sums go beyond what the log and the
    # events can encode, which the ledger must refuse. (Before 62684e4 the apply loop crashed here.)
    for seed in range(1, 41):
        report = run_seed(seed, 400, huge_amount_chance=0.25)
        assert report.violation is None, (seed, report.violation)


def test_fewer_and_more_replicas_and_clients_break_no_invariant() -> None:
    for replicas, clients in ((1, 1), (5, 8)):
        for seed in range(1, 21):
            report = run_seed(seed, 200, replicas=replicas, clients=clients)
            assert report.violation is None, (replicas, clients, seed, report.violation)


class _NoClock:
    """Stands in for the ``time`` module of the code the simulator runs: any use fails."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"time.{name} read in the simulated path")


def test_the_simulated_path_reads_no_clock_starts_no_thread_and_forks_nothing() -> None:
    def refuse(*arguments: Any, **keywords: Any) -> NoReturn:
        raise AssertionError("a thread or a process started in the simulated path")

    with pytest.MonkeyPatch.context() as patch:
        for module in (coffer.replica, coffer.log.base, coffer.server.pipeline):
            patch.setattr(module, "time", _NoClock())
        patch.setattr(threading.Thread, "start", refuse)
        patch.setattr(os, "fork", refuse)
        for seed in range(1, 11):
            report = run_seed(seed, 300)
            assert report.violation is None, (seed, report.violation)
            assert report.faults["crash_mid_snapshot"] + report.faults["restore_in_place"] > 0, seed


# ------------------------------------------------------------------ determinism


def test_the_same_seed_gives_the_same_digest() -> None:
    first, second = run_seed(11, 400), run_seed(11, 400)
    assert first.digest == second.digest
    assert first == second


def test_other_seeds_give_other_digests() -> None:
    digests = {run_seed(seed, 200).digest for seed in range(1, 21)}
    assert len(digests) == 20


def _cli_in_subprocess(*arguments: str, hash_seed: str) -> str:
    command = [sys.executable, "-c", "from coffer.sim.cli import sim; sim()", *arguments]
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=True)
    return completed.stdout.strip().splitlines()[-1]


def test_the_digest_is_the_same_in_other_processes_with_other_hash_seeds() -> None:
    in_this_process = run_seed(5, 300).digest
    lines = {_cli_in_subprocess("--seed", "5", "--steps", "300", hash_seed=hash_seed) for hash_seed in ("0", "12345")}
    assert len(lines) == 1
    assert lines.pop().endswith(f"digest={in_this_process}")


# ------------------------------------------------------------------ the command line


def test_a_batch_of_seeds_ends_with_the_summary_line() -> None:
    result = CliRunner().invoke(sim, ["--seeds", "3", "--steps", "100"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    match = summary_pattern.match(lines[-1])
    assert match is not None, lines[-1]
    seeds, steps, faults, violations = map(int, match.groups())
    assert (seeds, steps, violations) == (3, 300, 0) and faults > 0
    assert [line.split()[0] for line in lines[:-1]] == ["seed=1", "seed=2", "seed=3"]


def test_one_seed_prints_its_digest_last() -> None:
    result = CliRunner().invoke(sim, ["--seed", "9", "--steps", "100"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith(f"digest={run_seed(9, 100).digest}")


def test_seed_and_seeds_together_are_a_usage_error() -> None:
    result = CliRunner().invoke(sim, ["--seed", "1", "--seeds", "2"])
    assert result.exit_code == 2


# ------------------------------------------------------------------ the checker bites


@pytest.fixture
def planted() -> Iterator[pytest.MonkeyPatch]:
    """Plant a bug for one test; it is gone afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_double_applied_balance_change_is_caught(planted: pytest.MonkeyPatch) -> None:
    commit_net = StateMachine._commit_net

    def commit_twice(self: StateMachine, net: dict[str, int]) -> list[Account]:
        changed = commit_net(self, net)
        for account in changed:
            account.available += net[account.account_id]
        return changed

    planted.setattr(StateMachine, "_commit_net", commit_twice)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant in ("money-movement", "conservation")


def test_a_skipped_version_bump_is_caught(planted: pytest.MonkeyPatch) -> None:
    commit_net = StateMachine._commit_net

    def commit_without_version(self: StateMachine, net: dict[str, int]) -> list[Account]:
        changed = commit_net(self, net)
        for account in changed:
            account.version -= 1
        return changed

    planted.setattr(StateMachine, "_commit_net", commit_without_version)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "version"


def test_a_retry_applied_again_is_caught(planted: pytest.MonkeyPatch) -> None:
    replay = StateMachine._replay

    def apply_again(self: StateMachine, record: DedupRecord, command: Command) -> Result:
        if record.command == command and record.result.ok:
            return self._handlers[type(command)](command)
        return replay(self, record, command)

    planted.setattr(StateMachine, "_replay", apply_again)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "exactly-once"


def test_a_missing_tcc_expiry_is_caught(planted: pytest.MonkeyPatch) -> None:
    planted.setattr(StateMachine, "_expire_tries", lambda self: None)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "tcc-expiry"


def test_a_missing_limit_check_is_caught(planted: pytest.MonkeyPatch) -> None:
    planted.setattr(StateMachine, "_check_limits", lambda self, net: None)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "limits"


def test_a_restore_that_forgets_tcc_deadlines_is_caught_as_divergence(planted: pytest.MonkeyPatch) -> None:
    # The state hash cannot see the restore itself (the deadline heap is derived state): only a
    # later expiry that one replica does and another does not shows it, at the same log index —
    # or the state a recovery replays to.
    def restore_without_deadlines(data: bytes) -> StateMachine:
        machine = restore_snapshot(data)
        machine.expiries = []
        return machine

    planted.setattr(coffer.replica, "restore_snapshot", restore_without_deadlines)
    invariants = violated_invariants()
    # When the restored replica is the first at an index, the audit of its events catches it;
    # when its event store holds the expiries its replay missed, the replica itself refuses to
    # start (the store is ahead of the log: "recovery").
    assert "replica-divergence" in invariants
    assert invariants <= {"replica-divergence", "tcc-expiry", "recovery"}


def test_a_store_writer_that_reports_events_stored_too_early_is_caught(planted: pytest.MonkeyPatch) -> None:
    # Then a snapshot becomes active while its events are only queued: a crash now would leave a
    # hole in the event store that no replay can fill.
    put = StoreWriter.put

    def put_and_report_stored(self: StoreWriter, events: list[EventRecord]) -> None:
        put(self, events)
        self.stored_seq = self.queued_seq

    planted.setattr(StoreWriter, "put", put_and_report_stored)
    invariants = violated_invariants()
    assert "snapshot-covers-store" in invariants
    assert invariants <= {"snapshot-covers-store", "event-store"}


def test_a_store_writer_that_loses_part_of_a_coalesced_commit_is_caught(planted: pytest.MonkeyPatch) -> None:
    commit = StoreWriter._commit

    def commit_first_batch_only(self: StoreWriter, batches: list[list[EventRecord]]) -> None:
        commit(self, batches[:1])
        self.stored_seq = batches[-1][-1].seq

    planted.setattr(StoreWriter, "_commit", commit_first_batch_only)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "event-store"


def test_a_log_dropped_when_a_snapshot_starts_is_caught(planted: pytest.MonkeyPatch) -> None:
    # The snapshot may never become active (a crash inside its write, a failed write): recovery
    # then needs the log from an older snapshot, and the log no longer holds it.
    start_snapshot = Replica.start_snapshot

    def start_and_truncate(self: Replica) -> None:
        start_snapshot(self)
        if self.truncate_log:
            self.log.truncate_before(self.machine.log_index + 1)

    planted.setattr(Replica, "start_snapshot", start_and_truncate)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "recovery"
    assert "LogTruncatedError" in report.violation.detail


class _DiskWithoutDirectorySync:
    """The replica's disk, with directory syncs left out."""

    def __init__(self, disk: Disk) -> None:
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._disk, name)

    def sync_directory(self, directory: Path) -> None:
        pass


def test_a_snapshot_activated_without_a_directory_sync_is_caught(planted: pytest.MonkeyPatch) -> None:
    # Its rename is not durable: after a power loss the snapshot is pending again, while the log
    # below an older one was already dropped.
    reap_snapshot = Replica._reap_snapshot

    def reap_without_directory_sync(self: Replica) -> None:
        disk = self.disk
        self.disk = _DiskWithoutDirectorySync(disk)  # type: ignore[assignment]
        try:
            reap_snapshot(self)
        finally:
            self.disk = disk

    planted.setattr(Replica, "_reap_snapshot", reap_without_directory_sync)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "recovery"
    assert "LogTruncatedError" in report.violation.detail


def test_answers_shifted_between_the_requests_of_an_entry_are_caught(planted: pytest.MonkeyPatch) -> None:
    def shifted(
        sizes: list[int], log_index: int, results: list[Result], events: list[EventRecord], effects: list[Effect | None]
    ) -> list[list[Outcome]]:
        by_request = outcomes_by_request(sizes, log_index, results, events, effects)
        flat = [outcome for outcomes in by_request for outcome in outcomes]
        flat = flat[1:] + flat[:1]
        shifted_by_request = []
        for outcomes in by_request:
            shifted_by_request.append(flat[: len(outcomes)])
            del flat[: len(outcomes)]
        return shifted_by_request

    planted.setattr(coffer.server.pipeline, "outcomes_by_request", shifted)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "acknowledged-outcome"


def test_credentials_mixed_up_in_an_entry_are_caught(planted: pytest.MonkeyPatch) -> None:
    def first_actor_for_all(pending: deque[RequestT]) -> tuple[list[RequestT], list[Command], list[Any] | None]:
        requests, commands, actors = gather(pending)
        if actors is not None:
            actors = [requests[0].actor] * len(actors)
        return requests, commands, actors

    planted.setattr(coffer.server.pipeline, "gather", first_actor_for_all)
    report = first_violation()
    assert report is not None and report.violation is not None
    assert report.violation.invariant == "actor"


def test_a_failing_seed_prints_the_invariant_and_how_to_replay_it(planted: pytest.MonkeyPatch) -> None:
    planted.setattr(StateMachine, "_expire_tries", lambda self: None)
    report = first_violation()
    assert report is not None
    result = CliRunner().invoke(sim, ["--seed", str(report.seed), "--steps", str(bug_steps)])
    assert result.exit_code == 1
    assert f"VIOLATION seed={report.seed} " in result.output
    assert "invariant=tcc-expiry" in result.output
    assert f"replay: coffer sim --seed {report.seed} --steps {bug_steps}" in result.output
    assert summary_pattern.match(result.output.strip().splitlines()[-1].rsplit(" digest=", 1)[0])
