"""Object storage: one small protocol, two backends (S3 through `minio`, local disk).

Keys are produced by this project only (content-addressed blobs, per-scan reports and
artifacts); a client's file name never becomes a key or a path. The local backend still
refuses any key that could leave its root.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from persistence.settings import Settings, get_settings

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$")
PART_SIZE = 8 * 1024 * 1024  # S3 multipart part size (>= 5 MiB); bounds the memory an upload holds
CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """The object store failed or refused an operation."""


def validate_key(key: str) -> str:
    """Keys are relative, slash-separated, no `..`, no empty or dot-leading segments."""
    if not KEY_RE.match(key) or any(seg in (".", "..") for seg in key.split("/")) or len(key) > 900:
        raise StorageError(f"invalid object key {key!r}")
    return key


def blob_key(tenant_id: str, sha256_hex: str) -> str:
    """Content-addressed key of an uploaded file (per tenant, so deleting a tenant's data stays local)."""
    return f"tenants/{tenant_id}/blobs/sha256/{sha256_hex}"


def scan_prefix(tenant_id: str, scan_id: str) -> str:
    return f"tenants/{tenant_id}/scans/{scan_id}/"


@runtime_checkable
class ObjectStore(Protocol):
    def put_stream(self, key: str, reader: BinaryIO, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def copy(self, src: str, dst: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...
    def download(self, key: str, path: Path) -> None: ...
    def presigned_get_url(self, key: str, *, filename: str | None = None, expiry_s: int = 900) -> str | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def ping(self) -> None: ...


class LocalObjectStore:
    """Objects as files under `root` (embedded default). Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / validate_key(key)).resolve()
        if self.root not in p.parents:
            raise StorageError(f"object key {key!r} escapes the store")
        return p

    def put_stream(self, key: str, reader: BinaryIO, content_type: str = "application/octet-stream") -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        with open(path, "rb") as fh:
            self.put_stream(key, fh, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.put_stream(key, io.BytesIO(data), content_type)

    def copy(self, src: str, dst: str) -> None:
        with open(self._path(src), "rb") as fh:
            self.put_stream(dst, fh)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise StorageError(f"no object {key!r}") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        p = self._path(prefix.rstrip("/"))
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def presigned_get_url(self, key: str, *, filename: str | None = None, expiry_s: int = 900) -> str | None:
        return None  # the API streams local objects itself

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if base.is_file():
            return [prefix.rstrip("/")]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".upload-")
        )

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3ObjectStore:
    """Objects in an S3 bucket (MinIO, SeaweedFS, AWS) through the `minio` client."""

    def __init__(self, settings: Settings) -> None:
        from minio import Minio

        self.bucket = settings.s3_bucket
        kw = {
            "access_key": settings.s3_access_key.get_secret_value(),
            "secret_key": settings.s3_secret_key.get_secret_value(),
            "secure": settings.s3_secure,
            "region": settings.s3_region,
        }
        self.client = Minio(settings.s3_endpoint, **kw)
        # presigned URLs are signed for the host clients reach (the region avoids a lookup request)
        self.public_client = Minio(settings.s3_public_endpoint, **kw) if settings.s3_public_endpoint else self.client

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def put_stream(self, key: str, reader: BinaryIO, content_type: str = "application/octet-stream") -> None:
        # length=-1: multipart upload of PART_SIZE parts, aborted by minio if `reader` raises
        self.client.put_object(
            self.bucket, validate_key(key), reader, length=-1, part_size=PART_SIZE, content_type=content_type
        )

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self.client.fput_object(self.bucket, validate_key(key), str(path), content_type=content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.bucket, validate_key(key), io.BytesIO(data), len(data), content_type=content_type)

    def copy(self, src: str, dst: str) -> None:
        from minio.commonconfig import CopySource

        self.client.copy_object(self.bucket, validate_key(dst), CopySource(self.bucket, validate_key(src)))

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, validate_key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return int(self.client.stat_object(self.bucket, validate_key(key)).size or 0)

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, validate_key(key))

    def delete_prefix(self, prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        objs = [DeleteObject(k) for k in self.list_keys(prefix)]
        if objs:
            errors = list(self.client.remove_objects(self.bucket, objs))
            if errors:
                raise StorageError(f"could not delete {len(errors)} object(s) under {prefix!r}: {errors[0]}")

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        resp = self.client.get_object(self.bucket, validate_key(key))
        try:
            yield from resp.stream(chunk_size)
        finally:
            resp.close()
            resp.release_conn()

    def download(self, key: str, path: Path) -> None:
        self.client.fget_object(self.bucket, validate_key(key), str(path))

    def presigned_get_url(self, key: str, *, filename: str | None = None, expiry_s: int = 900) -> str | None:
        headers = None
        if filename:
            headers = {"response-content-disposition": f'attachment; filename="{filename}"'}
        return self.public_client.presigned_get_object(
            self.bucket, validate_key(key), expires=timedelta(seconds=expiry_s), response_headers=headers
        )

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))

    def ping(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise StorageError(f"bucket {self.bucket!r} does not exist")


def get_store(settings: Settings | None = None) -> ObjectStore:
    """The configured object store."""
    settings = settings or get_settings()
    if settings.storage == "s3":
        return S3ObjectStore(settings)
    return LocalObjectStore(settings.local_storage_dir)


class UploadPipe(io.RawIOBase):
    """A bounded byte pipe: an async producer writes, a thread running `ObjectStore.put_stream` reads.

    Holds at most `max_chunks` chunks, so a slow store applies back-pressure to the upload
    instead of letting it pile up in memory. `read(n)` blocks until n bytes or EOF, so the S3
    client assembles each part from a few large reads (not thousands of small concatenations).
    `abort()` makes the reader raise, which aborts the S3 multipart upload.
    """

    def __init__(self, max_chunks: int = 16) -> None:
        super().__init__()
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=max_chunks)
        self._buf = bytearray()
        self._eof = False
        self._lock = threading.Lock()
        self._reader_gone = threading.Event()

    def readable(self) -> bool:
        return True

    def feed(self, data: bytes) -> None:
        """Blocking put (call from a worker thread, e.g. `await asyncio.to_thread(pipe.feed, data)`).

        Raises StorageError if the reading side stopped (the store failed), instead of blocking forever.
        """
        while True:
            if self._reader_gone.is_set():
                raise StorageError("the object store stopped reading the upload")
            try:
                self._q.put(data, timeout=0.25)
                return
            except queue.Full:
                continue

    def reader_gone(self) -> None:
        """Called by the consuming thread when it stops (success or failure)."""
        self._reader_gone.set()

    def finish(self) -> None:
        self._q.put(None)

    def abort(self, exc: BaseException) -> None:
        # the queue may be full: drain it so the error reaches the reader
        while True:
            try:
                self._q.put_nowait(exc)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._q.get_nowait()

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            while not self._eof and (size < 0 or len(self._buf) < size):
                item = self._q.get()
                if item is None:
                    self._eof = True
                elif isinstance(item, BaseException):
                    raise StorageError(f"upload aborted: {item}") from item
                else:
                    self._buf += item
            if size < 0 or size >= len(self._buf):
                out, self._buf = bytes(self._buf), bytearray()
            else:
                out = bytes(self._buf[:size])
                del self._buf[:size]
            return out
