"""Server key material: one secret, independent keys per purpose, and key files only the service can read.

The identity-hash key is the configured secret itself (`LETHE_SECRET_KEY` or `secret.key`), exactly as before,
so stored keyed hashes stay valid. Every other purpose gets its own key, derived with HKDF-SHA256 under a
label: HKDF keys HMAC with its extracted PRK, never with the secret, so no keyed hash (which anyone may
cause to be written to the ledger) ever equals, or helps compute, a derived key. The files that hold key material
are written by app.private_files.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.errors import LetheError
from app.settings import get_settings

SALT = b"lethe/hkdf/v1"
WEBHOOK_SECRETS = "webhook-secrets/aes-gcm"  # label of the key that encrypts stored webhook secrets


class SecretUnavailable(LetheError):
    """Stored key material that cannot be used (the server secret changed, or the value was edited)."""

    status_code = 500


def derive(*, label: str, length: int = 32) -> bytes:
    """The key for one purpose: HKDF-SHA256(server secret, salt, info=label)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SALT,
                info=b"lethe:" + label.encode()).derive(get_settings().hmac_key())


def seal(plaintext: str, *, label: str, aad: str) -> str:
    """AES-256-GCM under the label's derived key; `aad` (a row id) binds the ciphertext to its row."""
    nonce = os.urandom(12)
    ct = AESGCM(derive(label=label)).encrypt(nonce, plaintext.encode(), aad.encode())
    return "v1:" + base64.b64encode(nonce + ct).decode()


def unseal(token: str, *, label: str, aad: str) -> str:
    """The plaintext of `seal`; SecretUnavailable when the server secret changed or the value was edited."""
    try:
        raw = base64.b64decode(token.removeprefix("v1:"))
        return AESGCM(derive(label=label)).decrypt(raw[:12], raw[12:], aad.encode()).decode()
    except (InvalidTag, ValueError) as exc:
        raise SecretUnavailable("a stored secret cannot be decrypted (was LETHE_SECRET_KEY changed?)") from exc
