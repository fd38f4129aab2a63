"""Stream an upload into the artifact store with a size cap."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import UploadFile

from app import artifacts
from app.errors import TooLarge
from app.settings import get_settings


def store_upload(upload: UploadFile, *, uri: str) -> tuple[str, int]:
    """Copy the upload to `uri`; 413 past LETHE_MAX_UPLOAD_MB. Returns (sha256, size)."""
    limit = get_settings().max_upload_mb * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        seen = 0
        upload.file.seek(0)
        while chunk := upload.file.read(1 << 20):
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(f"upload exceeds {get_settings().max_upload_mb} MiB")
            yield chunk

    try:
        _, sha, size = artifacts.write_chunks(uri, chunks())
    except TooLarge:
        artifacts.delete(uri + ".tmp")
        raise
    return sha, size
