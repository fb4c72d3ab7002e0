"""A real sharded node (``coffer serve --shards N``) for the tests, and account ids per shard."""

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.txn.shard_map import ShardMap
from tests.service.server_process import CofferServer


class ShardedServer(CofferServer):
    def __init__(self, data_dir: Path, shards: int, environment: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, environment)
        self.shards = shards
        self.map = ShardMap.even(shards)

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [sys.executable, "-c", "from coffer.cli import main; main()", "serve", "--shards", str(self.shards)]
        command += ["--data-dir", str(self.data_dir), "--port", str(self.port), "--log-level", "warning"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._environment)
        self._wait_ready()

    def ids_on(self, shard: int, count: int, prefix: str) -> list[str]:
        """``count`` account ids that live on ``shard``."""
        found = []
        number = 0
        while len(found) < count:
            candidate = f"{prefix}-{number}"
            if self.map.shard_of(candidate) == shard:
                found.append(candidate)
            number += 1
        return found


def running(tmp_path_factory: pytest.TempPathFactory, name: str, shards: int) -> Iterator[ShardedServer]:
    """A sharded node for a module's tests (its fixture yields from this), stopped afterwards."""
    server = ShardedServer(tmp_path_factory.mktemp(name) / "data", shards)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class DedupIds:
    """Fresh dedup ids under one prefix per test module, so modules never collide on a node."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._numbers)}"


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body of a refusal with this status and code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error
