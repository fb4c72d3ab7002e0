"""Divergence is impossible to miss: replicas compare what they made of the same log.

Method. Every replica applies the same entries to the same deterministic state machine, so after
log index N all of them must hold the same event chain head (the head commits to every event,
and every event carries the full views of the accounts it changed). Each node remembers the head
it had after each recent index and publishes its latest ``(log_index, seq, head)`` on a NATS
subject every second. When a peer's checkpoint names an index this node has applied, the heads
are compared; a node that disagrees with the majority of the peers it has compared against stops
serving (reads, writes and readiness answer 503) and logs it at CRITICAL: its state can no longer
be trusted, and an operator must look before it serves again.

Checkpoints also say which protocol each node runs (the newest its release applies, and the
ledger's current one), so nodes of different releases in one cluster are seen at once: each node
logs it and reports it in ``/readyz``. They cannot silently diverge: every entry says the protocol
its writer ran and is judged by the ledger's protocol, and a node that meets a protocol newer than
it understands stops instead of applying it.

Only the cluster's own nodes are heard. With a cluster secret (``--cluster-secret-file``, written
by ``coffer cluster up`` and given to every node), each checkpoint carries an HMAC-SHA256 of its
subject and bytes under that secret; a checkpoint without a valid one — forged, replayed on
another stream's subject, or from a node given another secret — is ignored and logged (once a
minute at most, with a count), so no publisher without the secret can stop a node or hold back
compaction. Without a secret checkpoints are neither signed nor checked, and the node warns at
start that anyone who may publish on the subject can stop it; NATS servers started by Coffer
also grant the checkpoint subjects to the nodes' users alone.
"""

import hashlib
import hmac
import logging
import time
from collections import OrderedDict

import msgspec

logger = logging.getLogger(__name__)

checkpoint_interval_s = 1.0
heads_kept = 50_000  # recent log indexes whose head this node remembers, to compare late peers
peer_checkpoint_age_s_max = 30.0  # a peer silent longer than this no longer counts for a majority
signature_bytes = 32  # HMAC-SHA256, appended to the encoded checkpoint
cluster_secret_bytes_min = 16  # 128 bits: beyond guessing
ignored_log_interval_s = 60.0  # a flood of forged checkpoints makes one log line a minute


class Checkpoint(msgspec.Struct, array_like=True):
    node: str
    log_index: int
    seq: int
    head: bytes
    snapshot_index: int = 0  # the replica's newest snapshot: the stream below it may go
    protocol_version: int = 0  # the ledger's protocol as this replica applied it (0: not said)
    protocol_version_max: int = 0  # the newest protocol this node's release applies (0: not said)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Checkpoint)


class Divergence(RuntimeError):
    pass


