"""Files and directories only the service can read (0600 / 0700): the data dir, server keys, the admin key.

A leaf module (the standard library only), so settings can create the data dir without importing anything of Lethe.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create a directory, and its missing parents, readable by the service alone (0700); existing directories
    are left as they are."""
    if not path.exists():
        private_dir(path.parent)
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes; when missing, `make()` is written 0600 (once, even when processes race)."""
    if not path.exists():
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(make())
            try:
                os.link(tmp, path)  # fails if another process won the race: theirs is kept
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a key written group/world-readable by an older version
    return path.read_bytes()
