"""The soak (bench/soak.py, `make soak`) in short: 16 clients for 40 seconds through an
Entrepot with 2 workers in front of a registry:2 upstream, mixing monolithic and chunked
pushes, pulls by tag and by digest, pull-throughs of cached and uncached images, tag moves
and deletes. No request may fail, every pulled blob must verify, descriptors stay flat.

Memory: the full soak allows 10% RSS growth after a 60 s warm-up. Here the warm-up is 15 s
and the bounded caches (digests, storage keys, manifests, running hashes: up to ~10 MiB
per worker in all) are still filling during the measured window, so the bound is 25%;
before the caches were bounded, a worker grew without end (see the report of issue 13).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.soak import Options, soak

from .clients import require
from .servers import registry2_binary

pytestmark = pytest.mark.e2e


def test_short_soak_fails_no_request_and_stays_flat(tmp_path: Path) -> None:
    if registry2_binary() is None:
        require("docker-registry")
    options = Options(
        clients=16, duration=40, warmup=15, workers=2, rss_growth=0.25, workdir=tmp_path
    )

    ok, report = soak(options)

    print(report)
    assert ok, report
