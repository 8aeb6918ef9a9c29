"""Streaming multipart parsing of POST /v1/scans: files go to object storage while they arrive.

Starlette's `request.form()` spools files to temporary files and only returns after the whole
body is read, so a 1 GB upload would sit on the API's disk before we could refuse it. Instead
the body (`request.stream()`) is fed to python-multipart's streaming `MultipartParser`; each
file part is hashed (sha256) and piped, through a bounded queue, into a thread running
`ObjectStore.put_stream` (an S3 multipart upload or an atomic local write) under a temporary
key. Memory stays bounded by the queue and one S3 part; the size limit is enforced on the
running count, so 413 is answered while the client is still sending. After the body ends the
temporary objects are moved to content-addressed keys. Any failure removes what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError
from persistence.models import new_id
from persistence.settings import Settings
from persistence.storage import ObjectStore, UploadPipe, blob_key

FEED_BYTES = 1024 * 1024  # hand the store thread 1 MiB at a time
MODEL_SUFFIXES = frozenset({".onnx", ".safetensors", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".pt2", ".zip"})
TARGET_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".wav", ".npy"})
FIELDS = ("model", "targets", "config")


def display_name(raw: str | None) -> str:
    """A client file name made safe to *show* (never used as a path): basename, no control chars."""
    if not raw:
        return "upload"
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C")
    return name.strip()[:200] or "upload"


def safe_suffix(name: str, allowed: frozenset[str], default: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in allowed else default


class BlobUpload:
    """One file part streaming to a temporary object, hashed on the way."""

    def __init__(self, store: ObjectStore, tenant_id: str, field_name: str, filename: str, limit: int) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.field_name = field_name
        self.filename = filename
        self.limit = limit
        self.tmp_key = f"tenants/{tenant_id}/uploads/{new_id()}"
        self.size = 0
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._pipe = UploadPipe(max_chunks=8)
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        # a dedicated thread (not the default executor) so many parallel uploads cannot starve each other
        self._thread = threading.Thread(target=self._consume, name=f"upload-{self.tmp_key[-8:]}", daemon=True)
        self._thread.start()
        self.sha256: str | None = None
        self.final_key: str | None = None
        self.created_final = False

    def _consume(self) -> None:
        try:
            self.store.put_stream(self.tmp_key, self._pipe)  # type: ignore[arg-type]
            self._loop.call_soon_threadsafe(_resolve, self._done, None)
        except BaseException as exc:  # reported to the request when it awaits the upload
            self._loop.call_soon_threadsafe(_resolve, self._done, exc)
        finally:
            self._pipe.reader_gone()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ApiError(
                413,
                "payload_too_large",
                f"{self.field_name} is larger than the limit of {self.limit} bytes",
                {"field": self.field_name, "limit_bytes": self.limit},
            )
        self._hash.update(data)
        self._buf += data
        if len(self._buf) >= FEED_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._buf:
            chunk, self._buf = bytes(self._buf), bytearray()
            if self._done.done():  # the store failed early
                await self._done
            await asyncio.to_thread(self._pipe.feed, chunk)

    async def close(self) -> None:
        await self._flush()
        self._pipe.finish()
        await self._done
        self.sha256 = self._hash.hexdigest()

    async def abort(self) -> None:
        self._pipe.abort(RuntimeError("upload aborted"))
        with contextlib.suppress(Exception):  # the abort itself is what made it fail
            await self._done
        await asyncio.to_thread(self.store.delete, self.tmp_key)

    def finalize(self) -> None:
        """Move the temporary object to its content-addressed key (sync; call in a thread)."""
        assert self.sha256 is not None
        self.final_key = blob_key(self.tenant_id, self.sha256)
        if not self.store.exists(self.final_key):
            self.store.copy(self.tmp_key, self.final_key)
            self.created_final = True
        self.store.delete(self.tmp_key)

    def discard(self) -> None:
        """Undo `finalize` / the temporary object (sync). A content key that existed before is kept."""
        self.store.delete(self.tmp_key)
        if self.created_final and self.final_key:
            self.store.delete(self.final_key)


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


@dataclass
class ParsedUpload:
    model: BlobUpload
    targets: list[BlobUpload]
    config_json: bytes | None

    @property
    def blobs(self) -> list[BlobUpload]:
        return [self.model, *self.targets]


@dataclass
class _PartState:
    headers: dict[str, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)


async def receive_upload(request: Request, settings: Settings, store: ObjectStore, tenant_id: str) -> ParsedUpload:
    """Parse and store the multipart body of POST /v1/scans. Raises ApiError (and leaves nothing behind)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with parts model, targets, config")
    if len(boundary) > 70:  # RFC 2046's limit; python-multipart raises (outside our parse loop) past 256
        raise ApiError(400, "malformed_multipart", "multipart boundary longer than 70 characters")
    max_total = (
        settings.max_model_bytes + settings.max_targets * settings.max_target_bytes + settings.max_config_bytes + 65536
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total:
        raise ApiError(
            413, "payload_too_large", f"request body larger than {max_total} bytes", {"limit_bytes": max_total}
        )

    events: list[tuple[str, Any]] = []
    part = _PartState()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[bytes(part.header_field).lower().decode("latin-1")] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        events.append(("begin", dict(part.headers)))
        part.headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        events.append(("end", None))

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    model: BlobUpload | None = None
    targets: list[BlobUpload] = []
    config = bytearray()
    saw_config = False
    current: BlobUpload | str | None = None  # a BlobUpload, "config", or None between parts
    open_blobs: list[BlobUpload] = []

    async def handle(kind: str, value: Any) -> None:
        nonlocal model, current, saw_config
        if kind == "begin":
            _, disp = parse_options_header(value.get("content-disposition", b""))
            name = disp.get(b"name", b"").decode("utf-8", "replace")
            filename = display_name(disp.get(b"filename", b"").decode("utf-8", "replace") or None)
            if name == "model":
                if model is not None:
                    raise ApiError(422, "invalid_request", "send exactly one `model` part")
                model = BlobUpload(store, tenant_id, "model", filename, settings.max_model_bytes)
                open_blobs.append(model)
                current = model
            elif name in ("targets", "targets[]", "target"):
                if len(targets) >= settings.max_targets:
                    raise ApiError(413, "too_many_targets", f"at most {settings.max_targets} target hints")
                blob = BlobUpload(store, tenant_id, "targets", filename, settings.max_target_bytes)
                targets.append(blob)
                open_blobs.append(blob)
                current = blob
            elif name == "config":
                if saw_config:
                    raise ApiError(422, "invalid_request", "send at most one `config` part")
                saw_config = True
                current = "config"
            else:
                raise ApiError(422, "invalid_request", f"unexpected form field {name[:64]!r}; expected one of {FIELDS}")
        elif kind == "data":
            if isinstance(current, BlobUpload):
                await current.write(value)
            elif current == "config":
                config.extend(value)
                if len(config) > settings.max_config_bytes:
                    raise ApiError(413, "payload_too_large", f"config larger than {settings.max_config_bytes} bytes")
        elif kind == "end":
            if isinstance(current, BlobUpload):
                await current.close()
            current = None

    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                batch, events[:] = list(events), []
                for kind, value in batch:
                    await handle(kind, value)
            parser.finalize()
        except ClientDisconnect as exc:
            raise ApiError(400, "client_disconnected", "the client went away during the upload") from exc
        except ApiError:
            raise
        except (FormParserError, ValueError) as exc:
            raise ApiError(400, "malformed_multipart", f"malformed multipart body: {exc}") from exc
        except Exception as exc:  # the object store failed while we were writing to it
            raise ApiError(503, "storage_unavailable", f"could not store the upload: {type(exc).__name__}") from exc
        if model is None:
            raise ApiError(422, "invalid_request", "the `model` file part is required")
        if current is not None or any(b.sha256 is None for b in open_blobs):
            raise ApiError(400, "malformed_multipart", "the multipart body ended inside a part")
    except BaseException:
        await asyncio.gather(*(b.abort() for b in open_blobs), return_exceptions=True)
        raise
    return ParsedUpload(model=model, targets=targets, config_json=bytes(config) if saw_config else None)
