"""Scores on disk, Kronfluence-style: computed once, saved under a name, loaded memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def score_path(root: Path, name: str) -> Path:
    return Path(root) / name


def save_scores(root: Path, name: str, scores: np.ndarray, *, meta: dict[str, Any]) -> dict[str, Any]:
    """Write <root>/<name>/scores.npy and meta.json atomically; returns meta with sha256 and path."""
    folder = score_path(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "scores.npy.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(scores, dtype=np.float64))
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, folder / "scores.npy")
    full = {**meta, "n": int(len(scores)), "sha256": sha, "path": str(folder / "scores.npy")}
    (folder / "meta.json.tmp").write_text(json.dumps(full, sort_keys=True, default=str))
    os.replace(folder / "meta.json.tmp", folder / "meta.json")
    return full


def load_scores(root: Path, name: str, *, mmap: bool = True) -> np.ndarray | None:
    path = score_path(root, name) / "scores.npy"
    if not path.exists():
        return None
    return np.load(path, mmap_mode="r" if mmap else None)


def load_meta(root: Path, name: str) -> dict[str, Any] | None:
    path = score_path(root, name) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None
