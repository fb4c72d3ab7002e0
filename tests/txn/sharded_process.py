"""A real sharded node (``coffer serve --shards N``) for the tests, and account ids per shard."""

import subprocess
import sys
from pathlib import Path

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
