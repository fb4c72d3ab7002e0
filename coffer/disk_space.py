"""Disk space of a node's data directory: "disk full" stops writes cleanly and ends by itself.

Job. A ledger that cannot write must refuse new commands instead of failing half-way or
crashing: a write the log, the event store or a snapshot cannot store is never acknowledged,
and the node says why ("disk full") in its log and in ``/readyz``. When space comes back the node
takes writes again without a restart.

Method. Whoever meets ENOSPC (or EDQUOT, or SQLite's "database or disk is full") reports it with
:meth:`DiskSpace.report`; from then on :attr:`DiskSpace.full` names the reason. A daemon thread
then probes every ``probe_interval_s``: it writes and fsyncs ``probe_bytes`` in the data directory
and deletes them again; once that works (and the directory is within its budget), the disk is
usable again. With a budget (``--disk-budget-mb``), the same thread also measures the directory
and reports "full" when it holds more than the budget, so a test or a shared machine can bound
what a node takes without a small filesystem.
"""

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

probe_interval_s = 1.0
# A probe must fit what one write needs, or it would clear "full" while writes still fail:
# a group-committed entry or an event store batch is of this order.
probe_bytes = 1024 * 1024
probe_file_name = ".disk-probe"
budget_check_interval_s = 5.0  # measuring a directory walks it: not on every probe
disk_full_errnos = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_cause(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain (itself, or one it was raised from or during) that says the
    disk is full, or None. SQLite's ROLLBACK after a failed COMMIT, for one, hides it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in disk_full_errnos:
            return current
        if isinstance(current, sqlite3.OperationalError) and "full" in str(current).lower():
            return current
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(error: BaseException) -> bool:
    return disk_full_cause(error) is not None


def directory_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (allocated blocks, as ``du`` counts them)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


class DiskSpace:
    """Whether the node's data directory can take writes (see the module docstring)."""

    def __init__(self, directory: Path, budget_bytes: int | None = None) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._wakeup = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if budget_bytes is not None:
            self._start()

    @property
    def full(self) -> str | None:
        """Why writes are refused ("disk full: …"), or None when the disk takes writes."""
        return self._reason

    def report(self, where: str, error: BaseException | str) -> None:
        """``where`` (the event store, the log, a snapshot) could not write: the disk is full."""
        if isinstance(error, BaseException):
            error = disk_full_cause(error) or error
        reason = f"disk full: {where} could not write ({error})"
        with self._lock:
            first = self._reason is None
            self._reason = reason
        if first:
            logger.critical("%s; writes are refused until space is freed", reason)
        self._start()
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(probe_interval_s * 2)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="coffer-disk-space", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        budget_checked_at = 0.0
        over_budget: str | None = None
        while not self._closed:
            if self.budget_bytes is not None and time.monotonic() - budget_checked_at >= budget_check_interval_s:
                budget_checked_at = time.monotonic()
                used = directory_bytes(self.directory)
                over_budget = (
                    f"disk full: the data directory holds {used // 2**20} MiB, its budget is {self.budget_bytes // 2**20} MiB"
                    if used > self.budget_bytes
                    else None
                )
                if over_budget is not None and self._reason is None:
                    logger.critical("%s; writes are refused until space is freed", over_budget)
                    self._reason = over_budget
            if self._reason is not None and over_budget is None and self._probe():
                logger.warning("disk space is back (%s); writes are taken again", self._reason)
                with self._lock:
                    self._reason = None
            self._wakeup.wait(probe_interval_s)
            self._wakeup.clear()

    def _probe(self) -> bool:
        """Can ``probe_bytes`` be written and made durable in the directory now?"""
        path = self.directory / probe_file_name
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                written = 0
                block = bytes(64 * 1024)
                while written < probe_bytes:
                    written += os.write(descriptor, block)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
