"""The HTTP client for one upstream registry: manifests (exact bytes, digest-checked),
blobs (streamed as received; the caller's verifying writer checks them) and tags, with
token auth (``auth.py``), failover between urls, and errors saying what went wrong.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, NoReturn

import aiohttp
import httpx

from entrepot import __version__
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import RegistryError
from entrepot.oci.manifest import MAX_MANIFEST_SIZE
from entrepot.proxy import blobstream
from entrepot.proxy.auth import Authenticator, AuthError, describe
from entrepot.proxy.metrics import RequestCounts

log = logging.getLogger(__name__)

MAX_TAGS_PAGE = 16 * 1024 * 1024
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")


@dataclass(frozen=True)
class UpstreamSettings:
    host: str  # the registry this upstream stands for, e.g. "docker.io"
    urls: tuple[str, ...]  # tried in order (starting with the last that answered)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 30.0


@dataclass(frozen=True)
class RemoteManifest:
    digest: Digest | None  # None only when a HEAD response carried no Docker-Content-Digest
    media_type: str
    size: int
    raw: bytes | None  # None for HEAD


@dataclass
class RemoteBlob:
    """An open blob download; ``chunks`` raises UpstreamUnavailable if the body breaks off."""

    size: int | None  # from Content-Length
    chunks: AsyncIterator[bytes]


class UpstreamError(Exception):
    """An upstream failure. Messages never contain credentials, tokens or signed URLs."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(f"{upstream}: {message}" if upstream else message)
        self.upstream = upstream
        self.message = message


class UpstreamNotFound(UpstreamError):
    """404: the manifest, blob or repository is unknown upstream."""


class UpstreamUnavailable(UpstreamError):
    """Connection error, timeout, 5xx, broken body, or every url failed."""


class UpstreamRateLimited(UpstreamError):
    """429; ``retry_after`` is the upstream's Retry-After header, if any."""

    def __init__(self, message: str, *, upstream: str = "", retry_after: str | None = None) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after


class UpstreamDenied(UpstreamError):
    """401/403 after authenticating. Docker Hub also answers 401 for unknown repositories."""


class UpstreamInvalid(UpstreamError):
    """A response that breaks the protocol: digest mismatch, bad JSON, missing headers."""


class _NoCookies(DefaultCookiePolicy):
    # httpx keeps cookies across requests by default; a registry client has no use for them.
    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False


