"""Register datasets (.npz, never pickled, or Parquet) and their points."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from app import artifacts
from app.datasets import npz_erasure
from app.datasets.enums import DatasetStatus
from app.datasets.tables import Dataset, Point
from app.db import new_id, page, session_scope, utcnow
from app.errors import Conflict, NotFound, Unprocessable, closest, did_you_mean
from app.evidence import service as evidence
from app.forget.enums import REMOVED, RequestStatus
from app.forget.tables import Disposition, ForgetRequest
from app.identity import keyed_hasher
from app.jobs import service as jobs
from app.jobs.enums import JobKind
from app.jobs.tables import Job
from app.ledger import service as ledger
from app.registry.enums import VersionStatus
from app.registry.tables import Model, Version
from app.settings import get_settings
from app.uploads import check_npz
from workers.engine import parquet  # torch-free: pyarrow, numpy, Pillow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class _Header:
    """An array as its .npy header describes it: what validation needs of x, without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0


@dataclass(frozen=True)
class NpzSummary:
    ids: list[str]
    subjects: list[str] | None
    n_test: int
    n_classes: int
    input_shape: list[int]


MAX_ID_CHARS = parquet.MAX_ID_CHARS  # points.point_id
INSERT_ROWS = 50_000  # point rows per COPY / executemany when a dataset is registered
INDEX_ARRAYS = ("y", "ids", "subjects", "y_test")  # read in full by the API: one entry per point
FEATURE_ARRAYS = ("x", "x_test")  # only their .npy headers are read here; workers load them


def inspect_npz(path: Path) -> NpzSummary:
    """Validate an .npz without unpickling anything and without loading its features; 422 naming what is wrong.

    x and x_test are judged from their .npy headers (shape, dtype); only the per-point arrays (labels, ids,
    subjects) are read, once their headers show they fit what a point row holds.
    """
    headers = check_npz(path)  # headers against sizes first: nothing is allocated from a lying header
    missing = {"x", "y", "ids"} - set(headers)
    if missing:
        raise Unprocessable(f"npz lacks required arrays: {sorted(missing)} (need x, y, ids)")
    for name in ("ids", "subjects"):
        if name in headers and headers[name][1].kind == "U" and headers[name][1].itemsize > 4 * MAX_ID_CHARS:
            raise Unprocessable(f"{name} must be strings of at most {MAX_ID_CHARS} characters")
    try:
        with np.load(path, allow_pickle=False) as npz:  # lazy: each member is read only when indexed
            arrays = {k: npz[k] for k in INDEX_ARRAYS if k in headers}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else artifacts.redact(str(exc))
        raise Unprocessable(f"not a readable npz without pickled objects: {reason}") from exc
    for name in FEATURE_ARRAYS:
        if name in headers and headers[name][1].hasobject:
            raise Unprocessable(f"{name} holds pickled objects, which are never loaded")
    arrays.update({k: _Header(*headers[k]) for k in FEATURE_ARRAYS if k in headers})
    x, y, ids = arrays["x"], arrays["y"], arrays["ids"]
    if x.ndim < 2 or x.dtype.kind not in "fiub":
        raise Unprocessable("x must be a numeric array of shape (n, ...)")
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
        raise Unprocessable("y must be a 1-D integer array with one label per row of x")
    if ids.ndim != 1 or ids.dtype.kind != "U" or len(ids) != len(x):
        raise Unprocessable("ids must be a 1-D string array with one id per row of x")
    id_list = ids.tolist()
    if len(set(id_list)) != len(id_list):
        raise Unprocessable("ids must be unique")
    if len(x) == 0 or y.min() < 0:
        raise Unprocessable("the dataset needs at least one point and non-negative labels")
    subjects = None
    if "subjects" in arrays:
        s = arrays["subjects"]
        if s.ndim != 1 or s.dtype.kind != "U" or len(s) != len(x):
            raise Unprocessable("subjects must be a 1-D string array with one subject per row of x")
        subjects = s.tolist()
    n_test, n_classes = 0, int(y.max()) + 1
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise Unprocessable("x_test and y_test come together")
    if "x_test" in arrays:
        xt, yt = arrays["x_test"], arrays["y_test"]
        if xt.shape[1:] != x.shape[1:] or yt.ndim != 1 or len(yt) != len(xt) or yt.dtype.kind not in "iu":
            raise Unprocessable("x_test/y_test must match x's sample shape and have one integer label per row")
        n_test = len(xt)
        if n_test:
            n_classes = max(n_classes, int(yt.max()) + 1)
    return NpzSummary(ids=id_list, subjects=subjects, n_test=n_test, n_classes=n_classes,
                      input_shape=list(x.shape[1:]))


