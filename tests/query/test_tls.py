"""The query side against nodes that speak HTTPS: ``coffer project`` and ``coffer audit`` trust a
private CA with ``--ca-file``, ``coffer query serve`` serves HTTPS with ``--tls-cert``/``--tls-key``,
and refuses plain HTTP on an address other than loopback unless told ``--insecure-allow-plaintext``;
``coffer project --nats`` signs in to a NATS cluster over TLS with ``--nats-credentials`` and
``--nats-ca-file`` — real processes all through."""

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import nats
import pytest

from coffer import exit_codes
from coffer.client import Client
from coffer.cluster.certificates import CertificateFiles, make_loopback_certificates
from coffer.cluster.nats_servers import NatsCluster
from tests.service.server_process import CofferServer, free_port
from tests.service.test_tls import run_coffer

start_s_max = 30.0
reader_key = "tls-reader-key-0123456789"


@contextmanager
def query_server(arguments: Sequence[str], url: str, verify: ssl.SSLContext | bool, environment: dict[str, str]) -> Iterator[None]:
    """``coffer query serve`` with ``arguments``, ready at ``url``; stopped by its PID."""
    command = [sys.executable, "-m", "coffer", "query", "serve", "--log-level", "warning", *arguments]
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
    process = subprocess.Popen(command, env={**clean, **environment})
    try:
        deadline = time.monotonic() + start_s_max
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "coffer query serve did not start"
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_loopback_certificates(tmp_path_factory.mktemp("tls"), "coffer-query-test")


def test_a_tls_node_is_projected_audited_and_served_over_https(tmp_path: Path, certificates: CertificateFiles) -> None:
    files = certificates
    node = CofferServer(tmp_path / "data", arguments=["--tls-cert", str(files.certificate), "--tls-key", str(files.key)], ca_file=files.ca)
    node.start()
    try:
        with Client(node.url, ca_file=files.ca) as client:
            for account_id in ("tls-a", "tls-b"):
                client.create_account(account_id, "USD")
            last_seq = httpx.get(f"{node.url}/v1/audit/head", verify=node.verify).json()["seq"]
        store = str(tmp_path / "store.sqlite3")
        projected = run_coffer("project", "--source", node.url, "--store", store, "--until-seq", str(last_seq), "--ca-file", str(files.ca))
        assert projected.returncode == 0 and f"stored seq {last_seq}" in projected.stdout, projected.stderr

        verified = run_coffer("audit", "verify", "--store", store, "--url", node.url, environment={"COFFER_CA_FILE": str(files.ca)})
        assert verified.returncode == 0 and verified.stdout.splitlines()[-1].startswith(f"verdict=OK seq={last_seq}"), verified
        untrusted = run_coffer("audit", "verify", "--url", node.url)
        assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout + untrusted.stderr
        not_a_ca = run_coffer("audit", "verify", "--url", node.url, "--ca-file", store)
        assert not_a_ca.returncode == exit_codes.invalid and "cannot use" in not_a_ca.stderr, not_a_ca.stderr
    finally:
        node.stop()

    port = free_port()
    url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(files.ca))
    tls = ["--tls-cert", str(files.certificate), "--tls-key", str(files.key)]
    with query_server(["--store", store, "--port", str(port), *tls], url, trusted, {}):
        events = httpx.get(f"{url}/v1/events", params={"from_seq": 1}, verify=trusted, timeout=10)
        assert events.status_code == 200 and len(events.json()["events"]) == last_seq, events.text
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/readyz", timeout=5)  # the system's CAs do not know ours
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)  # plain HTTP is not served


def test_query_serve_refuses_a_public_address_without_tls(tmp_path: Path, certificates: CertificateFiles) -> None:
    keys = {"COFFER_API_KEYS": f"reader:{reader_key}"}
    store = str(tmp_path / "store.sqlite3")
    port = free_port()
    public = ["query", "serve", "--host", "0.0.0.0", "--store", store, "--port", str(port)]
    refused = run_coffer(*public, environment=keys)
    assert refused.returncode == exit_codes.invalid, refused.stderr
    assert "without TLS" in refused.stderr and "--insecure-allow-plaintext" in refused.stderr
    for arguments, words in [
        (["--tls-cert", str(certificates.certificate)], "go together"),
        (["--tls-cert", str(certificates.certificate), "--tls-key", str(certificates.ca)], "cannot use the TLS certificate"),
    ]:
        done = run_coffer(*public, *arguments, environment=keys)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == exit_codes.invalid and len(lines) == 1 and words in lines[0], done.stderr
    with query_server([*public[2:], "--insecure-allow-plaintext"], f"http://127.0.0.1:{port}", True, keys):
        pass  # behind a proxy that terminates TLS, the operator says so and it serves


async def _published(url: str, tls: ssl.SSLContext | None) -> int:
    connection = await nats.connect(url, tls=tls, allow_reconnect=False)
    try:
        return int((await connection.jetstream().stream_info("COFFER_EVENTS_0")).state.messages)
    finally:
        await connection.close()


def test_project_publishes_to_a_nats_cluster_that_wants_credentials_and_tls(tmp_path: Path) -> None:
    node = CofferServer(tmp_path / "data")
    node.start()
    try:
        with Client(node.url) as client:
            client.create_account("nats-a", "USD")
        last_seq = httpx.get(f"{node.url}/v1/audit/head").json()["seq"]
        with NatsCluster(tmp_path / "nats", size=1, die_with_parent=True, tls=True) as cluster:
            assert cluster.certificates is not None
            password = json.loads((cluster.directory / "credentials.json").read_text())["admin"]
            credentials = tmp_path / "projector.credentials"
            credentials.write_text(f"admin:{password}\n")
            credentials.chmod(0o600)
            project = ["project", "--source", node.url, "--store", str(tmp_path / "store.sqlite3"), "--until-seq", str(last_seq)]
            project += ["--nats-credentials", str(credentials)]
            without_nats = run_coffer(*project)
            assert without_nats.returncode == exit_codes.invalid and "go with --nats" in without_nats.stderr, without_nats.stderr
            # No password on the command line: the URL is plain, the sign-in comes from the file.
            projected = run_coffer(*project, "--nats", cluster.plain_urls[0], "--nats-ca-file", str(cluster.certificates.ca))
            assert projected.returncode == 0 and f"stored seq {last_seq}" in projected.stdout, projected.stderr
            assert asyncio.run(_published(cluster.url(1), cluster.tls_context())) == last_seq
    finally:
        node.stop()
