"""One upstream download for the whole fleet: Entrepot replicas on one S3 bucket (Ceph's
radosgw) with registry:2's ``redis`` section (a real redis-server) share each cache fill.
The replica whose worker wins the blob's lease in Redis downloads it once; the clients of
every replica stream it as it arrives, from part objects the leader writes beside the
blob's multipart upload. The upstream is Debian's registry:2 behind a loopback forwarder
that holds the download back until the test releases it; its access log counts the
downloads."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.cephs3 import CephS3, s3_client
from tests.faultproxy import FaultProxy
from tests.redisserver import RedisServer

from . import clients
from .servers import (
    ManagedServer,
    ServerFactory,
    ServerStartError,
    ThrottledForwarder,
    blob_gets,
    find_free_port,
    settled_access_log,
)
from .test_s3_interop import ROOT, s3_storage

pytestmark = pytest.mark.e2e

BLOB_SIZE = 64 * 1024 * 1024
CLIENTS = 8
REPLICAS = 2
REPO = "org/big"
# The forwarder holds the upstream's answer after this many bytes: the leader has cut and
# stored its first parts (1 MiB, then 2), so every replica's clients can start.
HOLD_AFTER = 4 * 1024 * 1024


@dataclass(frozen=True)
class Fleet:
    upstream: ManagedServer
    link: ThrottledForwarder
    replicas: list[ManagedServer]
    digest: str
    bucket: str

    def url(self, client: int) -> str:
        """Clients alternate between replicas (round robin, as a load balancer would)."""
        replica = self.replicas[client % len(self.replicas)]
        return f"{replica.url}/v2/ghcr.io/{REPO}/blobs/{self.digest}"


def _fleet(
    s3_server: CephS3,
    bucket: str,
    redis: RedisServer | None,
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
    *,
    data: bytes,
    machines: list[tuple[str, dict[str, str]]] | None = None,
) -> Fleet:
    """The upstream and REPLICAS replicas; ``machines``: each replica's S3 endpoint and
    environment (else radosgw itself, and the test's)."""
    upstream = registry2_factory()
    digest = clients.upload_blob(upstream.url, REPO, data)
    link = throttled_forwarder(upstream.port, hold_after=HOLD_AFTER)
    replicas = []
    for endpoint, env in machines or [(s3_server.endpoint, {})] * REPLICAS:
        storage = s3_storage(s3_server, bucket)
        storage["s3"]["regionendpoint"] = endpoint
        config: dict[str, Any] = {
            "storage": storage,
            "http": {"secret": "one-secret-for-every-replica"},
            "proxies": [{"host": "ghcr.io", "remoteurl": link.url, "readtimeout": "60s"}],
        }
        if redis is not None:
            config["redis"] = redis.config()
        replicas.append(entrepot_factory(config=config, env=env))
    return Fleet(upstream, link, replicas, digest, bucket)


@dataclass(frozen=True)
class Received:
    status: int
    size: int
    digest: str
    error: str = ""


def _download(url: str, first_bytes: threading.Event) -> Received:
    """GET the whole blob (following a redirect to S3), hashing it as it comes."""
    sha = hashlib.sha256()
    size = 0
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(120.0), follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            for chunk in response.iter_raw():
                sha.update(chunk)
                size += len(chunk)
                first_bytes.set()
            return Received(response.status_code, size, "sha256:" + sha.hexdigest())
    except httpx.HTTPError as exc:
        first_bytes.set()
        return Received(0, size, "sha256:" + sha.hexdigest(), f"{type(exc).__name__}: {exc}")


def _wait_all(events: list[threading.Event], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for number, event in enumerate(events):
        assert event.wait(max(deadline - time.monotonic(), 0)), f"client {number}: no bytes"


def _pull_while_held(fleet: Fleet, while_held: Callable[[], None]) -> list[Received]:
    """CLIENTS clients over the replicas: every one, on every replica, receives bytes
    while the one upstream download is certainly still in progress (held by the
    forwarder; ``while_held`` checks more then); then the download goes on."""
    arrived = [threading.Event() for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_download, fleet.url(i), arrived[i]) for i in range(CLIENTS)]
        _wait_all(arrived)
        assert fleet.link.holding
        while_held()
        fleet.link.release()
        return [future.result(timeout=300) for future in futures]


def _bucket_keys(s3_server: CephS3, bucket: str) -> list[str]:
    s3 = s3_client(s3_server)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _multipart_uploads(s3_server: CephS3, bucket: str) -> list[str]:
    uploads = s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [upload["Key"] for upload in uploads]


def _blob_key(digest: str) -> str:
    algorithm, encoded = digest.split(":")
    return f"{ROOT.strip('/')}/docker/registry/v2/blobs/{algorithm}/{encoded[:2]}/{encoded}/data"


def test_eight_clients_on_two_replicas_share_one_upstream_download(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    redis_server: RedisServer,
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
) -> None:
    fleet = _fleet(
        s3_server,
        s3_bucket(),
        redis_server,
        registry2_factory,
        entrepot_factory,
        throttled_forwarder,
        data=os.urandom(BLOB_SIZE),
    )

    def while_held() -> None:
        assert fleet.link.delivered < BLOB_SIZE
        assert _blob_key(fleet.digest) not in _bucket_keys(s3_server, fleet.bucket)

    results = _pull_while_held(fleet, while_held)

    for received in results:
        assert received == Received(200, BLOB_SIZE, fleet.digest), received
    settled_access_log(fleet.upstream)
    gets = blob_gets(fleet.upstream, REPO, fleet.digest)
    assert [(e.status, e.size) for e in gets] == [(200, BLOB_SIZE)], gets

    # Cached in the bucket, whole: both replicas serve it without going upstream again,
    # and the fill left no part objects and no multipart upload behind.
    keys = _bucket_keys(s3_server, fleet.bucket)
    assert _blob_key(fleet.digest) in keys
    assert not [k for k in keys if "/_uploads/" in k], keys
    assert _multipart_uploads(s3_server, fleet.bucket) == []
    for client in range(REPLICAS):
        again = _download(fleet.url(client), threading.Event())
        assert again == Received(200, BLOB_SIZE, fleet.digest), again
    settled_access_log(fleet.upstream)
    assert len(blob_gets(fleet.upstream, REPO, fleet.digest)) == 1


def _part_gets(proxy: FaultProxy) -> list[str]:
    """The fill's part objects this replica read from S3 (GETs, without the query)."""
    return [
        target.split("?")[0]
        for method, target, _ in proxy.seen
        if method == "GET" and _PART_OBJECT.search(target.split("?")[0])
    ]


_PART_OBJECT = re.compile(r"/_uploads/fill-[^/]+/[^/]+/p-\d+$")


def test_each_replica_reads_the_fill_from_s3_once_for_all_its_clients(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    redis_server: RedisServer,
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
    tmp_path: Path,
) -> None:
    """Replicas on machines of their own (a temp directory each), two workers each, each
    talking to radosgw through a proxy that records its requests: the clients of one
    replica share one local copy of the fill. The leader's replica never reads its own
    parts back; the other reads each part once, whatever its number of clients."""
    endpoint = urlsplit(s3_server.endpoint)
    assert endpoint.hostname is not None and endpoint.port is not None
    proxies = [FaultProxy((endpoint.hostname, endpoint.port)).start() for _ in range(REPLICAS)]
    try:
        machines = []
        for number, proxy in enumerate(proxies):
            (tmp_path / f"machine-{number}").mkdir()
            env = {"TMPDIR": str(tmp_path / f"machine-{number}"), "ENTREPOT_WORKERS": "2"}
            machines.append((proxy.url, env))
        fleet = _fleet(
            s3_server,
            s3_bucket(),
            redis_server,
            registry2_factory,
            entrepot_factory,
            throttled_forwarder,
            data=os.urandom(BLOB_SIZE),
            machines=machines,
        )
        results = _pull_while_held(fleet, lambda: None)
    finally:
        for proxy in proxies:
            proxy.stop()

    for received in results:
        assert received == Received(200, BLOB_SIZE, fleet.digest), received
    settled_access_log(fleet.upstream)
    assert len(blob_gets(fleet.upstream, REPO, fleet.digest)) == 1
    wrote_parts = [
        any(m == "PUT" and _PART_OBJECT.search(t.split("?")[0]) for m, t, _ in proxy.seen)
        for proxy in proxies
    ]
    assert wrote_parts.count(True) == 1, wrote_parts  # one leader, on one replica
    for proxy, leader in zip(proxies, wrote_parts, strict=True):
        reads = _part_gets(proxy)
        if leader:
            assert reads == [], reads
        else:
            assert reads, "the other replica read no parts"
            assert len(reads) == len(set(reads)), sorted(reads)


def test_a_fill_cut_off_upstream_leaves_nothing_on_s3(
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    redis_server: RedisServer,
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
) -> None:
    fleet = _fleet(
        s3_server,
        s3_bucket(),
        redis_server,
        registry2_factory,
        entrepot_factory,
        throttled_forwarder,
        data=os.urandom(16 * 1024 * 1024),
    )
    arrived = [threading.Event() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_download, fleet.url(i), arrived[i]) for i in range(4)]
        _wait_all(arrived)
        assert fleet.link.wait_until_holding()
        # The part objects of the fill in progress are there...
        assert [k for k in _bucket_keys(s3_server, fleet.bucket) if "/_uploads/fill-" in k]
        fleet.link.stop()  # ...when the upstream connection is cut mid-blob
        results = [future.result(timeout=120) for future in futures]

    # No client got a whole body (the connection is aborted or the request refused).
    for received in results:
        assert received.size < 16 * 1024 * 1024, received
        assert received.error or received.status != 200, received
    # Nothing of the fill stays visible: no blob, no link, no parts, no multipart upload.
    deadline = time.monotonic() + 30
    while True:
        keys = _bucket_keys(s3_server, fleet.bucket)
        leftovers = [k for k in keys if "/_uploads/" in k or "/_layers/" in k]
        leftovers += [k for k in keys if k == _blob_key(fleet.digest)]
        leftovers += _multipart_uploads(s3_server, fleet.bucket)
        if not leftovers:
            break
        assert time.monotonic() < deadline, leftovers
        time.sleep(0.5)