class UpstreamClient:
    """Talks to one upstream registry. Safe for concurrent use by many tasks.

    Blob bodies go over aiohttp (``blobstream.py``), everything else over httpx. With a
    ``transport`` given (tests), blobs go through it too unless ``aiohttp_blobs``."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        aiohttp_blobs: bool | None = None,
        requests: RequestCounts | None = None,
    ) -> None:
        if not settings.urls:
            raise ValueError(f"upstream {settings.host} has no urls")
        self.settings = settings
        self.host = settings.host
        # Counts by kind; exported and told each response's headers (proxy/metrics.py).
        self.requests = requests if requests is not None else RequestCounts(settings.host)
        self._urls = tuple(url.rstrip("/") for url in settings.urls)
        self._preferred = 0
        # read, write and pool waits get read_timeout.
        timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
        # httpx drops Authorization when a redirect leaves the origin (blob GETs -> CDN).
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            follow_redirects=True,
            headers={"User-Agent": f"entrepot/{__version__}"},
            cookies=CookieJar(policy=_NoCookies()),
        )
        self._auth = Authenticator(
            self._client, settings.username, settings.password, clock, self.requests
        )
        self._blobs: blobstream.BlobSession | None = None
        if aiohttp_blobs or (aiohttp_blobs is None and transport is None):
            self._blobs = blobstream.BlobSession(
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                user_agent=f"entrepot/{__version__}",
            )

    async def aclose(self) -> None:
        await self._auth.aclose()
        await self._client.aclose()
        if self._blobs is not None:
            await self._blobs.aclose()

    # -- the API -----------------------------------------------------------------------

    async def head_manifest(
        self, name: str, reference: str, accept: Sequence[str]
    ) -> RemoteManifest:
        """HEAD a manifest (does not count as a pull on Docker Hub). By digest, the digest
        is the reference's when the upstream sends no Docker-Content-Digest."""
        response, what = await self._manifest_request("HEAD", name, reference, accept)
        await response.aclose()
        expected = _reference_digest(reference)
        header, size = self._head_facts(response, expected, what)
        media_type = _content_type(response)
        if not media_type:
            raise self._invalid(f"{what}: no Content-Type")
        return RemoteManifest(header or expected, media_type, size, None)

    async def get_manifest(
        self, name: str, reference: str, accept: Sequence[str]
    ) -> RemoteManifest:
        """GET a manifest's exact bytes. A by-digest reference must be a valid digest
        (RegistryError DIGEST_INVALID otherwise); bytes that do not match it, or the
        upstream's Docker-Content-Digest, are UpstreamInvalid."""
        expected = _reference_digest(reference)
        response, what = await self._manifest_request("GET", name, reference, accept)
        raw = await self._read_capped(response, MAX_MANIFEST_SIZE, what)
        digest = Digest.of(raw, expected.algorithm if expected else "sha256")
        if expected and digest != expected:
            raise self._invalid(f"{what}: the bytes received have digest {digest}")
        header = self._header_digest(response, what)
        if header and Digest.of(raw, header.algorithm) != header:
            raise self._invalid(f"{what}: bytes do not match Docker-Content-Digest {header}")
        body = _json(raw)
        if not isinstance(body, dict):
            raise self._invalid(f"{what}: the manifest is not a JSON object")
        media_type = _content_type(response)
        declared = body.get("mediaType")
        if media_type in _GENERIC_TYPES and isinstance(declared, str) and declared:
            media_type = declared
        if not media_type:
            raise self._invalid(f"{what}: no media type in Content-Type or body")
        return RemoteManifest(digest, media_type, len(raw), raw)

    async def stat_blob(self, name: str, digest: Digest) -> int:
        """HEAD a blob; its size."""
        what, path = f"HEAD blob {name}@{digest}", f"/v2/{name}/blobs/{digest}"
        response = await self._request("HEAD blob", name, "HEAD", path, {}, what)
        await response.aclose()
        return self._head_facts(response, digest, what)[1]

    @asynccontextmanager
    async def open_blob(self, name: str, digest: Digest) -> AsyncIterator[RemoteBlob]:
        """GET a blob, streaming, following redirects. Identity encoding is asked for; a
        Content-Encoding the server applies anyway is decoded (as Docker's Go client does),
        and then the size is unknown. The response closes when the context exits."""
        what, path = f"GET blob {name}@{digest}", f"/v2/{name}/blobs/{digest}"
        if self._blobs is not None:
            async with self._open_blob_aiohttp(self._blobs, name, path, what) as blob:
                yield blob
            return
        headers = {"Accept-Encoding": "identity"}
        response = await self._request("GET blob", name, "GET", path, headers, what)
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        size = None if encoded else _content_length(response)
        chunks = self._stream(response, size, what)
        try:
            yield RemoteBlob(size, chunks)
        finally:
            await chunks.aclose()
            await response.aclose()

    async def list_tags(self, name: str) -> list[str]:
        """All tags, following Link rel="next" pagination."""
        what = f"GET tags {name}"
        path = f"/v2/{name}/tags/list"
        tags: list[str] = []
        seen = {path}
        while True:
            response = await self._request("GET tags", name, "GET", path, {}, what)
            raw = await self._read_capped(response, MAX_TAGS_PAGE, what)
            tags.extend(self._parse_tags(raw, what))
            link = _next_link(response.headers.get_list("link"))
            if link is None:
                return tags
            path = self._relative(response.url.join(link))
            if path in seen:
                raise self._invalid(f"{what}: pagination loops back to {path}")
            seen.add(path)

    # -- blob bodies over aiohttp ----------------------------------------------------

    @asynccontextmanager
    async def _open_blob_aiohttp(
        self, blobs: blobstream.BlobSession, name: str, path: str, what: str
    ) -> AsyncIterator[RemoteBlob]:
        response = await self._blob_request(blobs, name, path, what)
        try:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            decoder = None
            if encoding != "identity":
                try:
                    decoder = blobstream.Decoder(encoding)
                except ValueError as exc:
                    raise self._invalid(f"{what}: {exc}") from None
            size = None if decoder else response.content_length
            chunks = self._stream_aiohttp(response, decoder, size, what)
            try:
                yield RemoteBlob(size, chunks)
            finally:
                await chunks.aclose()
        finally:
            response.release()

    async def _blob_request(
        self, blobs: blobstream.BlobSession, name: str, path: str, what: str
    ) -> aiohttp.ClientResponse:
        """``_request`` for a blob GET over aiohttp: the same failover, credentials (from
        the Authenticator, answering one 401 challenge) and errors. An open 2xx response."""
        failures: list[str] = []
        headers = {"Accept-Encoding": "identity"}
        for step in range(len(self._urls)):
            index = (self._preferred + step) % len(self._urls)
            base = self._urls[index]
            try:
                authorization = await self._auth.authorization(base, name)
                self.requests["GET blob"] += 1
                response = await blobs.get(base + path, headers, authorization)
                if response.status == 401:
                    challenges = response.headers.getall("WWW-Authenticate", [])
                    try:
                        answer = await self._auth.answer(challenges, base, name, authorization)
                    except BaseException:
                        response.release()
                        raise
                    if answer is not None:
                        response.release()
                        self.requests["GET blob"] += 1
                        response = await blobs.get(base + path, headers, answer)
            except (aiohttp.ClientError, TimeoutError, blobstream.RedirectError) as exc:
                failures.append(f"{base}: {blobstream.describe(exc)}")
                continue
            except AuthError as exc:
                self._auth_failed(exc, base, failures)
                continue
            if response.status >= 500:
                response.release()
                failures.append(f"{base}: HTTP {response.status}")
                continue
            if failures:
                log.warning("upstream %s: %s: using %s after %s", self.host, what, base, failures)
            self._preferred = index
            if not 200 <= response.status < 300:
                try:
                    status = response.status
                    hint = " (authentication failed, or the repository does not exist)"
                    hint = hint if status == 401 else ""
                    detail = await _aiohttp_error_detail(response)
                    message = f"{what}: HTTP {status}{detail}{hint}"
                    raise self._error(status, message, response.headers.get("Retry-After"))
                finally:
                    response.release()
            return response
        raise UpstreamUnavailable(f"{what}: {'; '.join(failures)}", upstream=self.host)

    async def _stream_aiohttp(
        self,
        response: aiohttp.ClientResponse,
        decoder: blobstream.Decoder | None,
        size: int | None,
        what: str,
    ) -> AsyncGenerator[bytes, None]:
        received = 0
        try:
            async for chunk in response.content.iter_chunked(blobstream.CHUNK_SIZE):
                received += len(chunk)
                if decoder is None:
                    yield chunk
                elif data := decoder.decode(chunk):
                    yield data
            if decoder is not None and (data := decoder.flush()):
                yield data
        except zlib.error as exc:
            raise self._invalid(f"{what}: Content-Encoding: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"{what}: body broke off after {received} bytes: {blobstream.describe(exc)}"
            raise UpstreamUnavailable(message, upstream=self.host) from exc
        if size is not None and received != size:
            message = f"{what}: body ended after {received} of {size} bytes"
            raise UpstreamUnavailable(message, upstream=self.host)

    # -- requests, failover, auth ----------------------------------------------------

    async def _manifest_request(
        self, method: str, name: str, reference: str, accept: Sequence[str]
    ) -> tuple[httpx.Response, str]:
        what = f"{method} manifest {name}{'@' if is_digest(reference) else ':'}{reference}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        path = f"/v2/{name}/manifests/{reference}"
        return await self._request(f"{method} manifest", name, method, path, headers, what), what

    async def _request(
        self, kind: str, name: str, method: str, path: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        """Send to the first url that answers without a transport error or 5xx, starting
        with the last one that did. Returns an open 2xx response; raises otherwise."""
        failures: list[str] = []
        for step in range(len(self._urls)):
            index = (self._preferred + step) % len(self._urls)
            base = self._urls[index]
            try:
                response = await self._auth.send(kind, method, base, path, name, headers)
            except httpx.RequestError as exc:
                failures.append(f"{base}: {describe(exc)}")
                continue
            except AuthError as exc:
                self._auth_failed(exc, base, failures)
                continue
            self.requests.saw(response.headers)
            if response.status_code >= 500:
                await response.aclose()
                failures.append(f"{base}: HTTP {response.status_code}")
                continue
            if failures:
                log.warning("upstream %s: %s: using %s after %s", self.host, what, base, failures)
            self._preferred = index
            if not response.is_success:
                try:
                    await self._raise_for_status(response, what)
                finally:
                    await response.aclose()
            return response
        raise UpstreamUnavailable(f"{what}: {'; '.join(failures)}", upstream=self.host)

    def _auth_failed(self, exc: AuthError, base: str, failures: list[str]) -> None:
        """A failed sign-in at ``base``: raise what it means, unless the token endpoint is
        down, in which case the next url (maybe with another token service) is tried."""
        status = 400 if exc.status == 404 else exc.status  # a token endpoint's 404
        error = self._error(status, exc.message, exc.retry_after)
        if not isinstance(error, UpstreamUnavailable):
            raise error from exc
        failures.append(f"{base}: {exc.message}")

    def _error(self, status: int | None, message: str, retry_after: str | None) -> UpstreamError:
        """The error for an HTTP status; None when there was no response at all."""
        if status is None or status >= 500:
            return UpstreamUnavailable(message, upstream=self.host)
        if status == 429:
            return UpstreamRateLimited(message, upstream=self.host, retry_after=retry_after)
        if status in (401, 403):
            return UpstreamDenied(message, upstream=self.host)
        if status == 404:
            return UpstreamNotFound(message, upstream=self.host)
        return self._invalid(message)

    # -- responses -------------------------------------------------------------------

    async def _raise_for_status(self, response: httpx.Response, what: str) -> NoReturn:
        status = response.status_code
        hint = " (authentication failed, or the repository does not exist)" if status == 401 else ""
        message = f"{what}: HTTP {status}{await _error_detail(response)}{hint}"
        raise self._error(status, message, response.headers.get("retry-after"))

    async def _read_capped(self, response: httpx.Response, cap: int, what: str) -> bytes:
        """The whole body, at most ``cap`` bytes; closes the response."""
        body = bytearray()
        try:
            length = _content_length(response)
            if length is not None and length > cap:
                raise self._invalid(f"{what}: body of {length} bytes exceeds {cap}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise self._invalid(f"{what}: body exceeds {cap} bytes")
        except httpx.DecodingError as exc:
            raise self._invalid(f"{what}: {describe(exc)}") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"{what}: {describe(exc)}", upstream=self.host) from exc
        finally:
            await response.aclose()
        return bytes(body)

    async def _stream(
        self, response: httpx.Response, size: int | None, what: str
    ) -> AsyncGenerator[bytes, None]:
        received = 0
        try:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                yield chunk
        except httpx.DecodingError as exc:
            raise self._invalid(f"{what}: {describe(exc)}") from exc
        except httpx.TransportError as exc:
            message = f"{what}: body broke off after {received} bytes: {describe(exc)}"
            raise UpstreamUnavailable(message, upstream=self.host) from exc
        if size is not None and received != size:
            message = f"{what}: body ended after {received} of {size} bytes"
            raise UpstreamUnavailable(message, upstream=self.host)

    def _head_facts(
        self, response: httpx.Response, expected: Digest | None, what: str
    ) -> tuple[Digest | None, int]:
        """A HEAD response's Docker-Content-Digest (checked against ``expected``) and size."""
        header = self._header_digest(response, what)
        if expected and header and header.algorithm == expected.algorithm and header != expected:
            raise self._invalid(f"{what}: upstream reports digest {header}")
        size = _content_length(response)
        if size is None:
            raise self._invalid(f"{what}: no valid Content-Length")
        return header, size

    def _header_digest(self, response: httpx.Response, what: str) -> Digest | None:
        value = response.headers.get("docker-content-digest")
        if not value:
            return None
        try:
            return Digest.parse(value.strip())
        except RegistryError:
            raise self._invalid(f"{what}: invalid Docker-Content-Digest {value[:100]!r}") from None

    def _parse_tags(self, raw: bytes, what: str) -> list[str]:
        body = _json(raw)
        tags = body.get("tags") or [] if isinstance(body, dict) else None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise self._invalid(f"{what}: the tag list is malformed")
        return [str(t) for t in tags]

    def _relative(self, url: httpx.URL) -> str:
        """A pagination link as a path (with query) under the upstream's base url."""
        prefix = httpx.URL(self._urls[self._preferred]).raw_path.decode("ascii").rstrip("/")
        path = url.raw_path.decode("ascii")
        return path.removeprefix(prefix) if prefix and path.startswith(prefix + "/") else path

    def _invalid(self, message: str) -> UpstreamInvalid:
        return UpstreamInvalid(message, upstream=self.host)


def _reference_digest(reference: str) -> Digest | None:
    return Digest.parse(reference) if is_digest(reference) else None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _content_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def _next_link(values: list[str]) -> str | None:
    for value in values:
        for target, params in _LINK_RE.findall(value):
            for param in params.split(";"):
                key, _, rel = param.partition("=")
                if key.strip().lower() == "rel" and "next" in rel.strip().strip('"').split():
                    return str(target)
    return None


async def _aiohttp_error_detail(response: aiohttp.ClientResponse) -> str:
    """``_error_detail`` for an aiohttp response."""
    try:
        body = bytearray()
        while len(body) <= 65536 and (chunk := await response.content.read(65537 - len(body))):
            body += chunk
        if len(body) > 65536:
            return ""
        first = json.loads(body)["errors"][0]
        return f" ({str(first.get('code'))[:50]}: {str(first.get('message'))[:200]})"
    except (
        aiohttp.ClientError,
        TimeoutError,
        ValueError,
        AttributeError,
        TypeError,
        IndexError,
        KeyError,
    ):
        return ""


async def _error_detail(response: httpx.Response) -> str:
    """The first error of a distribution-spec error body, briefly, or ""."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > 65536:
                return ""
        first = json.loads(body)["errors"][0]
        return f" ({str(first.get('code'))[:50]}: {str(first.get('message'))[:200]})"
    except (httpx.HTTPError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        return ""
