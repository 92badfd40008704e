"""The blob spool cannot fill the disk (issue 27, finding 6): every upload, chunked (no
Content-Length) or declared, is counted while it arrives against `max_blob_bytes` (413), the
spool's `blob_quota_bytes` and the disk's free space less `blob_min_free_bytes` (507); each
refusal is JSON, and leaves no file behind; finished blobs go after a create that used them, or
when nobody asked for them for `blob_idle_timeout`.

A full disk is made without a small filesystem: a quota smaller than the upload, or a
`blob_min_free_bytes` larger than the disk's free space.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

QUOTA = 4000
MAX_BLOB = 6000
WAIT = 60.0  # how long a blob may take to expire before the test fails (no timing asserted)


def post_blob(url: str, **kwargs: object) -> httpx.Response:
    """A blob upload as Ollama's own clients send it: with their JSON Content-Type (the
    gateway refuses changes a web form could send, blob uploads included)."""
    return httpx.post(url, headers={"Content-Type": "application/json"}, **kwargs)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts  # a generator body: httpx sends it chunked, without Content-Length


def spooled(spool: Path) -> list[str]:
    """Every file under the spool folder (finished blobs and partial uploads)."""
    return sorted(p.name for p in spool.rglob("*") if p.is_file())


def wait_until_gone(spool: Path, digest: str) -> None:
    """Until the blob's file is gone (watched on disk: a HEAD would keep it)."""
    deadline = time.monotonic() + WAIT
    while digest.replace(":", "-") in spooled(spool):
        assert time.monotonic() < deadline, f"{digest} was never removed"
        time.sleep(0.1)


@pytest.fixture
def spool_gateway(emulator, pool_gateway, tmp_path):
    node = emulator(models=["base:1b"])
    spool = tmp_path / "spool"

    def start(**config: object):
        settings = {"blob_dir": str(spool), "max_blob_bytes": MAX_BLOB,
                    "blob_quota_bytes": QUOTA, "blob_min_free_bytes": 0, **config}
        return node, spool, pool_gateway(node.address, **settings)

    return start


@pytest.mark.parametrize("chunked", [True, False])
def test_an_upload_over_the_quota_is_a_json_507_and_leaves_nothing(spool_gateway,
                                                                   chunked) -> None:
    _node, spool, gw = spool_gateway()
    first = b"a" * 3000
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(first)}", content=first).status_code == 201
    second = b"b" * 1500  # fits max_blob_bytes, but not beside the first in the quota
    body = chunks([second[:700], second[700:]]) if chunked else second
    reply = post_blob(f"{gw.url}/api/blobs/{digest_of(second)}", content=body)
    assert reply.status_code == 507, reply.text
    assert "blob_quota_bytes" in reply.json()["error"]
    assert spooled(spool) == [digest_of(first).replace(":", "-")]
    over = b"c" * (MAX_BLOB + 1)
    reply = post_blob(f"{gw.url}/api/blobs/{digest_of(over)}",
                       content=chunks([over]) if chunked else over)
    assert reply.status_code == 413 and "max_blob_bytes" in reply.json()["error"]
    assert spooled(spool) == [digest_of(first).replace(":", "-")]


@pytest.mark.parametrize("chunked", [True, False])
def test_an_upload_the_disk_cannot_take_is_a_json_507_and_leaves_nothing(
        spool_gateway, tmp_path, chunked) -> None:
    free = shutil.disk_usage(tmp_path).free
    _node, spool, gw = spool_gateway(blob_min_free_bytes=free + 2**40)  # "the disk is full"
    data = b"d" * 100
    reply = post_blob(f"{gw.url}/api/blobs/{digest_of(data)}",
                       content=chunks([data]) if chunked else data)
    assert reply.status_code == 507, reply.text
    assert "blob_min_free_bytes" in reply.json()["error"]
    assert spooled(spool) == []


def test_any_upload_is_refused_cleanly_and_the_quota_never_leaks(spool_gateway) -> None:
    """Uploads of any size, chunked or declared, beside a held blob: 413 past
    `max_blob_bytes` (or 507 when a chunked one passes the quota first), 507 past the quota,
    else 400 (the digest named is never the bytes'):
    always JSON, never a partial file left; afterwards the quota left is exact."""
    _node, spool, gw = spool_gateway()
    held = b"h" * 1000
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(held)}", content=held).status_code == 201
    wrong = "sha256:" + "0" * 64

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sizes=st.lists(st.integers(min_value=0, max_value=2500), max_size=6),
           chunked=st.booleans())
    def upload(sizes: list[int], chunked: bool) -> None:
        parts = [bytes([65 + i]) * size for i, size in enumerate(sizes)]
        data = b"".join(parts)
        reply = post_blob(f"{gw.url}/api/blobs/{wrong}",
                           content=chunks(parts) if chunked else data)
        if len(data) > MAX_BLOB:  # chunked, the quota may be passed first: 507 is right too
            assert reply.status_code in ((413, 507) if chunked else (413,)), reply.text
        elif len(data) + len(held) > QUOTA:
            assert reply.status_code == 507, reply.text
        else:
            assert reply.status_code == 400 and "digest mismatch" in reply.json()["error"]
        assert "error" in reply.json()
        assert spooled(spool) == [digest_of(held).replace(":", "-")]

    upload()
    rest = b"r" * (QUOTA - len(held))  # exactly what the quota has left: no upload leaked
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(rest)}", content=rest).status_code == 201
    one_more = b"!"
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(one_more)}",
                      content=one_more).status_code == 507


def test_an_idle_blob_is_removed(spool_gateway) -> None:
    _node, spool, gw = spool_gateway(blob_idle_timeout=0.5)
    data = b"i" * 2000
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(data)}", content=data).status_code == 201
    wait_until_gone(spool, digest_of(data))
    assert httpx.head(f"{gw.url}/api/blobs/{digest_of(data)}").status_code == 404
    assert spooled(spool) == []
    full = b"f" * QUOTA  # its bytes no longer count against the quota
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(full)}", content=full).status_code == 201


def test_a_blob_is_removed_after_a_create_that_used_it(spool_gateway) -> None:
    node, spool, gw = spool_gateway(blob_keep_after_create=0)  # idle timeout: an hour
    data = b"g" * 2000
    digest = digest_of(data)
    assert post_blob(f"{gw.url}/api/blobs/{digest}", content=data).status_code == 201
    other = b"o" * 1000
    assert post_blob(f"{gw.url}/api/blobs/{digest_of(other)}", content=other).status_code == 201
    done = httpx.post(f"{gw.url}/api/create", timeout=60, json={
        "model": "mine", "files": {"m.gguf": digest}, "stream": False})
    assert done.status_code == 200 and done.json()["status"] == "success", done.text
    assert httpx.head(f"{node.url}/api/blobs/{digest}").status_code == 200  # the node has it
    wait_until_gone(spool, digest)
    assert httpx.head(f"{gw.url}/api/blobs/{digest}").status_code == 404
    assert spooled(spool) == [digest_of(other).replace(":", "-")]  # unused: still held
