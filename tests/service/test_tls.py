"""The HTTP API over TLS: a node serves HTTPS with --tls-cert/--tls-key, the client and the CLI
trust a private CA with ca_file/--ca-file/COFFER_CA_FILE, and a node refuses plain HTTP on an
address other than loopback unless told --insecure-allow-plaintext."""

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coffer import exit_codes
from coffer.cli import main
from coffer.client import Client, TransportError
from tests.service.server_process import CofferServer, free_port

admin_key = "tls-admin-key-0123456789abcdef"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, node certificate, node key): a private CA and a certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("coffer test CA"))
        .issuer_name(_name("coffer test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = (
        x509.CertificateBuilder()
        .subject_name(_name("coffer node"))
        .issuer_name(ca.subject)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "node.pem", directory / "node.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    _write_key(paths[2], node_key)
    return paths


def run_coffer(*arguments: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
    return subprocess.run(
        [sys.executable, "-m", "coffer", *arguments], capture_output=True, text=True, timeout=60, env={**clean, **(environment or {})}
    )


def test_a_node_serves_https_and_clients_trust_its_ca(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    node = CofferServer(tmp_path / "data", arguments=["--tls-cert", str(cert), "--tls-key", str(key)], ca_file=ca)
    node.start()
    try:
        assert node.url.startswith("https://")
        with Client(node.url, ca_file=ca) as client:
            client.create_account("tls-a", "USD")
            assert client.get_account("tls-a").available == "0.00"
        with Client(node.url, retry=None) as system_cas, pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            system_cas.get_account("tls-a")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{node.port}/readyz", timeout=5)  # plain HTTP is not served
        runner = CliRunner()
        shown = runner.invoke(main, ["account", "show", "tls-a", "--url", node.url, "--ca-file", str(ca), "--json"])
        assert shown.exit_code == 0 and '"tls-a"' in shown.stdout, (shown.stdout, shown.stderr)
        from_environment = runner.invoke(main, ["account", "show", "tls-a"], env={"COFFER_URL": node.url, "COFFER_CA_FILE": str(ca)})
        assert from_environment.exit_code == 0, from_environment.stderr
        untrusted = runner.invoke(main, ["account", "show", "tls-a"], env={"COFFER_URL": node.url, "COFFER_CA_FILE": None})
        assert untrusted.exit_code == exit_codes.unavailable and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        node.stop()


def test_a_public_address_needs_tls_or_an_explicit_flag(tmp_path: Path) -> None:
    keys = {"COFFER_API_KEYS": f"admin:{admin_key}"}
    public = ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"), "--port", str(free_port())]
    refused = run_coffer(*public, environment=keys)
    assert refused.returncode == exit_codes.invalid and "without TLS" in refused.stderr and "--insecure-allow-plaintext" in refused.stderr
    sharded = run_coffer(*public, "--shards", "2", environment=keys)
    assert sharded.returncode == exit_codes.invalid and "without TLS" in sharded.stderr
    node = CofferServer(tmp_path / "plain", environment=keys, arguments=["--host", "0.0.0.0", "--insecure-allow-plaintext"])
    node.start()
    node.stop()


def test_tls_files_that_cannot_serve_are_one_line_and_exit_2(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    base = ["serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port())]
    for arguments, words in [
        (["--tls-cert", str(cert)], "go together"),
        (["--tls-cert", str(cert), "--tls-key", str(ca)], "cannot use the TLS certificate"),
    ]:
        done = run_coffer(*base, *arguments)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == exit_codes.invalid and len(lines) == 1 and words in lines[0], done.stderr
    with_shards = run_coffer(*base, "--shards", "2", "--tls-cert", str(cert), "--tls-key", str(key))
    assert with_shards.returncode == exit_codes.invalid and "TLS proxy" in with_shards.stderr
