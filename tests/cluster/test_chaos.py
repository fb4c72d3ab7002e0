"""A short chaos run in CI: mixed load, a nemesis, and a checker that finds nothing wrong.

`coffer chaos --minutes 30` is the long version; this one gives the nemesis about a minute and a
half, enough for a dozen faults of every kind on this machine.
"""

from pathlib import Path

from coffer.cluster.chaos import run

ci_minutes = 1.5


def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run(ci_minutes, 3, 6, 2026, tmp_path / "cluster", lines.append), "\n".join(lines)
    print("\n".join(lines))
    last = lines[-1]
    assert last.startswith("chaos: requests=")
    fields = dict(part.split("=") for part in last.removeprefix("chaos: ").split())
    assert int(fields["requests"]) > 0 and int(fields["faults"]) > 0
    assert fields["lost"] == fields["duplicated"] == fields["invariant_violations"] == "0"
