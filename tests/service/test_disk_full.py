"""A node whose disk fills up: it refuses writes with 507 (no Retry-After), says "disk full" in
its log and in /readyz, loses nothing it acknowledged, and takes writes again by itself once
space is freed. The disk is real: a small tmpfs mounted for the test (root only; skipped
otherwise)."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coffer.disk_space import DiskSpace, directory_bytes
from tests.service.server_process import free_port

filesystem_bytes = 24 * 1024 * 1024
start_s_max = 30.0
recovery_s_max = 20.0  # the disk probe runs every second; a commit after it


@pytest.fixture
def small_disk() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="cluster-wt-disk-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={filesystem_bytes}", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def _fill(directory: Path) -> Path:
    """Take every free byte of the filesystem holding ``directory``."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (256 * 1024, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, bytes(size)):
                    pass
    finally:
        os.close(descriptor)
    return filler


def _transfer(client: httpx.Client, url: str, number: int) -> httpx.Response:
    body = {"dedup_id": f"t-{number}", "from_account_id": "a", "to_account_id": "b", "amount": "1.00", "asset": "USD"}
    return client.post(f"{url}/v1/transfers", json=body)


def test_a_full_disk_refuses_writes_and_recovers_by_itself(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = small_disk.parent / f"{small_disk.name}.log"
    command = [sys.executable, "-m", "coffer", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    command += ["--log-level", "warning", "--snapshot-entries", "50"]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + start_s_max
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
                time.sleep(0.1)
            for account_id in ("a", "b"):
                created = client.post(f"{url}/v1/accounts", json={"dedup_id": f"c-{account_id}", "account_id": account_id, "asset": "USD"})
                assert created.status_code == 200, created.text
            funded = client.post(
                f"{url}/v1/batch-operations",
                json={"dedup_id": "fund", "legs": [{"account_id": "a", "amount": "100000.00", "asset": "USD"}]},
            )
            assert funded.status_code == 200, funded.text
            acknowledged = 0
            for number in range(200):
                assert _transfer(client, url, number).status_code == 200
                acknowledged += 1

            filler = _fill(small_disk)
            refused = None
            for number in range(200, 2200):
                response = _transfer(client, url, number)
                if response.status_code == 200:
                    acknowledged += 1
                    continue
                refused = response
                break
            assert refused is not None, "the node took every write on a full disk"
            print(f"\nfull disk: {acknowledged} transfers acknowledged, then {refused.status_code} {refused.json()}")
            assert refused.status_code == 507, refused.text
            assert "retry-after" not in refused.headers
            assert "disk full" in refused.json()["error"]["message"]
            ready = client.get(f"{url}/readyz")
            assert ready.status_code == 503 and "disk full" in ready.json()["waiting_for"], ready.text
            # Refused at once while the disk stays full, and reads still work.
            assert _transfer(client, url, 5000).status_code == 507
            balance = client.get(f"{url}/v1/accounts/b").json()
            assert balance["available"] == f"{acknowledged}.00", balance

            filler.unlink()
            deadline = time.monotonic() + recovery_s_max
            while client.get(f"{url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, client.get(f"{url}/readyz").text
                time.sleep(0.2)
            response = _transfer(client, url, 5001)
            assert response.status_code == 200, response.text
            acknowledged += 1
            assert client.get(f"{url}/v1/accounts/b").json()["available"] == f"{acknowledged}.00"
        node_log = log_path.read_text()
        assert "disk full" in node_log
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_path.unlink(missing_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_directory_over_its_budget_is_full_until_it_shrinks(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(3 * 1024 * 1024))
    disk = DiskSpace(tmp_path, budget_bytes=2 * 1024 * 1024)
    try:
        deadline = time.monotonic() + 10
        while disk.full is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert disk.full is not None and "budget" in disk.full
        assert directory_bytes(tmp_path) >= 3 * 1024 * 1024
        (tmp_path / "big").unlink()
        deadline = time.monotonic() + 15
        while disk.full is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert disk.full is None
    finally:
        disk.close()
