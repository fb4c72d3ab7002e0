"""The audit: recompute the history from the events alone, and compare it with what is served.

Job: ``coffer audit verify`` gives a verdict on a history — from a query store (``--store``) or
from a node's own event feed (``--url``), or both: the store's history, compared with the live
node. ``coffer audit export`` signs a checkpoint (shard, seq, hash) of a verified history, which
an auditor checks later against a replayed one (``verify --checkpoint … --public-key …``).

What verify checks, event by event, stopping at the first bad seq:
1. the chain: seq 1, 2, 3… with no gap, each ``prev_hash`` the previous ``hash``, each ``hash``
   recomputed from the canonical bytes, the bytes holding their own seq;
2. the store's derived rows (``--store``): the event row's columns and the account version rows
   are exactly what the canonical bytes say, so history queries cannot serve edited data that the
   chain does not cover;
3. the accounts: every change raises an account's version by exactly one, and money is conserved
   by the events that move it inside the ledger (transfers, reservations, TCC try and cancel) and
   changes by exactly the legs of a batch operation;
4. the final balances — each account's latest state folded from the events — and the chain head
   against the node (``--url``): the node's hash at the same seq, and every account as the node
   serves it at that seq (``GET /v1/accounts?ids=…&at_seq=``).

Checkpoints are JSON; the signature is Ed25519 over the sorted-key JSON of every field but
``signature`` (``format``, ``shard``, ``seq``, ``hash``, ``created``, ``public_key``). Keys are
files: PKCS#8 PEM for the private key (mode 0600), SubjectPublicKeyInfo PEM for the public one.
"""

import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx
import msgspec

from coffer.core.accounts import Account
from coffer.core.commands import BatchBalanceOperation
from coffer.core.events import Event, EventRecord, event_decoder, genesis_hash
from coffer.http.feed_lines import line_decoder, stream_path
from coffer.http.views import account_view
from coffer.progress import progress
from coffer.query.sql_store import EventRow, SqlStore, VersionRow, rows_of

page_events = 10_000  # events read and checked per round trip
accounts_per_request = 500  # ids per GET /v1/accounts: keeps the URL far below common limits
request_timeout_s = 30.0
checkpoint_format = "coffer-checkpoint-1"

# Events whose accounts hold the same total money (available + reserved + pending_out per asset)
# after as before: money moves between accounts or sections, never in or out of the ledger.
conserving_event_types = frozenset(
    {
        "account_created",
        "limits_updated",
        "account_locked",
        "account_unlocked",
        "account_deleted",
        "transferred",
        "reserved",
        "released",
        "tcc_tried",
        "tcc_cancelled",
        "tcc_expired",
    }
)


class AuditFailed(Exception):
    """The history is wrong at ``seq`` (0 when the problem has no seq, e.g. a bad signature)."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"seq {seq}: {message}" if seq else message)
        self.seq = seq
        self.reason = message


@dataclass
class Verdict:
    ok: bool
    seq: int  # the last event checked
    hash: bytes
    accounts: int
    first_bad_seq: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human lines, then the last line for scripts: ``verdict=OK …`` or ``verdict=FAILED …``."""
        lines = list(self.notes)
        if self.ok:
            lines.append(f"OK: {self.seq} events verified, head seq {self.seq} hash {self.hash.hex()}, {self.accounts} accounts")
            lines.append(f"verdict=OK seq={self.seq} hash={self.hash.hex()}")
        else:
            where = f" at seq {self.first_bad_seq}" if self.first_bad_seq else ""
            lines.append(f"FAILED{where}: {self.problem}")
            lines.append(f"verdict=FAILED first_bad_seq={self.first_bad_seq or 0}")
        return lines


def _money(account: Account | None) -> int:
    if account is None:
        return 0
    return account.available + sum(account.reservations.values()) + sum(account.pending_out.values())