def import_copy(*, tenant_id: str, uri: str) -> tuple[str, str]:
    """Copy an .npz or Parquet file from the tenant's import directory into the store; (the copy's uri, its sha256).

    Only files under LETHE_IMPORT_DIR/<tenant id>/ (symlinks resolved) are accepted, so a tenant never names
    another tenant's file; errors never name a server path. The original is only read.
    """
    root = (get_settings().imports / tenant_id).resolve()
    try:
        path = (root / uri).resolve()
        found = path.is_file() and root in path.parents
    except (ValueError, OSError):  # NUL bytes, names too long, ...
        found = False
    if not found:
        raise Unprocessable(f"uri {uri!r} is not a file in this tenant's import directory "
                            "(LETHE_IMPORT_DIR/<tenant id>/)")
    try:
        is_parquet = parquet.is_parquet(path)
    except OSError as exc:
        raise Unprocessable(f"uri {uri!r} cannot be read: {exc.strerror or 'I/O error'}") from exc
    if not is_parquet:
        check_npz(path)  # a bomb is refused before anything is copied
    copy = artifacts.dataset_uri(new_id(), 'parquet' if is_parquet else 'npz')

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    try:
        _, sha, _ = artifacts.write_chunks(copy, chunks())
    except OSError as exc:
        artifacts.delete(copy + ".tmp")
        raise Unprocessable(f"uri {uri!r} cannot be read: {exc.strerror or 'I/O error'}") from exc
    return copy, sha


def register(session: Session, *, tenant_id: str, name: str, uri: str, sha256: str,
             by_reference: bool = False) -> Dataset:
    """Record a dataset whose file Lethe wrote to the artifact store at `uri` (an upload or an import's copy).

    An .npz is ready at once. A Parquet file's schema and index columns are checked here and its points recorded;
    decoding every row's features is a validation job, until which the dataset is `validating`."""
    if not NAME_RE.match(name):
        raise Unprocessable("name must be 1-200 characters of letters, digits, '_', '.', '-'")
    if session.scalar(select(Dataset.id).where(Dataset.tenant_id == tenant_id, Dataset.name == name)):
        raise Conflict(f"dataset '{name}' already exists")
    path = artifacts.path_of(uri)
    if uri.endswith(".parquet"):
        try:
            summary: NpzSummary | parquet.Index = parquet.read_index(path)
        except parquet.ParquetError as exc:
            raise Unprocessable(artifacts.redact(str(exc))) from None
        fmt, features, status = "parquet", summary.features, DatasetStatus.VALIDATING
    else:
        summary, fmt, features, status = inspect_npz(path), "npz", "x", DatasetStatus.READY
    ds = Dataset(tenant_id=tenant_id, name=name, uri=uri, sha256=sha256, n_points=len(summary.ids),
                 n_test=summary.n_test, n_classes=summary.n_classes, input_shape=summary.input_shape,
                 has_subjects=summary.subjects is not None, by_reference=by_reference, format=fmt,
                 features=features, status=status)
    session.add(ds)
    session.flush()
    hashed = keyed_hasher()
    slices = summary.slices(INSERT_ROWS) if isinstance(summary, parquet.Index) else _npz_slices(summary)
    for start, ids, subjects in slices:  # in slices: the Python values and parameter lists stay small
        memo: dict[str, str] = {}  # a subject's points are usually near each other: one HMAC for them
        hashes = [None if s is None else memo[s] if s in memo else memo.setdefault(s, hashed(s)) for s in subjects]
        _insert_points(session, ds.id, start, ids, hashes)
    ledger.append(session, tenant_id=tenant_id, event="dataset.registered", subject_type="dataset",
                  subject_id=ds.id, data={"name": name, "sha256": sha256, "n_points": ds.n_points,
                                          "n_test": ds.n_test, "by_reference": by_reference,
                                          **({"format": fmt, "features": features} if fmt != "npz" else {})})
    if status == DatasetStatus.VALIDATING:

        jobs.create(session, tenant_id=tenant_id, kind=JobKind.VALIDATE, model_id=None, version=None,
                    dataset_id=ds.id)
    return ds


def _npz_slices(summary: NpzSummary) -> Iterator[tuple[int, list[str], list[str | None]]]:
    for start in range(0, len(summary.ids), INSERT_ROWS):
        ids = summary.ids[start:start + INSERT_ROWS]
        yield start, ids, summary.subjects[start:start + INSERT_ROWS] if summary.subjects else [None] * len(ids)


