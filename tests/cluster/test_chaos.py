"""Short chaos runs in CI: mixed load, a nemesis, and a checker that finds nothing wrong.

`coffer chaos --minutes 30` is the long version; here the nemesis gets a minute or so, enough for
a dozen faults. One run draws from every kind of fault, one only from network faults (through
the fault proxy), and two make sure a run always ends with its verdict line: when nodes do not
come back in time, and when the run is stopped with SIGTERM (which also stops every process).
One runs two shards: cross-shard commands, a nemesis that also kills coordinating nodes and the
leaders of both shards' streams, and the checker over every shard.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import coffer.cluster.chaos as chaos
from coffer.cluster.chaos import network_faults, run

ci_minutes = 1.0
partition_minutes = 0.75  # with start-up and the checker, under 2 minutes
shards_minutes = 0.75


def _fields(line: str) -> dict[str, str]:
    assert line.startswith("chaos: requests="), line
    return dict(part.split("=", 1) for part in line.removeprefix("chaos: ").split())


def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run(ci_minutes, 3, 6, 2026, tmp_path / "cluster", lines.append), "\n".join(lines)
    print("\n".join(lines))
    fields = _fields(lines[-1])
    assert int(fields["requests"]) > 0 and int(fields["faults"]) > 0
    assert fields["lost"] == fields["duplicated"] == fields["invariant_violations"] == "0"
    assert any(line.startswith("disk: n1=") for line in lines)


def test_a_partition_nemesis_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    ok = run(partition_minutes, 3, 4, 7, tmp_path / "cluster", lines.append, kinds=network_faults)
    print("\n".join(lines))
    assert ok, "\n".join(lines)
    fields = _fields(lines[-1])
    assert int(fields["faults"]) > 0 and fields["lost"] == fields["duplicated"] == fields["invariant_violations"] == "0"
    assert time.monotonic() - started < 120


def test_a_two_shard_chaos_run_loses_and_duplicates_nothing_across_shards(tmp_path: Path) -> None:
    lines: list[str] = []
    # Only the faults aimed at cross-shard work, so that a short run draws both of them.
    ok = run(shards_minutes, 3, 6, 11, tmp_path / "cluster", lines.append, kinds=("kill-node", "kill-leaders"), shards=2)
    print("\n".join(lines))
    assert ok, "\n".join(lines)
    fields = _fields(lines[-1])
    assert fields["verdict"] == "ok" and fields["shards"] == "2"
    assert int(fields["requests"]) > 0 and int(fields["faults"]) > 0
    assert fields["lost"] == fields["duplicated"] == fields["invariant_violations"] == "0"
    assert any(line.startswith("cross-shard: ") and not line.startswith("cross-shard: 0 ") for line in lines)
    assert any("cross-shard commands in flight" in line for line in lines) and any("kill-leaders: killed" in line for line in lines)


def test_a_disk_budget_reached_stops_the_faults_and_ends_with_a_verdict(tmp_path: Path) -> None:
    lines: list[str] = []
    # Small enough that even a slow run (a loaded machine) fills it within the two minutes.
    ok = run(2.0, 3, 6, 5, tmp_path / "cluster", lines.append, disk_budget_mb=48)
    print("\n".join(lines))
    assert not ok
    fields = _fields(lines[-1])
    assert fields["verdict"] == "ended-early"
    assert fields["lost"] == fields["duplicated"] == fields["invariant_violations"] == "0"
    assert any(line.startswith("the run ended early:") and "disk budget" in line for line in lines)


def test_nodes_that_do_not_come_back_are_recorded_and_the_run_still_ends_with_its_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos, "_ready_bound_s", lambda cluster: 0.2)  # no restarted node is ready that fast
    lines: list[str] = []
    assert not run(0.25, 3, 2, 5, tmp_path / "cluster", lines.append, kinds=("wipe-node",))
    print("\n".join(lines))
    fields = _fields(lines[-1])
    assert int(fields["nodes_not_back"]) >= 1 and fields["verdict"] == "problems"
    assert any("did not come back" in line for line in lines)


def test_sigterm_ends_the_run_with_its_verdict_and_stops_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    command = [sys.executable, "-m", "coffer", "chaos", "--minutes", "5", "--seed", "9", "--data-dir", str(directory)]
    output_path = tmp_path / "chaos.out"
    with output_path.open("w") as output_file:
        process = subprocess.Popen(command, stdout=output_file, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "acknowledged so far" not in output_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, output_path.read_text()
            time.sleep(0.5)
        pids = _recorded_pids(directory)
        process.send_signal(signal.SIGTERM)
        process.wait(150)
    finally:
        if process.poll() is None:
            process.kill()
    output = output_path.read_text()
    print(output)
    last = output.strip().splitlines()[-1]
    assert _fields(last)["verdict"] == "ended-early"
    assert "interrupted by SIGTERM" in output
    assert process.returncode == 1
    assert pids and not [pid for pid in pids if _alive(pid)]


def _recorded_pids(directory: Path) -> list[int]:
    pids = []
    for state_file, key in ((directory / "coffer-nodes.json", "nodes"), (directory / "nats" / "cluster.json", "servers")):
        if state_file.exists():
            pids += [entry["pid"] for entry in json.loads(state_file.read_text())[key] if entry.get("pid")]
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
