"""The projector against real nodes: volume, kill -9 and resume, a broken history, a live tail."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from coffer.http.views import account_view
from coffer.query.audit import Node, verify
from coffer.query.projector import ProjectionError, Projector
from coffer.query.sql_store import SqlStore
from tests.query.node_process import FeedNode, LoadedNode, head, project, send, transfers_workload
from tests.service.server_process import free_port

process_s_max = 120.0
poll_s = 0.01


def _live_accounts(url: str, account_ids: list[str]) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for start in range(0, len(account_ids), 500):
            answer = client.get("/v1/accounts", params={"ids": ",".join(account_ids[start : start + 500])}).json()
            found.update(answer["accounts"])
    return found


def test_projection_equals_the_live_balances(big_node: LoadedNode, store: SqlStore) -> None:
    assert project(big_node.url, store, big_node.last_seq) == big_node.last_seq
    assert store.head() == (big_node.last_seq, bytes.fromhex(big_node.head_hash))
    projected = store.accounts_at(big_node.account_ids, big_node.last_seq)
    live = _live_accounts(big_node.url, big_node.account_ids)
    assert len(projected) == len(live) == len(big_node.account_ids)
    for account_id, account in projected.items():
        assert account_view(account, big_node.last_seq) == live[account_id]


def _finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Wait for a projector process to exit; SIGKILL it if it does not (by its PID)."""
    try:
        output, _ = process.communicate(timeout=process_s_max)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, output.decode(errors="replace")


def _projector_process(url: str, dsn: str, until_seq: int | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from coffer.query.cli import project; project()", "--source", url, "--store", dsn]
    command += ["--log-level", "warning"]
    if until_seq is not None:
        command += ["--until-seq", str(until_seq)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_killed_projector_resumes_and_loses_or_duplicates_nothing(big_node: LoadedNode, store: SqlStore) -> None:
    process = _projector_process(big_node.url, store.dsn)
    deadline = time.monotonic() + process_s_max
    try:
        # Kill it mid-stream: once a fifth of the history is stored, while the rest is in flight.
        while store.last_seq() < big_node.last_seq // 5:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(poll_s)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    stored_at_kill = store.last_seq()
    assert 0 < stored_at_kill < big_node.last_seq

    code, output = _finish(_projector_process(big_node.url, store.dsn, until_seq=big_node.last_seq))
    assert code == 0, output
    assert store.head() == (big_node.last_seq, bytes.fromhex(big_node.head_hash))
    # Every seq once (the primary key refuses a second), every version row derived right, and the
    # balances equal the node's: the audit checks all of it.
    verdict = verify(store, Node(big_node.url))
    assert verdict.ok, verdict.lines()
    assert verdict.seq == big_node.last_seq


def _tamper_node_store(node: FeedNode, statement: str, parameters: tuple[object, ...]) -> None:
    """Edit the node's own event store under it (its readers see the change at once: WAL mode)."""
    head(node.url)  # the event is in the node's store before it is edited
    connection = sqlite3.connect(Path(node.data_dir) / "events.sqlite3", isolation_level=None)
    try:
        assert connection.execute(statement, parameters).rowcount == 1
    finally:
        connection.close()


def test_a_broken_history_stops_the_projector_before_the_bad_event(node_factory: Callable[[], FeedNode], store: SqlStore) -> None:
    node = node_factory()
    _, commands = transfers_workload("broken", 20, 200)
    send(node.url, commands)
    last_seq, _ = head(node.url)
    original = (
        sqlite3.connect(Path(node.data_dir) / "events.sqlite3").execute("SELECT body FROM events WHERE seq = 50").fetchone()[0]
    )

    # An edited event: its bytes no longer hash to its hash.
    edited = bytearray(original)
    edited[-3] ^= 0x01
    _tamper_node_store(node, "UPDATE events SET body = ? WHERE seq = 50", (bytes(edited),))
    with pytest.raises(ProjectionError) as broken:
        project(node.url, store, last_seq)
    assert broken.value.seq == 50 and "hash" in broken.value.reason
    assert store.last_seq() == 49  # everything before it, nothing from it on

    # A missing event: the feed skips a seq.
    _tamper_node_store(node, "UPDATE events SET body = ? WHERE seq = 50", (original,))
    _tamper_node_store(node, "DELETE FROM events WHERE seq = 120", ())
    with pytest.raises(ProjectionError) as gap:
        project(node.url, store, last_seq)
    assert gap.value.seq == 120 and "gap" in gap.value.reason
    assert store.last_seq() == 119


def test_the_cli_reports_a_broken_chain_with_its_seq(node_factory: Callable[[], FeedNode], new_dsn: Callable[[str], str]) -> None:
    node = node_factory()
    _, commands = transfers_workload("cli", 5, 40)
    send(node.url, commands)
    _tamper_node_store(node, "UPDATE events SET prev_hash = ? WHERE seq = 30", (bytes(32),))
    code, output = _finish(_projector_process(node.url, new_dsn("sqlite")))
    assert code == 1, output
    assert "broke the chain at seq 30" in output and "the store holds seq 1..29" in output


def test_the_projector_follows_a_live_node_across_a_crash_and_sources(
    node_factory: Callable[[], FeedNode], store: SqlStore
) -> None:
    node = node_factory()
    _accounts, commands = transfers_workload("live", 10, 300)
    send(node.url, commands[:100])
    final_seq = 300  # every command of the workload makes one event
    errors: list[BaseException] = []

    # The first source never answers: the projector moves on to the next one.
    sources = f"http://127.0.0.1:{free_port()},{node.url}"

    def run() -> None:
        try:
            asyncio.run(Projector(sources, store).run(final_seq))
        except BaseException as error:
            errors.append(error)

    follower = threading.Thread(target=run)
    follower.start()
    deadline = time.monotonic() + process_s_max
    while store.last_seq() < 100:
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(poll_s)
    send(node.url, commands[100:200])
    node.kill()  # the feed's connection dies with it; the projector reconnects from its last seq
    node.start()
    send(node.url, commands[200:])
    follower.join(process_s_max)
    assert not follower.is_alive() and not errors, errors
    assert store.head() == (final_seq, bytes.fromhex(head(node.url)[1]))
