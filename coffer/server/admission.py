"""Admission control of writes: a bounded queue, and ``503 NOT_AVAILABLE`` at once past it.

Job: under overload a node must say "not now" quickly instead of letting every request wait
longer and longer. Clients that get a 503 with ``Retry-After`` back off and retry with the same
``dedup_id`` (safe: a refused request never reached the log); the requests that are admitted keep
a latency bounded by the queue in front of them.

Method: two counters of the event loop thread, no lock.

- Write requests in the node, from a parsed request head to the end of its handler: reading the
  body, decoding, the pipeline and the answer all happen in there. The connection's protocol
  (:mod:`coffer.server.connections`) asks :meth:`Admission.try_enter` as soon as a POST's head is
  parsed and refuses it there, past ``write_requests_waiting_max``, before any application code
  runs: a refusal must cost a small fraction of an answer, or refusing sheds no load. (A client
  that trickles its body holds its place for at most the body timeout of the connection.)
- Commands handed to the pipeline and not yet answered: one POST /v1/commands carries up to 8190,
  so requests alone would not bound the work queued. Past ``write_commands_waiting_max`` a new
  batch is refused with :class:`Overloaded`, unless nothing waits (one full batch always goes).
"""

import contextlib
from collections.abc import Iterator

from coffer.http.limits import commands_per_request_max

# A 2-core node answers ~6,000 single transfers/s: 1,024 waiting is ~170 ms of queue, and the group
# commit alone keeps a few hundred in flight at full speed (measured: fewer costs throughput).
write_requests_waiting_max = 1024
write_commands_waiting_max = 4 * commands_per_request_max  # four full entries: the group commit keeps one written and one gathering


class Overloaded(Exception):
    """The write queue is full: answer 503 NOT_AVAILABLE with Retry-After; nothing was done."""


class Admission:
    def __init__(
        self, requests_max: int = write_requests_waiting_max, commands_max: int = write_commands_waiting_max
    ) -> None:
        self.requests_max = requests_max
        self.commands_max = commands_max
        self.requests_waiting = 0
        self.commands_waiting = 0
        self.refused = 0  # since start, for /metrics

    def try_enter(self) -> bool:
        """Take a place for a write request (True), or count a refusal (False); see :meth:`leave`."""
        if self.requests_waiting >= self.requests_max:
            self.refused += 1
            return False
        self.requests_waiting += 1
        return True

    def leave(self) -> None:
        """Give back the place of a request that :meth:`try_enter` admitted."""
        self.requests_waiting -= 1
        assert self.requests_waiting >= 0, "a write request left admission twice"

    @contextlib.contextmanager
    def commands(self, count: int) -> Iterator[None]:
        """Hold ``count`` places in the pipeline's queue for the body of the ``with``."""
        if self.commands_waiting > 0 and self.commands_waiting + count > self.commands_max:
            self.refused += 1
            raise Overloaded(f"{self.commands_waiting} commands are waiting (at most {self.commands_max}); retry later")
        self.commands_waiting += count
        try:
            yield
        finally:
            self.commands_waiting -= count
