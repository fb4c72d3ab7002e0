"""Real nodes for the service tests: ``coffer serve`` subprocesses on free loopback ports.

``server`` is one node shared by the session (starting a node takes a second or two); tests keep
out of each other's way by using fresh account ids. A test may ``kill()`` or ``restart()`` it: the
fixture brings it back up for the next test. ``server_factory`` starts extra nodes, for example
with API keys in their environment. Every node is stopped by its PID at the end: SIGTERM, then
SIGKILL if it does not exit in time.
"""

from collections.abc import Callable, Iterator

import pytest

from tests.service.server_process import CofferServer


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., CofferServer]]:
    """Start a node: ``server_factory(environment={"COFFER_API_KEYS": ...})``; all stop at the end."""
    started: list[CofferServer] = []

    def start(environment: dict[str, str] | None = None) -> CofferServer:
        node = CofferServer(tmp_path_factory.mktemp("node") / "data", environment)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def _shared_server(server_factory: Callable[..., CofferServer]) -> CofferServer:
    return server_factory()


@pytest.fixture
def server(_shared_server: CofferServer) -> CofferServer:
    """The session's node, running (restarted if an earlier test left it down)."""
    if not _shared_server.running:
        _shared_server.process = None
        _shared_server.start()
    return _shared_server
