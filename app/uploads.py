"""Untrusted bytes: request body limits (413), streamed uploads with a size cap, and npz / safetensors headers
checked against the file before anything is allocated from them (422)."""

from __future__ import annotations

import ast
import json
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import artifacts
from app.errors import MEDIA_TYPE, TooLarge, Unprocessable, problem
from app.settings import get_settings

MiB = 1024 * 1024


def store_upload(upload: UploadFile, *, uri: str) -> tuple[str, int]:
    """Copy the upload to `uri`; 413 past LETHE_MAX_UPLOAD_MB. Returns (sha256, size)."""
    limit = get_settings().max_upload_mb * MiB

    def chunks() -> Iterator[bytes]:
        seen = 0
        upload.file.seek(0)
        while chunk := upload.file.read(1 << 20):
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(f"upload exceeds {get_settings().max_upload_mb} MiB (LETHE_MAX_UPLOAD_MB)")
            yield chunk

    try:
        _, sha, size = artifacts.write_chunks(uri, chunks())
    except TooLarge:
        artifacts.delete(uri + ".tmp")
        raise
    return sha, size


# --- request bodies -------------------------------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, by Content-Length before reading, else while streaming.

    multipart/form-data (uploads) may carry LETHE_MAX_UPLOAD_MB plus 1 MiB of form fields; any other body
    LETHE_MAX_BODY_MB. Once a streamed body passes the limit the app's own answer is dropped and 413 sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def limit_for(scope: Scope) -> tuple[int, str]:
        settings = get_settings()
        ctype = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"")
        if ctype.lower().startswith(b"multipart/"):
            return settings.max_upload_mb * MiB + MiB, f"upload exceeds {settings.max_upload_mb} MiB " \
                                                        "(LETHE_MAX_UPLOAD_MB)"
        return settings.max_body_mb * MiB, f"request body exceeds {settings.max_body_mb} MiB (LETHE_MAX_BODY_MB)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self.limit_for(scope)
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_413(send, message)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise TooLarge(message)
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers to a body it could not read, the answer is 413
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _send_413(send, message)


async def _send_413(send: Send, message: str) -> None:
    body = json.dumps(problem("too-large", message)).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- npz ------------------------------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 64 * 1024


def _npy_header(fh: Any, name: str) -> tuple[tuple[int, ...], Any, int]:
    """(shape, dtype, header length) of an .npy stream, parsed without numpy allocating anything."""
    import numpy as np

    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != NPY_MAGIC:
        raise Unprocessable(f"npz member '{name}' is not an .npy array")
    major = magic[6]
    if major not in (1, 2, 3):
        raise Unprocessable(f"npz member '{name}': unsupported .npy format version {major}")
    size_fmt = "<H" if major == 1 else "<I"
    raw = fh.read(struct.calcsize(size_fmt))
    if len(raw) != struct.calcsize(size_fmt):
        raise Unprocessable(f"npz member '{name}' has a truncated header")
    (hlen,) = struct.unpack(size_fmt, raw)
    if hlen > MAX_NPY_HEADER:
        raise Unprocessable(f"npz member '{name}' has a {hlen}-byte header (at most {MAX_NPY_HEADER})")
    text = fh.read(hlen)
    try:
        header = ast.literal_eval(text.decode("utf8" if major == 3 else "latin1"))
        shape = tuple(header["shape"])
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise Unprocessable(f"npz member '{name}' has an unreadable header") from exc
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise Unprocessable(f"npz member '{name}' declares an invalid shape {shape}")
    return shape, dtype, 8 + struct.calcsize(size_fmt) + hlen


NPZ_RATIO_FLOOR = 16 * MiB  # smaller archives may expand as much as they like


def check_npz(path: Path) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Refuse npz bombs before numpy allocates: every member's declared shape must match the bytes it holds,
    the whole must expand to at most LETHE_MAX_NPZ_EXPANDED_MB, at most LETHE_MAX_NPZ_RATIO times its size.
    Returns each array's (shape, dtype) by name, read from the .npy headers alone (nothing is decompressed past
    a header)."""
    settings = get_settings()
    limit = settings.max_npz_expanded_mb * MiB
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise Unprocessable(f"not a readable npz (zip) file: {exc}") from exc
    with zf:
        members = zf.infolist()  # np.load reads any member (not only *.npy): each must be a sound .npy
        if len(members) > 1000:
            raise Unprocessable(f"npz holds {len(members)} members (at most 1000)")
        expanded = sum(i.file_size for i in members)
        packed = max(1, sum(i.compress_size for i in members))
        if expanded > limit:
            raise Unprocessable(f"npz expands to {expanded / MiB:.0f} MiB, over the "
                                f"{settings.max_npz_expanded_mb} MiB limit (LETHE_MAX_NPZ_EXPANDED_MB)")
        if expanded > NPZ_RATIO_FLOOR and expanded / packed > settings.max_npz_ratio:
            raise Unprocessable(f"npz expands {expanded / packed:.0f}x (a zip bomb?); at most "
                                f"{settings.max_npz_ratio:.0f}x (LETHE_MAX_NPZ_RATIO)")
        headers: dict[str, tuple[tuple[int, ...], Any]] = {}
        for info in members:
            try:
                with zf.open(info) as fh:
                    shape, dtype, header_len = _npy_header(fh, info.filename)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                raise Unprocessable(f"npz member '{info.filename}' cannot be read: {exc}") from exc
            headers[info.filename.removesuffix(".npy")] = (shape, dtype)
            if dtype.hasobject:
                continue  # np.load(allow_pickle=False) refuses it with its own message
            declared = math.prod(shape) * dtype.itemsize
            if declared + header_len != info.file_size:
                raise Unprocessable(
                    f"npz member '{info.filename}' declares shape {list(shape)} of {dtype} ({declared} bytes) "
                    f"but holds {max(0, info.file_size - header_len)} bytes")
    return headers


# --- safetensors ----------------------------------------------------------------------------------------------

SAFETENSORS_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                     "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
                     "C64": 8, "C128": 16}
MAX_SAFETENSORS_HEADER = 100 * MiB  # the safetensors library's own ceiling


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """Validate a safetensors header against the file before anything is read from it: the declared header
    length fits the file, and every tensor's dtype × shape equals its byte range, which lies inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise Unprocessable("weights must be a safetensors file: shorter than its 8-byte header length")
        (hlen,) = struct.unpack("<Q", raw)
        if hlen > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise Unprocessable(f"weights must be a safetensors file: header declares {hlen} bytes, "
                                f"the file holds {size - 8} after the length")
        text = fh.read(hlen)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unprocessable("weights must be a safetensors file: the header is not JSON") from exc
    if not isinstance(header, dict):
        raise Unprocessable("weights must be a safetensors file: the header is not a JSON object")
    data_len = size - 8 - hlen
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            valid = (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                     and type(begin) is int and type(end) is int and 0 <= begin <= end)
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise Unprocessable(f"weights must be a safetensors file: tensor '{name}' has a malformed entry")
        if end > data_len:
            raise Unprocessable(f"weights: tensor '{name}' lies at bytes {begin}..{end}, beyond the file's "
                                f"{data_len} data bytes")
        width = SAFETENSORS_BYTES.get(dtype)
        if width is not None and math.prod(shape) * width != end - begin:
            raise Unprocessable(f"weights: tensor '{name}' declares shape {shape} of {dtype} "
                                f"({math.prod(shape) * width} bytes) but spans {end - begin}")
    return header
