"""Parquet datasets: the format, its index columns, decoding features into a memory-mapped cache, erasure.

Torch-free (pyarrow, numpy, Pillow), so the API imports it to check a file's schema and index columns and to
rewrite a file without erased rows, and the worker to decode features. Every read goes through
`pyarrow.dataset` a batch at a time (in file order: `use_threads=False`), so memory is bounded by the batch.

The format: columns `point_id` (unique non-empty string), `label` (integer ≥ 0), optional `subject_id` (string,
null = no subject), optional `split` (`train`/`test`, default train) and exactly one feature column: `x` (a
fixed-size list of floats; the sample shape as JSON in the schema metadata key `lethe.shape`), `image` (PNG or
JPEG bytes, decoded to C×H×W floats in [0, 1]) or `text` (strings, for plugins whose `encode` tokenises them).

The cache (`<file>.features/`: x.npy, y.npy and x_test.npy, y_test.npy when there is a test split) is what the
engine trains on: x holds train row r of the file (in file order, r = the point's `row`) at x[r], so the engine
reads it with mmap and touches only the pages of the rows it uses.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

MAGIC = b"PAR1"
SHAPE_KEY = b"lethe.shape"
FEATURES = ("x", "image", "text")
INDEX = ("point_id", "label", "subject_id", "split")
BATCH_ROWS = 4096
MAX_ID_CHARS = 200  # points.point_id
MAX_BAD_NAMED = 20  # bad rows named in a failure message; the count covers the rest
CACHE_SUFFIX = ".features"
IMAGE_FORMATS = ("PNG", "JPEG")


class ParquetError(ValueError):
    """The file is not a Parquet dataset Lethe accepts; the message names the problem."""


@dataclass
class Index:
    """What the API records of a Parquet dataset: its train points' ids and subjects, and its shape.

    Ids and subjects stay Arrow string arrays (a few bytes a point, not a Python object each): the API turns them
    into Python values a slice at a time as it records the points (`slices`)."""

    ids: pa.ChunkedArray
    subjects: pa.ChunkedArray | None
    n_test: int
    n_classes: int
    features: str
    input_shape: list[int]

    def slices(self, size: int) -> Iterator[tuple[int, list[str], list[str | None]]]:
        """(first row, ids, subjects) of the train points, `size` at a time, in row order."""
        for start in range(0, len(self.ids), size):
            ids = self.ids.slice(start, size).to_pylist()
            subjects = (self.subjects.slice(start, size).to_pylist() if self.subjects is not None
                        else [None] * len(ids))
            yield start, ids, subjects


@dataclass
class DecodeReport:
    n_train: int = 0
    n_test: int = 0
    n_bad: int = 0
    bad: list[str] = field(default_factory=list)  # the first MAX_BAD_NAMED, "point_id: why"

    def add(self, point_id: str, why: str) -> None:
        self.n_bad += 1
        if len(self.bad) < MAX_BAD_NAMED:
            self.bad.append(f"{point_id}: {why}")

    def message(self) -> str:
        more = f" (and {self.n_bad - len(self.bad)} more)" if self.n_bad > len(self.bad) else ""
        return f"{self.n_bad} row(s) could not be decoded: " + "; ".join(self.bad) + more


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == MAGIC


def cache_of(path: Path) -> Path:
    """Where the decoded features of the Parquet file at `path` live."""
    return path.with_name(path.name + CACHE_SUFFIX)


def _open(path: Path) -> pads.Dataset:
    try:
        return pads.dataset(path, format="parquet")
    except (pa.ArrowException, OSError) as exc:
        raise ParquetError(f"not a readable Parquet file: {exc}") from None


def _batches(data: pads.Dataset, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    try:
        yield from data.to_batches(columns=columns, batch_size=batch_rows, use_threads=False)
    except pa.ArrowException as exc:
        raise ParquetError(f"the Parquet file cannot be read: {exc}") from None


def _feature(schema: pa.Schema) -> str:
    present = [f for f in FEATURES if f in schema.names]
    if len(present) != 1:
        raise ParquetError(f"a Parquet dataset needs exactly one feature column of {', '.join(FEATURES)}; "
                           f"found {present or 'none'}")
    return present[0]


def _x_shape(schema: pa.Schema) -> list[int]:
    typ = schema.field("x").type
    if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type):
        raise ParquetError(f"column x must be a fixed-size list of floats; it is {typ}")
    raw = (schema.metadata or {}).get(SHAPE_KEY)
    if raw is None:
        return [typ.list_size]
    try:
        shape = json.loads(raw)
        ok = isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)
    except ValueError:
        ok = False
    if not ok:
        raise ParquetError(f"schema metadata {SHAPE_KEY.decode()} must be a JSON list of positive integers; "
                           f"it is {raw[:100]!r}")
    if math.prod(shape) != typ.list_size:
        raise ParquetError(f"column x holds {typ.list_size} values per row but {SHAPE_KEY.decode()} {shape} "
                           f"holds {math.prod(shape)}")
    return shape


def _check_schema(schema: pa.Schema) -> str:
    missing = [c for c in ("point_id", "label") if c not in schema.names]
    if missing:
        raise ParquetError(f"the Parquet file lacks required column(s) {', '.join(missing)} "
                           "(need point_id, label and one of x, image, text)")
    kinds = {"point_id": pa.types.is_string, "label": pa.types.is_integer, "subject_id": pa.types.is_string,
             "split": pa.types.is_string, "image": pa.types.is_binary, "text": pa.types.is_string}
    large = {"point_id": pa.types.is_large_string, "subject_id": pa.types.is_large_string,
             "split": pa.types.is_large_string, "image": pa.types.is_large_binary, "text": pa.types.is_large_string}
    for name, check in kinds.items():
        if name in schema.names:
            typ = schema.field(name).type
            if not (check(typ) or (name in large and large[name](typ))):
                want = "integers" if name == "label" else "bytes" if name == "image" else "strings"
                raise ParquetError(f"column {name} must hold {want}; it is {typ}")
    return _feature(schema)


def _first_image_shape(data: pads.Dataset) -> list[int]:
    """C, H, W of the first image (its header only): every other image must match (the validation job checks)."""
    from PIL import Image

    for batch in _batches(data, ["image"], batch_rows=16):
        for raw in batch.column(0).to_pylist():
            if raw is None:
                continue
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    return [_channels(img.mode), img.height, img.width]
            except (OSError, ValueError) as exc:
                raise ParquetError(f"the first image is not a PNG or JPEG image: {exc}") from None
    raise ParquetError("column image holds no image")


def _channels(mode: str) -> int:
    return 1 if mode in ("1", "L", "I", "I;16", "F") else 3


def read_index(path: Path) -> Index:
    """Check the schema and read the index columns (ids, labels, subjects, splits); ParquetError naming the problem.

    Only the index columns are scanned (column projection: feature bytes are not read), a batch at a time."""
    data = _open(path)
    features = _check_schema(data.schema)
    columns = [c for c in INDEX if c in data.schema.names]
    every: list[pa.Array] = []  # every row's point_id (uniqueness covers the test split too)
    ids: list[pa.Array] = []  # the train rows'
    subjects: list[pa.Array] | None = [] if "subject_id" in columns else None
    n_test, max_label, row = 0, -1, 0
    for batch in _batches(data, columns):
        cols = dict(zip(batch.schema.names, batch.columns, strict=True))
        for name in ("point_id", "label", "split"):
            if name in cols and cols[name].null_count:
                first = row + pc.index(pc.is_null(cols[name]), True).as_py()
                raise ParquetError(f"column {name} has nulls (first at row {first})")
        if len(cols["label"]) and pc.min(cols["label"]).as_py() < 0:
            raise ParquetError("column label must be non-negative integers")
        lengths = pc.utf8_length(cols["point_id"])
        if len(lengths) and (pc.min(lengths).as_py() == 0 or pc.max(lengths).as_py() > MAX_ID_CHARS):
            raise ParquetError(f"point_id must be non-empty strings of at most {MAX_ID_CHARS} characters")
        train = None
        if "split" in cols:
            bad = pc.invert(pc.is_in(cols["split"], value_set=pa.array(["train", "test"])))
            if pc.any(bad).as_py():
                at = pc.index(bad, True).as_py()
                raise ParquetError(f"column split must be 'train' or 'test'; row {row + at} has "
                                   f"{cols['split'][at].as_py()!r}")
            train = pc.not_equal(cols["split"], "test")
            n_test += int(pc.sum(pc.invert(train)).as_py() or 0)
        max_label = max(max_label, int(pc.max(cols["label"]).as_py()) if len(batch) else -1)
        every.append(cols["point_id"])
        ids.append(cols["point_id"] if train is None else cols["point_id"].filter(train))
        if subjects is not None:
            subjects.append(cols["subject_id"] if train is None else cols["subject_id"].filter(train))
        row += len(batch)
    _unique(pa.chunked_array(every, type=data.schema.field("point_id").type))
    train_ids = pa.chunked_array(ids, type=data.schema.field("point_id").type)
    if not len(train_ids):
        raise ParquetError("the dataset needs at least one train row")
    shape = (_x_shape(data.schema) if features == "x" else _first_image_shape(data) if features == "image"
             else [])
    train_subjects = (pa.chunked_array(subjects, type=data.schema.field("subject_id").type)
                      if subjects is not None else None)
    if train_subjects is not None and train_subjects.null_count == len(train_subjects):
        train_subjects = None
    return Index(ids=train_ids, subjects=train_subjects, n_test=n_test, n_classes=max_label + 1,
                 features=features, input_shape=shape)


def _unique(ids: pa.ChunkedArray) -> None:
    """ParquetError naming a point id that occurs more than once. Sorted in Arrow, equal neighbours compared: a
    few bytes a point (Arrow's hash kernels took ~170 bytes a point, Python strings in a set more)."""
    if len(ids) < 2:
        return
    ordered = ids.take(pc.sort_indices(ids)).combine_chunks()
    same = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    if pc.any(same).as_py():
        raise ParquetError(f"point_id must be unique; {ordered[pc.index(same, True).as_py()].as_py()!r} occurs "
                           "more than once")


# ----------------------------------------------------------------------------- decoding (the worker)

def _decode_images(values: list[bytes | None], ids: list[str], shape: list[int],
                   report: DecodeReport) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    out = np.zeros((len(values), c, h, w), np.float32)
    for i, raw in enumerate(values):
        if raw is None:
            report.add(ids[i], "no image (null)")
            continue
        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.format not in IMAGE_FORMATS:
                    report.add(ids[i], f"a {img.format} image, not PNG or JPEG")
                    continue
                if (img.height, img.width) != (h, w):
                    report.add(ids[i], f"image is {img.width}x{img.height}, the dataset's are {w}x{h}")
                    continue
                pixels = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            report.add(ids[i], f"not a decodable PNG or JPEG image ({type(exc).__name__})")
            continue
        out[i] = (pixels[None] if c == 1 else pixels.transpose(2, 0, 1)) / 255.0
    return out


def _decode_x(column: pa.Array, ids: list[str], shape: list[int], report: DecodeReport) -> np.ndarray:
    n = len(column)
    out = np.zeros((n, *shape), np.float32)
    valid = np.ones(n, bool)
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        present = column.filter(pa.array(valid)) if not valid.all() else column
        values = present.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        # a null inside a list flattens to NaN: caught with the non-finite values below
        out[valid] = values.reshape((int(valid.sum()), *shape))
    finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
    for i in np.flatnonzero(~valid | ~finite):
        report.add(ids[i], "no features (null)" if not valid[i] else "features hold NaN or infinity")
    return out


def _decode(features: str, cols: dict[str, pa.Array], shape: list[int], dtype: np.dtype,
            report: DecodeReport) -> np.ndarray:
    """One batch's feature column decoded to the cache's dtype; rows that do not decode go in the report."""
    ids = cols["point_id"].to_pylist()
    if features == "image":
        return _decode_images(cols["image"].to_pylist(), ids, shape, report)
    if features == "x":
        return _decode_x(cols["x"], ids, shape, report)
    texts = cols["text"].to_pylist()
    for i in (i for i, t in enumerate(texts) if t is None):
        report.add(ids[i], "no text (null)")
    return np.array([t or "" for t in texts], dtype=dtype)


def build_cache(path: Path, *, features: str, shape: list[int], n_train: int, n_test: int,
                progress: Callable[[float], None] = lambda _: None, batch_rows: int = BATCH_ROWS) -> DecodeReport:
    """Decode every row of the Parquet file at `path` into its cache (written whole or not at all).

    A batch of rows at a time into .npy files opened as memory maps, so memory stays bounded by the batch. Rows
    that do not decode are named in the report and the cache is not kept."""
    data = _open(path)
    cache = cache_of(path)
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    columns = ["point_id", "label", features] + (["split"] if "split" in data.schema.names else [])
    report = DecodeReport()
    if features == "text":  # fixed-width strings (mmap-able): the longest text sets the width
        width = max((pc.max(pc.utf8_length(b.column(0))).as_py() or 1 for b in _batches(data, ["text"])
                     if len(b)), default=1)
        dtype: np.dtype = np.dtype(f"<U{width}")
    else:
        dtype = np.dtype(np.float32)
    sets = {"": n_train, "_test": n_test}
    out = {part: (np.lib.format.open_memmap(tmp / f"x{part}.npy", "w+", dtype, (n, *shape)),
                  np.lib.format.open_memmap(tmp / f"y{part}.npy", "w+", np.int64, (n,)))
           for part, n in sets.items() if n}
    at = dict.fromkeys(sets, 0)
    total = max(1, n_train + n_test)
    for batch in _batches(data, columns, batch_rows):
        cols = dict(zip(batch.schema.names, batch.columns, strict=True))
        x = _decode(features, cols, shape, dtype, report)
        y = cols["label"].to_numpy(zero_copy_only=False).astype(np.int64)
        test = (pc.equal(cols["split"], "test").to_numpy(zero_copy_only=False) if "split" in cols
                else np.zeros(len(batch), bool))
        for part, mask in (("", ~test), ("_test", test)):
            k = int(mask.sum())
            if k and part in out:
                xs, ys = out[part]
                xs[at[part]:at[part] + k], ys[at[part]:at[part] + k] = x[mask], y[mask]
            at[part] += k
        progress(sum(at.values()) / total)
    if (at[""], at["_test"]) != (n_train, n_test):
        report.add("(file)", f"holds {at['']} train and {at['_test']} test rows; {n_train} and {n_test} were "
                              "registered")
    for xs, ys in out.values():
        xs.flush()
        ys.flush()
    del out
    if report.n_bad:
        shutil.rmtree(tmp, ignore_errors=True)
        return report
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    report.n_train, report.n_test = n_train, n_test
    return report


def load_cache(path: Path) -> dict[str, np.ndarray]:
    """The decoded arrays of the Parquet file at `path`, memory-mapped read-only."""
    cache = cache_of(path)
    return {f.stem: np.load(f, mmap_mode="r") for f in sorted(cache.glob("*.npy"))}


# ----------------------------------------------------------------------------- erasure (the API)

def erased_copy(src: Path, dest: Path, *, point_ids: set[str], rows: set[int]) -> None:
    """Write the Parquet file at `src` to `dest` without the rows of `point_ids`, and its cache with train `rows`
    of x zeroed (rows keep their positions there: a point's row is its index). Streamed a batch at a time."""
    data = _open(src)
    tmp = dest.with_name(dest.name + ".tmp")
    drop = pa.array(sorted(point_ids), type=data.schema.field("point_id").type)
    with pq.ParquetWriter(tmp, data.schema) as writer:  # the schema keeps its metadata (lethe.shape)
        for batch in _batches(data, data.schema.names):
            writer.write_batch(batch.filter(pc.invert(pc.is_in(batch.column("point_id"), value_set=drop))))
    old, new = cache_of(src), cache_of(dest)
    new_tmp = new.with_name(new.name + ".tmp")
    shutil.rmtree(new_tmp, ignore_errors=True)
    new_tmp.mkdir(parents=True)
    zeroed = sorted(rows)
    for f in sorted(old.glob("*.npy")):
        arr = np.load(f, mmap_mode="r")
        copy = np.lib.format.open_memmap(new_tmp / f.name, "w+", arr.dtype, arr.shape)
        step = max(1, (4 << 20) // max(1, arr[:1].nbytes))
        for start in range(0, len(arr), step):
            copy[start:start + step] = arr[start:start + step]
        if f.stem == "x" and zeroed:
            copy[zeroed] = np.zeros((), arr.dtype)
        copy.flush()
        del copy, arr
    shutil.rmtree(new, ignore_errors=True)
    os.replace(new_tmp, new)
    os.replace(tmp, dest)
