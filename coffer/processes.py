"""Stopping the server processes that Coffer and its tests start: nodes, shards, benchmark servers, PostgreSQL.

A server gets a signal that asks for its graceful shutdown and a bounded wait for it; one that has
not exited by then is killed, so a hung server never holds up the caller, and it is always waited
for, so it never stays a zombie.
"""

import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any] | None, wait_s: float, signal_number: int = signal.SIGTERM) -> None:
    """Send ``signal_number`` to ``process`` and wait ``wait_s`` for it to exit; SIGKILL it if it has not.

    ``None`` or a process that has already exited is left alone.
    """
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal_number)  # Popen's own: no error if it exited just now
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
