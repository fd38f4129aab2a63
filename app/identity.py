"""Keyed hashes for identities: the database and ledger never hold subject ids in clear."""

from __future__ import annotations

import hashlib
import hmac

from app.settings import get_settings


def keyed_hash(value: str) -> str:
    return hmac.new(get_settings().hmac_key(), value.encode(), hashlib.sha256).hexdigest()
