"""The replica's disk: the few file operations its snapshots need, behind one small interface.

Job. Snapshots are only safe if their files are written in the right order with the right
syncs: the bytes fsynced before the rename that makes them count, the directory fsynced before
the log below them is dropped. The replica states that order through this interface, and
:class:`LocalDisk` carries it out on the real file system. The deterministic simulator passes a
disk of its own that keeps in memory what was synced apart from what was not, and crashes at any
of these operations — so the ordering the service relies on is the ordering the simulator tests.

Method. Operations follow POSIX: :meth:`Disk.write_durably` makes a file's bytes durable (the
file is opened, written, flushed and fsynced), but a name — created, renamed or removed — is only
durable once its directory is synced with :meth:`Disk.sync_directory`.
"""

import abc
import os
from pathlib import Path


class Disk(abc.ABC):
    """File operations on paths, with explicit durability (see the module docstring)."""

    @abc.abstractmethod
    def make_directory(self, directory: Path) -> None:
        """Create the directory and its parents if missing."""

    @abc.abstractmethod
    def list(self, directory: Path, pattern: str) -> list[Path]:
        """The files in ``directory`` whose names match the glob ``pattern``, sorted by name."""

    @abc.abstractmethod
    def read(self, path: Path) -> bytes:
        """The file's bytes; ``FileNotFoundError`` if it does not exist."""

    @abc.abstractmethod
    def exists(self, path: Path) -> bool: ...

    @abc.abstractmethod
    def write_durably(self, path: Path, *chunks: bytes) -> None:
        """Create or truncate the file, write the chunks in order and fsync the file.

        Its name is durable only once the directory is synced.
        """

    @abc.abstractmethod
    def replace(self, source: Path, target: Path) -> None:
        """Rename ``source`` to ``target`` atomically, replacing ``target`` if it exists."""

    @abc.abstractmethod
    def remove(self, path: Path) -> None:
        """Delete the file; ``FileNotFoundError`` if it does not exist."""

    @abc.abstractmethod
    def sync_directory(self, directory: Path) -> None:
        """Make every name created, renamed or removed in ``directory`` durable."""


class LocalDisk(Disk):
    """The real file system."""

    def make_directory(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)

    def list(self, directory: Path, pattern: str) -> list[Path]:
        return sorted(directory.glob(pattern))

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def exists(self, path: Path) -> bool:
        return path.exists()

    def write_durably(self, path: Path, *chunks: bytes) -> None:
        with open(path, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def remove(self, path: Path) -> None:
        path.unlink()

    def sync_directory(self, directory: Path) -> None:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


local_disk = LocalDisk()
