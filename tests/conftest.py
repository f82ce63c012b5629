"""Fixtures shared by the test suites.

loopback       (tests/loopback.py) for the in-process suites

s3_server      a throwaway Ceph radosgw on 127.0.0.1 (tests/cephs3.py), started once per
               session; it skips locally and fails under $CI when Ceph is not installed
s3_bucket()    a fresh, empty bucket on it (its name); creating one takes radosgw ~2 s
s3_shared_bucket  one bucket for the whole session (tests keep apart by rootdirectory)
redis_server   a throwaway redis-server on 127.0.0.1 (tests/redisserver.py), once per
               session; it skips locally and fails under $CI when redis-server is missing

`make test TEST_WORKERS=2` runs the suite in two pytest-xdist workers (the default is one
process): the end-to-end and storage tests, and any other on the session's Ceph or redis,
form one group that one worker runs in order, as without xdist (they start real servers and
clients, share those session-wide ones, and some watch time or memory); the unit and API
tests spread over both workers meanwhile.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cephs3 import CephS3, ceph_missing, s3_client
from tests.loopback import loopback
from tests.redisserver import RedisServer, redis_missing

__all__ = ["loopback", "redis_server", "s3_bucket", "s3_server", "s3_shared_bucket"]

# Directories whose tests start real servers and clients or use the session's Ceph and
# redis (the storage suites ask for them by parameter, see tests/storage/conftest.py).
_SERIAL_DIRS = tuple(Path(__file__).resolve().parent / name for name in ("e2e", "storage"))
_SESSION_SERVERS = frozenset({"s3_server", "s3_bucket", "s3_shared_bucket", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(item.path).resolve().parents
        uses_servers = _SESSION_SERVERS & set(getattr(item, "fixturenames", ()))
        if uses_servers or any(d in parents for d in _SERIAL_DIRS):
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3]:
    missing = ceph_missing()
    if missing:
        message = f"Ceph not installed (missing {', '.join(missing)}): scripts/install-test-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = CephS3(tmp_path_factory.mktemp("ceph")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: CephS3) -> Callable[[], str]:
    def create() -> str:
        name = f"t-{uuid.uuid4().hex[:20]}"
        s3_client(s3_server).create_bucket(Bucket=name)
        return name

    return create


@pytest.fixture(scope="session")
def s3_shared_bucket(s3_server: CephS3) -> str:
    name = "entrepot-tests"
    s3_client(s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if redis_missing():
        message = "redis-server not installed: scripts/install-test-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
