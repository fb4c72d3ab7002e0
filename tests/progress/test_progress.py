"""Progress bars show on a terminal only: quiet in pipes, logs and CI."""

import io
import os
import subprocess
import sys
import threading

import pytest

from coffer import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_drawn_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = progress.progress("replaying the log", 10, stream=stream)
    assert type(bar) is progress.Progress
    with bar:
        bar.advance(5)
        bar.update(10)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.progress_variable, raising=False)
    stream = _Terminal()
    with progress.progress("replaying the log", 4, unit="entries", stream=stream) as bar:
        for _ in range(4):
            bar.advance()
    assert "replaying the log" in stream.getvalue()


def test_coffer_progress_0_silences_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.progress_variable, "0")
    assert type(progress.progress("x", 1, stream=_Terminal())) is progress.Progress


def test_progress_over_and_until_yield_every_round() -> None:
    assert list(progress.progress_over([1, 2, 3], "items")) == [1, 2, 3]
    assert list(progress.progress_over(iter([4]), "items", shown=False)) == [4]
    assert list(progress.progress_until(0.0, "nothing left")) == []


def _run(arguments: list[str], terminal: bool) -> str:
    """Run ``coffer`` with stderr on a pseudo-terminal or a pipe; return what it wrote there."""
    environment = {key: value for key, value in os.environ.items() if key != progress.progress_variable}
    command = [sys.executable, "-c", "from coffer.cli import main; main()", *arguments]
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120).stderr
    leader, follower = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        # Read while the command runs: a pseudo-terminal holds a few KiB, and a writer blocks past it.
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=follower, env={**environment, "COLUMNS": "120"}, timeout=120)
        assert done.returncode == 0
        os.close(follower)
        reader.join(10)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)


def test_sim_seeds_shows_progress_on_a_terminal_and_stays_quiet_in_a_pipe() -> None:
    arguments = ["sim", "--seeds", "30", "--steps", "100"]
    assert "simulating" in _run(arguments, terminal=True)
    assert _run(arguments, terminal=False) == ""
