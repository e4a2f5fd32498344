"""Streaming multipart reception: each file part goes straight to disk in chunks (never held in
memory), with its sha256 computed on the way, and the limits enforced while reading:
``Content-Length`` above the request limit → 413 before reading; a file or the body growing
past its limit → 413 at that byte; an unknown file type → 415 before its first byte is stored.

Parts: ``manifest`` (JSON or YAML; a plain field or a file part, at most 1 MiB) and any number
of file parts (any field name, usually ``files``) whose ``filename`` is the relative path the
manifest refers to."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from hiddenscope_ingest.errors import InvalidManifest, TooLarge, UnsupportedFormat
from hiddenscope_ingest.loaders import detect_format
from hiddenscope_ingest.manifest import check_relative
from hiddenscope_ingest.settings import IngestSettings

MAX_MANIFEST_BYTES = 1 << 20


@dataclass
class ReceivedFile:
    name: str
    path: Path
    size: int
    sha256: str


@dataclass
class Received:
    manifest: bytes
    files: dict[str, ReceivedFile] = field(default_factory=dict)


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.field: str = ""
        self.filename: str | None = None
        self.out: IO[bytes] | None = None
        self.hash = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()


class _Receiver:
    def __init__(self, dest: Path, settings: IngestSettings) -> None:
        self.dest = dest
        self.settings = settings
        self.total = 0
        self.part: _Part | None = None
        self.header_field = b""
        self.header_value = b""
        self.manifest: bytes | None = None
        self.files: dict[str, ReceivedFile] = {}

    # python-multipart callbacks (synchronous)
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        assert self.part is not None
        self.part.headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        part = self.part
        assert part is not None
        disp, params = parse_options_header(part.headers.get("content-disposition", b""))
        if disp != b"form-data":
            raise InvalidManifest("every multipart part needs Content-Disposition: form-data")
        part.field = params.get(b"name", b"").decode("utf-8", errors="replace")
        raw_filename = params.get(b"filename")
        if part.field == "manifest":
            return
        if raw_filename is None:
            raise InvalidManifest(
                f"unexpected form field {part.field!r}: send 'manifest' and file parts"
            )
        try:
            name = check_relative(raw_filename.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise InvalidManifest(f"bad file name {raw_filename[:100]!r}") from None
        if name in self.files:
            raise InvalidManifest(f"the file {name!r} is sent twice")
        if len(self.files) >= self.settings.max_files:
            raise TooLarge(f"more than {self.settings.max_files} files in one upload")
        fmt = detect_format(name)  # 415 before any byte is stored
        if fmt in ("yaml", "json") and not name.endswith(("lstm.yml", "lstm.yaml")):
            # configs travel inside archives or as the manifest part
            raise UnsupportedFormat(f"{name}: send the manifest as the 'manifest' part")
        part.filename = name
        target = self.dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        part.out = open(target, "xb")  # noqa: SIM115 - closed in on_part_end / cleanup

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        assert part is not None
        n = end - start
        self.total += n
        if self.total > self.settings.max_upload_bytes:
            raise TooLarge(f"the upload exceeds {self.settings.max_upload_bytes} bytes")
        if part.out is None:
            part.buffer += data[start:end]
            if len(part.buffer) > MAX_MANIFEST_BYTES:
                raise TooLarge("the manifest part exceeds 1 MiB")
            return
        part.size += n
        if part.size > self.settings.max_file_bytes:
            raise TooLarge(f"{part.filename}: exceeds {self.settings.max_file_bytes} bytes")
        chunk = data[start:end]
        part.hash.update(chunk)
        part.out.write(chunk)

    def on_part_end(self) -> None:
        part = self.part
        assert part is not None
        if part.out is not None:
            part.out.flush()
            part.out.close()
            assert part.filename is not None
            self.files[part.filename] = ReceivedFile(
                name=part.filename,
                path=self.dest / part.filename,
                size=part.size,
                sha256=part.hash.hexdigest(),
            )
        elif part.field == "manifest":
            if self.manifest is not None:
                raise InvalidManifest("the manifest is sent twice")
            self.manifest = bytes(part.buffer)
        self.part = None

    def close_open(self) -> None:
        if self.part is not None and self.part.out is not None and not self.part.out.closed:
            self.part.out.close()


async def receive_multipart(request: Request, dest: Path, settings: IngestSettings) -> Received:
    """Stream a ``multipart/form-data`` body into ``dest`` (created here; removed on error)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UnsupportedFormat("expected multipart/form-data with a boundary")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_upload_bytes:
        raise TooLarge(
            f"the upload of {length} bytes exceeds the limit of {settings.max_upload_bytes}"
        )
    dest.mkdir(parents=True, exist_ok=False)
    receiver = _Receiver(dest, settings)
    callbacks: Any = {
        "on_part_begin": receiver.on_part_begin,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            if chunk:
                # file writes happen in the callbacks: keep them off the event loop
                await anyio.to_thread.run_sync(parser.write, chunk)
        await anyio.to_thread.run_sync(parser.finalize)
        if receiver.manifest is None:
            raise InvalidManifest("the upload has no 'manifest' part")
        await anyio.to_thread.run_sync(_fsync_tree, dest)
    except ClientDisconnect:
        receiver.close_open()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except BaseException as exc:
        receiver.close_open()
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, ValueError) and not hasattr(exc, "status"):
            raise InvalidManifest(f"malformed multipart body: {exc}") from None
        raise
    return Received(manifest=receiver.manifest, files=receiver.files)


def _fsync_tree(root: Path) -> None:
    """Make the upload durable before a job refers to it."""
    import os

    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