class Replay:
    """Folds events, in order, into the chain head and every account's latest state."""

    def __init__(self) -> None:
        self.seq = 0
        self.hash = genesis_hash
        self.accounts: dict[str, Account] = {}
        self.hash_at: dict[int, bytes] = {}  # seqs whose hash someone asked to keep (checkpoints)

    def add(self, record: EventRecord, row: EventRow | None = None, version_rows: list[VersionRow] | None = None) -> None:
        seq = record.seq
        if seq != self.seq + 1:
            raise AuditFailed(self.seq + 1, f"event {self.seq + 1} is missing (the next stored event is seq {seq})")
        if record.prev_hash != self.hash:
            raise AuditFailed(seq, "broken chain: prev_hash is not the previous event's hash")
        if sha256(record.prev_hash + record.body).digest() != record.hash:
            raise AuditFailed(seq, "broken chain: hash does not match the event's canonical bytes")
        try:
            event = event_decoder.decode(record.body)
        except msgspec.MsgspecError as error:
            raise AuditFailed(seq, f"the event's bytes are not an event: {error}") from None
        if event.seq != seq:
            raise AuditFailed(seq, f"the event's bytes carry seq {event.seq}")
        if row is not None or version_rows is not None:
            expected_row, expected_versions = rows_of(record)
            if row is not None and row != expected_row:
                raise AuditFailed(seq, "the stored event row's columns differ from its canonical bytes")
            if version_rows is not None and sorted(version_rows) != sorted(expected_versions):
                raise AuditFailed(seq, "the stored account versions differ from the event's canonical bytes")
        self._fold(event)
        self.seq, self.hash = seq, record.hash
        if seq in self.hash_at:
            self.hash_at[seq] = record.hash

    def _fold(self, event: Event) -> None:
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        for account in event.accounts:
            previous = self.accounts.get(account.account_id)
            expected_version = 1 if previous is None else previous.version + 1
            if account.version != expected_version:
                raise AuditFailed(
                    event.seq, f"account {account.account_id} jumps to version {account.version}, expected {expected_version}"
                )
            if previous is not None and (previous.asset, previous.scale) != (account.asset, account.scale):
                raise AuditFailed(event.seq, f"account {account.account_id} changes its asset or scale")
            before[account.asset] = before.get(account.asset, 0) + _money(previous)
            after[account.asset] = after.get(account.asset, 0) + _money(account)
            self.accounts[account.account_id] = account
        expected = dict.fromkeys(after, 0)
        if isinstance(event.command, BatchBalanceOperation) and event.type == "balances_changed":
            for leg in event.command.legs:
                expected[leg.asset] = expected.get(leg.asset, 0) + leg.amount
        elif event.type not in conserving_event_types:
            return  # confirmations and compensations depend on earlier events' holds: not checked here
        for asset, total in after.items():
            if total - before.get(asset, 0) != expected.get(asset, 0):
                raise AuditFailed(
                    event.seq,
                    f"{event.type} changes the {asset} total by {total - before.get(asset, 0)}, expected {expected.get(asset, 0)}",
                )


# ---------------------------------------------------------------------------------------- sources


def store_events(store: SqlStore) -> Iterator[tuple[EventRecord, EventRow, list[VersionRow]]]:
    """Every stored event in seq order, with its stored row and version rows."""
    next_seq = 1
    while True:
        rows = store.event_rows(next_seq, page_events)
        if not rows:
            return
        versions: dict[int, list[VersionRow]] = {}
        for version in store.version_rows(rows[0][0], rows[-1][0] + 1):
            versions.setdefault(version[1], []).append(version)
        for row in rows:
            yield EventRecord(row[0], row[5], row[6], row[7]), row, versions.get(row[0], [])
        next_seq = rows[-1][0] + 1


