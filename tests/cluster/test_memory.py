"""Memory peaks of a process tree, as the chaos run reports them (real processes, Linux /proc)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coffer.cluster.memory import MemoryPeaks, proportional_bytes, resident_bytes

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

# A parent that starts a child holding 64 MiB, so only a walk of the tree sees the memory.
parent_code = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import os, time; block = bytearray(64 * 2**20); print(os.getpid(), flush=True); time.sleep(60)'], stdout=sys.stdout)\n"
    "time.sleep(60)\n"
)


def test_a_node_counts_the_memory_of_its_descendants_and_the_peak_outlives_the_process() -> None:
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())  # the child holds its block now
        peaks = MemoryPeaks(lambda: [("c1", parent.pid), ("gone", None)], interval_s=60)
        peaks.sample()
        assert peaks.peaks["c1"] >= 64 * 2**20 > resident_bytes(parent.pid)
        assert "gone" not in peaks.peaks
        peak = peaks.peaks["c1"]
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(child, signal.SIGKILL)
        parent.wait()
    time.sleep(0.2)
    peaks.sample()  # the tree has ended: nothing new is measured, the peak stays
    assert peaks.peaks["c1"] == peak
    assert peaks.report().startswith("memory peaks") and "c1=" in peaks.report()


# A parent that fills 128 MiB and then forks, as a node forks its snapshot writer: the child shares
# every page copy-on-write.
forking_code = (
    "import os, sys, time\n"
    "block = bytearray(b'x' * (128 * 2**20))\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "print(child, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs /proc/PID/smaps_rollup")
def test_pages_a_forked_child_shares_with_its_parent_count_once() -> None:
    parent = subprocess.Popen([sys.executable, "-c", forking_code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # Each alone is resident with the whole block: adding the two would report 256 MiB.
        assert resident_bytes(parent.pid) >= 128 * 2**20 and resident_bytes(child) >= 128 * 2**20
        peaks = MemoryPeaks(lambda: [("c1", parent.pid)], interval_s=60)
        peaks.sample()
        assert 128 * 2**20 <= peaks.peaks["c1"] < 200 * 2**20
        assert proportional_bytes(child) < 100 * 2**20
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(child, signal.SIGKILL)
        parent.wait()
