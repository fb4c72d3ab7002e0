"""Deterministic simulation of one Coffer shard: replicas, clients, a shared log, and faults.

Job. Run the real state machine as the service runs it — nodes append client batches to one
totally ordered log and answer from their own replica once it applied the entry — in one
process, driven by one seeded ``random.Random``: no wall clock, no threads, no I/O. Inject the
faults a deployment meets and let :class:`coffer.sim.checker.Auditor` check the SPEC's invariants
after every step. The same seed gives the same run, byte for byte, summed up by a digest.

Method. A run is ``steps`` steps; each picks one action with the RNG:

- a client sends a new request (one to three commands) to a node, or retries an unanswered one
  with the same ``dedup_id``\\s and payload, or repeats an answered one to check it is stable;
- the log makes the entries nodes appended durable (group commit: a node's unsynced entry takes
  later requests too); a node may crash right after its append, before it applied the entry;
- a replica applies the next few durable entries — replicas run at their own pace, so one lags
  (delayed delivery) — and answers the clients waiting on them; an answer may be lost,
  duplicated or delayed;
- a replica takes a snapshot (and may crash in the middle of it: the snapshot is not kept),
  crashes, restarts (restore its last snapshot, or start empty, then replay the log from there,
  at once or lazily), restores itself from a snapshot of its own state on the spot, or is
  paused (the log reaches it only some steps later);
- the log loses its unsynced tail (a torn tail: nobody was answered; the clients retry), or
  hands out a time that steps back (a new log leader with a slower clock).

Log time advances by a random amount each step, so TCC timeouts fire. Each replica has a "disk":
its last kept snapshot and the events it stored; replayed events must match the stored ones.
After the steps, the run settles (every replica restarts and catches up, every answer arrives)
and the final states are compared.
"""

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256

from coffer.core.accounts import Result
from coffer.core.commands import Command
from coffer.core.entries import decode_entry, encode_entry
from coffer.core.events import EventRecord
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine
from coffer.log.base import LogRecord
from coffer.sim import workload
from coffer.sim.checker import Auditor, InvariantViolation
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

# Chances, per occasion, of each fault; high enough that a few hundred steps meet each of them.
crash_after_append_chance = 0.03  # per log sync: the appending node dies before applying
crash_mid_snapshot_chance = 0.2  # per snapshot
reply_lost_chance = 0.06  # per answer
reply_duplicated_chance = 0.05  # per answer
reply_delayed_chance = 0.2  # per answer: it comes 1..reply_delay_steps_max steps late
immediate_recovery_chance = 0.5  # per restart: replay the whole log at once (else lazily)
store_flush_chance = 0.5  # per apply: the replica's event store commits what it buffered
group_commit_chance = 0.5  # per request: it joins the node's unsynced entry
repeat_answered_chance = 0.08  # per request: a client resends an answered command
clock_step_back_chance = 0.01  # per synced entry: the log's time steps back (new leader, slower clock)
clock_step_back_ms_max = 3_000

