"""A real ``coffer serve`` process on a free loopback port, for the tests that need one."""

import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from coffer.ports import free_port as nats_free_port
from coffer.processes import stop_process

start_s_max = 30.0  # imports and recovery on a loaded CI machine
stop_s_max = 10.0  # the server's graceful shutdown is 10 s; then it gets SIGKILL
ready_poll_s = 0.05


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range: a restarted server gets it back."""
    return nats_free_port()


class CofferServer:
    """One ``coffer serve`` process on ``data_dir``; ``url`` stays the same across restarts."""

    def __init__(
        self,
        data_dir: Path,
        environment: dict[str, str] | None = None,
        arguments: Sequence[str] = (),
        descriptors_max: int | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """``arguments`` go to ``coffer serve``; ``descriptors_max`` lowers its file descriptor limit;
        ``ca_file``: the node serves HTTPS (give ``--tls-cert``/``--tls-key``) with a certificate of this CA."""
        self.data_dir = data_dir
        self.arguments = list(arguments)
        self.descriptors_max = descriptors_max
        self.port = free_port()
        self.verify: bool | ssl.SSLContext = True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))
        self.url = f"{'http' if ca_file is None else 'https'}://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._environment = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
        self._environment.update(environment or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [sys.executable, "-c", "from coffer.cli import main; main()", "serve"]
        command += ["--data-dir", str(self.data_dir), "--port", str(self.port), "--log-level", "warning", *self.arguments]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._environment, preexec_fn=self._limit_descriptors
            )
        self._wait_ready()

    def _limit_descriptors(self) -> None:
        # Runs in the child between fork and exec: only the server gets the low limit.
        if self.descriptors_max is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.descriptors_max, self.descriptors_max))

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + start_s_max
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(ready_poll_s)
        self.stop()
        raise RuntimeError(f"coffer serve on {self.url} did not become ready; its log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL if it does not exit."""
        process, self.process = self.process, None
        stop_process(process, stop_s_max)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self) -> None:
        """Stop gracefully (if running) and start again on the same port and data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
