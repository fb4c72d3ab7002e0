"""API keys are stored hashed and a running node follows its keys file: added keys work, removed
ones stop working, without a restart; a plain-text entry of an older file keeps working."""

import hashlib
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from coffer.cli import main
from coffer.http.auth import ApiKeys, KeyConfigError, Role, add_key, keys_file_check_interval_s, parse_keys_file
from tests.service.server_process import CofferServer

reload_s_max = keys_file_check_interval_s + 5.0
legacy_key = "legacy-plain-key-0123456789"


def _keys(runner: CliRunner, *arguments: str, exit_code: int = 0) -> str:
    done = runner.invoke(main, ["keys", *arguments])
    assert done.exit_code == exit_code, (arguments, done.stdout, done.stderr)
    return done.stdout


def _status_within(url: str, key: str, expected: int) -> None:
    deadline = time.monotonic() + reload_s_max
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/audit/head", headers={"X-API-Key": key}, timeout=5).status_code
        if status == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"whoami /v1/audit/head answered {status}, expected {expected}, within {reload_s_max} s")


def test_keys_added_and_removed_take_effect_on_a_running_node(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# an older file: keys in plain text\nadmin {legacy_key}\n")
    runner = CliRunner()
    node = CofferServer(tmp_path / "data", arguments=["--keys-file", str(keys_file)])
    node.start()
    try:
        _status_within(node.url, legacy_key, 200)
        key = _keys(runner, "add", "--role", "operator", "--keys-file", str(keys_file)).strip()
        stored = keys_file.read_text()
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert key not in stored and f"operator sha256:{digest}" in stored
        _status_within(node.url, key, 200)
        whoami = httpx.get(f"{node.url}/v1/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
        assert whoami == {"role": "operator", "key_id": digest[:12], "keys_required": True}
        listed = _keys(runner, "list", "--keys-file", str(keys_file))
        assert f"{digest[:12]}  operator" in listed and "plain text" in listed
        assert "removed" in _keys(runner, "remove", digest[:12], "--keys-file", str(keys_file))
        _keys(runner, "remove", digest[:12], "--keys-file", str(keys_file), exit_code=3)
        _status_within(node.url, key, 401)
        _status_within(node.url, legacy_key, 200)
        keys_file.write_text("admin sha256:not-a-hash\n")  # a broken file: the keys in force stay
        time.sleep(reload_s_max)
        _status_within(node.url, legacy_key, 200)
        keys_file.write_text("")  # every key removed: locked, never open
        _status_within(node.url, legacy_key, 401)
        assert httpx.get(f"{node.url}/v1/audit/head", timeout=5).status_code == 401
    finally:
        node.stop()
    assert "cannot reload the keys file" in node.log_path.read_text()
    assert legacy_key not in node.log_path.read_text() and key not in node.log_path.read_text()


def test_entries_hashed_and_plain_identify_the_same_key_id(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    key, key_id = add_key(keys_file, Role.READER)
    keys_file.write_text(keys_file.read_text() + f"admin {legacy_key}\n")
    keys = ApiKeys.load(keys_file, environ={})
    assert keys.identify(key) == (Role.READER, key_id)
    assert keys.identify(legacy_key) == (Role.ADMIN, hashlib.sha256(legacy_key.encode()).hexdigest()[:12])
    assert keys.identify(key + "x") is None and keys.identify(None) is None
    for bad, words in [("admin sha256:ABC", "64 lower-case hex"), ("admin short", "shorter than"), ("root " + "k" * 20, "unknown role")]:
        try:
            parse_keys_file(bad, "f")
        except KeyConfigError as error:
            assert words in str(error) and "f:1" in str(error)
        else:
            raise AssertionError(bad)
