"""Fixtures shared by the test suites.

loopback       (tests/loopback.py) for the in-process suites

s3_server      a throwaway Ceph radosgw on 127.0.0.1 (tests/cephs3.py), started once per
               session; it skips locally and fails under $CI when Ceph is not installed
s3_bucket()    a fresh, empty bucket on it (its name); creating one takes radosgw ~2 s
s3_shared_bucket  one bucket for the whole session (tests keep apart by rootdirectory)
redis_server   a throwaway redis-server on 127.0.0.1 (tests/redisserver.py), once per
               session; it skips locally and fails under $CI when redis-server is missing

`make test` runs the suite in two pytest-xdist workers (TEST_WORKERS; 0 runs one process),
so that the end-to-end tests, which mostly wait on real servers and clients, overlap. The
hook below puts tests in groups for `--dist loadgroup`: the tests that use the session's
Ceph or Redis run on one worker (one Ceph per run, not one per worker), and each other
end-to-end module runs whole on one worker (its module fixtures are made once).
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

_TESTS = Path(__file__).resolve().parent
_SESSION_SERVERS = frozenset({"s3_server", "s3_bucket", "s3_shared_bucket", "redis_server"})
# Parameter values that make a test ask for the session's servers by name (the storage
# suites' `driver`, the collection tests' store: request.getfixturevalue("s3_server")).
_SESSION_SERVER_PARAMS = frozenset({"s3", "s3-redis", "redis"})


def _xdist_group(item: pytest.Item) -> str | None:
    path = Path(item.path).resolve()
    callspec = getattr(item, "callspec", None)
    params = set(map(str, callspec.params.values())) if callspec is not None else set()
    if (
        _SESSION_SERVERS & set(getattr(item, "fixturenames", ()))
        or params & _SESSION_SERVER_PARAMS
        or _TESTS / "storage" in path.parents
    ):
        return "session-servers"
    if _TESTS / "e2e" in path.parents:
        return f"e2e:{path.name}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    # A wrapper marks before every plain implementation runs: pytest-xdist's worker reads
    # the marks in its own implementation of this hook, which ran before a plain (even a
    # tryfirst) one here, so the groups never took effect.
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    yield


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
