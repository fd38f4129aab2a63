"""The artifact store: a directory (a shared volume in production), written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from app.settings import get_settings


def root() -> Path:
    from app.keys import private_dir

    return private_dir(get_settings().artifacts)  # missing parents (the data dir) are created 0700 too


def path_of(uri: str) -> Path:
    """Artifact URIs are paths relative to the store root, so the store can move."""
    return root() / uri


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_chunks(uri: str, chunks: Iterable[bytes]) -> tuple[Path, str, int]:
    """Stream bytes to uri via a temp file; return (path, sha256, size)."""
    dest = path_of(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            fh.write(chunk)
    os.replace(tmp, dest)
    return dest, digest.hexdigest(), size


def delete(uri: str) -> bool:
    """Remove a file or directory artifact; True when something was removed."""
    path = path_of(uri)
    if path.is_dir():
        shutil.rmtree(path)
        return True
    if path.exists():
        path.unlink()
        return True
    return False


def redact(text: str) -> str:
    """Server paths out of a message shown to API callers: the store and data directories become placeholders."""
    settings = get_settings()
    for path, label in ((settings.imports, "<imports>"), (settings.artifacts, "<artifacts>"),
                        (settings.resolved_data_dir, "<data>")):
        text = text.replace(str(path), label)
    return text
