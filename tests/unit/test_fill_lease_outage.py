"""Cache fills when the lease service (Redis) hangs or is down: a lease attempt gives up
within Entrepot's own bound whatever redis.readtimeout says (registry:2's default is no
limit), the fill goes ahead without a lease, and an outage is one warning, not one per
blob. A hung Redis is a TCP server on 127.0.0.1 that accepts and never answers (what a
SIGSTOPped redis-server does)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from entrepot.proxy import fetch
from entrepot.proxy.fetch import BlobFiller, Spool
from entrepot.storage import redisleases
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.redisleases import RedisLeases, RedisSettings, ping
from tests.unit.test_blob_fill import FakeRemote, collect, digest_of


async def silent_server() -> asyncio.Server:
    """Accepts connections, reads nothing, answers nothing."""
    held: list[asyncio.StreamWriter] = []

    async def hang(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    return await asyncio.start_server(hang, "127.0.0.1", 0)


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


def spool_on(tmp_path: Path, leases: RedisLeases | None, name: str) -> Spool:
    """A filesystem spool whose fill leases are ``leases`` (as on S3 with Redis)."""
    driver = FilesystemDriver(tmp_path / "root")
    if leases is not None:
        driver.leases = leases  # type: ignore[assignment]

    async def published() -> None:
        pass

    return Spool(driver, f"fill/{name}", f"fill-{name}", f"blobs/{name}", published)


async def fill_once(spool: Spool, data: bytes) -> tuple[bytes, FakeRemote]:
    remote = FakeRemote([data[:10], data[10:]])
    remote.release.set()
    fill = BlobFiller().start(("up", "repo", digest_of(data)), spool, remote.open)
    await fill.wait_started()
    return await collect(fill.read()), remote


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "entrepot.proxy.fetch"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(fetch, "unleased", fetch.Unleased(lambda: now[0]))
    return now


async def test_a_hung_redis_gives_up_within_the_bound_and_the_fill_goes_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    server = await silent_server()
    port = server.sockets[0].getsockname()[1]
    # registry:2's defaults: no dial, read or write timeout.
    leases = RedisLeases(RedisSettings(host="127.0.0.1", port=port), "entrepot:test:")
    caplog.set_level("INFO", logger="entrepot.proxy.fetch")
    data = b"blob bytes " * 100
    started = time.monotonic()
    try:
        got, remote = await asyncio.wait_for(fill_once(spool_on(tmp_path, leases, "a"), data), 10)
    finally:
        server.close()
        await leases.close()
    took = time.monotonic() - started
    assert got == data and remote.opened == 1
    assert took < redisleases.ANSWER_WITHIN + 1.0, took
    (line, _) = [*said(caplog), ""][:2]  # the fill's "no lease", then only "filled"
    assert line.startswith(f"up repo@{digest_of(data)}: no lease (redis at 127.0.0.1:{port} db 0")
    assert f"no answer within {redisleases.ANSWER_WITHIN:g}s" in line
    assert "downloading without one" in line


async def test_an_outage_is_one_warning_a_reminder_then_one_line_when_leases_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    down = RedisLeases(RedisSettings(host="127.0.0.1", port=refused_port()), "entrepot:test:")
    caplog.set_level("INFO", logger="entrepot.proxy.fetch")
    blobs = [f"blob {i} ".encode() * 50 for i in range(6)]
    started = time.monotonic()
    try:
        for i, data in enumerate(blobs[:5]):
            got, _ = await fill_once(spool_on(tmp_path, down, str(i)), data)
            assert got == data
    finally:
        await down.close()
    assert time.monotonic() - started < 3.0  # refused is quick: no back-off between tries
    warnings = [line for line in said(caplog) if "lease" in line]
    assert len(warnings) == 1 and "no lease (redis at 127.0.0.1:" in warnings[0]
    clock[0] += fetch.UNLEASED_REMINDER
    down = RedisLeases(RedisSettings(host="127.0.0.1", port=refused_port()), "entrepot:test:")
    try:
        await fill_once(spool_on(tmp_path, down, "5"), blobs[5])
    finally:
        await down.close()
    reminder = [line for line in said(caplog) if "lease" in line][1]
    assert reminder.startswith("still no fill leases: 5 fills went ahead without one in 60s")
    # Leases work again (this machine's lock files here): one line says so, with the count.
    await fill_once(spool_on(tmp_path, None, "6"), b"fine " * 30)
    assert [line for line in said(caplog) if "lease" in line][2:] == [
        "fill leases work again (0 more fills went without one)"
    ]


async def test_the_start_up_check_of_redis_is_quick_when_refused_and_bounded_when_hung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = refused_port()
    started = time.monotonic()
    problem = await asyncio.to_thread(ping, RedisSettings(host="127.0.0.1", port=port))
    assert problem is not None and problem.startswith(f"redis at 127.0.0.1:{port} db 0: ")
    assert time.monotonic() - started < 1.5
    server = await silent_server()
    hung = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(redisleases, "PING_WITHIN", 0.5)
    try:
        problem = await asyncio.to_thread(ping, RedisSettings(host="127.0.0.1", port=hung))
    finally:
        server.close()
    assert problem == f"redis at 127.0.0.1:{hung} db 0: no answer within 0.5s (is Redis hung?)"
