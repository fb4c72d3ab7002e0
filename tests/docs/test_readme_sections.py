"""The README's shell examples beyond the tour run as written, after the tour, against a real node.

Each line runs in bash (as a reader would paste it), with the node's URL, a free port for the
query server and a temporary directory in place of 127.0.0.1:8080, 8090 and /tmp. A line whose
comment says it runs until stopped is started in the background and stopped at the end.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.docs.test_readme import _run, _tour_blocks, readme
from tests.service.server_process import CofferServer, free_port

line_timeout_s = 60


def _section_block(title: str) -> list[str]:
    section = readme.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [line for line in block.strip().splitlines() if line.strip()]


def test_the_shell_and_query_sections_run_after_the_tour(tmp_path: Path) -> None:
    server = CofferServer(tmp_path / "data")
    server.start()
    query_port = free_port()
    background: list[subprocess.Popen[bytes]] = []
    environment = {**os.environ, "COFFER_URL": server.url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    environment.pop("COFFER_API_KEY", None)

    def concrete(line: str) -> str:
        line = line.replace("http://127.0.0.1:8080", server.url).replace("8090", str(query_port))
        return line.replace("/tmp/", f"{tmp_path}/")

    try:
        shell_blocks = _tour_blocks("sh")
        (python_block,) = _tour_blocks("python")
        for line in shell_blocks[0].strip().splitlines():
            _run(line, environment)
        exec(compile(python_block.replace("http://127.0.0.1:8080", server.url), "README.md", "exec"), {})
        for line in shell_blocks[1].strip().splitlines():
            _run(line, environment)
        assert httpx.get(server.url + "/v1/audit/head").json()["seq"] == 7  # as the query section says
        for line in _section_block("The console, the API docs and the shell") + _section_block("The query side and audit"):
            command = concrete(line)
            if "runs until stopped" in line:
                background.append(subprocess.Popen(["bash", "-c", f"exec {command.split('#')[0]}"], env=environment))
                _wait_ready(f"http://127.0.0.1:{query_port}")
                continue
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environment, timeout=line_timeout_s)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            if "audit head" in line:
                assert "seq   " in done.stdout
            if "account show alice" in line:
                assert "alice" in done.stdout
            if "--checkpoint" in line or "audit check" in line:
                assert done.stdout.splitlines()[-1].startswith("verdict=OK"), done.stdout
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
            process.wait(10)
        server.stop()


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")