def _insert_points(session: Session, dataset_id: str, start: int, ids: list[str],
                   hashes: list[str | None]) -> None:
    """Point rows start.. of a dataset by the driver's fastest path, in the session's transaction: COPY on
    PostgreSQL, a plain executemany on SQLite (the ORM's per-row bookkeeping cost several times the insert)."""
    rows = [(dataset_id, pid, start + i, h) for i, (pid, h) in enumerate(zip(ids, hashes, strict=True))]
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cur, cur.copy(
                'COPY points (dataset_id, point_id, "row", subject_hash) FROM STDIN') as copy:
            for r in rows:
                copy.write_row(r)
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql('INSERT INTO points (dataset_id, point_id, "row", subject_hash) VALUES (?, ?, ?, ?)',
                             rows)
    else:
        conn.execute(insert(Point), [{"dataset_id": d, "point_id": p, "row": r, "subject_hash": h}
                                     for d, p, r, h in rows])


def require_ready(ds: Dataset) -> None:
    """Models are registered only on a dataset whose every row decoded: 409 while validating, 422 if it failed."""
    if ds.status == DatasetStatus.VALIDATING:
        raise Conflict(f"dataset '{ds.name}' is still validating (its validation job decodes every row); "
                       "models can be registered on it once its status is ready")
    if ds.status == DatasetStatus.FAILED:
        raise Unprocessable(f"dataset '{ds.name}' failed validation: {ds.error}; register a corrected file "
                            "under another name")


def validated(session: Session, *, dataset_id: str) -> Dataset:
    """Its validation job decoded every row: the dataset is ready (once), with its ledger entry."""
    ledger.lock_chain(session, tenant_id=session.get(Dataset, dataset_id).tenant_id)
    ds = session.get(Dataset, dataset_id)
    if ds.status == DatasetStatus.VALIDATING:
        ds.status = DatasetStatus.READY
        ledger.append(session, tenant_id=ds.tenant_id, event="dataset.ready", subject_type="dataset",
                      subject_id=ds.id, data={"n_points": ds.n_points, "n_test": ds.n_test})
    return ds


def invalid(session: Session, *, dataset_id: str, error: str) -> None:
    """Rows did not decode: the dataset failed validation, naming them (once), with its ledger entry."""
    ledger.lock_chain(session, tenant_id=session.get(Dataset, dataset_id).tenant_id)
    ds = session.get(Dataset, dataset_id)
    if ds.status == DatasetStatus.VALIDATING:
        ds.status, ds.error = DatasetStatus.FAILED, error
        ledger.append(session, tenant_id=ds.tenant_id, event="dataset.failed", subject_type="dataset",
                      subject_id=ds.id, data={"error": error[:2000]})


def validation_job(session: Session, *, dataset_id: str) -> str | None:
    """The id of a dataset's latest validation job (None for an .npz)."""
    return session.scalar(select(Job.id).where(Job.dataset_id == dataset_id, Job.kind == JobKind.VALIDATE)
                          .order_by(Job.created_at.desc()).limit(1))


def get(session: Session, *, tenant_id: str, name_or_id: str) -> Dataset:
    """A dataset of the tenant by name or id; 404 otherwise."""
    ds = session.scalar(select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == name_or_id))
    if ds is None:
        ds = session.get(Dataset, name_or_id)
        if ds is None or ds.tenant_id != tenant_id:
            suggestions = closest(name_or_id, session.scalars(select(Dataset.name).where(
                Dataset.tenant_id == tenant_id)))
            raise NotFound(f"no dataset '{name_or_id}'{did_you_mean(suggestions)}", suggestions=suggestions)
    return ds


def list_datasets(session: Session, *, tenant_id: str, offset: int, limit: int) -> tuple[list[Dataset], int]:
    """The tenant's datasets by name."""
    q = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return page(session, q, Dataset.name, offset=offset, limit=limit)


def counts(session: Session, *, dataset_id: str) -> tuple[int, int]:
    """(tombstoned, erased) point counts."""
    row = session.execute(
        select(func.count(Point.tombstoned_at), func.count(Point.erased_at)).where(Point.dataset_id == dataset_id)
    ).one()
    return int(row[0]), int(row[1])


def live_rows(session: Session, *, dataset_id: str) -> list[int]:
    """Rows of points no model may train on again excluded: the training set of the next job."""
    return list(session.scalars(
        select(Point.row).where(Point.dataset_id == dataset_id, Point.tombstoned_at.is_(None)).order_by(Point.row)
    ))


