"""The benchmark's S3 rows: the servers' config on a bucket, how each row is judged
against its target, and how it reads in the table (bench/servers.py, bench/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench import report
from bench.s3 import blob_key
from bench.servers import registry_config
from bench.workloads import upstream_traffic

LABELS = {
    "layer": "256 MiB",
    "conns": 32,
    "tags": 1000,
    "repos": 10000,
    "chunk": "16 MiB",
    "pull": 8,
    "mem": 16,
    "gc_blobs": 100000,
    "s3_tags": 100,
}


def _row(key: str, registry2: float, entrepot: float) -> dict[str, Any]:
    results = {"registry2": {key: {"value": registry2}}, "entrepot": {key: {"value": entrepot}}}
    (row,) = report.build_rows(results, LABELS)
    return row


def test_a_server_on_s3_gets_the_bucket_instead_of_the_filesystem_and_extra_sections() -> None:
    storage = {
        "s3": {"bucket": "b", "regionendpoint": "http://127.0.0.1:1"},
        "redirect": {"disable": True},
    }
    config = registry_config(
        Path("/unused"),
        5000,
        proxy_url="http://up",
        storage=storage,
        extra={"redis": {"addr": "a"}},
    )
    assert "filesystem" not in config["storage"]
    assert config["storage"]["s3"]["bucket"] == "b"
    assert config["storage"]["redirect"] == {"disable": True}
    assert config["storage"]["delete"] == {"enabled": True}  # the rest is as on disk
    assert config["redis"] == {"addr": "a"}
    assert config["proxy"] == {"remoteurl": "http://up"}
    plain = registry_config(Path("/data"), 5000)
    assert plain["storage"]["filesystem"] == {"rootdirectory": "/data"}
    assert "redis" not in plain


@pytest.mark.parametrize(
    ("key", "registry2", "entrepot", "met"),
    [
        ("s3_manifest_get", 100.0, 310.0, True),  # target 3x registry:2
        ("s3_manifest_get", 100.0, 290.0, False),
        ("s3_push_monolithic", 50e6, 50e6, True),  # at least registry:2's throughput
        ("s3_push_chunked", 50e6, 49e6, False),
        ("s3_blob_get_1", 100e6, 120e6, True),
        ("s3_tags_list", 100.0, 99.0, False),
        ("s3_pull_cold_time", 10.0, 9.0, True),  # seconds: lower is better
        ("s3_pull_cold_time", 10.0, 11.0, False),
        ("s3_pull_cold_bytes", 10.0, 1.0, True),  # Entrepot fetches the layer once
        ("s3_pull_cold_bytes", 1.0, 2.0, False),
    ],
)
def test_each_s3_row_is_judged_against_its_target(
    key: str, registry2: float, entrepot: float, met: bool
) -> None:
    row = _row(key, registry2, entrepot)
    assert row["met"] is met
    assert row["ratio"] == pytest.approx(entrepot / registry2)


def test_s3_rows_read_as_s3_rows_in_the_table() -> None:
    table = report.markdown_table(
        [_row("s3_tags_list", 55.0, 388.0), _row("s3_pull_cold_bytes", 10.0, 1.0)]
    )
    assert "| S3: tags list, repo with 100 tags, 32 conns | 55 req/s | 388 req/s | 7.05x" in table
    assert "8 clients over 2 replicas: upstream bytes | 10.00x layer | 1.00x layer" in table


def test_the_blob_get_floor_is_a_figure_of_entrepots_run_beside_the_blob_get_row() -> None:
    results = {"entrepot": {"s3_blob_get_floor": {"value": 400e6}}}
    rows = report.build_rows(results, LABELS)
    assert [(r["key"], r["registry2"], r["met"]) for r in rows] == [
        ("s3_blob_get_floor", None, None)
    ]
    table = report.markdown_table(rows)
    label = "S3 blob GET floor: bare Granian streaming the object from S3 (obstore), 1 conn"
    assert f"| {label} | - | 400 MB/s | - | - | - |" in table
    keys = [row.key for row in report.ROWS]
    assert keys.index("s3_blob_get_floor") == keys.index("s3_blob_get_1") + 1


def test_the_cached_blob_is_looked_for_under_the_rootdirectory() -> None:
    digest = "sha256:" + "ab" * 32
    assert blob_key(digest) == f"registry/docker/registry/v2/blobs/sha256/ab/{'ab' * 32}/data"


def test_upstream_blob_bytes_come_from_registry2_access_log() -> None:
    log = (
        '127.0.0.1 - - [30/Nov/2026:02:30:00 +0000] "HEAD /v2/bench/proxied/blobs/sha256:aa '
        'HTTP/1.1" 200 0 "" "Go-http-client/1.1"\n'
        '127.0.0.1 - - [30/Nov/2026:02:30:00 +0000] "GET /v2/bench/proxied/blobs/sha256:aa '
        'HTTP/1.1" 200 1048576 "" "entrepot"\n'
        '127.0.0.1 - - [30/Nov/2026:02:30:01 +0000] "GET /v2/bench/proxied/manifests/latest '
        'HTTP/1.1" 200 512 "" "entrepot"\n'
    )
    assert upstream_traffic(log) == {
        "requests": 3,
        "bytes": 1048576 + 512,
        "blob_gets": 1,
        "blob_bytes": 1048576,
        "manifest_requests": 1,
    }
