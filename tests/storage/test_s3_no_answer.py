"""The S3 driver against a server that accepts connections but does not answer (stopped,
overloaded): each call fails within the driver's answer bound as a StorageError naming
bucket and key, and a streamed read is bounded between pieces, never as a whole.

The server is a plain asyncio one on 127.0.0.1 that reads requests and writes what each
test tells it: nothing at all, or an object's headers and body at a chosen pace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from entrepot.storage import StorageError
from entrepot.storage.s3 import S3Driver, S3Settings

BOUND = 1.0  # the driver's answer bound in these tests, in seconds
PIECE = 300 << 10  # over obstore's merge size (s3stream.MIN_PIECE): passed on as it comes

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(1 << 16):  # takes whatever it is sent, answers nothing
        pass


def trickle(pieces: int, pause: float, stall_after: int | None = None) -> Answer:
    """An object of ``pieces`` pieces of PIECE bytes, one every ``pause`` seconds; with
    ``stall_after``, silence after that many."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "e"\r\n'
            b"Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n" % (pieces * PIECE)
        )
        for i in range(pieces):
            if i == stall_after:
                await silent(reader, writer)
                return
            await asyncio.sleep(pause)
            writer.write(b"x" * PIECE)
            await writer.drain()
        await silent(reader, writer)

    return answer


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[S3Driver]]]:
    servers: list[asyncio.Server] = []
    drivers: list[S3Driver] = []

    async def start(answer: Answer) -> S3Driver:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        settings = S3Settings(
            bucket="hung-bucket",
            endpoint=f"http://127.0.0.1:{port}",
            access_key="test",
            secret_key="test-secret",
            path_style=True,
            rootdirectory="/root/",
        )
        drivers.append(S3Driver(settings, answer_timeout=BOUND))
        return drivers[-1]

    yield start
    for driver in drivers:
        await driver.close()
    for server in servers:
        server.close()


async def _drain(driver: S3Driver, key: str) -> int:
    return sum([len(chunk) async for chunk in driver.read(key)])


CALLS: dict[str, Callable[[S3Driver], Awaitable[object]]] = {
    "get_content": lambda d: d.get_content("repositories/a/_manifests/tags/v1/current/link"),
    "put_content": lambda d: d.put_content("repositories/a/_manifests/tags/v1/current/link", b""),
    "stat": lambda d: d.stat("repositories/a/_manifests/tags/v1/current/link"),
    "list": lambda d: d.list("repositories/a/_manifests/tags/v1/current/link"),
    "read": lambda d: _drain(d, "repositories/a/_manifests/tags/v1/current/link"),
    "delete": lambda d: d.delete("repositories/a/_manifests/tags/v1/current/link"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_silent_server_fails_the_call_within_the_bound_naming_bucket_and_key(
    serve: Callable[[Answer], Awaitable[S3Driver]], call: str
) -> None:
    driver = await serve(silent)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        await asyncio.wait_for(CALLS[call](driver), 30)
    assert time.monotonic() - start < BOUND + 2
    message = str(err.value)
    assert "bucket hung-bucket key root/repositories/a/_manifests/tags/v1/current/link" in message
    assert f"no answer from the S3 server in {BOUND:g} s" in message


async def test_a_read_that_stalls_mid_body_fails_within_the_bound(
    serve: Callable[[Answer], Awaitable[S3Driver]],
) -> None:
    driver = await serve(trickle(pieces=8, pause=0, stall_after=2))
    start = time.monotonic()
    got: list[int] = []

    async def consume() -> None:
        async for chunk in driver.read("blobs/big"):
            got.append(len(chunk))

    with pytest.raises(StorageError, match=r"bucket hung-bucket key root/blobs/big.*no answer"):
        await asyncio.wait_for(consume(), 30)
    assert 0 < sum(got) < 8 * PIECE
    assert time.monotonic() - start < BOUND + 2


async def test_a_slow_steady_read_longer_than_the_bound_is_not_cut(
    serve: Callable[[Answer], Awaitable[S3Driver]],
) -> None:
    # Each piece comes within the bound; the whole read takes well over it.
    driver = await serve(trickle(pieces=6, pause=BOUND * 0.5))
    start = time.monotonic()
    assert await _drain(driver, "blobs/big") == 6 * PIECE
    assert time.monotonic() - start > 2 * BOUND
