"""The sender over TLS, as it meets fcm.googleapis.com: certificates checked, protocol by ALPN."""

from __future__ import annotations

import datetime
import ipaddress
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.serve import serve_in_thread
from patchbay.push import Message, Notification, Sender
from tests.unit.push.conftest import settings

ALERT = Message(notification=Notification(title="Hi"))


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that is its own authority; (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fcm emulator")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A fresh self-signed certificate and its key."""
    return self_signed(tmp_path)


@pytest.fixture
def served(live_emulator: FcmEmulator, tls_files: tuple[str, str]) -> Iterator[str]:
    """Here the emulator is behind TLS (conftest's ``account_file`` then points at it)."""
    with serve_in_thread(live_emulator, tls=tls_files) as url:
        yield url


@pytest.mark.parametrize(("http2", "version"), [(False, "HTTP/1.1"), (True, "HTTP/2")])
async def test_both_protocols_reach_an_https_fcm_that_the_roots_trust(
    served: str,
    account_file: Path,
    tls_files: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    http2: bool,
    version: str,
) -> None:
    """Token and sends over TLS; HTTP/2 comes from ALPN, HTTP/1.1 is the default's protocol."""
    assert served.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", tls_files[0])
    push = settings(service_account=str(account_file), fcm_url=served, iid_url=served, http2=http2)
    async with Sender.from_settings(push) as sender:
        results = [r async for r in sender.send_multicast(ALERT, [f"t{i}" for i in range(30)])]
    assert Counter(r.outcome for r in results) == {"sent": 30}
    assert set(sender.stats.http_versions) == {version}


@pytest.mark.parametrize("http2", [False, True])
async def test_an_untrusted_certificate_is_refused(
    served: str,
    account_file: Path,
    live_emulator: FcmEmulator,
    monkeypatch: pytest.MonkeyPatch,
    http2: bool,
) -> None:
    """Without the emulator's certificate among the roots, nothing is sent and the error says so."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    push = settings(
        service_account=str(account_file),
        fcm_url=served,
        iid_url=served,
        http2=http2,
        max_attempts=1,
        deadline=5.0,
    )
    async with Sender.from_settings(push) as sender:
        result = await sender.send(ALERT.to(token="t1"))
    assert not result.ok
    assert "CERTIFICATE_VERIFY_FAILED" in f"{result.error_code} {result.detail}"
    assert live_emulator.ledger == []
