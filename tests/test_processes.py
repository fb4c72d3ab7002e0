"""stop_process: a server asked to stop exits, one that ignores the signal is killed, a gone one is left alone."""

import signal
import subprocess
import sys
import time

from coffer.processes import stop_process

# Prints once its handlers are set, so the test signals a process that is ready for it.
_child = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def _start(mode: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", _child, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_a_process_that_takes_the_signal_exits_by_it() -> None:
    process = _start("default")
    stop_process(process, 10.0)
    assert process.returncode == -signal.SIGTERM


def test_the_signal_is_the_callers() -> None:
    process = _start("ignore")
    stop_process(process, 10.0, signal.SIGINT)
    assert process.returncode == -signal.SIGINT  # Python's exit on an unhandled KeyboardInterrupt


def test_a_process_that_ignores_the_signal_is_killed_after_the_wait() -> None:
    process = _start("ignore")
    started = time.monotonic()
    stop_process(process, 0.5)
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5


def test_no_process_or_an_exited_one_is_left_alone() -> None:
    stop_process(None, 1.0)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    stop_process(process, 1.0)
    assert process.returncode == 0
