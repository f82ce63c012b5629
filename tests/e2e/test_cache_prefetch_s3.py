"""``entrepot cache prefetch`` and ``entrepot cache ls`` on a cache kept on S3 (Ceph's
radosgw), as on a disk (test_cache_prefetch.py): the command fills the bucket with no
server running, lists what it holds, and a server on the bucket then serves the image with
the upstream (Debian's registry:2) stopped. A storage error names the bucket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cephs3 import CephS3

from . import clients
from .images import build_image
from .servers import ManagedServer, ServerFactory, registry_config
from .test_cache_prefetch import UPSTREAM, _entrepot, _ok
from .test_s3_interop import s3_storage

pytestmark = pytest.mark.e2e


def _s3_config(tmp_path: Path, upstream: ManagedServer, server: CephS3, bucket: str) -> Path:
    config = registry_config(
        tmp_path / "unused",
        0,
        {
            "storage": s3_storage(server, bucket),
            "proxies": [{"host": UPSTREAM, "remoteurl": upstream.url}],
        },
    )
    path = tmp_path / "cache-config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_prefetch_and_ls_on_s3_then_a_server_on_the_bucket_serves_the_image(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    s3_server: CephS3,
    s3_bucket: Callable[[], str],
    tmp_path: Path,
) -> None:
    image = build_image(tmp_path / "image", tag="1.27", layer_sizes=(4096, 70_000))
    clients.push(f"oci:{image.path}:1.27", registry2.host, "library/nginx", "1.27")
    bucket = s3_bucket()
    config = _s3_config(tmp_path, registry2, s3_server, bucket)

    out = _ok(_entrepot("cache", "prefetch", str(config), f"{UPSTREAM}/library/nginx:1.27"))
    assert f"prefetched {UPSTREAM}/library/nginx:1.27" in out
    assert out.count(": fetched") == 3, out  # a config and two layers

    listing = _ok(_entrepot("cache", "ls", str(config)))
    header, *rows = listing.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CACHED", "CHECKED", "PULLED"]
    assert [r.split()[:3] for r in rows] == [[f"{UPSTREAM}/library/nginx", "1.27", image.digest]]

    registry2.stop()
    served: dict[str, Any] = yaml.safe_load(config.read_text())
    cache = entrepot_factory(config={"storage": served["storage"], "proxies": served["proxies"]})
    pulled = tmp_path / "pulled"
    clients.pull_to_layout(cache.host, f"{UPSTREAM}/library/nginx", "1.27", pulled)
    assert clients.inspect_digest(cache.host, f"{UPSTREAM}/library/nginx", "1.27") == image.digest


def test_a_storage_error_on_s3_names_the_bucket(
    registry2: ManagedServer, s3_server: CephS3, tmp_path: Path
) -> None:
    config = _s3_config(tmp_path, registry2, s3_server, "no-such-bucket-here")
    result = _entrepot("cache", "ls", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "entrepot: storage error in storage.s3 bucket no-such-bucket-here (rootdirectory "
        "/registry): "
    ), lines[0]
    assert "NoSuchBucket" in lines[0]
    assert lines[0].endswith("; check the bucket, regionendpoint and credentials"), lines[0]
