"""The README's tour runs as written against a real node, so it cannot rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.service.server_process import CofferServer

readme = Path(__file__).resolve().parents[2] / "README.md"


def _tour_blocks(language: str) -> list[str]:
    tour = readme.read_text().split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", tour, flags=re.DOTALL)


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    assert "coffer serve" in blocks[0] and "pip install -e ." in blocks[0]
    assert "pytest" in blocks[1]
    ci = (readme.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, "CI must run the README's test command"


def test_the_tour_runs(tmp_path: Path) -> None:
    server = CofferServer(tmp_path / "data")
    server.start()
    try:
        environment = {**os.environ, "COFFER_URL": server.url}
        shell_blocks = _tour_blocks("sh")
        (python_block,) = _tour_blocks("python")
        for line in shell_blocks[0].strip().splitlines():
            _run(line, environment)
        exec(compile(python_block.replace("http://127.0.0.1:8080", server.url), "README.md", "exec"), {})
        for line in shell_blocks[1].strip().splitlines():
            _run(line, environment)
    finally:
        server.stop()


def _run(line: str, environment: dict[str, str]) -> None:
    command, _, comment = line.partition("#")
    expected = re.match(r"\s*exit (\d+)", comment)
    arguments = command.split()
    assert arguments[0] == "coffer"
    done = subprocess.run(
        [sys.executable, "-m", "coffer", *arguments[1:]], capture_output=True, text=True, env=environment, timeout=60
    )
    assert done.returncode == (int(expected.group(1)) if expected else 0), (line, done.stdout, done.stderr)
