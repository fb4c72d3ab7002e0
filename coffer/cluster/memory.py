"""Memory peaks of a local cluster's processes, for the reports of long fault runs.

A background thread reads the proportional set size (``Pss`` in ``/proc/<pid>/smaps_rollup``) of
every NATS server and every Coffer node — a node together with its descendants, so a sharded node
counts its shard processes and a node writing a snapshot counts its forked writer — every
``sample_interval_s``, and keeps the highest figure per process name. The proportional size, not
the resident one: a forked snapshot writer shares the parent's pages copy-on-write, and adding two
resident sizes would count every shared page twice (a node then seemed to use twice its memory).
Where ``smaps_rollup`` is missing (Linux before 4.14) it falls back to ``VmRSS``. Linux only
(``/proc``); elsewhere the report says memory was not measured.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

sample_interval_s = 2.0
proc = Path("/proc")


def resident_bytes(pid: int) -> int:
    """One process's resident set size, 0 when it is gone."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _parents() -> dict[int, list[int]]:
    """Children of every process, from each process's parent in ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces: parse after its end.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def proportional_bytes(pid: int) -> int:
    """One process's share of the memory it maps (shared pages divided among their users), 0 when gone."""
    try:
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return resident_bytes(pid)
    except (OSError, ValueError, IndexError):
        return 0
    return resident_bytes(pid)


def tree_proportional_bytes(root: int, children: dict[int, list[int]]) -> int:
    """Proportional bytes of ``root`` and all its descendants: what the tree costs the machine."""
    total, pending, seen = 0, [root], set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += proportional_bytes(pid)
        pending.extend(children.get(pid, ()))
    return total


class MemoryPeaks:
    """Samples ``processes()`` (name → root pid, None when not running) until stopped."""

    def __init__(self, processes: Callable[[], Iterable[tuple[str, int | None]]], interval_s: float = sample_interval_s) -> None:
        self._processes = processes
        self._interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self.supported = proc.is_dir() and os.name == "posix"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-peaks", daemon=True)

    def __enter__(self) -> MemoryPeaks:
        if self.supported:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sample(self) -> None:
        children = _parents()
        for name, pid in self._processes():
            if pid is None:
                continue
            used = tree_proportional_bytes(pid, children)
            if used > self.peaks.get(name, 0):
                self.peaks[name] = used
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:  # a failed sample must never end a fault run
                continue

    def report(self) -> str:
        if not self.supported:
            return "memory peaks: not measured (no /proc)"
        if not self.peaks:
            return "memory peaks: no sample taken"
        parts = " ".join(f"{name}={used / 2**20:.0f}MiB" for name, used in sorted(self.peaks.items()))
        return f"memory peaks (proportional set size, sampled every {self._interval_s:g} s, {self.samples} samples): {parts}"
