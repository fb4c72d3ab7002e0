"""Flows in the core: opaque definitions by name and version, run records, first outcome wins."""

from coffer.core.commands import FinishFlowRun, PutFlow, StartFlowRun
from coffer.core.errors import ErrorCode
from coffer.core.snapshot import restore_snapshot, take_snapshot

from .conftest import apply_one, assert_ok, assert_rejected


def put(name: str, definition: bytes, dedup_id: str) -> PutFlow:
    return PutFlow(dedup_id=dedup_id, name=name, definition=definition)


def test_versions_are_numbered_and_kept(machine) -> None:
    result, event = assert_ok(machine, put("pay", b'{"v": 1}', "put-1"))
    assert event.type == "flow_registered" and event.accounts == ()
    assert event.command == put("pay", b'{"v": 1}', "put-1")
    assert_ok(machine, put("pay", b'{"v": 2}', "put-2"))
    assert_ok(machine, put("refund", b"{}", "put-3"))
    versions = machine.flows["pay"]
    assert [(v.version, v.definition) for v in versions] == [(1, b'{"v": 1}'), (2, b'{"v": 2}')]
    assert versions[0].seq == result.seq
    # A retry registers nothing new.
    assert apply_one(machine, put("pay", b'{"v": 1}', "put-1")) == result
    assert len(machine.flows["pay"]) == 2


def test_malformed_flows_are_rejected(machine) -> None:
    assert_rejected(machine, put("bad name", b"{}", "p1"), ErrorCode.INVALID_REQUEST)
    assert_rejected(machine, put("x" * 65, b"{}", "p2"), ErrorCode.INVALID_REQUEST)
    assert_rejected(machine, put("empty", b"", "p3"), ErrorCode.INVALID_REQUEST)
    assert_rejected(machine, put("huge", b"x" * (64 * 1024 + 1), "p4"), ErrorCode.INVALID_REQUEST)


def test_a_run_pins_the_latest_version_when_none_is_given(machine) -> None:
    assert_ok(machine, put("pay", b"1", "put-1"))
    start = StartFlowRun(dedup_id="run-1", flow="pay", params=b'{"amount":"1"}')
    result, event = assert_ok(machine, start)
    assert event.type == "flow_run_started" and event.dedup_id == "run-1"
    assert machine.flow_runs["run-1"].version == 1
    assert list(machine.open_flow_runs) == ["run-1"]
    assert_ok(machine, put("pay", b"2", "put-2"))
    # The retry answers the first outcome: the run stays on version 1.
    assert apply_one(machine, start) == result
    assert machine.flow_runs["run-1"].version == 1
    assert_ok(machine, StartFlowRun(dedup_id="run-2", flow="pay", version=1))
    assert machine.flow_runs["run-2"].version == 1
    # The same run id with other params is another command.
    assert_rejected(machine, StartFlowRun(dedup_id="run-1", flow="pay", params=b"{}"), ErrorCode.DEDUP_ID_REUSED)


def test_runs_of_unknown_flows_or_versions(machine) -> None:
    assert_rejected(machine, StartFlowRun(dedup_id="r1", flow="nope"), ErrorCode.FLOW_NOT_FOUND)
    assert_ok(machine, put("pay", b"1", "put-1"))
    assert_rejected(machine, StartFlowRun(dedup_id="r2", flow="pay", version=0), ErrorCode.FLOW_NOT_FOUND)
    assert_rejected(machine, StartFlowRun(dedup_id="bad id", flow="pay"), ErrorCode.INVALID_REQUEST)
    assert_rejected(machine, StartFlowRun(dedup_id="r3", flow="pay", params=b"x" * (16 * 1024 + 1)), ErrorCode.INVALID_REQUEST)


def test_the_first_outcome_stays(machine) -> None:
    assert_ok(machine, put("pay", b"1", "put-1"))
    assert_ok(machine, StartFlowRun(dedup_id="run-1", flow="pay"))
    finished, event = assert_ok(machine, FinishFlowRun(dedup_id="fin-1", run_id="run-1", outcome=b"SUCCEEDED"))
    assert event.type == "flow_run_finished"
    assert machine.flow_runs["run-1"].outcome == b"SUCCEEDED"
    assert not machine.open_flow_runs
    # A second finisher (a resumed runner) is told the run is finished, and changes nothing.
    second = apply_one(machine, FinishFlowRun(dedup_id="fin-2", run_id="run-1", outcome=b"OTHER"))
    assert second.ok and second.seq == finished.seq
    assert machine.flow_runs["run-1"].outcome == b"SUCCEEDED"


def test_flows_and_runs_survive_a_snapshot(machine) -> None:
    assert_ok(machine, put("pay", b"1", "put-1"))
    assert_ok(machine, StartFlowRun(dedup_id="run-1", flow="pay"))
    assert_ok(machine, StartFlowRun(dedup_id="run-2", flow="pay"))
    assert_ok(machine, FinishFlowRun(dedup_id="fin-2", run_id="run-2", outcome=b"x"))
    assert_ok(machine, StartFlowRun(dedup_id="run-0", flow="pay"))
    restored = restore_snapshot(take_snapshot(machine))
    assert take_snapshot(restored) == take_snapshot(machine)
    assert list(restored.open_flow_runs) == ["run-1", "run-0"]  # in the order they started
    assert restored.flows == machine.flows
