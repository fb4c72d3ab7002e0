"""CPU seconds that groups of processes spend while ``coffer bench load`` drives them.

Job. The load bench says how many transfers a node answered; the cost of a transfer is the CPU
the servers spent on it. This runs a ``coffer bench load`` command, reads the CPU time (user +
system, from ``/proc``) of each named group of processes and of their descendants when the bench
says its setup is done (its ``setup:`` line) and again when it prints its result (``mode=``), and
prints per group the CPU seconds in that window and the CPU milliseconds per answered transfer::

    python -m coffer.bench.cpu --group shards=PID --group nats=PID,PID -- coffer bench load --no-floor ...

Last line: ``cpu: transfers=<n> <group>_cpu_s=<float> <group>_cpu_ms_per_transfer=<float> ...``.
Linux only (``/proc``); descendants that start during the window are counted from their start.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

_ticks_per_s = os.sysconf("SC_CLK_TCK")
_result = re.compile(r"\btps=(\d+)\b")
_duration = re.compile(r"--duration[ =](\S+)")
duration_s_default = 10.0  # coffer bench load's own default


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant alive now."""
    found = [pid]
    for parent in found:
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                found.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _ticks_per_s  # utime, stime (fields 14, 15 of stat)


def sample(groups: dict[str, list[int]], alone: frozenset[str] = frozenset()) -> dict[str, dict[int, float]]:
    return {
        name: {pid: cpu_s(pid) for root in roots for pid in ([root] if name in alone else process_tree(root))}
        for name, roots in groups.items()
    }


def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    return {name: sum(value - before[name].get(pid, 0.0) for pid, value in after[name].items()) for name in after}


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", default=[], help="name=PID[,PID...]: processes (with descendants) counted together")
    parser.add_argument("--alone", action="append", default=[], help="name=PID[,PID...]: processes counted without their descendants")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- coffer bench load ...")
    options = parser.parse_args(arguments)
    command = [part for part in options.command if part != "--"]
    assert command, "give the bench command after --"
    groups: dict[str, list[int]] = {}
    for group in options.group + options.alone:
        name, _, pids = group.partition("=")
        groups[name] = [int(pid) for pid in pids.split(",") if pid]
    alone = frozenset(group.partition("=")[0] for group in options.alone)
    matched = _duration.search(" ".join(command))
    duration_s = float(matched.group(1)) if matched else duration_s_default
    before: dict[str, dict[int, float]] | None = None
    used: dict[str, float] = {}
    tps = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("setup:"):
                before = sample(groups, alone)
            elif line.startswith("mode=") and before is not None:
                used = spent(before, sample(groups, alone))
                found = _result.search(line)
                tps = int(found.group(1)) if found else 0
    if process.returncode != 0 or not used:
        raise SystemExit(process.returncode or 1)
    transfers = int(tps * duration_s)
    figures = [f"transfers={transfers}"]
    for name, seconds in used.items():
        figures.append(f"{name}_cpu_s={seconds:.2f} {name}_cpu_ms_per_transfer={1000 * seconds / max(1, transfers):.4f}")
    print("cpu: " + " ".join(figures))


if __name__ == "__main__":
    main()