class Node:
    """The few node endpoints the audit reads, over plain httpx."""

    def __init__(self, url: str, api_key: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: verify an https node with it (default: the system's CAs)."""
        headers = {"x-api-key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=request_timeout_s, verify=tls or True)

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        if response.status_code != 200:
            raise AuditFailed(0, f"the node at {self.url} answered GET {path} with {response.status_code}: {response.text[:300]}")
        return response.json()

    def head(self) -> tuple[int, bytes]:
        head = self._get("/v1/audit/head")
        return int(head["seq"]), bytes.fromhex(head["hash"])

    def hash_at(self, seq: int) -> bytes | None:
        events = self._get("/v1/events", from_seq=seq, to_seq=seq + 1, limit=1)["events"]
        return bytes.fromhex(events[0]["hash"]) if events else None

    def accounts_at(self, account_ids: list[str], seq: int) -> tuple[dict[str, Any], list[str]]:
        found: dict[str, Any] = {}
        missing: list[str] = []
        for start in range(0, len(account_ids), accounts_per_request):
            answer = self._get("/v1/accounts", ids=",".join(account_ids[start : start + accounts_per_request]), at_seq=seq)
            found.update(answer["accounts"])
            missing.extend(answer["missing"])
        return found, missing

    def events(self, until_seq: int) -> Iterator[EventRecord]:
        """The node's events 1..until_seq, canonical bytes included, from its event feed."""
        next_seq = 1
        with self.client.stream(
            "GET", stream_path, params={"from_seq": "1"}, timeout=httpx.Timeout(request_timeout_s)
        ) as response:
            if response.status_code != 200:
                raise AuditFailed(0, f"the node at {self.url} refused its event feed: {response.status_code}")
            partial = bytearray()
            for chunk in response.iter_raw():
                partial += chunk
                end = partial.rfind(b"\n")
                if end < 0:
                    continue
                lines = line_decoder.decode_lines(bytes(partial[: end + 1]))
                del partial[: end + 1]
                for line in lines:
                    if line.seq is None:
                        continue
                    if line.body is None or line.prev_hash is None or line.hash is None:
                        raise AuditFailed(line.seq, "the feed line lacks body, prev_hash or hash")
                    yield EventRecord(line.seq, line.body, bytes.fromhex(line.prev_hash), bytes.fromhex(line.hash))
                    next_seq = line.seq + 1
                    if line.seq >= until_seq:
                        return
        raise AuditFailed(next_seq, "the node's event feed ended early")

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------- verify


def verify(
    store: SqlStore | None = None,
    node: Node | None = None,
    checkpoint: dict[str, Any] | None = None,
    public_key_pem: bytes | None = None,
) -> Verdict:
    """Verify a store's history, or the node's own (without a store), and compare with the node."""
    assert store is not None or node is not None
    replay = Replay()
    notes: list[str] = []
    if checkpoint is not None:
        assert public_key_pem is not None
        try:
            check_signature(checkpoint, public_key_pem)
        except AuditFailed as failure:
            return Verdict(False, 0, genesis_hash, 0, None, failure.reason, notes)
        replay.hash_at[int(checkpoint["seq"])] = b""
    try:
        if store is not None:
            notes.append(f"history: the {store.kind} store")
            with progress("verifying", store.last_seq(), unit="events") as shown:
                for record, row, versions in store_events(store):
                    replay.add(record, row, versions)
                    shown.advance()
        else:
            assert node is not None
            node_seq, _ = node.head()
            notes.append(f"history: the event feed of {node.url}, seq 1..{node_seq}")
            with progress("verifying", node_seq, unit="events") as shown:
                for record in node.events(node_seq):
                    replay.add(record)
                    shown.advance()
        if checkpoint is not None:
            _compare_checkpoint(replay, checkpoint, notes)
        if node is not None:
            _compare_with_node(replay, node, notes, _store_hash_at(store) if store is not None else None)
    except AuditFailed as failure:
        return Verdict(False, replay.seq, replay.hash, len(replay.accounts), failure.seq or None, failure.reason, notes)
    except httpx.HTTPError as error:
        return Verdict(False, replay.seq, replay.hash, len(replay.accounts), None, f"the node is unreachable: {error}", notes)
    return Verdict(True, replay.seq, replay.hash, len(replay.accounts), notes=notes)


def _compare_checkpoint(replay: Replay, checkpoint: dict[str, Any], notes: list[str]) -> None:
    seq = int(checkpoint["seq"])
    if replay.seq < seq:
        raise AuditFailed(replay.seq + 1, f"the history ends at seq {replay.seq}, before the checkpoint's seq {seq}")
    if replay.hash_at[seq] != bytes.fromhex(checkpoint["hash"]):
        raise AuditFailed(seq, "the replayed hash differs from the signed checkpoint's")
    notes.append(f"checkpoint: seq {seq} signed {checkpoint['created']} matches the replayed history")


def _store_hash_at(store: SqlStore) -> Callable[[int], bytes | None]:
    def hash_at(seq: int) -> bytes | None:
        records = store.events(from_seq=seq, to_seq=seq + 1)
        return records[0].hash if records else None

    return hash_at


def _first_difference(replay: Replay, node: Node, history_hash_at: Callable[[int], bytes | None] | None) -> int:
    """The first seq where the history and the node's chain differ (they differ at the head).

    Hash-chained histories that differ at one seq differ at every seq after it, so a binary search
    over the two chains' hashes finds it in log2(seq) lookups.
    """
    if history_hash_at is None:
        return replay.seq
    low, high = 1, replay.seq  # the answer is in [low, high]; they differ at high
    while low < high:
        middle = (low + high) // 2
        if history_hash_at(middle) == node.hash_at(middle):
            low = middle + 1
        else:
            high = middle
    return low


def _compare_with_node(
    replay: Replay, node: Node, notes: list[str], history_hash_at: Callable[[int], bytes | None] | None = None
) -> None:
    node_seq, node_hash = node.head()
    seq = replay.seq
    if node_seq < seq:
        raise AuditFailed(node_seq + 1, f"the history goes to seq {seq}, past the node's head at seq {node_seq}")
    hash_ = node_hash if node_seq == seq else node.hash_at(seq)
    if seq > 0 and hash_ != replay.hash:
        first = _first_difference(replay, node, history_hash_at)
        raise AuditFailed(first, f"the node's chain has another hash at this seq (and at every seq up to {seq})")
    account_ids = sorted(replay.accounts)
    served, missing = node.accounts_at(account_ids, seq)
    if missing:
        raise AuditFailed(seq, f"the node does not know account {missing[0]}")
    for account_id in account_ids:
        expected = account_view(replay.accounts[account_id], seq)
        actual = served.get(account_id)
        if actual != expected:
            fields = sorted(key for key in expected if actual is None or actual.get(key) != expected[key])
            raise AuditFailed(seq, f"account {account_id} differs from the node's ({', '.join(fields)})")
    behind = f" (the node is at seq {node_seq})" if node_seq > seq else ""
    notes.append(f"node {node.url}: chain hash and {len(account_ids)} accounts match at seq {seq}{behind}")


# ------------------------------------------------------------------------------------ checkpoints


def generate_key(path: Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (0600) and its public key beside it (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public_path


def _signed_bytes(checkpoint: dict[str, Any]) -> bytes:
    return msgspec.json.encode({key: value for key, value in checkpoint.items() if key != "signature"}, order="sorted")


def sign_checkpoint(seq: int, hash_: bytes, private_key_pem: bytes, shard: int = 0) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the checkpoint key must be an Ed25519 private key")
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    checkpoint: dict[str, Any] = {
        "format": checkpoint_format,
        "shard": shard,
        "seq": seq,
        "hash": hash_.hex(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "public_key": public.hex(),
    }
    checkpoint["signature"] = key.sign(_signed_bytes(checkpoint)).hex()
    return checkpoint


def check_signature(checkpoint: dict[str, Any], public_key_pem: bytes) -> None:
    """Raise :class:`AuditFailed` unless ``checkpoint`` is signed by the key in ``public_key_pem``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise AuditFailed(0, "the public key is not an Ed25519 key")
    if checkpoint.get("format") != checkpoint_format:
        raise AuditFailed(0, f"not a checkpoint of format {checkpoint_format}")
    try:
        key.verify(bytes.fromhex(str(checkpoint.get("signature", ""))), _signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        raise AuditFailed(0, "the checkpoint's signature does not verify with this public key") from None


def export_checkpoint(verdict: Verdict, private_key_pem: bytes, shard: int = 0) -> dict[str, Any]:
    """A signed checkpoint of a verified history's head; refuses an unverified or empty one."""
    if not verdict.ok:
        raise AuditFailed(verdict.first_bad_seq or 0, f"refusing to sign a history that does not verify: {verdict.problem}")
    if verdict.seq == 0:
        raise AuditFailed(0, "refusing to sign an empty history")
    return sign_checkpoint(verdict.seq, verdict.hash, private_key_pem, shard)
