"""Keyed hashes for identities: the database and ledger never hold subject ids in clear."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from app.settings import get_settings


def keyed_hash(value: str) -> str:
    """HMAC-SHA256 under the server secret itself (kept as it was, so stored hashes stay valid). Anyone may get
    a value of their choosing hashed into the ledger, so no other key is this one: see app.keys."""
    return hmac.new(get_settings().hmac_key(), value.encode(), hashlib.sha256).hexdigest()


def keyed_hasher() -> Callable[[str], str]:
    """keyed_hash with the secret read once, for hashing many values (a dataset's subjects at registration)."""
    key = get_settings().hmac_key()

    def hashed(value: str) -> str:
        return hmac.digest(key, value.encode(), "sha256").hex()

    return hashed
