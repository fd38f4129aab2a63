"""Erasing rows of an .npz dataset: a copy with the erased points' features and subjects zeroed, streamed."""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from app import artifacts
from app.uploads import MAX_NPY_HEADER

ERASED_ARRAYS = ("x", "subjects")  # the rows of these are zeroed (a blank subject is all zero bytes)


def erased_copy(src: Path, uri: str, *, rows: set[int]) -> str:
    """Write a copy of the npz at `src` to `uri` with `rows` of x and subjects zeroed; its sha256.

    Streamed member by member and a few MiB of rows at a time: the API process never holds the dataset.
    """
    dest = artifacts.path_of(uri)
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", allowZip64=True) as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.compress_type = info.compress_type
            with zin.open(info) as fin, zout.open(out, "w", force_zip64=True) as fout:
                if info.filename.removesuffix(".npy") not in ERASED_ARRAYS:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                    continue
                version = np.lib.format.read_magic(fin)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0  # 3.0 differs only in a UTF-8 header: same reader for ASCII
                shape, fortran, dtype = read_header(fin, max_header_size=MAX_NPY_HEADER)
                header_len = fin.tell()
                fin.seek(0)
                fout.write(fin.read(header_len))  # the header as it was
                if fortran:  # rows are not contiguous on disk: load this one member (rare: np.save writes C order)
                    arr = np.frombuffer(fin.read(), dtype).reshape(shape, order="F").copy()
                    arr[sorted(rows)] = 0
                    fout.write(arr.tobytes(order="F"))
                    continue
                row_bytes = math.prod(shape[1:]) * dtype.itemsize
                step = max(1, (4 << 20) // max(1, row_bytes))
                for start in range(0, shape[0] if shape else 0, step):
                    chunk = bytearray(fin.read(row_bytes * min(step, shape[0] - start)))
                    for r in range(start, start + step):
                        if r in rows:
                            chunk[(r - start) * row_bytes:(r - start + 1) * row_bytes] = bytes(row_bytes)
                    fout.write(chunk)
    os.replace(tmp, dest)
    return artifacts.sha256_file(dest)
