"""Deterministic simulation of one Coffer shard: the real replica under faults, from one seed.

Job. Run the code the service runs — :class:`coffer.replica.Replica` (recovery from snapshot plus
log replay, apply, the rules that start and activate snapshots, the store writer feeding the real
:class:`coffer.history.event_store.EventStore`), the log entries of :mod:`coffer.core.entries`, and
the group commit's batching of :mod:`coffer.server.pipeline` — with its time, storage and log
injected, in one process, driven by one seeded ``random.Random``: no wall clock, no thread, no
fork, no file. Inject the faults a deployment meets and let :class:`coffer.sim.checker.Auditor`
check the SPEC's invariants after every step. The same seed gives the same run, byte for byte,
summed up by a digest.

What is modelled, not run, and why:
- the log service (:mod:`coffer.sim.log`) and the disk (:mod:`coffer.sim.disk`): they are the
  injected parts, under the RNG's control;
- the network between clients and nodes (lost, duplicated, delayed answers);
- the pipeline's asyncio scaffolding: its tasks, its thread executors and its waits — a follower
  that polls every 2 ms for up to 15 s, a deadline check every 0.1 s of wall time — cannot be
  stepped without running thousands of idle wake-ups per simulated second. The simulator plays
  the follower's part instead: a node gathers the requests waiting for it into one entry with
  :func:`coffer.server.pipeline.gather`, appends it, and when its replica has applied the entry
  (read back from the log, matched by its origin) answers each request with
  :func:`coffer.server.pipeline.outcomes_by_request`; a node whose ledger has a TCC deadline due
  and nothing to write appends a time-only entry, as the pipeline's deadline keeper does;
- the cluster's shared snapshots (a replica fetching another's snapshot from the log service).

Method. A run boots every node, then runs ``steps`` steps; each picks one action with the RNG:

- a client sends a new request (one to three commands) to a node, or retries an unanswered one
  with the same ``dedup_id``\\s and payload, or repeats an answered one to check it is stable;
- a node appends the requests waiting for it as one entry (group commit, at most
  ``appends_in_flight_max`` entries in flight per node) — or a request is appended as soon as it
  arrives;
- the log makes the appends in flight durable, in order; the appending node may crash right
  after, before it applied its entry; the append of a node that crashed may still land;
- a node's replica applies the next few entries the log delivers to it — nodes run at their own
  pace, so one lags — and answers the requests of its own entries; an answer may be lost,
  duplicated or delayed; its store writer commits now and then;
- a node's snapshot writer writes the snapshot its replica started (the node may crash inside
  the write, or the write fail); the replica activates it by its own rules;
- a node crashes — at once, or at one of its next disk operations (snapshot writes, renames,
  directory syncs, removals, event store commits) — as a killed process or in a power loss (its
  disk keeps only what was synced), and later restarts: the real recovery, from its disk and the
  log that reached it (the log may deliver more first);
- a node restarts cleanly from a snapshot of its own state, taken on the spot;
- a node is paused (the log reaches it only some steps later);
- a node's newest snapshot file goes bad on its disk (recovery must fall back);
- the log loses its newest append in flight (a torn tail: nobody was answered; clients retry),
  or hands out a time that steps back (a new log leader with a slower clock);
- a node appends a time-only entry because a TCC deadline passed on a quiet ledger.

Log time advances by a random amount each step, so TCC timeouts fire and the replica's
snapshot-by-time rule runs on the simulated clock. After every step the auditor checks every
live replica's position, every event its store committed and every snapshot file that became
active; after every recovery, the recovered state and that no unfinished snapshot file is left. After the steps, the run settles (every node restarts and catches up, every answer
arrives), the final states and the acknowledged outcomes are compared, and every node is shut
down cleanly and recovered once more.
"""

import logging
import random
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import crc32c

from coffer.core import entries
from coffer.core.accounts import Effect, Result
from coffer.core.commands import Command
from coffer.core.events import Actor
from coffer.core.snapshot import restore_snapshot
from coffer.log.base import LogRecord
from coffer.replica import Replica, SnapshotCorrupt, read_snapshot_file
from coffer.server import pipeline
from coffer.sim import workload
from coffer.sim.checker import Auditor, InvariantViolation
from coffer.sim.disk import SimulatedCrash, SimulatedDisk, SimulatedEventStore
from coffer.sim.log import Append, NodeLog, NodeLogState, SimulatedLog
from coffer.sim.snapshots import SteppedSnapshotWriter
from coffer.sim.workload import Workload