class CheckpointMonitor:
    def __init__(self, node_name: str, subject: str, secret: bytes | None = None) -> None:
        """``secret``: the cluster's; checkpoints are then signed, and unsigned ones ignored."""
        assert secret is None or len(secret) >= cluster_secret_bytes_min, "cluster secret too short"
        self.node_name = node_name
        self.subject = subject
        self._secret = secret
        self.ignored = 0  # checkpoints without a valid signature
        self._ignored_logged_at: float | None = None
        self._ignored_since_log = 0
        self._heads: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._pending: dict[int, list[Checkpoint]] = {}  # peers ahead of us, compared when we get there
        self._verdicts: dict[str, tuple[bool, float, int]] = {}  # peer -> (agrees, when, index)
        self.diverged: str | None = None
        self.compared = 0
        self.peer_snapshots: dict[str, tuple[int, float]] = {}  # peer -> (snapshot index, heard at)
        self.protocol_version_max = 0  # this node's, set by the node
        self.peer_protocols: dict[str, int] = {}  # peer -> the newest protocol its release applies

    def compaction_index(self, own_snapshot_index: int, shared_snapshot_index: int) -> int:
        """The stream may be purged up to and including this index.

        Every live replica (heard from recently) has a snapshot at or above it, and so does the
        shared store, from which a replica that was away, or is new, catches up.
        """
        now = time.monotonic()
        live = [index for index, heard in self.peer_snapshots.values() if now - heard <= peer_checkpoint_age_s_max]
        return min([own_snapshot_index, shared_snapshot_index, *live])

    def record(self, log_index: int, seq: int, head: bytes) -> None:
        """After each applied entry (on the event loop thread)."""
        self._heads[log_index] = (seq, head)
        if len(self._heads) > heads_kept:
            self._heads.popitem(last=False)
        waiting = self._pending.pop(log_index, None)
        if waiting:
            for checkpoint in waiting:
                self._compare(checkpoint)

    def latest(self) -> Checkpoint | None:
        if not self._heads:
            return None
        log_index, (seq, head) = next(reversed(self._heads.items()))
        return Checkpoint(self.node_name, log_index, seq, head)

    def encode(self, checkpoint: Checkpoint) -> bytes:
        data = _encoder.encode(checkpoint)
        if self._secret is None:
            return data
        return data + self._signature(data)

    def _signature(self, data: bytes) -> bytes:
        assert self._secret is not None
        return hmac.new(self._secret, self.subject.encode() + b"\0" + data, hashlib.sha256).digest()

    def _authentic(self, data: bytes) -> bytes | None:
        """The checkpoint's bytes without their signature, or None if it has no valid one."""
        if self._secret is None:
            return data
        body, signature = data[:-signature_bytes], data[-signature_bytes:]
        if len(data) > signature_bytes and hmac.compare_digest(signature, self._signature(body)):
            return body
        self._note_ignored()
        return None

    def _note_ignored(self) -> None:
        self.ignored += 1
        self._ignored_since_log += 1
        now = time.monotonic()
        if self._ignored_logged_at is None or now - self._ignored_logged_at >= ignored_log_interval_s:
            logger.warning(
                "ignored %d checkpoint(s) on %s without a valid signature of this cluster's secret: forged, "
                "or from a node given another --cluster-secret-file (%d in all)",
                self._ignored_since_log,
                self.subject,
                self.ignored,
            )
            self._ignored_logged_at = now
            self._ignored_since_log = 0

    def receive(self, data: bytes) -> None:
        """A peer's checkpoint (on the event loop thread)."""
        authentic = self._authentic(data)
        if authentic is None:
            return
        data = authentic
        try:
            checkpoint = _decoder.decode(data)
        except msgspec.MsgspecError:
            logger.warning("ignoring a malformed checkpoint on %s", self.subject)
            return
        if checkpoint.node == self.node_name:
            return
        self.peer_snapshots[checkpoint.node] = (checkpoint.snapshot_index, time.monotonic())
        self._note_protocol(checkpoint)
        newest = next(reversed(self._heads), 0) if self._heads else 0
        if checkpoint.log_index > newest:
            if len(self._pending) < heads_kept:
                self._pending.setdefault(checkpoint.log_index, []).append(checkpoint)
            return
        self._compare(checkpoint)

    def _note_protocol(self, checkpoint: Checkpoint) -> None:
        theirs = checkpoint.protocol_version_max
        if self.peer_protocols.get(checkpoint.node) == theirs:
            return
        self.peer_protocols[checkpoint.node] = theirs
        if theirs != self.protocol_version_max:
            logger.error(
                "node %s runs a release of protocol %s, this node (%s) protocol %d: nodes of different releases "
                "in one cluster; finish the upgrade (a node whose release is older than the ledger's protocol stops)",
                checkpoint.node,
                theirs or "1 (a release before protocol versions)",
                self.node_name,
                self.protocol_version_max,
            )

    def peer_agreement(self) -> dict[str, bool]:
        """Each peer heard from recently: whether its last compared checkpoint equals this replica's."""
        now = time.monotonic()
        return {peer: agrees for peer, (agrees, seen, _) in self._verdicts.items() if now - seen <= peer_checkpoint_age_s_max}

    def mixed_protocols(self) -> dict[str, int]:
        """Peers whose release runs another protocol than this node's (empty when all agree)."""
        return {node: version for node, version in self.peer_protocols.items() if version != self.protocol_version_max}

    def _compare(self, checkpoint: Checkpoint) -> None:
        mine = self._heads.get(checkpoint.log_index)
        if mine is None:
            return  # too old to compare
        self.compared += 1
        agrees = mine == (checkpoint.seq, checkpoint.head)
        self._verdicts[checkpoint.node] = (agrees, time.monotonic(), checkpoint.log_index)
        if not agrees:
            logger.error(
                "replica %s disagrees with %s at log index %d: seq %d head %s, theirs seq %d head %s",
                self.node_name,
                checkpoint.node,
                checkpoint.log_index,
                mine[0],
                mine[1].hex(),
                checkpoint.seq,
                checkpoint.head.hex(),
            )
        self._judge()

    def _judge(self) -> None:
        now = time.monotonic()
        recent = [(agrees, index) for agrees, seen, index in self._verdicts.values() if now - seen <= peer_checkpoint_age_s_max]
        disagreeing = [index for agrees, index in recent if not agrees]
        if self.diverged is None and disagreeing and len(disagreeing) * 2 > len(recent):
            self.diverged = f"replica {self.node_name} diverged: its state at log index {min(disagreeing)} differs from the majority of its peers"
            logger.critical("%s; it stops serving until an operator restores it", self.diverged)
