"""A real ``coffer serve`` process on a loopback port, for tests that need one."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ready_timeout_s = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """Starts, kills and restarts one node on one data directory; stops only its own PID."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [sys.executable, "-m", "coffer", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*command, "--log-level", "warning", *self.extra_args], stdout=log, stderr=log, env=self.env
            )
        deadline = time.monotonic() + ready_timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"coffer serve exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"coffer serve not ready after {ready_timeout_s} s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()
