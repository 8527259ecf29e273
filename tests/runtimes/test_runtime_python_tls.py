"""The runtime imports aiohttp without reading the CA file, and TLS still verifies."""

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from runtime_python_support import RUNTIME_DIR

if str(RUNTIME_DIR) not in sys.path:
    sys.path.append(str(RUNTIME_DIR))

from kapal_runtime import tls

Key = ec.EllipticCurvePrivateKey


def _cert(name: str, key: Key, issuer: tuple[str, Key] | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _server_context(tmp: Path, ca: str, ca_key: Key) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1, issued by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_file, key_file = tmp / f"{ca}-server.pem", tmp / f"{ca}-server.key"
    cert_file.write_bytes(_pem(_cert("server", key, (ca, ca_key))))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def ca_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, ssl.SSLContext]:
    """A hashed CA directory trusting one CA, as OpenSSL's default; no CA file chosen.

    Returns the directory and a server context whose certificate that CA issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(_pem(_cert("kapal-test-ca", key, None)))
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(ca_pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / f"{subject_hash}.0").write_bytes(ca_pem.read_bytes())
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    monkeypatch.delenv(tls.CA_FILE_ENV, raising=False)
    return certs, _server_context(tmp_path, "kapal-test-ca", key)


async def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """A TLS connection to a local server; raises if the client does not verify it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listening = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listening.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.close()
    finally:
        listening.close()
        await listening.wait_closed()


def test_within_it_no_ca_file_is_read(ca_dir: tuple[Path, ssl.SSLContext]) -> None:
    with tls.ca_file_deferred():
        assert os.environ[tls.CA_FILE_ENV] == tls.NO_CA_FILE
        context = ssl.create_default_context()
    assert tls.CA_FILE_ENV not in os.environ
    # Nothing parsed up front: certificates are read from the directory when needed.
    assert context.cert_store_stats()["x509_ca"] == 0


async def test_contexts_made_within_it_still_verify(
    ca_dir: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    with tls.ca_file_deferred():
        context = ssl.create_default_context()
    _, trusted = ca_dir
    await _handshake(context, trusted)
    other = _server_context(tmp_path, "other-ca", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(context, other)


def test_a_ca_file_the_function_chose_is_kept(
    ca_dir: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tls.CA_FILE_ENV, "/etc/function/ca.pem")
    with tls.ca_file_deferred():
        assert os.environ[tls.CA_FILE_ENV] == "/etc/function/ca.pem"
    assert os.environ[tls.CA_FILE_ENV] == "/etc/function/ca.pem"


def test_without_a_hashed_directory_the_ca_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # empty: nothing to verify with
    monkeypatch.delenv(tls.CA_FILE_ENV, raising=False)
    assert tls.hashed_ca_directory() is None
    with tls.ca_file_deferred():
        assert tls.CA_FILE_ENV not in os.environ
