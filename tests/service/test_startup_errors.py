"""A server that cannot start says why in one line and exits with the code ``coffer --help`` lists.

Each case printed a traceback once (or exited with uvicorn's own 3, which the CLI uses for "not
found"): a key shorter than allowed, a keys file that cannot be read or parsed, a data directory
that cannot be made or is in use by another node, a port in use.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coffer import exit_codes
from tests.service.server_process import CofferServer, free_port

start_s_max = 60.0


def run_coffer(*arguments: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
    return subprocess.run(
        [sys.executable, "-m", "coffer", *arguments],
        capture_output=True,
        text=True,
        timeout=start_s_max,
        env={**clean, **(environment or {})},
    )


def assert_one_line(done: subprocess.CompletedProcess[str], exit_code: int, words: str) -> None:
    assert done.returncode == exit_code, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr[-2000:]


@pytest.mark.parametrize("command", [["serve", "--data-dir", "{data}"], ["query", "serve", "--store", "{data}.sqlite3"]])
@pytest.mark.parametrize(
    ("keys_file", "environment", "words"),
    [
        (None, {"COFFER_API_KEYS": "reader:short"}, "shorter than 16"),
        (b"reader \xff\xfe-key-0123456789\n", None, "cannot read the keys file"),
        (b"reader\n", None, "expected 'ROLE sha256:HASH'"),
        (b"reader sha256:00ff\n", None, "64 lower-case hex digits"),
        (b"boss key-0123456789abcdef\n", None, "unknown role"),
    ],
)
def test_a_bad_key_configuration_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], keys_file: bytes | None, environment: dict[str, str] | None, words: str
) -> None:
    arguments = [part.format(data=tmp_path / "data") for part in command] + ["--port", str(free_port())]
    if keys_file is not None:
        (tmp_path / "keys").write_bytes(keys_file)
        arguments += ["--keys-file", str(tmp_path / "keys")]
    assert_one_line(run_coffer(*arguments, environment=environment), exit_codes.invalid, words)


def test_a_data_directory_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = run_coffer("serve", "--data-dir", str(tmp_path / "file" / "data"), "--port", str(free_port()))
    assert_one_line(done, exit_codes.invalid, "cannot make the data directory")


def test_a_data_directory_or_port_in_use_is_one_line_and_exit_7(server: CofferServer, tmp_path: Path) -> None:
    same_directory = run_coffer("serve", "--data-dir", str(server.data_dir), "--port", str(free_port()))
    assert_one_line(same_directory, exit_codes.in_use, "in use by another coffer serve")
    same_port = run_coffer("serve", "--data-dir", str(tmp_path / "data"), "--port", str(server.port))
    assert_one_line(same_port, exit_codes.in_use, "Address already in use")
    query_same_port = run_coffer("query", "serve", "--store", str(tmp_path / "q.sqlite3"), "--port", str(server.port))
    assert_one_line(query_same_port, exit_codes.in_use, "Address already in use")


def test_the_exit_codes_are_documented_in_help() -> None:
    shown = run_coffer("--help").stdout
    # An entry is "    N  text", continued on lines indented further.
    entries = {int(code): " ".join(text.split()) for code, text in re.findall(r"(?m)^ {4}(\d) {2}(.*(?:\n {7}\S.*)*)", shown)}
    assert set(entries) == set(range(9)), shown
    for code, words in [
        (exit_codes.invalid, "configuration"),
        (exit_codes.in_use, "in use"),
        (exit_codes.not_found, "ACCOUNT_NOT_FOUND"),
        (exit_codes.recovery_failed, "cannot be recovered"),
    ]:
        assert words in entries[code], entries


def test_a_short_cluster_secret_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("short\n")
    done = run_coffer(
        "serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--cluster-secret-file", str(tmp_path / "secret")
    )
    assert_one_line(done, exit_codes.invalid, "shorter than 16 bytes")
