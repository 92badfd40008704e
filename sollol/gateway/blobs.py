"""`HEAD|POST /api/blobs/:digest`: blobs a client uploads before `/api/create` (`ollama create`
from a local GGUF file).

The gateway keeps each upload in a spool folder (`blob_dir`; verified against its digest while it
is written, never held in memory), and `/api/create` sends it on to the pool nodes that lack it
before the create itself is fanned out.

The spool never fills the disk: every upload, whether it declares its length or is chunked,
is counted while it is written against `max_blob_bytes` (413), the spool's `blob_quota_bytes`
and the disk's free space less `blob_min_free_bytes` (507, JSON, like a full disk). An upload
that fails for any reason leaves no file behind. A finished blob is removed
`blob_keep_after_create` seconds after a create that used it succeeded (the nodes hold it now;
the delay lets a client's next create of the same file find it), or after `blob_idle_timeout`
seconds nobody asked for it; the whole spool when the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from sollol.errors import PayloadTooLarge, RequestError, SollolError
from sollol.gateway.asgi import Receive, Scope, Send, send_body

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_FREE_SPACE_EVERY = 8 * 1024 * 1024
"""Bytes written between two looks at the disk's free space."""


class SpoolFull(SollolError):
    """The blob spool or its disk has no room for an upload (HTTP 507 Insufficient Storage)."""

    status = 507


def parse_digest(text: str) -> str:
    """`sha256:<64 hex>` from a digest as Ollama writes it; RequestError for anything else."""
    match = _DIGEST.match(text)
    if match is None:
        raise RequestError(f"invalid digest format: {text[:80]!r} (expected sha256:<64 hex>)")
    return f"sha256:{match.group(1)}"


def default_root() -> Path:
    """Where spools live unless `blob_dir` says otherwise (not /tmp: it may be memory)."""
    return Path(platformdirs.user_cache_dir("sollol")) / "blobs"


@attrs.frozen
class SpoolLimits:
    """The `max_blob_bytes`, `blob_quota_bytes`, `blob_min_free_bytes`, `blob_idle_timeout`
    and `blob_keep_after_create` config keys."""

    max_blob: int = 256 * 1024**3
    quota: int = 512 * 1024**3
    min_free: int = 1024**3
    idle_timeout: float = 3600.0
    keep_after_create: float = 60.0

    @classmethod
    def from_config(cls, config: Any) -> SpoolLimits:
        return cls(int(config["max_blob_bytes"]), int(config["blob_quota_bytes"]),
                   int(config["blob_min_free_bytes"]), float(config["blob_idle_timeout"]),
                   float(config["blob_keep_after_create"]))


