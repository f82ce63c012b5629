"""Real HTTP servers on 127.0.0.1 standing in for upstream registries, their token services
and CDNs, so that in-process tests drive the upstream client's production path (aiohttp,
real sockets, real redirects) rather than a fake transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Loopback:
    """An aiohttp server on 127.0.0.1 sending every request to ``handler``. ``stop()``
    closes it, so that connections are refused, as from an upstream that went down."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._server = RawTestServer(self._handle, host="127.0.0.1")
        self.up = False

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await self.handler(request)

    async def start(self) -> Loopback:
        await self._server.start_server()
        self.up = True
        return self

    async def stop(self) -> None:
        if self.up:
            self.up = False
            await self._server.close()

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, path in self.requests if m == method and fragment in path)


class Servers:
    """Starts loopback servers for one test and stops them all at its end."""

    def __init__(self) -> None:
        self._started: list[Loopback] = []
        self._raw: list[asyncio.Server] = []
        self._closing = asyncio.Event()

    async def start(self, handler: Handler) -> Loopback:
        server = await Loopback(handler).start()
        self._started.append(server)
        return server

    async def asgi(self, transport: httpx.ASGITransport) -> Loopback:
        """A server answering through an ASGI app (a real Entrepot registry)."""

        async def forward(request: web.BaseRequest) -> web.StreamResponse:
            headers = [(k, v) for k, v in request.headers.items() if k.lower() != "host"]
            headers.append(("Host", request.host))
            asked = httpx.Request(
                request.method, str(request.url), headers=headers, content=await request.read()
            )
            answer = await transport.handle_async_request(asked)
            body = b"".join([chunk async for chunk in answer.stream])  # type: ignore[union-attr]
            response = web.StreamResponse(status=answer.status_code)
            for key, value in answer.headers.multi_items():
                if key.lower() not in ("transfer-encoding", "connection"):
                    response.headers.add(key, value)
            await response.prepare(request)
            if request.method != "HEAD":
                await response.write(body)
            await response.write_eof()
            return response

        return await self.start(forward)

    async def raw(self, respond: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> str:
        """A server that reads a request head, then lets ``respond`` write whatever bytes
        it likes (a body cut short, nothing at all) and closes the connection."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await respond(writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._raw.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def hold(self) -> None:
        """Wait until the test ends (a server that stops answering)."""
        await self._closing.wait()

    async def close(self) -> None:
        self._closing.set()
        for server in self._started:
            await server.stop()
        for raw in self._raw:
            raw.close()
            await raw.wait_closed()


def dead_url() -> str:
    """A url on a port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def loopback(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Servers]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the client honours *_PROXY
    started = Servers()
    yield started
    await started.close()
