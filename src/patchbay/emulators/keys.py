"""Throwaway Google service accounts for the FCM emulator, and the public half of a real one.

A service-account JSON is what Google hands out for server-to-server OAuth: an RSA private key
plus the account's identity and the token endpoint. ``google-auth`` (and so ``firebase-admin``)
posts its signed assertion to the JSON's ``token_uri``, so a JSON whose ``token_uri`` points at
the emulator is all a client needs to run offline. The emulator checks the assertion's
signature with the public half (``public_keys``), keyed by ``private_key_id`` as the JWT's
``kid`` header names it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_BITS = 2048  # what Google issues; smaller keys would be faster but unlike the real thing


def service_account(token_uri: str, project_id: str = "demo-project") -> tuple[dict[str, str], str]:
    """A new service-account JSON (as a dict) with a fresh RSA key, and that key's public PEM.

    The dict has the fields Google's downloads have (``type``, ``project_id``,
    ``private_key_id``, ``private_key``, ``client_email``, ``client_id``, ``token_uri``, ...);
    ``google.oauth2.service_account.Credentials.from_service_account_info`` and
    ``firebase_admin.credentials.Certificate`` accept it as is.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,  # Google's files hold "BEGIN PRIVATE KEY" (PKCS#8)
        serialization.NoEncryption(),
    ).decode()
    email = f"firebase-adminsdk-emulator@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(100_000_000_000_000_000_000 + secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": (
            f"https://www.googleapis.com/robot/v1/metadata/x509/{email.replace('@', '%40')}"
        ),
        "universe_domain": "googleapis.com",
    }
    return info, public_pem(private_pem)


def public_pem(private_key_pem: str) -> str:
    """The PEM public key (SubjectPublicKeyInfo) of an RSA private key in PEM."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account's private_key is not an RSA key")
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_keys(info: Mapping[str, Any]) -> dict[str, str]:
    """``{private_key_id: public PEM}`` of a service-account JSON: what ``FcmEmulator`` checks."""
    if not isinstance(info, Mapping):
        raise ValueError("not a service-account JSON: not an object")
    try:
        key_id, private_key = info["private_key_id"], info["private_key"]
    except KeyError as exc:
        raise ValueError(f"not a service-account JSON: no {exc.args[0]!r}") from None
    if not isinstance(key_id, str) or not isinstance(private_key, str):
        raise ValueError("not a service-account JSON: private_key_id and private_key are strings")
    return {key_id: public_pem(private_key)}