replicas_default = 3
clients_default = 4
start_time_ms = 1_700_000_000_000  # a realistic epoch time: the ledger clock starts here
time_steps_ms = (0, 0, 1, 10, 100, 500, 1_000, 2_000, 5_000)  # log time added per step
retry_after_steps = 10  # a client that got no answer for this many steps sends again
entries_per_apply_max = 4
reply_delay_steps_max = 3
pause_steps_max = 30  # a paused replica applies nothing for up to this many steps
trace_lines_kept = 40  # the last steps printed with a violation
# Per node, the log entries between its snapshots: small, so that a run meets many snapshots.
snapshot_entries_choices = (4, 8, 16, 32)
crash_countdown_operations_max = 6  # an armed crash hits one of the node's next this many disk operations
snapshot_write_operations = 3  # writing a snapshot file: the temporary file, its rename, the directory sync
data_root = Path("/simulated")  # where the nodes' data directories seem to be (on their simulated disks)

# Chances, per occasion, of each fault; high enough that a few hundred steps meet each of them.
crash_after_append_chance = 0.03  # per log sync: the appending node dies before applying
crash_mid_snapshot_chance = 0.2  # per snapshot write
snapshot_failed_chance = 0.05  # per snapshot write: it fails before writing anything
crash_armed_chance = 0.5  # per crash: at one of the node's next disk operations, not at once
power_loss_chance = 0.5  # per crash: the disk loses what was not synced (else the process alone dies)
append_survives_crash_chance = 0.5  # per append in flight of a node that crashes: it still lands
# Per request reaching a node with an append slot free: its writer takes it at once, as the
# pipeline's does (else it waits, and later requests join it in one entry).
append_at_once_chance = 0.5
reply_lost_chance = 0.06  # per answer
reply_duplicated_chance = 0.05  # per answer
reply_delayed_chance = 0.2  # per answer: it comes 1..reply_delay_steps_max steps late
immediate_recovery_chance = 0.5  # per restart: the log reaches the node before it recovers (else lazily)
store_commit_chance = 0.5  # per apply: the replica's store writer commits what is queued
repeat_answered_chance = 0.08  # per request: a client resends an answered command
clock_step_back_chance = 0.01  # per synced entry: the log's time steps back (new leader, slower clock)
clock_step_back_ms_max = 3_000
# Recovery on the shared log waits for it to reach what the node's event store holds; the
# simulated log cannot grow while a replica recovers, so a wait this long (simulated) is a bug.
recovery_log_wait_s_max = 60.0
truncate_log_chance = 0.5  # per node: it drops the log below its snapshots, as a single node's WAL does

# Relative weights of the actions of a step (each only when it can happen).
action_weights: dict[str, int] = {
    "client": 40,
    "append": 8,
    "sync": 14,
    "apply": 34,
    "snapshot": 4,
    "crash": 1,
    "restart": 6,
    "torn_tail": 2,
    "restore_in_place": 1,
    "pause": 2,
    "damage": 1,
    "tick": 2,
}
fault_names = (
    "crash",
    "crash_after_append",
    "crash_mid_snapshot",
    "crash_at_disk_operation",
    "power_loss",
    "snapshot_failed",
    "append_after_crash",
    "torn_tail",
    "restore_in_place",
    "reply_lost",
    "reply_duplicated",
    "reply_delayed",
    "clock_step_back",
    "replica_paused",
    "snapshot_damaged",
)


@dataclass
class Violation:
    """The first invariant a seed broke, and where."""

    step: int
    invariant: str
    detail: str
    trace: list[str]


@dataclass
class SeedReport:
    seed: int
    steps: int  # steps run (fewer than asked when a violation stopped the run)
    faults: dict[str, int]
    entries: int
    events: int
    commands: int
    answers: int
    digest: str
    violation: Violation | None

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())


@dataclass
class _Request:
    """A client's request waiting at a node (what :func:`coffer.server.pipeline.gather` takes)."""

    client: int  # -1 for the empty request of a time-only entry
    number: int  # the client's request number
    commands: list[Command]
    actor: Actor | None


@dataclass
class _Process:
    """What a node's crash destroys."""

    replica: Replica
    snapshots: SteppedSnapshotWriter
    pending: deque[_Request] = field(default_factory=deque)  # sent to the node, not appended yet
    appended: dict[str, list[_Request]] = field(default_factory=dict)  # origin -> its requests, until applied


