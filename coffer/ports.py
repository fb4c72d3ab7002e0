"""Loopback ports for the servers Coffer starts (NATS servers, nodes, shards): free, and never ephemeral.

A server that is killed and restarted must get its port back. A port from the kernel's ephemeral
range may meanwhile have become the source port of an outgoing connection (a client reconnecting)
and stay taken as long as that connection lives; ports below that range are only ever taken by
servers, which a bind probe sees.
"""

import contextlib
import os
import random
import socket
from pathlib import Path

host = "127.0.0.1"
port_range_variable = "COFFER_PORT_RANGE"


class PortsExhausted(Exception):
    """No port of the range is free."""


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before the server does).

    From the range in ``$COFFER_PORT_RANGE`` (``24000-24999``) when it is set, so that the test
    clusters of several people on one machine stay apart; else from a range below the kernel's
    ephemeral ports. Never an ephemeral port: a server killed and restarted on its port would find
    it taken if, meanwhile, an outgoing connection (a client reconnecting) got it as its source
    port, and that connection may live as long as the run.
    """
    global _environment_ports, _default_ports
    text = os.environ.get(port_range_variable)
    if text:
        if _environment_ports is None or str(_environment_ports) != text.strip():
            _environment_ports = PortRange.parse(text.strip())
        return _environment_ports.take()
    if _default_ports is None:
        _default_ports = _below_ephemeral_ports()
    if _default_ports is not None:
        with contextlib.suppress(PortsExhausted):
            return _default_ports.take()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_default_ports_floor = 10_000
_default_ports_span_min = 2_000


def _below_ephemeral_ports() -> "PortRange | None":
    """Ports from a random start (each process its own) up to the kernel's first ephemeral port."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32_768  # Linux's default
    last = first_ephemeral - 1
    if last - _default_ports_floor < 2 * _default_ports_span_min:
        return None
    first = random.SystemRandom().randrange(_default_ports_floor, last - _default_ports_span_min)
    return PortRange(first, last)


_default_ports: "PortRange | None" = None
_environment_ports: "PortRange | None" = None


class PortRange:
    """Ports handed out from ``first``..``last`` (inclusive), each free on loopback when taken.

    Several clusters on one machine (other engineers' runs, CI jobs) stay apart when each gets
    its own range; the kernel's ephemeral ports, which :func:`free_port` uses, are shared by all.
    """

    def __init__(self, first: int, last: int) -> None:
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"a port range is first-last within 1024-65535, got {first}-{last}")
        self.first = first
        self.last = last
        self._next = first
        self._taken: set[int] = set()

    @classmethod
    def parse(cls, text: str) -> "PortRange":
        """``"24000-24100"``."""
        first, separator, last = text.partition("-")
        if not separator or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError(f"a port range is written FIRST-LAST, e.g. 24000-24100; got {text!r}")
        return cls(int(first), int(last))

    def take(self) -> int:
        """The next port of the range that is free now and was not handed out before."""
        while self._next <= self.last:
            port = self._next
            self._next += 1
            if port in self._taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
            self._taken.add(port)
            return port
        raise PortsExhausted(f"no free port left in {self.first}-{self.last}")

    def reserve(self, port: int) -> None:
        """Note a port already in use by this cluster (reloaded from its state file)."""
        self._taken.add(port)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"
