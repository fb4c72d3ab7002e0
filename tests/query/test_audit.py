"""``audit verify`` finds every kind of tampering at the right seq; checkpoints sign and verify."""

import json
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from coffer.core.events import encoder as event_encoder
from coffer.core.events import event_decoder
from coffer.query.audit import Node, check_signature, export_checkpoint, generate_key, verify
from coffer.query.cli import audit_export, audit_verify
from coffer.query.sql_store import SqlStore
from tests.query.node_process import LoadedNode, project


@pytest.fixture
def projected(mixed_node: LoadedNode, store: SqlStore) -> SqlStore:
    project(mixed_node.url, store, mixed_node.last_seq)
    return store


@pytest.fixture
def node(mixed_node: LoadedNode) -> Iterator[Node]:
    client = Node(mixed_node.url)
    yield client
    client.close()


def _transfer_seq(store: SqlStore) -> int:
    """A transfer event near the middle of the history."""
    rows = store.event_rows(1, 100_000)
    transfers = [row[0] for row in rows if row[4] == "transferred"]
    return transfers[len(transfers) // 2]


def _richer_body(store: SqlStore, seq: int) -> bytes:
    """The event's bytes with 1.00 more on its first account: still a well-formed event."""
    body = store.events(from_seq=seq, to_seq=seq + 1)[0].body
    event = event_decoder.decode(body)
    account = event.accounts[0]
    richer = msgspec.structs.replace(account, available=account.available + 100)
    return event_encoder.encode(msgspec.structs.replace(event, accounts=(richer, *event.accounts[1:])))


def test_an_intact_history_verifies_against_the_node(mixed_node: LoadedNode, projected: SqlStore, node: Node) -> None:
    verdict = verify(projected, node)
    assert verdict.ok, verdict.lines()
    assert (verdict.seq, verdict.hash.hex()) == (mixed_node.last_seq, mixed_node.head_hash)
    assert verdict.accounts == len(mixed_node.account_ids)
    assert verdict.lines()[-1] == f"verdict=OK seq={mixed_node.last_seq} hash={mixed_node.head_hash}"


def test_the_node_alone_verifies_through_its_feed(mixed_node: LoadedNode, node: Node) -> None:
    verdict = verify(None, node)
    assert verdict.ok, verdict.lines()
    assert verdict.seq == mixed_node.last_seq


def test_a_changed_amount_breaks_the_chain_at_its_seq(projected: SqlStore, node: Node) -> None:
    seq = _transfer_seq(projected)
    projected.execute("UPDATE events SET body = ? WHERE seq = ?", (_richer_body(projected, seq), seq))
    verdict = verify(projected, node)
    assert not verdict.ok and verdict.first_bad_seq == seq, verdict.lines()
    assert "hash does not match" in (verdict.problem or "")
    assert verdict.lines()[-1] == f"verdict=FAILED first_bad_seq={seq}"


def test_a_changed_amount_with_a_rehashed_chain_breaks_conservation(projected: SqlStore) -> None:
    """A forger who recomputes every hash after the edit still cannot make the money add up."""
    seq = _transfer_seq(projected)
    rows = projected.event_rows(1, 100_000)
    prev_hash = rows[seq - 2][7]
    for row in rows[seq - 1 :]:
        body = _richer_body(projected, seq) if row[0] == seq else row[5]
        hash_ = sha256(prev_hash + body).digest()
        projected.execute("UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?", (body, prev_hash, hash_, row[0]))
        prev_hash = hash_
    verdict = verify(projected)
    assert not verdict.ok and verdict.first_bad_seq == seq, verdict.lines()


def test_a_deleted_event_is_a_gap_at_its_seq(projected: SqlStore, node: Node) -> None:
    seq = _transfer_seq(projected)
    projected.execute("DELETE FROM events WHERE seq = ?", (seq,))
    verdict = verify(projected, node)
    assert not verdict.ok and verdict.first_bad_seq == seq and "missing" in (verdict.problem or ""), verdict.lines()


def test_swapped_events_are_caught_at_the_first_of_them(projected: SqlStore, node: Node) -> None:
    seq = _transfer_seq(projected)
    projected.execute("UPDATE events SET seq = -1 WHERE seq = ?", (seq,))
    projected.execute("UPDATE events SET seq = ? WHERE seq = ?", (seq, seq + 1))
    projected.execute("UPDATE events SET seq = ? WHERE seq = -1", (seq + 1,))
    verdict = verify(projected, node)
    assert not verdict.ok and verdict.first_bad_seq == seq, verdict.lines()


def test_an_edited_account_version_row_is_caught(projected: SqlStore, node: Node) -> None:
    """History queries read version rows: an edit there must not hide behind an intact chain."""
    seq = _transfer_seq(projected)
    projected.execute("UPDATE account_versions SET available = '1' WHERE seq = ?", (seq,))
    verdict = verify(projected, node)
    assert not verdict.ok and verdict.first_bad_seq == seq and "account versions" in (verdict.problem or ""), verdict.lines()


def test_an_edited_event_column_is_caught(projected: SqlStore) -> None:
    seq = _transfer_seq(projected)
    projected.execute("UPDATE events SET time_ms = time_ms + 1 WHERE seq = ?", (seq,))
    verdict = verify(projected)
    assert not verdict.ok and verdict.first_bad_seq == seq and "columns" in (verdict.problem or ""), verdict.lines()


def test_a_store_from_another_history_differs_from_the_node(
    mixed_node: LoadedNode, big_node: LoadedNode, store_kind: str, new_dsn: Callable[[str], str]
) -> None:
    other = SqlStore(new_dsn(store_kind))
    try:
        project(big_node.url, other, 50)
        verdict = verify(other, Node(mixed_node.url))
    finally:
        other.close()
    # Both histories start with account creations, but of other accounts: they part at seq 1.
    assert not verdict.ok and verdict.first_bad_seq == 1 and "another hash" in (verdict.problem or ""), verdict.lines()


def test_a_signed_checkpoint_verifies_a_replayed_history_later(projected: SqlStore, node: Node, tmp_path: Path) -> None:
    key = tmp_path / "auditor.key"
    public_key = generate_key(key).read_bytes()
    verdict = verify(projected)
    checkpoint = export_checkpoint(verdict, key.read_bytes())
    assert (checkpoint["seq"], checkpoint["hash"]) == (verdict.seq, verdict.hash.hex())
    check_signature(checkpoint, public_key)

    assert verify(projected, node, checkpoint, public_key).ok
    forged = {**checkpoint, "seq": checkpoint["seq"] - 1}
    assert "signature" in (verify(projected, None, forged, public_key).problem or "")
    other_key = generate_key(tmp_path / "other.key").read_bytes()
    assert not verify(projected, None, checkpoint, other_key).ok

    seq = _transfer_seq(projected)
    projected.execute("UPDATE events SET body = ? WHERE seq = ?", (_richer_body(projected, seq), seq))
    later = verify(projected, None, checkpoint, public_key)
    assert not later.ok and later.first_bad_seq == seq


def test_the_cli_prints_a_verdict_and_exits_by_it(mixed_node: LoadedNode, projected: SqlStore, tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "auditor.key"
    public_key = generate_key(key)
    checkpoint = tmp_path / "checkpoint.json"

    exported = runner.invoke(audit_export, ["--store", projected.dsn, "--key", str(key), "--out", str(checkpoint)])
    assert exported.exit_code == 0, exported.output
    assert json.loads(checkpoint.read_text())["seq"] == mixed_node.last_seq

    arguments = [
        "--store",
        projected.dsn,
        "--url",
        mixed_node.url,
        "--checkpoint",
        str(checkpoint),
        "--public-key",
        str(public_key),
    ]
    good = runner.invoke(audit_verify, arguments)
    assert good.exit_code == 0, good.output
    assert good.output.splitlines()[-1] == f"verdict=OK seq={mixed_node.last_seq} hash={mixed_node.head_hash}"

    seq = _transfer_seq(projected)
    projected.execute("DELETE FROM events WHERE seq = ?", (seq,))
    bad = runner.invoke(audit_verify, arguments)
    assert bad.exit_code == 1, bad.output
    assert bad.output.splitlines()[-1] == f"verdict=FAILED first_bad_seq={seq}"
    assert f"FAILED at seq {seq}" in bad.output

    refused = runner.invoke(audit_export, ["--store", projected.dsn, "--key", str(key), "--out", str(tmp_path / "no.json")])
    assert refused.exit_code == 1 and not (tmp_path / "no.json").exists()
