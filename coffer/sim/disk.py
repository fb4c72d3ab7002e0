"""The simulated disk of one node: what was synced survives a crash, what was not may not.

Job. The real replica keeps its snapshot files and its event store here instead of on a file
system, so the simulator can crash a node at any disk operation and then restart it on exactly
what a real disk would have kept — which is what tests the order of writes, fsyncs and renames
the replica relies on.

Method.
- Files (:class:`SimulatedDisk`) are inodes with two sets of bytes: as the process sees them and
  as the disk holds them. Names have two views as well. :meth:`SimulatedDisk.write_durably` makes
  an inode's bytes durable; a name created, renamed or removed is durable only once its directory
  is synced (POSIX promises no more). :meth:`SimulatedDisk.crash` drops the process's view: names
  and bytes go back to the durable ones.
- The simulator may arm a countdown (``crash_countdown``): the n-th mutating operation from then
  raises :class:`SimulatedCrash` before it takes effect — or, for a write, after only a prefix of
  the bytes reached the disk.
- The event store is the real :class:`coffer.history.event_store.EventStore` (its SQL, its checks
  on replayed events) on an in-memory SQLite database that this disk keeps across crashes. A commit
  is durable when it returns, as with ``synchronous=FULL`` in the service, so a crash loses only
  what the store writer had not committed yet — that lives in the replica's memory, not here. Each
  commit is one disk operation: the countdown may crash the node just before it.
"""

import errno
import fnmatch
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coffer.core.events import EventRecord
from coffer.disk import Disk
from coffer.history.event_store import EventStore


class SimulatedCrash(BaseException):
    """The simulated process dies here, like ``kill -9``.

    A ``BaseException``, so that it unwinds the real code without being taken for an error that
    the code handles (``except Exception``).
    """


@dataclass
class _Inode:
    data: bytes  # as the process sees it
    durable: bytes  # as the disk holds it
    damaged: bool = False  # the disk returns other bytes than were written


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))


class SimulatedDisk(Disk):
    """One node's disk: files, their durability, and a crash countdown (module docstring)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng  # draws how much of an interrupted write reached the disk
        # directory -> name -> inode: the names as the process sees them, and as the disk holds them
        self._directories: dict[Path, dict[str, _Inode]] = {}
        self._durable_directories: dict[Path, dict[str, _Inode]] = {}
        self.crash_countdown: int | None = None
        self.changes = 0  # grows with every change of a name, for observers
        self.database = sqlite3.connect(":memory:", isolation_level=None)

    def _names(self, directory: Path) -> dict[str, _Inode]:
        return self._directories.setdefault(directory, {})

    def _inode(self, path: Path) -> _Inode:
        inode = self._directories.get(path.parent, {}).get(path.name)
        if inode is None:
            raise _missing(path)
        return inode

    # ------------------------------------------------------------------ crashes

    def _operation(self) -> None:
        """One mutating operation: where an armed countdown crashes the node."""
        if self.crash_countdown is None:
            return
        self.crash_countdown -= 1
        if self.crash_countdown <= 0:
            self.crash_countdown = None
            raise SimulatedCrash("simulated crash at a disk operation")

    def crash(self) -> None:
        """The process died: only what the disk made durable is left."""
        self.crash_countdown = None
        self._directories = {directory: dict(names) for directory, names in self._durable_directories.items()}
        for names in self._directories.values():
            for inode in names.values():
                inode.data = inode.durable
        self.changes += 1

    def damage(self, path: Path) -> None:
        """The disk returns other bytes for the file than were written (a bad sector, bit rot)."""
        inode = self._inode(path)
        middle = len(inode.data) // 2
        inode.data = inode.durable = inode.data[:middle] + bytes([inode.data[middle] ^ 0xFF]) + inode.data[middle + 1 :]
        inode.damaged = True

    def is_damaged(self, path: Path) -> bool:
        """Whether :meth:`damage` hit the file (until it is written again)."""
        return self._inode(path).damaged

    # ------------------------------------------------------------------ Disk

    def make_directory(self, directory: Path) -> None:
        """Directories are implied by the paths of their files."""

    def list(self, directory: Path, pattern: str) -> list[Path]:
        names = self._directories.get(directory, {})
        return [directory / name for name in sorted(names) if fnmatch.fnmatchcase(name, pattern)]

    def read(self, path: Path) -> bytes:
        return self._inode(path).data

    def exists(self, path: Path) -> bool:
        return path.name in self._directories.get(path.parent, {})

    def write_durably(self, path: Path, *chunks: bytes) -> None:
        data = b"".join(chunks)
        names = self._names(path.parent)
        inode = names.get(path.name)
        if inode is None:
            inode = names[path.name] = _Inode(b"", b"")
            self.changes += 1
        inode.damaged = False
        try:
            self._operation()
        except SimulatedCrash:
            # Opening truncated the file, and only part of the bytes got written: a torn file.
            inode.data = inode.durable = data[: self._rng.randrange(len(data) + 1)]
            raise
        inode.data = inode.durable = data

    def replace(self, source: Path, target: Path) -> None:
        inode = self._inode(source)
        self._operation()
        del self._names(source.parent)[source.name]
        self._names(target.parent)[target.name] = inode
        self.changes += 1

    def remove(self, path: Path) -> None:
        self._inode(path)
        self._operation()
        del self._names(path.parent)[path.name]
        self.changes += 1

    def sync_directory(self, directory: Path) -> None:
        self._operation()
        self._durable_directories[directory] = dict(self._names(directory))

    # ------------------------------------------------------------------ the event store's database

    def commit(self) -> None:
        """An event store commit is about to happen (a crash point)."""
        self._operation()


class SimulatedEventStore(EventStore):
    """The real event store on the database a :class:`SimulatedDisk` keeps across crashes."""

    def __init__(self, disk: SimulatedDisk, path: Path) -> None:
        self._disk = disk
        super().__init__(path)

    def _connection(self) -> sqlite3.Connection:
        return self._disk.database

    def append(self, records: Iterable[EventRecord]) -> None:
        self._disk.commit()
        super().append(records)

    def close(self) -> None:
        """The database belongs to the disk, which outlives the process."""
