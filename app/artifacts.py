"""The artifact store: a directory (a shared volume in production), written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.private_files import private_dir
from app.settings import get_settings
from workers.engine.parquet import CACHE_SUFFIX


def root() -> Path:
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


def delete_after_commit(session: Any, *uris: str) -> None:
    """Delete these artifacts once the session's transaction commits (never on rollback: app.db's hook)."""
    session.info.setdefault("delete_after_commit", []).extend(uris)


# ----------------------------------------------------------------------------- where each artifact lives
# Every URI the service writes is built here, so a reader finds the layout of the store in one place.

DATASETS = "datasets/"


def dataset_uri(stem: str, fmt: str) -> str:
    """A dataset file Lethe wrote: an upload or an import's copy (`stem` a new id), its `fmt` npz or parquet."""
    return f"{DATASETS}{stem}.{fmt}"


def erased_dataset_uri(dataset_id: str, n_erased: int, fmt: str) -> str:
    """The copy of a dataset written when its points' features are erased (`n_erased` counts all so far)."""
    return dataset_uri(f"{dataset_id}-e{n_erased}", fmt)


def demo_dataset_uri(name: str, fmt: str) -> str:
    """The dataset `lethe demo` writes."""
    return dataset_uri(f"{name}-demo", fmt)


def written_by_lethe(dataset_uri: str) -> bool:
    """Whether a dataset's file is one Lethe wrote (not a reference registered before imports were copied)."""
    return dataset_uri.startswith(DATASETS)


def dataset_cache_uri(dataset_uri: str) -> str:
    """A Parquet dataset's decoded features, beside its file (workers.engine.parquet writes and reads them)."""
    return dataset_uri + CACHE_SUFFIX


def upload_uri(model_id: str, upload_id: str) -> str:
    """An uploaded version's weights."""
    return f"models/{model_id}/{upload_id}.safetensors"


def job_weights_uri(model_id: str, job_id: str, part: str = "") -> str:
    """Weights a job produced: a trained version, an unlearning candidate between unlearning, audit and
    registration, or (`part` "reference") its retrain reference."""
    return f"models/{model_id}/job-{job_id}{'-' + part if part else ''}.safetensors"


def checkpoints_uri(weights_uri: str) -> str:
    """Where a trained version's LESS checkpoints live: beside its weights, purged with them."""
    return weights_uri.removesuffix(".safetensors") + ".ckpt"


def scores_dir(version_id: str) -> str:
    """A version's score cache: one folder per method, plus what scorers fit once (K-FAC factors)."""
    return f"scores/{version_id}"


def scores_uri(version_id: str, method: str) -> str:
    """One method's scores of a version (written and read by workers.engine.cache)."""
    return f"{scores_dir(version_id)}/{method}"


def shards_dir(version_id: str, method: str) -> str:
    """The shard files of a sharded scoring job, deleted once joined."""
    return f"{scores_dir(version_id)}/{method}.shards"


def shard_uri(version_id: str, method: str, start: int, stop: int) -> str:
    """The scores of rows [start, stop) in a sharded scoring job."""
    return f"{shards_dir(version_id, method)}/{start:010d}-{stop:010d}.npz"


def pool_uri(pool_id: str) -> str:
    """A reference pool's arrays."""
    return f"pools/{pool_id}"


def pool_cache_uri(pool_id: str) -> str:
    """A reference pool's per-model φ cache while it trains (a re-run trains only what is missing)."""
    return f"pools/{pool_id}.partial"


def calibration_png_uri(version_id: str, method: str) -> str:
    """A calibration's removal-curve plot."""
    return f"calibration/{version_id}-{method}.png"
