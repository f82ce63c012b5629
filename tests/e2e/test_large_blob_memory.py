"""A 2 GiB layer pushed in one request keeps every Entrepot process under 250 MB of RSS.

Docker pushes a layer as one PATCH (then an empty PUT); other clients send it as one
monolithic PUT. Either way the body must stream to storage (on S3, a multipart upload
while it arrives) through bounded buffers. The layer is generated on the fly from a seed,
hashed as it is sent: the test holds a megabyte of it at a time, never the whole layer.
The RSS of each process of the server (Granian's main process and its workers) is read
from /proc every 50 ms during each upload.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from bench.servers import process_rss, process_tree

from tests.cephs3 import CephS3

from .servers import ManagedServer, ServerFactory
from .test_s3_interop import s3_storage

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
LAYER_SIZE = 2048 * MiB  # the figure
RSS_LIMIT = 250 * 1000 * 1000
BLOCK = MiB
# Every worker: a request lands on any of them.
DEFAULT_WORKERS = {"ENTREPOT_WORKERS": ""}


def _base_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def _block(base: bytes, index: int, size: int) -> bytes:
    """Block ``index`` of a layer: the seed's random block, made unique by its index."""
    block = index.to_bytes(8, "big") + base[8:]
    return block[: size - index * BLOCK]


def layer_blocks(seed: int, size: int = LAYER_SIZE) -> Iterator[bytes]:
    """The layer of ``seed``, block after block."""
    base = _base_block(seed)
    for index in range(-(-size // BLOCK)):
        yield _block(base, index, size)


def layer_tail(seed: int, length: int, size: int = LAYER_SIZE) -> bytes:
    """The last ``length`` bytes of the layer, made from the blocks that hold them."""
    base, start = _base_block(seed), size - length
    tail = b"".join(_block(base, i, size) for i in range(start // BLOCK, -(-size // BLOCK)))
    return tail[start % BLOCK :]


class HashedBody:
    """The layer as a request body, hashed as httpx sends it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.sha = hashlib.sha256()
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for block in layer_blocks(self.seed):
            self.sha.update(block)
            self.sent += len(block)
            yield block

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@dataclass
class PeakRss:
    """The peak RSS of each process of a server, sampled in a thread."""

    server: ManagedServer
    interval: float = 0.05
    peaks: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        assert self.server.pid is not None
        tree: list[int] = []
        while not self._stop.is_set():
            if self.samples % 20 == 0:  # a worker restarted would show up within a second
                tree = process_tree(self.server.pid)
            for pid in tree:
                self.peaks[pid] = max(self.peaks.get(pid, 0), process_rss(pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        peaks = ", ".join(f"pid {p}: {v / 1e6:.0f} MB" for p, v in sorted(self.peaks.items()))
        return f"peak RSS over {self.samples} samples: {peaks}"


@dataclass
class Upload:
    digest: str
    seconds: float
    rss: PeakRss


def _upload_url(http: httpx.Client, repo: str) -> str:
    response = http.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def push_in_one_patch(server: ManagedServer, repo: str, seed: int) -> Upload:
    """POST, the whole layer in one PATCH (chunked, as Docker sends it), an empty PUT."""
    body = HashedBody(seed)
    with httpx.Client(base_url=server.url, timeout=600) as http, PeakRss(server) as rss:
        began = time.monotonic()
        location = _upload_url(http, repo)
        patched = http.patch(location, content=iter(body))
        assert patched.status_code == 202, patched.text
        assert body.sent == LAYER_SIZE
        assert patched.headers["Range"] == f"0-{LAYER_SIZE - 1}"
        done = http.put(patched.headers["Location"], params={"digest": body.digest})
        assert done.status_code == 201, done.text
        seconds = time.monotonic() - began
    return Upload(body.digest, seconds, rss)


def push_in_one_put(server: ManagedServer, repo: str, seed: int, digest: str) -> Upload:
    """POST, then the whole layer in the PUT that completes the upload (Content-Length
    known; the client knows the digest beforehand)."""
    body = HashedBody(seed)
    headers = {"Content-Length": str(LAYER_SIZE), "Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=server.url, timeout=600) as http, PeakRss(server) as rss:
        began = time.monotonic()
        location = _upload_url(http, repo)
        done = http.put(location, params={"digest": digest}, content=iter(body), headers=headers)
        assert done.status_code == 201, done.text
        seconds = time.monotonic() - began
    assert body.digest == digest and body.sent == LAYER_SIZE
    return Upload(digest, seconds, rss)


def assert_bounded(upload: Upload, what: str) -> None:
    print(f"{what}: {upload.seconds:.1f} s, {upload.rss.report()}")
    assert upload.rss.samples > 20 and len(upload.rss.peaks) >= 2, upload.rss.report()
    assert max(upload.rss.peaks.values()) < RSS_LIMIT, f"{what}: {upload.rss.report()}"


def assert_stored(server: ManagedServer, repo: str, upload: Upload, seed: int) -> None:
    """HEAD gives the size and digest; a ranged GET of the last bytes gives the layer's."""
    path = f"/v2/{repo}/blobs/{upload.digest}"
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=True) as http:
        head = http.head(path)
        assert head.status_code == 200, head.headers
        assert head.headers["Content-Length"] == str(LAYER_SIZE)
        assert head.headers["Docker-Content-Digest"] == upload.digest
        tail = http.get(path, headers={"Range": f"bytes={LAYER_SIZE - 4096}-"})
        assert tail.status_code == 206, tail.headers
        assert tail.content == layer_tail(seed, 4096)


def delete_blob(server: ManagedServer, repo: str, digest: str) -> None:
    """Free the space (the S3 test server keeps its data in RAM)."""
    response = httpx.delete(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert response.status_code == 202, response.text
    assert httpx.head(f"{server.url}/v2/{repo}/blobs/{digest}").status_code == 404


def test_s3_one_patch_and_one_put_of_2_gib_keep_rss_bounded(
    s3_server: CephS3, s3_bucket: Callable[[], str], entrepot_factory: ServerFactory
) -> None:
    config: dict[str, Any] = {
        "storage": s3_storage(
            s3_server, s3_bucket(), delete={"enabled": True}, redirect={"disable": True}
        )
    }
    server = entrepot_factory(config=config, env=DEFAULT_WORKERS)

    patched = push_in_one_patch(server, "big/patch", seed=1)
    assert_bounded(patched, "S3, one PATCH")
    assert_stored(server, "big/patch", patched, seed=1)
    delete_blob(server, "big/patch", patched.digest)
    s3_server.collect_garbage()

    # The same layer again, now gone from the store: its digest is known beforehand.
    put = push_in_one_put(server, "big/put", seed=1, digest=patched.digest)
    assert_bounded(put, "S3, one PUT")
    assert_stored(server, "big/put", put, seed=1)
    delete_blob(server, "big/put", put.digest)
    s3_server.collect_garbage()


def test_filesystem_one_patch_of_2_gib_keeps_rss_bounded(
    entrepot_factory: ServerFactory,
) -> None:
    server = entrepot_factory(env=DEFAULT_WORKERS)
    patched = push_in_one_patch(server, "big/patch", seed=2)
    assert_bounded(patched, "filesystem, one PATCH")
    assert_stored(server, "big/patch", patched, seed=2)
    delete_blob(server, "big/patch", patched.digest)
