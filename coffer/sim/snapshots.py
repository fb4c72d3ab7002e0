"""The simulator's snapshot writer: the replica's snapshot rules, without ``fork``, one step at a time.

Job. The service writes a snapshot in a forked child, which sees the state frozen at the fork
while the parent applies on. A simulation cannot fork (nor wait for a child), so this writer
freezes the state the same way — it takes the snapshot's bytes when the replica starts it — and
writes them, through the replica's own ``write`` (temporary file, fsync, rename, directory sync
on the simulated disk), only when the simulator says so. Until then the job runs; the simulator
may crash the node before or inside the write, or make the write fail.
"""

from collections.abc import Callable

from coffer.core.snapshot import take_snapshot
from coffer.core.state_machine import StateMachine
from coffer.replica import SnapshotJob, SnapshotWriter


class SteppedSnapshotJob(SnapshotJob):
    def __init__(self, index: int, data: bytes, write: Callable[[bytes], None]) -> None:
        self.index = index  # the log index the snapshot covers
        self._data = data
        self._write = write
        self._written: bool | None = None

    @property
    def running(self) -> bool:
        return self._written is None

    def poll(self) -> bool | None:
        return self._written

    def finish(self) -> None:
        """Write the snapshot now (a simulated crash inside the write propagates)."""
        assert self.running
        self._write(self._data)
        self._written = True

    def fail(self) -> None:
        """The write fails before anything reaches the disk (as a child that died at once)."""
        assert self.running
        self._written = False


class SteppedSnapshotWriter(SnapshotWriter):
    """One per boot of a node: its latest job, for the simulator to step."""

    def __init__(self) -> None:
        self.job: SteppedSnapshotJob | None = None

    def start(self, machine: StateMachine, write: Callable[[bytes], None]) -> SnapshotJob:
        self.job = SteppedSnapshotJob(machine.log_index, take_snapshot(machine), write)
        return self.job

    @property
    def running(self) -> SteppedSnapshotJob | None:
        """The job being written, if any."""
        return self.job if self.job is not None and self.job.running else None
