"""A real ``coffer query serve`` process on an empty SQLite store, for the edge tests of both servers."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from coffer.processes import stop_process
from tests.service.server_process import free_port

start_s_max = 30.0
stop_s_max = 10.0


class QueryServer:
    """``coffer query serve`` on ``store_path`` (SQLite, migrated at start), no keys, loopback."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store_path.parent / f"{store_path.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
        command = [sys.executable, "-c", "from coffer.cli import main; main()", "query", "serve"]
        command += ["--store", str(self.store_path), "--port", str(self.port), "--wait-s", "0.2", "--log-level", "warning"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + start_s_max
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"coffer query serve did not become ready; its log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, stop_s_max)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