class BlobSpool:
    """Uploaded blobs on disk, by digest, in a folder of this gateway run under `root`."""

    def __init__(self, root: Path | None = None, limits: SpoolLimits | None = None) -> None:
        self.root = root or default_root()
        self.limits = limits or SpoolLimits()
        self.used = 0
        """Bytes held: finished blobs and what uploads in progress have written so far."""
        self._dir: Path | None = None
        self._sizes: dict[str, int] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def path(self, digest: str) -> Path | None:
        """The spooled file for `digest`, if it was uploaded (asking keeps it another
        `blob_idle_timeout`)."""
        digest = parse_digest(digest)
        if self._dir is None or digest not in self._sizes:
            return None
        path = self._file(digest)
        if not path.is_file():  # removed by hand: forget it
            self.discard(digest)
            return None
        self._keep(digest)
        return path

    def created(self, digest: str) -> None:
        """A create that used `digest` succeeded: keep it only `blob_keep_after_create` more."""
        digest = parse_digest(digest)
        if digest in self._sizes:
            self._keep(digest, min(self.limits.keep_after_create, self.limits.idle_timeout))

    def discard(self, digest: str) -> None:
        """Remove a finished blob (a create that used it succeeded, or it sat idle)."""
        digest = parse_digest(digest)
        timer = self._expiry.pop(digest, None)
        if timer is not None:
            timer.cancel()
        size = self._sizes.pop(digest, None)
        if size is not None:
            self.used -= size
            if self._dir is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._file(digest))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer HEAD (is it here?) or POST (store it) for one digest."""
        digest = parse_digest(scope["path"].removeprefix("/api/blobs/"))
        if scope["method"] == "HEAD":
            await send_body(send, 200 if self.path(digest) else 404, b"", head=True)
            return
        declared = next((int(v) for k, v in scope["headers"]
                         if k == b"content-length" and v.isdigit()), None)
        await self._store(digest, receive, declared)
        await send_body(send, 201, b"")

    async def _store(self, digest: str, receive: Receive, declared: int | None) -> None:
        if declared is not None:
            self._check_size(declared, declared)
            self._check_quota(declared, declared)
        if self._dir is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        if declared is not None:
            self._check_disk(declared, declared)
        handle, temp = tempfile.mkstemp(dir=self._dir, prefix=".upload-")
        hasher = hashlib.sha256()
        size = 0
        next_look = 0  # the first bytes, then every _FREE_SPACE_EVERY
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError("the client went away during the upload")
                chunk = message.get("body", b"")
                self._check_size(size + len(chunk), declared)
                self._check_quota(len(chunk), declared)
                if size + len(chunk) >= next_look:  # chunked uploads declare nothing
                    self._check_disk(len(chunk), declared)
                    next_look += _FREE_SPACE_EVERY
                size += len(chunk)
                self.used += len(chunk)  # counted before the write: no upload can pass it
                hasher.update(chunk)
                _write(handle, chunk)
                if not message.get("more_body", False):
                    break
            if f"sha256:{hasher.hexdigest()}" != digest:
                raise RequestError("digest mismatch: the uploaded bytes hash to "
                                   f"sha256:{hasher.hexdigest()}, not {digest}")
            self.discard(digest)  # an upload of a blob held already replaces it
            os.replace(temp, self._file(digest))
            self._sizes[digest] = size
            size = 0  # counted from now on as a finished blob
            self._keep(digest)
        finally:
            os.close(handle)
            self.used -= size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _check_size(self, size: int, declared: int | None) -> None:
        """413 for an upload of `size` bytes (declared, or received so far) over the limit."""
        if size > self.limits.max_blob:
            what = f"{size} bytes" if declared is not None else f"at least {size} bytes"
            raise PayloadTooLarge(f"blob is {what}, over the limit of {self.limits.max_blob} "
                                  "(max_blob_bytes)")

    def _check_quota(self, more: int, declared: int | None) -> None:
        """507 when `more` bytes would take the spool past its quota."""
        if self.used + more > self.limits.quota:
            need = f"{declared} bytes" if declared is not None else "more bytes"
            raise SpoolFull(f"the blob spool holds {self.used} bytes; this upload of {need} "
                            f"would pass its quota of {self.limits.quota} (blob_quota_bytes)")

    def _check_disk(self, more: int, declared: int | None) -> None:
        """507 when the disk would keep less than `blob_min_free_bytes` after `more` bytes."""
        assert self._dir is not None
        free = shutil.disk_usage(self._dir).free
        if free - more < self.limits.min_free:
            need = "its" if declared is not None else "at least"
            raise SpoolFull(f"the disk of the blob spool has {free} bytes free; the upload "
                            f"needs {need} {more} more and must leave {self.limits.min_free} "
                            "(blob_min_free_bytes)")

    def _keep(self, digest: str, seconds: float | None = None) -> None:
        """(Re)start the timer that removes a finished blob (`blob_idle_timeout` unless told)."""
        timer = self._expiry.pop(digest, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._expiry[digest] = loop.call_later(
            self.limits.idle_timeout if seconds is None else seconds, self.discard, digest)

    def _file(self, digest: str) -> Path:
        assert self._dir is not None
        return self._dir / digest.replace(":", "-")

    def close(self) -> None:
        """Remove every spooled blob."""
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        self._sizes.clear()
        self.used = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _write(handle: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(handle, view):]
    except OSError as exc:
        reason = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "failed"
        raise SpoolFull(f"the blob spool's disk {reason} ({exc.strerror}); the upload was "
                        "removed") from None