def erase_cleared(session: Session, *, dataset_id: str) -> list[str]:
    """Erase the raw features of tombstoned points no model holds any more; return their ids.

    A point is cleared when every model with a live version trained before the point's tombstone
    has a final disposition for it (free, pruned, unlearned), and no open request still needs its
    features for an audit. The dataset file is rewritten without them (x zeroed, subject blanked),
    the ledger records both hashes, and the old file is deleted once the transaction commits.
    """
    ds = session.get(Dataset, dataset_id)
    candidates = list(session.scalars(select(Point).where(
        Point.dataset_id == dataset_id, Point.tombstoned_at.is_not(None), Point.erased_at.is_(None))))
    if not candidates:
        return []
    holders = session.execute(
        select(Model.id, func.min(Version.created_at)).join(Version, Version.model_id == Model.id)
        .where(Model.dataset_id == dataset_id, Version.status == VersionStatus.ACTIVE).group_by(Model.id)).all()
    pks = [p.id for p in candidates]
    final = set(session.execute(select(Disposition.model_id, Disposition.point_pk).where(
        Disposition.point_pk.in_(pks), Disposition.disposition.in_(REMOVED))).all())
    open_ = set(session.scalars(select(Disposition.point_pk).join(
        ForgetRequest, ForgetRequest.id == Disposition.request_id).where(
        Disposition.point_pk.in_(pks), ForgetRequest.status == RequestStatus.ACCEPTED)))

    def _cleared(p: Point) -> bool:
        tomb = p.tombstoned_at.replace(tzinfo=None)
        return p.id not in open_ and all(
            (model_id, p.id) in final for model_id, first in holders if first.replace(tzinfo=None) < tomb)

    erase = [p for p in candidates if _cleared(p)]
    if not erase:
        return []
    old_uri, old_sha = ds.uri, ds.sha256

    evidence.erase_rows(session, dataset_id=dataset_id, rows=[int(p.row) for p in erase])
    n_erased = session.scalar(select(func.count(Point.erased_at)).where(Point.dataset_id == dataset_id)) or 0
    new_uri = artifacts.erased_dataset_uri(ds.id, n_erased + len(erase), ds.format)
    if ds.format == "parquet":  # the rows leave the file (and are zeroed in its decoded cache)
        dest = artifacts.path_of(new_uri)
        parquet.erased_copy(artifacts.path_of(old_uri), dest, point_ids={p.point_id for p in erase},
                            rows={p.row for p in erase})
        new_sha = artifacts.sha256_file(dest)
    else:
        new_sha = npz_erasure.erased_copy(artifacts.path_of(old_uri), new_uri, rows={p.row for p in erase})
    ds.uri, ds.sha256 = new_uri, new_sha
    now = utcnow()
    for p in erase:
        p.erased_at = now
    ids = sorted(p.point_id for p in erase)
    ledger.append(session, tenant_id=ds.tenant_id, event="points.erased", subject_type="dataset", subject_id=ds.id,
                  data={"n": len(ids), "point_ids": ids if len(ids) <= 1000 else None,
                        "point_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                        "old_sha256": old_sha, "new_sha256": new_sha})
    if artifacts.written_by_lethe(old_uri):  # never a file Lethe did not write (references registered before copies)
        session.info.setdefault("delete_after_commit", []).append(old_uri)
        if ds.format == "parquet":
            session.info["delete_after_commit"].append(artifacts.dataset_cache_uri(old_uri))
    return ids


def by_reference(session: Session, *, model_id: str) -> bool:
    """Whether the dataset of a model was registered by reference (its original is outside Lethe's reach)."""
    return bool(session.scalar(select(Dataset.by_reference).join(Model, Model.dataset_id == Dataset.id)
                               .where(Model.id == model_id)))


def sweep_erasures(*, since: datetime | None = None) -> list[str]:
    """Erase every cleared point, one transaction per dataset; return the erased ids.

    Run by the relay thread every LETHE_ERASURE_INTERVAL seconds with `since` = its previous sweep: only
    datasets where a point reached a final disposition since then are looked at (points still pending in a
    job are not re-examined every sweep; the job erases what it clears when it finishes). Concurrent sweeps
    (API replicas) and jobs serialise on the tenant's ledger chain; the later one finds nothing to erase.
    """
    pending = (select(Point.id).where(Point.dataset_id == Dataset.id, Point.tombstoned_at.is_not(None),
                                      Point.erased_at.is_(None)).exists())
    query = select(Dataset.id, Dataset.tenant_id).where(pending)
    if since is not None:
        query = query.where(Dataset.id.in_(
            select(Model.dataset_id).join(Disposition, Disposition.model_id == Model.id).where(
                Disposition.updated_at >= since, Disposition.disposition.in_(REMOVED))))
    with session_scope(readonly=True) as session:
        due = session.execute(query).all()
    erased: list[str] = []
    for dataset_id, tenant_id in due:
        with session_scope() as session:
            ledger.lock_chain(session, tenant_id=tenant_id)
            erased += erase_cleared(session, dataset_id=dataset_id)
    return erased