# Relative weights of the actions of a step (each only when it can happen).
action_weights: dict[str, int] = {
    "client": 40,
    "sync": 14,
    "apply": 34,
    "snapshot": 3,
    "crash": 1,
    "restart": 6,
    "torn_tail": 2,
    "restore_in_place": 1,
    "pause": 2,
}
fault_names = (
    "crash",
    "crash_after_append",
    "crash_mid_snapshot",
    "torn_tail",
    "restore_in_place",
    "reply_lost",
    "reply_duplicated",
    "reply_delayed",
    "clock_step_back",
    "replica_paused",
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
class _Waiter:
    """A client request inside a log entry: its commands are entry positions offset..offset+count-1."""

    client: int
    request: int
    offset: int
    count: int


@dataclass
class _PendingEntry:
    """An entry a node appended that is not yet durable: the torn tail if the log loses it."""

    node: int
    commands: list[Command]
    waiters: list[_Waiter]


@dataclass
class _Replica:
    name: str
    machine: StateMachine | None = None  # None while it is down
    snapshot: bytes | None = None  # the disk: the last snapshot kept
    stored_event_hashes: list[bytes] = field(default_factory=list)  # the disk: its event store, seq - 1 -> hash
    buffered_events: list[EventRecord] = field(default_factory=list)  # applied, not yet in the store
    waiters: dict[int, list[_Waiter]] = field(default_factory=dict)  # log index -> requests answered from it
    speed: int = 1  # relative chance to be the one that applies next
    paused_until_step: int = 0  # delayed delivery: the log reaches it again at this step


@dataclass
class _Reply:
    deliver_step: int
    client: int
    request: int
    index: int
    offset: int
    results: list[Result]


@dataclass
class _Client:
    name: str
    request: int = 0  # number of the current request; 0 before the first
    commands: tuple[Command, ...] = ()
    waiting: bool = False
    sent_step: int = 0
    sent: dict[int, tuple[Command, ...]] = field(default_factory=dict)  # request number -> its commands
    answered: list[Command] = field(default_factory=list)  # commands it got an answer for
    acknowledged: dict[str, list[tuple[Command, Result]]] = field(default_factory=dict)


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
        self.records: list[LogRecord] = []  # the durable log
        self.pending: list[_PendingEntry] = []  # appended, not yet durable, in append order
        self.clock_ms = start_time_ms
        self.log_time_ms = 0  # the time of the last durable record
        self.replicas = [_Replica(f"replica-{number}", StateMachine()) for number in range(replicas)]
        for replica in self.replicas:
            replica.speed = self.rng.choice((1, 1, 4))
        self.clients = [_Client(f"client-{number}") for number in range(clients)]
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
            "sync": self._sync,
            "apply": self._apply_some,
            "snapshot": self._snapshot,
            "crash": self._crash_one,
            "restart": self._restart_one,
            "torn_tail": self._tear_tail,
            "restore_in_place": self._restore_in_place,
            "pause": self._pause_one,
        }

    # ------------------------------------------------------------------ the run

    def run(self) -> SeedReport:
        violation = None
        try:
            for step in range(1, self.steps + 1):
                self.step = step
                self._one_step()
            self.step = self.steps + 1
            self._settle()
        except InvariantViolation as error:
            violation = Violation(self.step, error.invariant, error.detail, self.trace[-trace_lines_kept:])
        except Exception as error:  # an assertion or crash inside the product is a finding too
            detail = "".join(traceback.format_exception_only(error)).strip()
            where = traceback.extract_tb(error.__traceback__)[-1]
            detail += f" (at {where.filename}:{where.lineno})"
            violation = Violation(self.step, "exception", detail, self.trace[-trace_lines_kept:])
        return SeedReport(
            seed=self.seed,
            steps=min(self.step, self.steps),
            faults=dict(self.faults),
            entries=len(self.records),
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
        for replica in self.replicas:
            if replica.machine is not None:
                self.auditor.check_position(replica.name, replica.machine)

    def _can(self, action: str) -> bool:
        alive = [replica.machine for replica in self.replicas if replica.machine is not None]
        if action == "apply":
            return bool(self._behind())
        if action in ("snapshot", "crash", "restore_in_place", "pause"):
            return bool(alive)
        if action == "restart":
            return len(alive) < len(self.replicas)
        if action in ("sync", "torn_tail"):
            return bool(self.pending)
        assert action == "client"
        return any(self._may_send(client) for client in self.clients)

    def _may_send(self, client: "_Client") -> bool:
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
        node = self.rng.randrange(len(self.replicas))
        ids = ",".join(command.dedup_id for command in client.commands)
        self._note(f"{client.name} {kind} request {client.request} [{ids}] to node {node}")
        if self.replicas[node].machine is None:
            return  # the node is down: no answer, the client will retry
        self.commands += len(client.commands)
        last = self.pending[-1] if self.pending else None
        if last is not None and last.node == node and self.rng.random() < group_commit_chance:
            entry = last
        else:
            entry = _PendingEntry(node, [], [])
            self.pending.append(entry)
        entry.waiters.append(_Waiter(client_number, client.request, len(entry.commands), len(client.commands)))
        entry.commands.extend(client.commands)

    def _deliver(self, step: int) -> None:
        due = [reply for reply in self.network if reply.deliver_step <= step]
        self.network = [reply for reply in self.network if reply.deliver_step > step]
        for reply in due:
            client = self.clients[reply.client]
            entry = decode_entry(self.records[reply.index - 1].payload)
            commands = entry.commands[reply.offset : reply.offset + len(reply.results)]
            if tuple(commands) != client.sent[reply.request]:
                raise InvariantViolation(
                    "answer-matching", f"{client.name}: the answer to request {reply.request} is for other commands"
                )
            for position, (command, result) in enumerate(zip(commands, reply.results, strict=True)):
                self.auditor.check_answer(client.name, reply.index, reply.offset + position, command, result)
                self._acknowledge(client, command, result)
            self.answers += 1
            current = client.waiting and reply.request == client.request
            self._note(f"{client.name} answer to request {reply.request} from index {reply.index}{'' if current else ' (late)'}")
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

    # ------------------------------------------------------------------ the log

    def _sync(self) -> None:
        """The log makes every pending entry durable (one group commit), in append order."""
        pending, self.pending = self.pending, []
        for entry in pending:
            time_ms = max(self.clock_ms, self.log_time_ms)
            if self.rng.random() < clock_step_back_chance:
                time_ms = max(0, self.log_time_ms - self.rng.randint(1, clock_step_back_ms_max))
                self._fault("clock_step_back")
            self.log_time_ms = max(self.log_time_ms, time_ms)
            index = len(self.records) + 1
            payload = encode_entry(entry.commands, origin=f"node-{entry.node}")
            self.records.append(LogRecord(index, time_ms, payload))
            self._digest.update(payload)
            node = self.replicas[entry.node]
            if node.machine is not None:  # a node that died in this group commit answers nobody
                node.waiters.setdefault(index, []).extend(entry.waiters)
            self._note(f"log index {index} time {time_ms} from node {entry.node}: {len(entry.commands)} commands")
            if node.machine is not None and self.rng.random() < crash_after_append_chance:
                self._crash(node, "crash_after_append")

    def _tear_tail(self) -> None:
        """The last unsynced entry never became durable: its node answers nobody."""
        entry = self.pending.pop()
        self._fault("torn_tail")
        self._note(f"torn tail: node {entry.node} lost {len(entry.commands)} unsynced commands")

    # ------------------------------------------------------------------ replicas

    def _behind(self) -> list[_Replica]:
        """The replicas that can apply: up, not paused, and behind the log."""
        return [
            replica
            for replica in self.replicas
            if replica.machine is not None
            and replica.paused_until_step <= self.step
            and replica.machine.log_index < len(self.records)
        ]

    def _apply_some(self) -> None:
        behind = self._behind()
        replica = self.rng.choices(behind, [replica.speed for replica in behind])[0]
        self._catch_up(replica, self.rng.randint(1, entries_per_apply_max))

    def _catch_up(self, replica: _Replica, entries_max: int) -> None:
        machine = replica.machine
        assert machine is not None
        first = machine.log_index + 1
        for record in self.records[first - 1 : first - 1 + entries_max]:
            self._apply(replica, machine, record)
        if self.rng.random() < store_flush_chance:
            self._flush_store(replica)

    def _apply(self, replica: _Replica, machine: StateMachine, record: LogRecord) -> None:
        commands = decode_entry(record.payload).commands
        previous = (machine.seq, machine.head)
        results, events = machine.apply(record.index, record.time_ms, commands)
        first = self.auditor.observe_apply(
            replica.name, record.index, record.time_ms, commands, results, events, machine, previous
        )
        if first:
            for event in events:
                self._digest.update(event.hash)
        self._check_against_store(replica, events)
        replica.buffered_events.extend(events)
        for waiter in replica.waiters.pop(record.index, []):
            self._answer(replica, record.index, waiter, results[waiter.offset : waiter.offset + waiter.count])

    def _answer(self, replica: _Replica, index: int, waiter: _Waiter, results: list[Result]) -> None:
        roll = self.rng.random()
        if roll < reply_lost_chance:
            self._fault("reply_lost")
            self._note(f"{replica.name}: answer to client-{waiter.client} request {waiter.request} lost")
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
            self.network.append(_Reply(self.step + delay, waiter.client, waiter.request, index, waiter.offset, list(results)))

    def _check_against_store(self, replica: _Replica, events: list[EventRecord]) -> None:
        """Replayed events the replica's event store already holds must be the same events."""
        stored = replica.stored_event_hashes
        for event in events:
            if event.seq <= len(stored) and stored[event.seq - 1] != event.hash:
                raise InvariantViolation(
                    "replay-matches-store", f"{replica.name}: replayed event seq {event.seq} differs from the stored one"
                )

    def _flush_store(self, replica: _Replica) -> None:
        stored = replica.stored_event_hashes
        for event in replica.buffered_events:
            if event.seq > len(stored):
                assert event.seq == len(stored) + 1, "the store takes events in order"
                stored.append(event.hash)
        replica.buffered_events = []

    def _snapshot(self) -> None:
        replica = self._random_alive()
        machine = replica.machine
        assert machine is not None
        # A snapshot becomes the one recovery uses only once the event store holds what it covers.
        self._flush_store(replica)
        data = take_snapshot(machine)
        if self.rng.random() < crash_mid_snapshot_chance:
            self._note(f"{replica.name}: snapshot at index {machine.log_index} interrupted")
            self._crash(replica, "crash_mid_snapshot")
            return
        restored = restore_snapshot(data)
        if take_snapshot(restored) != data:
            raise InvariantViolation("snapshot-restore", f"{replica.name}: a restored snapshot does not encode to its bytes")
        replica.snapshot = data
        self._note(f"{replica.name}: snapshot at index {machine.log_index}")

    def _restore_in_place(self) -> None:
        replica = self._random_alive()
        machine = replica.machine
        assert machine is not None
        replica.machine = restore_snapshot(take_snapshot(machine))
        self.auditor.check_restored(replica.name, replica.machine)
        self._fault("restore_in_place")
        self._note(f"{replica.name}: restored from a snapshot of itself at index {machine.log_index}")

    def _pause_one(self) -> None:
        replica = self._random_alive()
        replica.paused_until_step = self.step + self.rng.randint(1, pause_steps_max)
        self._fault("replica_paused")
        self._note(f"{replica.name}: the log reaches it again at step {replica.paused_until_step}")

    def _crash_one(self) -> None:
        self._crash(self._random_alive(), "crash")

    def _crash(self, replica: _Replica, fault: str) -> None:
        """The process dies: its memory, waiters, unstored events and unsynced entries are gone."""
        self._fault(fault)
        replica.machine = None
        replica.waiters = {}
        replica.buffered_events = []
        node = self.replicas.index(replica)
        self.pending = [entry for entry in self.pending if entry.node != node]
        self._note(f"{replica.name}: {fault}")

    def _restart_one(self) -> None:
        down = [replica for replica in self.replicas if replica.machine is None]
        self._restart(self.rng.choice(down), immediate=self.rng.random() < immediate_recovery_chance)

    def _restart(self, replica: _Replica, immediate: bool) -> None:
        machine = StateMachine() if replica.snapshot is None else restore_snapshot(replica.snapshot)
        self.auditor.check_restored(replica.name, machine)
        if machine.seq > len(replica.stored_event_hashes):
            raise InvariantViolation("replay-matches-store", f"{replica.name}: its snapshot is ahead of its event store")
        replica.machine = machine
        self._note(f"{replica.name}: restart from index {machine.log_index}{' and replay' if immediate else ''}")
        if immediate:
            self._catch_up(replica, len(self.records))

    def _random_alive(self) -> _Replica:
        return self.rng.choice([replica for replica in self.replicas if replica.machine is not None])

    # ------------------------------------------------------------------ the end

    def _settle(self) -> None:
        """Bring every replica up and level, deliver every answer, compare the final states."""
        self._note("settle")
        if self.pending:
            self._sync()
        for replica in self.replicas:
            if replica.machine is None:
                self._restart(replica, immediate=True)
            else:
                self._catch_up(replica, len(self.records))
        self._deliver(self.step + reply_delay_steps_max)
        final = [replica.machine for replica in self.replicas]
        for replica, machine in zip(self.replicas, final, strict=True):
            assert machine is not None and machine.log_index == len(self.records)
            self.auditor.check_position(replica.name, machine)
        for client in self.clients:
            for dedup_id, answers in client.acknowledged.items():
                for command, result in answers:
                    for replica, machine in zip(self.replicas, final, strict=True):
                        assert machine is not None
                        record = machine.dedup.get(dedup_id)
                        if record is None or (record.command == command and record.result != result):
                            raise InvariantViolation(
                                "acknowledged-outcome", f"{replica.name} lost {client.name}'s answered {dedup_id!r}"
                            )


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
