"""The composition root honours registry:2's config keys: http.headers, http.prefix,
storage.maintenance.readonly, health.storagedriver (through the real app and lifespan)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from entrepot.config import load_config
from entrepot.preflight import fill_coordination
from entrepot.root import create_app
from entrepot.storage import FileInfo, StorageError
from entrepot.storage.filesystem import FilesystemDriver
from tests.api.oci_client import error_code, sha256

SEED = """\
version: 0.1
log:
    fields:
        service: registry
storage:
    cache:
        blobdescriptor: inmemory
    filesystem:
        rootdirectory: {root}
    delete:
        enabled: true
{extra_storage}
http:
    addr: :5000
    headers:
        X-Content-Type-Options: [nosniff]
{extra_http}
health:
    storagedriver:
        enabled: true
        interval: 50ms
        threshold: 2
"""


def config_file(tmp_path: Path, *, extra_storage: str = "", extra_http: str = "") -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        SEED.format(root=tmp_path / "data", extra_storage=extra_storage, extra_http=extra_http)
    )
    return path


def test_seed_config_serves_with_its_headers(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    with TestClient(create_app(config)) as client:
        response = client.get("/v2/")
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        missing = client.get("/v2/app/manifests/latest")
        assert missing.headers["x-content-type-options"] == "nosniff"


def test_http_prefix_moves_the_api(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, extra_http="    prefix: /registry/"))
    with TestClient(create_app(config)) as client:
        assert client.get("/registry/v2/").status_code == 200
        started = client.post("/registry/v2/app/blobs/uploads/")
        assert started.status_code == 202
        assert started.headers["location"].startswith("/registry/v2/app/blobs/uploads/")
        done = client.put(f"{started.headers['location']}?digest={sha256(b'x')}", content=b"x")
        assert done.status_code == 201
        assert client.get(f"/registry/v2/app/blobs/{sha256(b'x')}").content == b"x"


def test_readonly_refuses_pushes_and_serves_pulls(tmp_path: Path) -> None:
    writable = load_config(config_file(tmp_path))
    with TestClient(create_app(writable)) as client:
        started = client.post("/v2/app/blobs/uploads/")
        client.put(f"{started.headers['location']}?digest={sha256(b'kept')}", content=b"kept")
    readonly = load_config(
        config_file(
            tmp_path,
            extra_storage="    maintenance:\n        readonly:\n            enabled: true",
        )
    )
    with TestClient(create_app(readonly)) as client:
        refused = client.post("/v2/app/blobs/uploads/")
        assert refused.status_code == 405
        assert error_code(refused) == "UNSUPPORTED"
        assert "read-only" in refused.json()["errors"][0]["message"]
        assert client.get(f"/v2/app/blobs/{sha256(b'kept')}").content == b"kept"


class FlakyDriver(FilesystemDriver):
    """Storage that fails every call while ``broken``."""

    broken = False

    async def stat(self, key: str) -> FileInfo:
        if self.broken:
            raise StorageError("disk on fire")
        return await super().stat(key)

    async def put_content(self, key: str, data: bytes) -> None:
        if self.broken:
            raise StorageError("disk on fire")
        await super().put_content(key, data)


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail("condition not reached")


def test_unhealthy_storage_makes_v2_answer_503(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    driver = FlakyDriver(tmp_path / "data")
    with TestClient(create_app(config, driver=driver)) as client:
        assert client.get("/v2/").status_code == 200
        assert client.get("/health").status_code == 200
        driver.broken = True
        _wait_for(lambda: client.get("/v2/").status_code == 503)
        assert error_code(client.get("/v2/")) == "UNAVAILABLE"
        assert client.get("/health").status_code == 503
        driver.broken = False
        _wait_for(lambda: client.get("/v2/").status_code == 200)
        assert client.get("/health").status_code == 200


FILL_CONFIG = """\
version: 0.1
storage:
{storage}
proxies:
  - host: ghcr.io
    remoteurl: http://127.0.0.1:9
{redis}
"""
S3 = "  s3: {bucket: b, regionendpoint: 'http://127.0.0.1:9', accesskey: a, secretkey: s}"
FS = "  filesystem: {rootdirectory: /srv/registry}"
REDIS = "redis: {addr: '10.0.0.5:6379', db: 2}"


@pytest.mark.parametrize(
    ("storage", "redis", "level", "says"),
    [
        (FS, "", "INFO", "every worker process using storage.filesystem.rootdirectory"),
        (FS, REDIS, "INFO", "the redis section is not needed for that and not used"),
        (S3, REDIS, "INFO", "every replica using redis at 10.0.0.5:6379 db 2 on S3 bucket b"),
        (S3, "", "WARNING", "every replica downloads it once of its own; configure redis"),
    ],
)
def test_start_up_says_how_cache_fills_are_shared(
    tmp_path: Path, storage: str, redis: str, level: str, says: str
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(FILL_CONFIG.format(storage=storage, redis=redis))
    said = fill_coordination(load_config(str(path)))
    assert said is not None
    assert logging.getLevelName(said[0]) == level
    assert says in said[1]