@dataclass
class _Node:
    """What a node keeps across crashes, and its process while it runs."""

    number: int
    name: str
    disk: SimulatedDisk
    snapshot_entries: int
    truncate_log: bool
    speed: int  # relative chance to be the one that applies next
    log_state: NodeLogState = field(default_factory=NodeLogState)
    process: _Process | None = None
    boots: int = 0
    entries_appended: int = 0  # with ``boots``, makes every origin unique
    paused_until_step: int = 0  # delayed delivery: the log reaches it again at this step
    store_checked_seq: int = 0  # the auditor checked its event store up to here
    store_changes_checked: int = 0
    disk_changes_checked: int = -1
    snapshot_files_checked: set[tuple[Path, int]] = field(default_factory=set)  # (path, CRC32C), membership only
    data_dir: Path = field(init=False)
    snapshot_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = data_root / self.name
        self.snapshot_dir = self.data_dir / "snapshots"


@dataclass
class _Reply:
    deliver_step: int
    client: int
    request: int
    offset: int  # the request's first command's position in its entry
    outcomes: list[pipeline.Outcome]


@dataclass
class _Client:
    name: str
    actor: Actor | None  # the credential it sends with (some clients send none)
    request: int = 0  # number of the current request; 0 before the first
    commands: tuple[Command, ...] = ()
    waiting: bool = False
    sent_step: int = 0
    sent: dict[int, tuple[Command, ...]] = field(default_factory=dict)  # request number -> its commands
    answered: list[Command] = field(default_factory=list)  # commands it got an answer for
    acknowledged: dict[str, list[tuple[Command, Result]]] = field(default_factory=dict)


