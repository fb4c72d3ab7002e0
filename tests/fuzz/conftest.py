"""A real ``coffer serve`` node for the API fuzzer, and the OpenAPI document it serves.

The node is the class the service tests use (:class:`tests.service.server_process.CofferServer`),
on a free loopback port with no API keys (loopback needs none), stopped by its PID at the end.
If a request leaves the node unable to take writes (a finding the fuzzer reports), the next
operation's test gets a fresh node on a fresh data directory, so one finding does not hide the
others behind timeouts.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis

from tests.service.server_process import CofferServer

canary_timeout_s = 5.0  # a create on an idle node takes milliseconds; 5 s means it is stuck (also every request's timeout)


class FuzzNode:
    """The session's node, replaced by a fresh one when it stops taking writes."""

    def __init__(self, base_directory: Path) -> None:
        self._base_directory = base_directory
        self._generation = itertools.count(1)
        self._canaries = itertools.count(1)
        self.server = self._start()
        # One client for the session: a new one per request costs tens of milliseconds.
        self.http = httpx.Client(timeout=canary_timeout_s)

    @property
    def url(self) -> str:
        return self.server.url

    def _start(self) -> CofferServer:
        # Webhooks the fuzzer subscribes may only point at this machine: no traffic leaves loopback.
        server = CofferServer(self._base_directory / f"node-{next(self._generation)}" / "data", {"COFFER_WEBHOOK_HOSTS": "127.0.0.1"})
        server.data_dir.parent.mkdir(parents=True)
        server.start()
        return server

    def writable(self) -> bool:
        number = next(self._canaries)
        body = {"account_id": f"fuzz-canary-{number}", "asset": "CANARY", "dedup_id": f"fuzz-canary-{number}"}
        try:
            response = self.http.post(f"{self.url}/v1/accounts", json=body)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def ensure_writable(self) -> None:
        if not (self.server.running and self.writable()):
            self.replace()

    def replace(self) -> None:
        """Kill this node and start a fresh one on a fresh data directory."""
        self.server.kill()
        self.server = self._start()

    def stop(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture(scope="session")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    node = FuzzNode(Path(tmp_path_factory.mktemp("fuzz")))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(fuzz_node: FuzzNode) -> FuzzNode:
    """The node, able to take writes (restarted fresh if an earlier request broke it)."""
    fuzz_node.ensure_writable()
    return fuzz_node


@pytest.fixture(scope="session")
def api_schema(fuzz_node: FuzzNode) -> schemathesis.BaseSchema:
    """The OpenAPI document as the node serves it (GET /openapi.json), loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{fuzz_node.url}/openapi.json")
