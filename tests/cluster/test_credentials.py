"""NATS servers started by Coffer take only clients that sign in, and a node's user may do only
what a node of its stream needs: the cluster works with them, nothing else gets in."""

import asyncio
import json
import ssl
import time
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest
from click.testing import CliRunner

from coffer.cli import main
from coffer.cluster.local import LocalCluster
from coffer.cluster.nats_servers import node_permissions
from coffer.log.jetstream import JetStreamLog, read_credentials

request_s = 2.0


async def _refused(url: str, **credentials: str) -> str:
    try:
        connection = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=request_s, **credentials)
    except nats.errors.Error as error:
        return str(error)
    await connection.close()
    return ""


async def _node_user_limits(url: str, credentials: dict[str, str], stream: str) -> list[str]:
    """What the node user was refused: deleting its stream, another stream's checkpoints, the rest."""
    errors: list[str] = []

    async def note(error: Exception) -> None:
        errors.append(str(error))

    connection = await nats.connect(url, error_cb=note, allow_reconnect=False, **credentials)  # type: ignore[arg-type]
    try:
        assert (await connection.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=request_s)).data  # allowed
        for subject in (f"$JS.API.STREAM.DELETE.{stream}", "coffer.checkpoints.another-stream", "coffer.events.0"):
            await connection.publish(subject, b"{}")
        await connection.subscribe("coffer.log.>")  # reading the log bypasses the node: refused too
        await connection.flush(request_s)
        await asyncio.sleep(0.5)  # the server's -ERR lines arrive after the flush's pong
    finally:
        await connection.close()
    return errors


def test_servers_refuse_clients_without_credentials_and_limit_each_node(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", 1, die_with_parent=True)
    cluster.up()
    try:
        url = cluster.urls[0]
        created = httpx.post(f"{url}/v1/accounts", json={"dedup_id": "n1", "account_id": "a", "asset": "USD"})
        assert created.status_code == 200, created.text
        plain = cluster.nats.plain_urls[0]
        assert "Authorization Violation" in asyncio.run(_refused(plain))
        assert "Authorization Violation" in asyncio.run(_refused(plain, user="c1", password="guessed-password"))
        credentials_file = cluster.nats.credentials_file("c1")
        assert credentials_file is not None and credentials_file.stat().st_mode & 0o077 == 0
        credentials = read_credentials(credentials_file)
        assert asyncio.run(_refused(plain, **credentials)) == ""
        config = cluster.nats.config_path(1)
        assert config.stat().st_mode & 0o077 == 0
        passwords = json.loads((cluster.nats.directory / "credentials.json").read_text())
        config_text = config.read_text()
        assert not any(password in config_text for password in passwords.values())
        assert config_text.count('"password": "$2a$') == 2  # admin and c1, as bcrypt hashes
        refused = asyncio.run(_node_user_limits(plain, credentials, cluster.stream))
        said = " ".join(refused).lower()
        assert sum("permissions violation" in error.lower() for error in refused) == 4, refused
        assert f"stream.delete.{cluster.stream}" in said and 'subscription to "coffer.log.>"' in said
        time.sleep(1)
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/v1/accounts/a").status_code == 200
    finally:
        cluster.down()


def test_a_node_may_publish_only_its_own_streams_subjects() -> None:
    allowed = node_permissions("coffer-shard-0")
    publish = allowed["publish"]["allow"]
    assert "coffer.log.coffer-shard-0" in publish and "coffer.checkpoints.coffer-shard-0" in publish
    assert not any("DELETE" in subject or subject in ("$JS.API.>", ">") for subject in publish)
    assert all("coffer-shard-0" in subject or subject == "$JS.API.INFO" for subject in publish)
    assert allowed["subscribe"]["allow"] == ["_INBOX.>", "coffer.checkpoints.coffer-shard-0"]


def test_credentials_files_are_one_user_password_line_or_a_creds_file(tmp_path: Path) -> None:
    (tmp_path / "node.credentials").write_text("# node c1\nc1:secret-password\n")
    assert read_credentials(tmp_path / "node.credentials") == {"user": "c1", "password": "secret-password"}
    assert read_credentials(tmp_path / "node.creds") == {"user_credentials": str(tmp_path / "node.creds")}
    (tmp_path / "bad").write_text("c1\n")
    with pytest.raises(ValueError, match="user:password"):
        read_credentials(tmp_path / "bad")


async def _connect_error(url: str, tls: ssl.SSLContext | None) -> str:
    try:
        connection = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=request_s, tls=tls)
    except (nats.errors.Error, OSError, ssl.SSLError) as error:
        return repr(error)
    await connection.close()
    return ""


def test_nats_over_tls_clients_and_routes(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", 3, die_with_parent=True, nats_tls=True)
    cluster.up()
    try:
        created = httpx.post(f"{cluster.urls[0]}/v1/accounts", json={"dedup_id": "t1", "account_id": "t", "asset": "USD"})
        assert created.status_code == 200, created.text
        # Written through one node, read on another: the stream's replicas talk over TLS routes.
        assert httpx.get(f"{cluster.urls[2]}/v1/accounts/t", params={"min_seq": created.json()["seq"]}).status_code == 200
        assert "CERTIFICATE_VERIFY_FAILED" in asyncio.run(_connect_error(cluster.nats.urls[0], None))
        assert asyncio.run(_connect_error(cluster.nats.urls[0], cluster.nats.tls_context())) == ""
        config = cluster.nats.config_path(1).read_text()
        assert config.count("tls {") == 2  # clients and routes
        route_password = json.loads((cluster.nats.directory / "credentials.json").read_text())["route"]
        routes_file = cluster.nats.directory_of(1) / "routes.conf"
        assert route_password not in config and route_password in routes_file.read_text()
        assert routes_file.stat().st_mode & 0o077 == 0
        with JetStreamLog(cluster.nats.urls, stream=cluster.stream, replicas=3, tls=cluster.nats.tls_context()) as log:
            assert log.last_index >= 1
    finally:
        cluster.down()


def test_cluster_up_with_nats_tls_prints_no_password_and_stops(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "up"
    started = runner.invoke(main, ["cluster", "up", "--nodes", "1", "--data-dir", str(directory), "--nats-tls"])
    try:
        assert started.exit_code == 0, (started.stdout, started.stderr)
        passwords = json.loads((directory / "nats" / "credentials.json").read_text())
        assert not any(password in started.stdout for password in passwords.values())
        url = next(line.split("=", 1)[1] for line in started.stdout.splitlines() if line.startswith("COFFER_URL="))
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert (directory / "nats" / "tls" / "ca.pem").exists() and (directory / "cluster-secret").stat().st_mode & 0o077 == 0
    finally:
        stopped = runner.invoke(main, ["cluster", "down", "--data-dir", str(directory)])
    assert stopped.exit_code == 0 and "stopped 2 processes" in stopped.stdout, stopped.stdout
