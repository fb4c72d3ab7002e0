"""Shared by the tests of sharded nodes: an HTTP client on the module's ``node``."""

from collections.abc import Iterator

import httpx
import pytest

from tests.txn.sharded_process import ShardedServer


@pytest.fixture
def http(node: ShardedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.url, timeout=30) as client:
        yield client
