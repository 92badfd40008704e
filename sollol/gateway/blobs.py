"""`HEAD|POST /api/blobs/:digest`: blobs a client uploads before `/api/create` (`ollama create`
from a local GGUF file).

The gateway keeps each upload in a spool folder (`blob_dir`; verified against its digest while it
is written, never held in memory, at most `max_blob_bytes`), and `/api/create` sends it on to
the pool nodes that lack it before the create itself is fanned out. The spool is removed when
the gateway stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import platformdirs

from sollol.errors import PayloadTooLarge, RequestError
from sollol.gateway.asgi import Receive, Scope, Send, send_body

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def parse_digest(text: str) -> str:
    """`sha256:<64 hex>` from a digest as Ollama writes it; RequestError for anything else."""
    match = _DIGEST.match(text)
    if match is None:
        raise RequestError(f"invalid digest format: {text[:80]!r} (expected sha256:<64 hex>)")
    return f"sha256:{match.group(1)}"


def default_root() -> Path:
    """Where spools live unless `blob_dir` says otherwise (not /tmp: it may be memory)."""
    return Path(platformdirs.user_cache_dir("sollol")) / "blobs"


class BlobSpool:
    """Uploaded blobs on disk, by digest, in a folder of this gateway run under `root`."""

    def __init__(self, root: Path | None = None, limit: int = 256 * 1024**3) -> None:
        self.root = root or default_root()
        self.limit = limit
        self._dir: Path | None = None

    def path(self, digest: str) -> Path | None:
        """The spooled file for `digest`, if it was uploaded."""
        if self._dir is None:
            return None
        path = self._dir / parse_digest(digest).replace(":", "-")
        return path if path.is_file() else None

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
        if declared is not None and declared > self.limit:
            raise PayloadTooLarge(f"blob is {declared} bytes, over the limit of {self.limit} "
                                  "(max_blob_bytes)")
        if self._dir is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        if declared is not None and declared > shutil.disk_usage(self._dir).free:
            raise PayloadTooLarge(f"blob is {declared} bytes, more than the free space in "
                                  f"{self._dir} (blob_dir)")
        final = self._dir / digest.replace(":", "-")
        handle, temp = tempfile.mkstemp(dir=self._dir, prefix=".upload-")
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(handle, "wb") as out:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise RequestError("the client went away during the upload")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        raise PayloadTooLarge(f"blob is over the limit of {self.limit} bytes "
                                              "(max_blob_bytes)")
                    hasher.update(chunk)
                    out.write(chunk)
                    if not message.get("more_body", False):
                        break
            if f"sha256:{hasher.hexdigest()}" != digest:
                raise RequestError("digest mismatch: the uploaded bytes hash to "
                                   f"sha256:{hasher.hexdigest()}, not {digest}")
            os.replace(temp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def close(self) -> None:
        """Remove every spooled blob."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
