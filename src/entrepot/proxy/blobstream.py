"""Blob bodies over aiohttp, whose C HTTP parser streams several times faster than httpx's
pure-Python one (a cold pull through the cache is bounded by it). Only the blob GET uses
it: auth, failover and error mapping stay in ``upstream.py``, tokens in ``auth.py``.

Redirects (Docker Hub and ghcr answer blob GETs with a 307 to a CDN) are followed here by
hand, so that the Authorization header never leaves the origin it was meant for.
"""

from __future__ import annotations

import zlib

import aiohttp
from yarl import URL

MAX_REDIRECTS = 5
CHUNK_SIZE = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RedirectError(Exception):
    """A redirect that cannot be followed. The message never holds the (signed) URL."""


class BlobSession:
    """One aiohttp session, created on first use inside the running event loop (aiohttp
    binds a session to it) and closed by ``aclose``. Proxies come from the environment,
    as for the httpx client; cookies are not kept; bodies are never decompressed."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, user_agent: str) -> None:
        # sock_connect bounds the TCP+TLS connect and sock_read each read; ``connect``
        # (pool wait plus connect) is bounded like httpx's pool timeout plus its connect.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout + read_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": self._user_agent},
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(
        self, url: str, headers: dict[str, str], authorization: str | None
    ) -> aiohttp.ClientResponse:
        """GET ``url``, following up to MAX_REDIRECTS redirects. ``authorization`` is sent
        only while the target keeps the scheme, host and port of ``url``: once a redirect
        leaves it (to a CDN), it is dropped for good. Returns the first response that is
        not a redirect, open (the caller releases it). Raises aiohttp.ClientError,
        TimeoutError or RedirectError."""
        session = await self._open()
        target = URL(url, encoded=True)
        origin = _origin(target)
        for _ in range(MAX_REDIRECTS + 1):
            if authorization is not None and _origin(target) != origin:
                authorization = None
            sent = {**headers, "Authorization": authorization} if authorization else headers
            response = await session.get(target, headers=sent, allow_redirects=False)
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            status = response.status
            response.release()
            target = _redirect_target(target, location, status)
        raise RedirectError(f"more than {MAX_REDIRECTS} redirects")


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.host, url.port


def _redirect_target(current: URL, location: str, status: int) -> URL:
    if not location:
        raise RedirectError(f"HTTP {status} redirect without a Location")
    try:
        # Sent as received when it is ASCII: signed CDN URLs must keep their encoding.
        target = current.join(URL(location, encoded=location.isascii() and " " not in location))
    except ValueError:
        raise RedirectError(f"HTTP {status} redirect to an invalid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RedirectError(f"HTTP {status} redirect to a URL that is not http(s)")
    return target


class Decoder:
    """Decodes a Content-Encoding a server applied although identity was asked for (as
    Docker's Go client does): gzip and deflate. ValueError for any other encoding,
    zlib.error for a broken stream."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            raise ValueError(f"unsupported Content-Encoding {encoding[:50]!r}")
        self._raw_deflate_fallback = encoding == "deflate"

    def decode(self, data: bytes) -> bytes:
        try:
            out = self._zlib.decompress(data)
        except zlib.error:
            if not self._raw_deflate_fallback:
                raise
            # "deflate" is often sent without its zlib header.
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data)
        self._raw_deflate_fallback = False
        return out

    def flush(self) -> bytes:
        out = self._zlib.flush()
        if not self._zlib.eof:
            raise zlib.error("compressed stream ended early")
        return out


def describe(exc: BaseException) -> str:
    """An aiohttp exception, briefly; never a URL (which may be signed) or a header."""
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.ClientResponseError):
        return type(exc).__name__  # their text holds the URL
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