class _TraceHandler(logging.Handler):
    """Puts what the real code logs (warnings and worse) into the run's trace."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._note = note

    def emit(self, record: logging.LogRecord) -> None:
        self._note(f"log {record.levelname.lower()}: {record.getMessage()}")


class Simulation:
    """One seeded run; :meth:`run` returns its report."""

    def __init__(
        self,
        seed: int,
        steps: int,
        replicas: int = replicas_default,
        clients: int = clients_default,
        *,
        huge_amount_chance: float = workload.huge_amount_chance,
        keep_full_trace: bool = False,
    ) -> None:
        assert replicas >= 1 and clients >= 1 and steps >= 0
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.auditor = Auditor()
        self.workload = Workload(self.rng, huge_amount_chance=huge_amount_chance)
        self.log = SimulatedLog()
        self.clock_ms = start_time_ms
        self.nodes = [
            _Node(
                number,
                f"replica-{number}",
                SimulatedDisk(self.rng),
                snapshot_entries=self.rng.choice(snapshot_entries_choices),
                truncate_log=self.rng.random() < truncate_log_chance,
                speed=self.rng.choice((1, 1, 4)),
            )
            for number in range(replicas)
        ]
        # Every other client sends with a credential, so entries mix commands with and without.
        self.clients = [
            _Client(f"client-{number}", Actor(f"key-{number}", "operator") if number % 2 == 0 else None)
            for number in range(clients)
        ]
        self.network: list[_Reply] = []
        self.faults = dict.fromkeys(fault_names, 0)
        self.step = 0
        self.commands = 0
        self.answers = 0
        self.trace: list[str] = []  # the last steps, for a violation report
        self.full_trace: list[str] | None = [] if keep_full_trace else None
        run = (
            f"coffer-sim seed={seed} steps={steps} replicas={replicas} clients={clients} huge_amount_chance={huge_amount_chance}"
        )
        self._digest = sha256(run.encode())
        self._actions: dict[str, Callable[[], None]] = {
            "client": self._client_sends,
            "append": self._append_one,
            "sync": self._sync,
            "apply": self._apply_some,
            "snapshot": self._write_snapshot,
            "crash": self._crash_one,
            "restart": self._restart_one,
            "torn_tail": self._tear_tail,
            "restore_in_place": self._restore_in_place,
            "pause": self._pause_one,
            "damage": self._damage_snapshot,
            "tick": self._tick,
        }

    # ------------------------------------------------------------------ the run

    def run(self) -> SeedReport:
        violation = None
        replica_logger = logging.getLogger("coffer.replica")
        handler = _TraceHandler(self._note)
        replica_logger.addHandler(handler)
        propagate, replica_logger.propagate = replica_logger.propagate, False
        try:
            for node in self.nodes:
                self._boot(node)
            for step in range(1, self.steps + 1):
                self.step = step
                self._one_step()
            self.step = self.steps + 1
            self._settle()
        except InvariantViolation as error:
            violation = Violation(self.step, error.invariant, error.detail, self.trace[-trace_lines_kept:])
        except (Exception, SimulatedCrash) as error:  # an assertion or crash inside the product is a finding too
            violation = Violation(self.step, "exception", _describe(error), self.trace[-trace_lines_kept:])
        finally:
            replica_logger.removeHandler(handler)
            replica_logger.propagate = propagate
        return SeedReport(
            seed=self.seed,
            steps=min(self.step, self.steps),
            faults=dict(self.faults),
            entries=self.log.last_index,
            events=len(self.auditor.event_hashes),
            commands=self.commands,
            answers=self.answers,
            digest=self._digest.hexdigest(),
            violation=violation,
        )

    def _one_step(self) -> None:
        self.clock_ms += self.rng.choice(time_steps_ms)
        possible = [name for name in action_weights if self._can(name)]
        action = self.rng.choices(possible, [action_weights[name] for name in possible])[0]
        self._actions[action]()
        self._deliver(self.step)
        self._check_nodes()

    def _check_nodes(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                self.auditor.check_position(node.name, node.process.replica.machine)
            self._check_disk(node)

    def _can(self, action: str) -> bool:
        if action == "client":
            return any(self._may_send(client) for client in self.clients)
        if action == "append":
            return any(self._may_append(node) for node in self.nodes)
        if action in ("sync", "torn_tail"):
            return bool(self.log.in_flight)
        if action == "apply":
            return bool(self._behind())
        if action == "snapshot":
            return any(node.process is not None and node.process.snapshots.running for node in self.nodes)
        if action == "restart":
            return any(node.process is None for node in self.nodes)
        if action == "tick":
            return any(self._deadline_due(node) for node in self.nodes)
        if action == "damage":
            return any(self._damageable(node) for node in self.nodes)
        assert action in ("crash", "restore_in_place", "pause")
        return any(node.process is not None for node in self.nodes)

    def _may_send(self, client: _Client) -> bool:
        """Idle, or waiting for an answer so long that it sends again."""
        return not client.waiting or self.step - client.sent_step >= retry_after_steps

    def _note(self, line: str) -> None:
        """One line of the run's trace: kept for a violation report and folded into the digest."""
        line = f"{self.step} {line}"
        self.trace.append(line)
        if self.full_trace is not None:
            self.full_trace.append(line)
        if len(self.trace) > 4 * trace_lines_kept:
            del self.trace[:-trace_lines_kept]
        self._digest.update(line.encode() + b"\n")

    def _fault(self, name: str) -> None:
        self.faults[name] += 1

    def _clock_s(self) -> float:
        """The replicas' monotonic clock: the simulated time, in seconds."""
        return self.clock_ms / 1000

    def _clock_ms(self) -> int:
        return self.clock_ms

    def _pass_time_s(self, seconds: float) -> None:
        """A replica pauses (recovery waiting for the log): simulated time passes, none is slept."""
        self.clock_ms += round(seconds * 1000)

    def _random_alive(self) -> _Node:
        return self.rng.choice([node for node in self.nodes if node.process is not None])

    # ------------------------------------------------------------------ clients

    def _client_sends(self) -> None:
        client_number = self.rng.choice([number for number, client in enumerate(self.clients) if self._may_send(client)])
        client = self.clients[client_number]
        if client.waiting:
            kind = "retry"
        else:
            client.request += 1
            if client.answered and self.rng.random() < repeat_answered_chance:
                client.commands = (self.rng.choice(client.answered),)
                kind = "repeat"
            else:
                client.commands = self.workload.next_request(client_number)
                kind = "new"
            client.waiting = True
            client.sent[client.request] = client.commands
        client.sent_step = self.step
        node = self.nodes[self.rng.randrange(len(self.nodes))]
        ids = ",".join(command.dedup_id for command in client.commands)
        self._note(f"{client.name} {kind} request {client.request} [{ids}] to {node.name}")
        if node.process is None:
            return  # the node is down: no answer, the client will retry
        self.commands += len(client.commands)
        node.process.pending.append(_Request(client_number, client.request, list(client.commands), client.actor))
        if self._may_append(node) and self.rng.random() < append_at_once_chance:
            self._append(node)

    def _deliver(self, step: int) -> None:
        due = [reply for reply in self.network if reply.deliver_step <= step]
        self.network = [reply for reply in self.network if reply.deliver_step > step]
        for reply in due:
            client = self.clients[reply.client]
            index = reply.outcomes[0].log_index
            entry = entries.decode_entry(self.log.records[index - 1].payload)
            commands = entry.commands[reply.offset : reply.offset + len(reply.outcomes)]
            if tuple(commands) != client.sent[reply.request] or any(outcome.log_index != index for outcome in reply.outcomes):
                raise InvariantViolation(
                    "answer-matching", f"{client.name}: the answer to request {reply.request} is for other commands"
                )
            for position, (command, outcome) in enumerate(zip(commands, reply.outcomes, strict=True)):
                self.auditor.check_answer(client.name, index, reply.offset + position, command, outcome.result, outcome.event)
                # The event this request's own command emitted names the credential it was sent with.
                if outcome.event is not None and outcome.event.decode().actor != client.actor:
                    raise InvariantViolation(
                        "actor", f"{client.name}: event seq {outcome.event.seq} of {command.dedup_id!r} names another sender"
                    )
                # The answer is built from what apply handed back: it must say what the event says.
                if outcome.event is not None:
                    event = outcome.event.decode()
                    if outcome.effect != Effect(event.log_index, event.accounts):
                        raise InvariantViolation(
                            "acknowledged-outcome", f"{client.name}: the answer to {command.dedup_id!r} differs from its event"
                        )
                self._acknowledge(client, command, outcome.result)
            self.answers += 1
            current = client.waiting and reply.request == client.request
            self._note(f"{client.name} answer to request {reply.request} from index {index}{'' if current else ' (late)'}")
            if current:
                client.waiting = False
                client.answered.extend(commands)
                del client.answered[:-50]  # repeats pick among recent commands

    def _acknowledge(self, client: _Client, command: Command, result: Result) -> None:
        """An answered outcome never changes: every later answer to the same command is equal."""
        seen = client.acknowledged.setdefault(command.dedup_id, [])
        for earlier_command, earlier_result in seen:
            if earlier_command == command:
                if earlier_result != result:
                    raise InvariantViolation(
                        "acknowledged-outcome",
                        f"{client.name}: {command.dedup_id!r} was answered {earlier_result}, now {result}",
                    )
                return
        seen.append((command, result))

    # ------------------------------------------------------------------ nodes append, the log orders

    def _in_flight(self, process: _Process) -> int:
        return sum(1 for append in self.log.in_flight if append.origin in process.appended)

    def _may_append(self, node: _Node) -> bool:
        process = node.process
        return process is not None and bool(process.pending) and self._in_flight(process) < pipeline.appends_in_flight_max

    def _append_one(self) -> None:
        self._append(self.rng.choice([node for node in self.nodes if self._may_append(node)]))

    def _append(self, node: _Node) -> None:
        """The node's writer takes what waits for it as one entry and hands it to the log."""
        process = node.process
        assert process is not None
        requests, commands, actors = pipeline.gather(process.pending)
        node.entries_appended += 1
        origin = f"{node.name}:{node.boots}:{node.entries_appended}"
        process.appended[origin] = requests
        self.log.submit(Append(node.number, origin, entries.encode_entry(commands, origin, actors)))
        self._note(f"{node.name} appends {origin}: {len(commands)} commands of {len(requests)} requests")

    def _deadline_due(self, node: _Node) -> bool:
        """A TCC deadline passed and the node has nothing to write that would bring the time."""
        process = node.process
        if process is None or process.pending or self._in_flight(process) >= pipeline.appends_in_flight_max:
            return False
        deadline_ms = process.replica.machine.next_deadline_ms()
        return deadline_ms is not None and deadline_ms <= self.clock_ms

    def _tick(self) -> None:
        node = self.rng.choice([node for node in self.nodes if self._deadline_due(node)])
        assert node.process is not None
        node.process.pending.append(_Request(-1, 0, [], None))
        self._append(node)

    def _sync(self) -> None:
        """The log makes every append in flight durable (one group commit), in append order."""
        while self.log.in_flight:
            time_ms = max(self.clock_ms, self.log.time_ms_last)
            if self.rng.random() < clock_step_back_chance:
                time_ms = max(0, self.log.time_ms_last - self.rng.randint(1, clock_step_back_ms_max))
                self._fault("clock_step_back")
            append, record = self.log.make_durable(time_ms)
            self._digest.update(record.payload)
            self._note(f"log index {record.index} time {time_ms}: {append.origin}")
            node = self.nodes[append.node]
            if (
                node.process is not None
                and append.origin in node.process.appended
                and self.rng.random() < crash_after_append_chance
            ):
                self._crash(node, "crash_after_append")

    def _tear_tail(self) -> None:
        """The newest append in flight never became durable: its node answers nobody for it."""
        append = self.log.tear_tail()
        node = self.nodes[append.node]
        if node.process is not None:
            node.process.appended.pop(append.origin, None)
        self._fault("torn_tail")
        self._note(f"torn tail: {append.origin} lost")

    # ------------------------------------------------------------------ replicas apply

    def _behind(self) -> list[_Node]:
        """The nodes that can apply: up, not paused, and behind the log."""
        return [
            node
            for node in self.nodes
            if node.process is not None
            and node.paused_until_step <= self.step
            and node.process.replica.machine.log_index < self.log.last_index
        ]

    def _apply_some(self) -> None:
        behind = self._behind()
        node = self.rng.choices(behind, [node.speed for node in behind])[0]
        self._catch_up(node, self.rng.randint(1, entries_per_apply_max))

    def _catch_up(self, node: _Node, entries_max: int) -> None:
        """The log reaches the node one entry more at a time, and its replica applies each."""
        process = node.process
        assert process is not None
        replica = process.replica
        try:
            for _ in range(entries_max):
                index = replica.machine.log_index + 1
                if index > self.log.last_index:
                    break
                # Delivered one by one: a crash never leaves the node holding entries it did not
                # apply here, so whatever a later recovery replays, the auditor has seen applied.
                node.log_state.delivered_index = max(node.log_state.delivered_index, index)
                self._apply(node, process, next(replica.log.read(index)))
            if self.rng.random() < store_commit_chance:
                assert replica.writer is not None
                replica.writer.step()
        except SimulatedCrash:
            self._crash(node, "crash_at_disk_operation")

    def _apply(self, node: _Node, process: _Process, record: LogRecord) -> None:
        """What the pipeline's follower does with one record the log delivers."""
        replica = process.replica
        machine = replica.machine
        entry = entries.decode_entry(record.payload)
        previous = (machine.seq, machine.head)
        results, events, effects = replica.apply(record, entry.commands, entry.actors, entry.protocol_version)
        first = self.auditor.observe_apply(
            node.name, record.index, record.time_ms, entry.commands, entry.actors, results, events, machine, previous
        )
        if first:
            for event in events:
                self._digest.update(event.hash)
        requests = process.appended.pop(entry.origin, None)
        if requests is not None:
            sizes = [len(request.commands) for request in requests]
            offset = 0
            for request, outcomes in zip(requests, pipeline.outcomes_by_request(sizes, record.index, results, events, effects), strict=True):
                if request.client >= 0:
                    self._answer(node, request, offset, outcomes)
                offset += len(request.commands)
        replica.maybe_snapshot()

    def _answer(self, node: _Node, request: _Request, offset: int, outcomes: list[pipeline.Outcome]) -> None:
        roll = self.rng.random()
        if roll < reply_lost_chance:
            self._fault("reply_lost")
            self._note(f"{node.name}: answer to client-{request.client} request {request.number} lost")
            return
        copies = 1
        if roll < reply_lost_chance + reply_duplicated_chance:
            self._fault("reply_duplicated")
            copies = 2
        for _ in range(copies):
            delay = 0
            if self.rng.random() < reply_delayed_chance:
                delay = self.rng.randint(1, reply_delay_steps_max)
                self._fault("reply_delayed")
            self.network.append(_Reply(self.step + delay, request.client, request.number, offset, outcomes))

    # ------------------------------------------------------------------ snapshots

    def _write_snapshot(self) -> None:
        """A snapshot the replica started is written now — or fails, or its node dies inside it."""
        node = self.rng.choice([node for node in self.nodes if node.process is not None and node.process.snapshots.running])
        assert node.process is not None
        job = node.process.snapshots.running
        assert job is not None
        roll = self.rng.random()
        if roll < snapshot_failed_chance:
            job.fail()
            self._fault("snapshot_failed")
            self._note(f"{node.name}: snapshot at index {job.index} failed")
            return
        if roll < snapshot_failed_chance + crash_mid_snapshot_chance:
            node.disk.crash_countdown = self.rng.randint(1, snapshot_write_operations)
        try:
            job.finish()
        except SimulatedCrash:
            self._note(f"{node.name}: snapshot at index {job.index} interrupted")
            self._crash(node, "crash_mid_snapshot")
            return
        self._note(f"{node.name}: snapshot at index {job.index} written")

    @staticmethod
    def _finish_snapshots(process: _Process) -> None:
        """Let the store catch up and every snapshot the replica starts be written and activated."""
        replica = process.replica
        assert replica.writer is not None
        # The one running, then the one the rules may start once it is active (by time: the
        # first was started long ago); the second leaves none due.
        for _ in range(2):
            job = process.snapshots.running
            if job is not None:
                job.finish()
            while replica.writer.backlog_events:
                replica.writer.step()
            replica.maybe_snapshot()
        assert process.snapshots.running is None

    def _snapshot_now(self, process: _Process) -> None:
        """Finish and activate what runs, then take a snapshot of the state as it is and activate it."""
        replica = process.replica
        self._finish_snapshots(process)
        if replica.snapshot_index < replica.machine.log_index:
            replica.start_snapshot()
            job = process.snapshots.running
            assert job is not None
            job.finish()
            replica.maybe_snapshot()

    # ------------------------------------------------------------------ crashes and restarts

    def _boot(self, node: _Node) -> None:
        """Start the node's process: a real replica on its disk, its log and the simulated clock."""
        node.boots += 1
        snapshots = SteppedSnapshotWriter()
        replica = Replica(
            node.data_dir,
            NodeLog(self.log, node.log_state, self._clock_ms),
            snapshot_entries=node.snapshot_entries,
            truncate_log=node.truncate_log,
            clock_s=self._clock_s,
            disk=node.disk,
            snapshot_writer=snapshots,
            store=SimulatedEventStore(node.disk, node.data_dir / "events.sqlite3"),
            store_writer_thread=False,
            pause_s=self._pass_time_s,
            log_wait_s_max=recovery_log_wait_s_max,
        )
        try:
            replica.recover()
        except SimulatedCrash:
            self._crash(node, "crash_at_disk_operation")
            return
        except Exception as error:
            raise InvariantViolation("recovery", f"{node.name}: {_describe(error)}") from error
        node.process = _Process(replica, snapshots)
        self.auditor.check_recovered(node.name, replica.machine)
        snapshot_dir = node.snapshot_dir
        leftovers = node.disk.list(snapshot_dir, "*.tmp") + node.disk.list(snapshot_dir, "*.pending")
        if leftovers:
            # Files of snapshots a dead process never finished: recovery never uses them, so
            # unless it removes them they stay for good (a full snapshot each).
            raise InvariantViolation("disk-leftovers", f"{node.name} recovered with {', '.join(path.name for path in leftovers)}")
        self._note(f"{node.name}: recovered to index {replica.machine.log_index} from snapshot {replica.snapshot_index}")

    def _crash_one(self) -> None:
        node = self._random_alive()
        if self.rng.random() < crash_armed_chance:
            node.disk.crash_countdown = self.rng.randint(1, crash_countdown_operations_max)
            self._note(f"{node.name}: will crash at its disk operation {node.disk.crash_countdown} from now")
        else:
            self._crash(node, "crash")

    def _crash(self, node: _Node, fault: str) -> None:
        """The process dies: its memory (replica, waiting requests, queued events) is gone; in a
        power loss, also what its disk had not synced. Its appends in flight may still land."""
        self._fault(fault)
        node.process = None
        power_loss = self.rng.random() < power_loss_chance
        if power_loss:
            node.disk.crash()
            self._fault("power_loss")
        else:
            node.disk.crash_countdown = None
        in_flight = []
        for append in self.log.in_flight:
            if append.node == node.number:
                if self.rng.random() >= append_survives_crash_chance:
                    continue
                self._fault("append_after_crash")
            in_flight.append(append)
        self.log.in_flight = in_flight
        self._note(f"{node.name}: {fault}{' (power loss)' if power_loss else ''}")

    def _restart_one(self) -> None:
        node = self.rng.choice([node for node in self.nodes if node.process is None])
        if self.rng.random() < immediate_recovery_chance:
            self._deliver_audited(node)
        self._boot(node)

    def _deliver_audited(self, node: _Node) -> None:
        """The log reaches the node up to the last entry some replica applied (so the auditor
        holds the history of every entry its recovery replays)."""
        node.log_state.delivered_index = max(node.log_state.delivered_index, self.auditor.last_index)

    def _restore_in_place(self) -> None:
        """A clean restart from a snapshot of the node's own state, taken on the spot."""
        node = self._random_alive()
        process = node.process
        assert process is not None
        try:
            self._snapshot_now(process)
        except SimulatedCrash:
            self._crash(node, "crash_at_disk_operation")
            return
        index = process.replica.machine.log_index
        node.process = None
        self._fault("restore_in_place")
        self._note(f"{node.name}: restarts from a snapshot of itself at index {index}")
        self._boot(node)
        if node.process is not None and node.process.replica.machine.log_index != index:
            raise InvariantViolation(
                "snapshot-restore", f"{node.name}: restarted at index {node.process.replica.machine.log_index}, not {index}"
            )

    def _damageable(self, node: _Node) -> list[Path]:
        """The node's active snapshots, when the newest may be damaged: while none is (recovery
        has one fallback — the older snapshot, or the whole log — not two)."""
        paths = node.disk.list(node.snapshot_dir, "snapshot-*.bin")
        if any(node.disk.is_damaged(path) for path in paths):
            return []
        return paths

    def _damage_snapshot(self) -> None:
        """The newest snapshot file of a node goes bad on its disk; recovery must fall back."""
        node = self.rng.choice([node for node in self.nodes if self._damageable(node)])
        path = self._damageable(node)[-1]
        node.disk.damage(path)
        self._fault("snapshot_damaged")
        self._note(f"{node.name}: {path.name} damaged on disk")

    def _pause_one(self) -> None:
        node = self._random_alive()
        node.paused_until_step = self.step + self.rng.randint(1, pause_steps_max)
        self._fault("replica_paused")
        self._note(f"{node.name}: the log reaches it again at step {node.paused_until_step}")

    # ------------------------------------------------------------------ what the disks hold

    def _check_disk(self, node: _Node) -> None:
        """Every event the node's store committed, every snapshot file recovery may use: the history's."""
        database = node.disk.database
        if database.total_changes != node.store_changes_checked:
            node.store_changes_checked = database.total_changes
            rows = database.execute("SELECT seq, hash FROM events WHERE seq > ? ORDER BY seq", (node.store_checked_seq,)).fetchall()
            self.auditor.check_stored_events(node.name, node.store_checked_seq, rows)
            if rows:
                node.store_checked_seq = rows[-1][0]
        if node.disk.changes == node.disk_changes_checked:
            return
        node.disk_changes_checked = node.disk.changes
        for path in node.disk.list(node.snapshot_dir, "snapshot-*.bin"):
            key = (path, crc32c.crc32c(node.disk.read(path)))
            if key in node.snapshot_files_checked or node.disk.is_damaged(path):
                continue
            try:
                machine = restore_snapshot(read_snapshot_file(path, node.disk))
            except SnapshotCorrupt as error:
                raise InvariantViolation("snapshot-file", f"{node.name}: an active snapshot is damaged: {error}") from None
            self.auditor.check_restored(f"{node.name} ({path.name})", machine)
            if machine.seq > node.store_checked_seq:
                raise InvariantViolation(
                    "snapshot-covers-store",
                    f"{node.name}: {path.name} covers seq {machine.seq}, its event store holds {node.store_checked_seq}",
                )
            node.snapshot_files_checked.add(key)

    # ------------------------------------------------------------------ the end

    def _settle(self) -> None:
        """Bring every node up and level, deliver every answer, compare the final states, then
        shut every node down cleanly and recover it once more."""
        self._note("settle")
        for node in self.nodes:
            node.disk.crash_countdown = None
            if self._may_append(node):
                self._append(node)
        self._sync()
        for node in self.nodes:
            if node.process is None:
                self._deliver_audited(node)
                self._boot(node)
        for node in self.nodes:
            self._catch_up(node, self.log.last_index)
        self._deliver(self.step + reply_delay_steps_max)
        replicas: list[Replica] = []
        for node in self.nodes:
            assert node.process is not None
            replica = node.process.replica
            assert replica.machine.log_index == self.log.last_index
            self.auditor.check_position(node.name, replica.machine)
            replicas.append(replica)
        for client in self.clients:
            for dedup_id, answers in client.acknowledged.items():
                for command, result in answers:
                    for node, replica in zip(self.nodes, replicas, strict=True):
                        record = replica.machine.dedup.get(dedup_id)
                        if record is None or (record.command == command and record.result != result):
                            raise InvariantViolation(
                                "acknowledged-outcome", f"{node.name} lost {client.name}'s answered {dedup_id!r}"
                            )
        for node, replica in zip(self.nodes, replicas, strict=True):
            assert node.process is not None
            self._finish_snapshots(node.process)
            replica.close()
            node.process = None
            self._check_disk(node)
            if node.store_checked_seq != replica.machine.seq:
                raise InvariantViolation(
                    "event-store", f"{node.name}: its event store holds seq {node.store_checked_seq} of {replica.machine.seq}"
                )
            self._note(f"{node.name}: shut down at index {replica.machine.log_index}")
            self._boot(node)
            assert node.process is not None
            if node.process.replica.machine.log_index != self.log.last_index:
                raise InvariantViolation("recovery", f"{node.name}: recovered to index {node.process.replica.machine.log_index}")


def _describe(error: BaseException) -> str:
    """The exception and the line of the product where it was raised."""
    detail = "".join(traceback.format_exception_only(error)).strip()
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return detail
    return f"{detail} (at {frames[-1].filename}:{frames[-1].lineno})"


def run_seed(
    seed: int,
    steps: int,
    replicas: int = replicas_default,
    clients: int = clients_default,
    *,
    huge_amount_chance: float = workload.huge_amount_chance,
) -> SeedReport:
    """Run one seed; a violation is in the report, not raised."""
    return Simulation(seed, steps, replicas, clients, huge_amount_chance=huge_amount_chance).run()
