"""The cache's size cap, end to end, on blobs pulled on their own (no manifest): beyond
proxycache.maxsize the one cached longest ago is evicted and fetched again when asked for;
pushed blobs stay. Images, least recently pulled first: test_proxy_lru.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from . import clients
from .servers import ServerFactory, blob_gets, settled_access_log

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def _held(root: Path, digest: str) -> bool:
    algorithm, encoded = digest.split(":")
    return (root / "docker/registry/v2/blobs" / algorithm / encoded[:2] / encoded / "data").exists()


def _wait_until(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_oldest_cached_blobs_are_evicted_and_refetched_pushed_ones_stay(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory
) -> None:
    upstream = registry2_factory()
    first = clients.upload_blob(upstream.url, "org/app", os.urandom(MIB))
    second = clients.upload_blob(upstream.url, "org/app", os.urandom(MIB))
    entrepot = entrepot_factory(
        config={
            "proxies": [{"host": "quay.io", "remoteurl": upstream.url}],
            "proxycache": {"maxsize": "1.5MiB", "sweepinterval": "200ms"},
        }
    )
    root = entrepot.root
    pushed = clients.upload_blob(entrepot.url, "team/private", os.urandom(2 * MIB))

    with httpx.Client(base_url=entrepot.url, timeout=30) as http:
        assert http.get(f"/v2/quay.io/org/app/blobs/{first}").status_code == 200
        time.sleep(1.1)  # the second is cached later than the first
        assert http.get(f"/v2/quay.io/org/app/blobs/{second}").status_code == 200
        # Over the cap: the first (oldest) goes, the second stays, the pushed blob stays.
        assert _wait_until(lambda: not _held(root, first)), "the oldest blob was not evicted"
        assert _held(root, second)
        assert _held(root, pushed)
        assert http.get(f"/v2/team/private/blobs/{pushed}").status_code == 200

        again = http.get(f"/v2/quay.io/org/app/blobs/{first}")
        assert again.status_code == 200
        assert clients.sha256_digest(again.content) == first
    settled_access_log(upstream)
    assert len(blob_gets(upstream, "org/app", first)) == 2  # fetched again after eviction