def test_without_redis_the_start_up_log_says_what_replicas_share(
    s3_server: CephS3,
    s3_shared_bucket: str,
    entrepot_factory: ServerFactory,
) -> None:
    proxies = [{"host": "ghcr.io", "remoteurl": "http://127.0.0.1:9"}]
    server = entrepot_factory(
        config={"storage": s3_storage(s3_server, s3_shared_bucket), "proxies": proxies}
    )
    assert "cache fills on storage.s3 without a redis section" in server.log()
    assert "configure redis (addr)" in server.log()


def test_start_with_an_unreachable_redis_is_one_clear_error(
    s3_server: CephS3,
    s3_shared_bucket: str,
    redis_server: RedisServer,
    entrepot_factory: ServerFactory,
) -> None:
    addr = f"127.0.0.1:{find_free_port()}"
    for redis, reason in [
        ({"addr": addr}, "Connect"),
        ({**redis_server.config(), "password": "wrong"}, "invalid"),
    ]:
        with pytest.raises(ServerStartError) as failed:
            entrepot_factory(
                config={"storage": s3_storage(s3_server, s3_shared_bucket), "redis": redis}
            )
        output = str(failed.value)
        assert "exited with code 1" in output and "Traceback" not in output
        lines = [line for line in output.splitlines() if "entrepot:" in line]
        assert len(lines) == 1, output
        assert "cannot use redis (redis at 127.0.0.1:" in lines[0], lines
        assert reason.lower() in lines[0].lower(), lines
