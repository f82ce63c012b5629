"""Many clients, one uncached blob: Entrepot downloads it from upstream once and streams it
to all of them (registry:2 in proxy mode downloads it once per client, plus once).

The upstream is a real registry:2 behind a loopback forwarder that holds the download back
after its first MiB until the test releases it: every client arrives, or leaves, while the
one upstream download is certainly still in progress. The registry:2 access log counts the
downloads.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from . import clients
from .servers import (
    AccessLogEntry,
    ManagedServer,
    ServerFactory,
    ThrottledForwarder,
    blob_gets,
    settled_access_log,
)

pytestmark = pytest.mark.e2e

BLOB_SIZE = 64 * 1024 * 1024
CLIENTS = 8
REPO = "org/big"
HOLD_AFTER = 1024 * 1024  # the forwarder holds the upstream's answer after this many bytes


@dataclass(frozen=True)
class Received:
    status: int
    content_length: str | None
    size: int
    digest: str


@dataclass(frozen=True)
class Setup:
    upstream: ManagedServer
    link: ThrottledForwarder
    entrepot: ManagedServer
    digest: str

    def url(self, route: int) -> str:
        """The blob's URL on Entrepot: even routes use the path prefix, odd ones ?ns=."""
        if route % 2 == 0:
            return f"{self.entrepot.url}/v2/ghcr.io/{REPO}/blobs/{self.digest}"
        return f"{self.entrepot.url}/v2/{REPO}/blobs/{self.digest}?ns=ghcr.io"

    def upstream_gets(self) -> list[AccessLogEntry]:
        settled_access_log(self.upstream)
        return blob_gets(self.upstream, REPO, self.digest)

    def assert_download_in_progress(self) -> None:
        """Entrepot has not received the whole blob from upstream yet (the hold once
        reached: the clients' first bytes may come before the forwarder has delivered
        HOLD_AFTER of them, when the machine is busy)."""
        assert self.link.wait_until_holding(), "the upstream download is not being held"
        assert self.link.delivered < BLOB_SIZE
        assert blob_gets(self.upstream, REPO, self.digest) == []  # registry:2 not done


def _setup(
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
    workers: int = 1,
) -> Setup:
    upstream = registry2_factory()
    digest = clients.upload_blob(upstream.url, REPO, os.urandom(BLOB_SIZE))
    link = throttled_forwarder(upstream.port, hold_after=HOLD_AFTER)
    entrepot = entrepot_factory(
        config={"proxies": [{"host": "ghcr.io", "remoteurl": link.url, "readtimeout": "60s"}]},
        env={"ENTREPOT_WORKERS": str(workers)},
    )
    return Setup(upstream, link, entrepot, digest)


def _download(url: str, *, first_bytes: threading.Event | None = None) -> Received:
    """GET the whole blob, hashing it as it comes; `first_bytes` is set when some arrived."""
    sha = hashlib.sha256()
    size = 0
    with (
        httpx.Client(timeout=httpx.Timeout(60.0)) as http,
        http.stream("GET", url) as response,
    ):
        for chunk in response.iter_raw():
            sha.update(chunk)
            size += len(chunk)
            if first_bytes is not None:
                first_bytes.set()
        return Received(
            response.status_code,
            response.headers.get("content-length"),
            size,
            "sha256:" + sha.hexdigest(),
        )


def _assert_whole(received: Received, setup: Setup) -> None:
    assert received.status == 200, received
    assert received.size == BLOB_SIZE, received
    assert received.digest == setup.digest, received
    assert received.content_length in (None, str(BLOB_SIZE)), received


def _wait_all(events: list[threading.Event], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for number, event in enumerate(events):
        assert event.wait(max(deadline - time.monotonic(), 0)), f"client {number}: no bytes"


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-worker-processes"])
def test_concurrent_clients_share_one_upstream_download(
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
    workers: int,
) -> None:
    # With two workers the clients land on both processes; they still share one download.
    setup = _setup(registry2_factory, entrepot_factory, throttled_forwarder, workers)
    arrived = [threading.Event() for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(_download, setup.url(i), first_bytes=arrived[i]) for i in range(CLIENTS)
        ]
        # All 8 are streaming the first MiB while the one download is held upstream.
        _wait_all(arrived)
        setup.assert_download_in_progress()
        setup.link.release()
        results = [future.result(timeout=120) for future in futures]

    for received in results:
        _assert_whole(received, setup)
    gets = setup.upstream_gets()
    assert len(gets) == 1, gets

    # Cached now: a later client is served without going upstream.
    _assert_whole(_download(setup.url(0)), setup)
    assert len(setup.upstream_gets()) == 1


def test_a_client_leaving_early_does_not_cancel_the_shared_download(
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
) -> None:
    setup = _setup(registry2_factory, entrepot_factory, throttled_forwarder)

    # The first client starts the download and reads a little; the others join.
    with httpx.Client(timeout=httpx.Timeout(60.0)) as first:
        response = first.send(first.build_request("GET", setup.url(0)), stream=True)
        assert response.status_code == 200
        next(response.iter_raw())

        others = CLIENTS - 1
        arrived = [threading.Event() for _ in range(others)]
        with ThreadPoolExecutor(others) as pool:
            futures = [
                pool.submit(_download, setup.url(i + 1), first_bytes=arrived[i])
                for i in range(others)
            ]
            _wait_all(arrived)
            # The client that started the download leaves while it is in progress, and
            # Entrepot has time to notice before the upstream goes on.
            setup.assert_download_in_progress()
            response.close()
            first.close()
            time.sleep(0.5)
            setup.assert_download_in_progress()
            setup.link.release()
            results = [future.result(timeout=120) for future in futures]

    for received in results:
        _assert_whole(received, setup)
    gets = setup.upstream_gets()
    assert [(e.status, e.size) for e in gets] == [(200, BLOB_SIZE)], gets

    # The blob was cached whole: HEAD and GET answer without another upstream download.
    head = httpx.head(setup.url(1), timeout=10)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(BLOB_SIZE)
    _assert_whole(_download(setup.url(1)), setup)
    assert len(setup.upstream_gets()) == 1


def test_clients_of_a_fast_fill_get_the_verified_file(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory
) -> None:
    # No hold, and a fillwait long enough that the machine's load cannot decide: every
    # client waits for the verified blob and Granian sends it from the file.
    upstream = registry2_factory()
    blob = os.urandom(8 * 1024 * 1024)
    digest = clients.upload_blob(upstream.url, REPO, blob)
    proxy = {"host": "ghcr.io", "remoteurl": upstream.url, "fillwait": "60s"}
    entrepot = entrepot_factory(config={"proxies": [proxy]})
    url = f"{entrepot.url}/v2/ghcr.io/{REPO}/blobs/{digest}"

    def get() -> httpx.Response:
        return httpx.get(url, timeout=60)

    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda _: get(), range(CLIENTS)))
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.content == blob
        # A file response (as for a cached blob) carries the file's Last-Modified; a
        # response streamed from the fill does not.
        assert "last-modified" in response.headers, response.headers
    settled_access_log(upstream)
    assert len(blob_gets(upstream, REPO, digest)) == 1
