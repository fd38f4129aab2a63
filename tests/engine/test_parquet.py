"""The Parquet format's engine side: decoding into the memory-mapped cache (x, image, text), bad rows named,
bounded batches, and erasure that drops rows from the file and zeroes them in the cache."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.factories import parquet_bytes
from workers.engine import parquet


def _write(tmp_path: Path, data: bytes, name: str = "d.parquet") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_x_features_decode_into_a_read_only_memory_map_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path, parquet_bytes(n=30, n_test=10, features="x", side=4))
    index = parquet.read_index(path)
    assert index.features == "x" and index.input_shape == [1, 4, 4] and len(index.ids) == 30
    report = parquet.build_cache(path, features="x", shape=index.input_shape, n_train=30, n_test=10,
                                 batch_rows=7)  # batches that straddle the train/test boundary
    assert report.n_bad == 0
    cache = parquet.load_cache(path)
    table = pq.read_table(path)
    flat = np.stack(table.column("x").to_numpy(zero_copy_only=False)).reshape(40, 1, 4, 4)
    assert isinstance(cache["x"], np.memmap) and not cache["x"].flags.writeable
    np.testing.assert_array_equal(cache["x"], flat[:30])
    np.testing.assert_array_equal(cache["x_test"], flat[30:])
    np.testing.assert_array_equal(np.concatenate([cache["y"], cache["y_test"]]), table.column("label").to_numpy())


def test_bad_rows_are_named_and_no_cache_is_kept(tmp_path: Path) -> None:
    def spoil(c: dict) -> None:
        values = c["x"].flatten().to_numpy().copy()
        values[3 * 16] = np.nan
        c["x"] = pa.FixedSizeListArray.from_arrays(pa.array(values), 16)

    path = _write(tmp_path, parquet_bytes(n=30, n_test=0, features="x", side=4, mutate=spoil))
    report = parquet.build_cache(path, features="x", shape=[1, 4, 4], n_train=30, n_test=0)
    assert report.n_bad == 1 and report.bad == ["p0003: features hold NaN or infinity"]
    assert not parquet.cache_of(path).exists()


def test_text_rows_are_cached_as_fixed_width_strings(tmp_path: Path) -> None:
    table = pa.table({"point_id": ["a", "b", "c"], "label": pa.array([0, 1, 0], pa.int64()),
                      "text": ["short", "a longer sentence", "mid text"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = _write(tmp_path, buf.getvalue())
    index = parquet.read_index(path)
    assert index.features == "text" and index.input_shape == [] and index.subjects is None
    assert parquet.build_cache(path, features="text", shape=[], n_train=3, n_test=0).n_bad == 0
    assert parquet.load_cache(path)["x"].tolist() == ["short", "a longer sentence", "mid text"]


def test_an_erased_copy_drops_the_rows_from_the_file_and_zeroes_them_in_the_cache(tmp_path: Path) -> None:
    src = _write(tmp_path, parquet_bytes(n=40, n_test=10))
    index = parquet.read_index(src)
    parquet.build_cache(src, features="image", shape=index.input_shape, n_train=40, n_test=10)
    dest = tmp_path / "d-e2.parquet"
    parquet.erased_copy(src, dest, point_ids={"p0005", "p0006"}, rows={5, 6})
    kept = pq.read_table(dest)
    assert kept.num_rows == 48 and not {"p0005", "p0006"} & set(kept.column("point_id").to_pylist())
    assert kept.schema.metadata == pq.read_table(src).schema.metadata
    old, new = parquet.load_cache(src), parquet.load_cache(dest)
    assert not new["x"][5:7].any() and old["x"][5:7].any()
    np.testing.assert_array_equal(new["x"][7:], old["x"][7:])
    np.testing.assert_array_equal(new["x_test"], old["x_test"])
    # the erased images' bytes are nowhere in the new file
    erased = pq.read_table(src).filter(pa.compute.is_in(pq.read_table(src).column("point_id"),
                                                        value_set=pa.array(["p0005"]))).column("image")[0].as_py()
    assert erased not in dest.read_bytes()


@pytest.mark.parametrize(("meta", "expected"), [
    ("[0, 4]", "must be a JSON list of positive integers"), ("nope", "must be a JSON list"),
    ("[2, 9]", "holds 16 values per row but lethe.shape [2, 9] holds 18")])
def test_a_bad_shape_is_named(tmp_path: Path, meta: str, expected: str) -> None:
    path = _write(tmp_path, parquet_bytes(n=10, n_test=0, features="x", side=4, shape_meta=meta))
    with pytest.raises(parquet.ParquetError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parquet.read_index(path)
