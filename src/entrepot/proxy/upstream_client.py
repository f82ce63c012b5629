"""The HTTP client for one upstream registry: manifests (exact bytes, digest-checked),
blobs (streamed as received; the caller's verifying writer checks them) and tags, with
sign-in (``upstream_auth.py``), failover between urls, and errors saying what went wrong.

Everything goes over one aiohttp session: its C HTTP parser streams blob bodies several
times faster than a pure-Python one (a cold pull through the cache is bounded by it). It
follows redirects, dropping the Authorization header for good once one leaves the origin
(Docker Hub and ghcr.io answer blob GETs with a 307 to a CDN), and decodes gzip/deflate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
from yarl import URL

from entrepot import __version__
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.manifest import MAX_MANIFEST_SIZE
from entrepot.oci.mediatypes import OCI_INDEX
from entrepot.proxy.health import UpstreamHealth
from entrepot.proxy.metrics import RequestCounts
from entrepot.proxy.upstream_auth import (
    Authenticator,
    AuthError,
    Token,
    TokenKey,
    parse_token_response,
)
from entrepot.proxy.upstream_errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamOffline,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from entrepot.proxy.upstream_responses import (
    MAX_REDIRECTS,
    content_length,
    content_type,
    describe,
    error_detail,
    head_facts,
    header_digest,
    next_link,
    parse_descriptors,
    parse_json,
    parse_tags,
    read_body,
    reference_digest,
    undecodable,
)

log = logging.getLogger(__name__)

MAX_TAGS_PAGE = 16 * 1024 * 1024
MAX_TOKEN_RESPONSE = 1024 * 1024
CHUNK_SIZE = 1 << 20
# Blob GETs ask for identity; what a server applies anyway is decoded (as Docker's Go
# client does) when aiohttp can: anything else would reach the digest check undecoded.
_BLOB_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})


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


class UpstreamClient:
    """Talks to one upstream registry. Safe for concurrent use by many tasks."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        requests: RequestCounts | None = None,
        health: UpstreamHealth | None = None,
    ) -> None:
        if not settings.urls:
            raise ValueError(f"upstream {settings.host} has no urls")
        self.settings = settings
        self.host = settings.host
        # Counts by kind; exported and told each response's headers (proxy/metrics.py).
        self.requests = requests if requests is not None else RequestCounts(settings.host)
        # Offline (configured or automatic): no request is sent (proxy/health.py).
        self.health = health if health is not None else UpstreamHealth(settings.host)
        self._urls = tuple(url.rstrip("/") for url in settings.urls)
        self._preferred = 0
        # sock_connect bounds the TCP+TLS connect and sock_read each read; ``connect``
        # (waiting for a pooled connection, then connecting) gets both.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout + settings.read_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None
        self._auth = Authenticator(self._fetch_token, settings.username, settings.password, clock)

    def _open(self) -> aiohttp.ClientSession:
        """The session, created on first use inside the running event loop (aiohttp binds
        a session to it). Proxies come from the environment; cookies are not kept."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": f"entrepot/{__version__}"},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=True,
                requote_redirect_url=False,  # signed CDN URLs must keep their encoding
            )
        return self._session

    async def aclose(self) -> None:
        await self.health.aclose()
        await self._auth.aclose()
        if self._session is not None:
            await self._session.close()

    # -- the API -----------------------------------------------------------------------

    async def head_manifest(
        self, name: str, reference: str, accept: Sequence[str]
    ) -> RemoteManifest:
        """HEAD a manifest (does not count as a pull on Docker Hub). By digest, the digest
        is the reference's when the upstream sends no Docker-Content-Digest."""
        response, what = await self._manifest_request("HEAD", name, reference, accept)
        response.release()
        expected = reference_digest(reference)
        header, size = head_facts(response, expected, what, self.host)
        media_type = content_type(response)
        if not media_type:
            raise self._invalid(f"{what}: no Content-Type")
        return RemoteManifest(header or expected, media_type, size, None)

    async def get_manifest(
        self, name: str, reference: str, accept: Sequence[str]
    ) -> RemoteManifest:
        """GET a manifest's exact bytes. A by-digest reference must be a valid digest
        (RegistryError DIGEST_INVALID otherwise); bytes that do not match it, or the
        upstream's Docker-Content-Digest, are UpstreamInvalid."""
        expected = reference_digest(reference)
        response, what = await self._manifest_request("GET", name, reference, accept)
        raw = await self._read_capped(response, MAX_MANIFEST_SIZE, what)
        digest = Digest.of(raw, expected.algorithm if expected else "sha256")
        if expected and digest != expected:
            raise self._invalid(f"{what}: the bytes received have digest {digest}")
        header = header_digest(response, what, self.host)
        if header and Digest.of(raw, header.algorithm) != header:
            raise self._invalid(f"{what}: bytes do not match Docker-Content-Digest {header}")
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise self._invalid(f"{what}: the manifest is not a JSON object")
        media_type = content_type(response)
        declared = body.get("mediaType")
        if media_type in _GENERIC_TYPES and isinstance(declared, str) and declared:
            media_type = declared
        if not media_type:
            raise self._invalid(f"{what}: no media type in Content-Type or body")
        return RemoteManifest(digest, media_type, len(raw), raw)

    async def stat_blob(self, name: str, digest: Digest) -> int:
        """HEAD a blob (following redirects); its size."""
        what, path = f"HEAD blob {name}@{digest}", f"/v2/{name}/blobs/{digest}"
        response = await self._request("HEAD blob", name, "HEAD", path, {}, what)
        response.release()
        return head_facts(response, digest, what, self.host)[1]

    @asynccontextmanager
    async def open_blob(self, name: str, digest: Digest) -> AsyncIterator[RemoteBlob]:
        """GET a blob, streaming, following redirects. Identity encoding is asked for; a
        gzip or deflate Content-Encoding the server applies anyway is decoded, and then
        the size is unknown. The response closes when the context exits."""
        what, path = f"GET blob {name}@{digest}", f"/v2/{name}/blobs/{digest}"
        headers = {"Accept-Encoding": "identity"}
        response = await self._request("GET blob", name, "GET", path, headers, what)
        try:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in _BLOB_ENCODINGS:
                raise self._invalid(f"{what}: unsupported Content-Encoding {encoding[:50]!r}")
            size = content_length(response) if encoding == "identity" else None
            chunks = self._stream(response, what)
            try:
                yield RemoteBlob(size, chunks)
            finally:
                await chunks.aclose()
        finally:
            response.release()

    async def list_tags(self, name: str) -> list[str]:
        """All tags, following Link rel="next" pagination."""
        what = f"GET tags {name}"
        pages = self._pages("GET tags", name, f"/v2/{name}/tags/list", {}, MAX_TAGS_PAGE, what)
        return [tag async for raw in pages for tag in parse_tags(raw, what, self.host)]

    async def list_referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        """The manifests referring to ``subject`` (distribution-spec "Listing Referrers"),
        unfiltered, following Link pagination; each a descriptor as the upstream wrote it.
        UpstreamNotFound (404) means the upstream has no referrers API."""
        what = f"GET referrers {name}@{subject}"
        path, headers = f"/v2/{name}/referrers/{subject}", {"Accept": OCI_INDEX}
        pages = self._pages("GET referrers", name, path, headers, MAX_MANIFEST_SIZE, what)
        return [entry async for raw in pages for entry in parse_descriptors(raw, what, self.host)]

    async def _pages(
        self, kind: str, name: str, path: str, headers: dict[str, str], cap: int, what: str
    ) -> AsyncIterator[bytes]:
        """The bodies of a paginated list, following Link rel="next"."""
        seen = {path}
        while True:
            response = await self._request(kind, name, "GET", path, headers, what)
            yield await self._read_capped(response, cap, what)
            link = next_link(response.headers.getall("Link", []))
            if link is None:
                return
            path = self._relative(response.url.join(URL(link, encoded=True)))
            if path in seen:
                raise self._invalid(f"{what}: pagination loops back to {path}")
            seen.add(path)

    # -- requests, failover, sign-in -------------------------------------------------

    async def _manifest_request(
        self, method: str, name: str, reference: str, accept: Sequence[str]
    ) -> tuple[aiohttp.ClientResponse, str]:
        what = f"{method} manifest {name}{'@' if is_digest(reference) else ':'}{reference}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        path = f"/v2/{name}/manifests/{reference}"
        return await self._request(f"{method} manifest", name, method, path, headers, what), what

    async def _request(
        self, kind: str, name: str, method: str, path: str, headers: dict[str, str], what: str
    ) -> aiohttp.ClientResponse:
        """Send to the first url that answers without a transport error or 5xx, starting
        with the last one that did. Returns an open 2xx response (the caller releases
        it); raises otherwise. Nothing is sent while the upstream is offline."""
        offline = self.health.reason
        if offline is not None:
            raise UpstreamOffline(offline, upstream=self.host)
        failures: list[str] = []
        answered = False
        for step in range(len(self._urls)):
            index = (self._preferred + step) % len(self._urls)
            base = self._urls[index]
            try:
                response = await self._signed_in(kind, name, method, base, path, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{base}: {describe(exc)}")
                continue
            except AuthError as exc:
                answered = answered or exc.status is not None
                self._auth_failed(exc, base, failures)
                continue
            answered = True
            self.requests.saw(response.headers)
            if response.status >= 500:
                response.release()
                failures.append(f"{base}: HTTP {response.status}")
                continue
            if failures:
                log.warning("upstream %s: %s: using %s after %s", self.host, what, base, failures)
            self._preferred = index
            self.health.answered()
            if not 200 <= response.status < 300:
                try:
                    await self._raise_for_status(response, what)
                finally:
                    response.release()
            return response
        if answered:
            self.health.answered()
        else:
            self.health.unanswered(failures[-1] if failures else what, self.probe)
        raise UpstreamUnavailable(f"{what}: {'; '.join(failures)}", upstream=self.host)

    async def probe(self) -> str:
        """``GET /v2/`` at each url until one answers below 500 (a 401 counts: it is up);
        what answered. Sent even while offline: it is how an upstream comes back."""
        failures = []
        for base in self._urls:
            self.requests["probe"] += 1
            try:
                async with self._open().get(base + "/v2/", allow_redirects=False) as response:
                    if response.status < 500:
                        return f"GET /v2/ answered HTTP {response.status}"
                    failures.append(f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(describe(exc))
        raise UpstreamUnavailable("; ".join(failures), upstream=self.host)

    async def _signed_in(
        self, kind: str, name: str, method: str, base: str, path: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send with the credentials ``base`` asked for before; answer one 401 challenge."""
        authorization = await self._auth.authorization(base, name)
        response = await self._send(kind, method, base + path, headers, authorization)
        if response.status != 401:
            return response
        try:
            challenges = response.headers.getall("WWW-Authenticate", [])
            answer = await self._auth.answer(challenges, base, name, authorization)
        except BaseException:
            response.release()
            raise
        if answer is None:
            return response
        response.release()
        return await self._send(kind, method, base + path, headers, answer)

    async def _send(
        self, kind: str, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> aiohttp.ClientResponse:
        if authorization:
            headers = {**headers, "Authorization": authorization}
        self.requests[kind] += 1
        # aiohttp's max_redirects counts the redirect that stops it.
        return await self._open().request(
            method, URL(url, encoded=True), headers=headers, max_redirects=MAX_REDIRECTS + 1
        )

    async def _fetch_token(self, key: TokenKey, basic: str | None) -> Token:
        """GET realm?service=...&scope=..., anonymously or with Basic credentials."""
        params = [("service", key.service)] if key.service else []
        params += [("scope", scope) for scope in key.scope.split()]
        headers = {"Authorization": basic} if basic else {}
        what = f"token for {key.scope!r} from {key.realm.partition('?')[0]}"
        self.requests["token"] += 1
        status: int | None = None
        try:
            async with self._open().get(key.realm, params=params, headers=headers) as response:
                status = response.status
                if status in (401, 403):
                    who = "the configured credentials were" if basic else "anonymous access was"
                    raise AuthError(f"{what}: HTTP {status}, {who} refused", status)
                if not 200 <= status < 300:
                    retry_after = response.headers.get("Retry-After")
                    raise AuthError(f"{what}: HTTP {status}", status, retry_after)
                body = await read_body(response, MAX_TOKEN_RESPONSE)
                return parse_token_response(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthError(f"{what}: {describe(exc)}", None) from exc
        except ValueError as exc:  # too large, or not a token response
            raise AuthError(f"{what}: {exc}", status) from None

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

    async def _raise_for_status(self, response: aiohttp.ClientResponse, what: str) -> NoReturn:
        status = response.status
        hint = " (authentication failed, or the repository does not exist)" if status == 401 else ""
        message = f"{what}: HTTP {status}{await error_detail(response)}{hint}"
        raise self._error(status, message, response.headers.get("Retry-After"))

    async def _read_capped(self, response: aiohttp.ClientResponse, cap: int, what: str) -> bytes:
        """The whole body, at most ``cap`` bytes; releases the response."""
        try:
            return await read_body(response, cap)
        except ValueError as exc:
            raise self._invalid(f"{what}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._broken(exc, what) from exc
        finally:
            response.release()

    async def _stream(
        self, response: aiohttp.ClientResponse, what: str
    ) -> AsyncGenerator[bytes, None]:
        received = 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                received += len(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp raises too when a body ends short of its Content-Length.
            raise self._broken(exc, f"{what}: body broke off after {received} bytes") from exc

    def _broken(self, exc: BaseException, what: str) -> UpstreamError:
        """A body that could not be read: undecodable (invalid) or cut off (unavailable)."""
        if undecodable(exc):
            return self._invalid(f"{what}: the Content-Encoding does not decode")
        return UpstreamUnavailable(f"{what}: {describe(exc)}", upstream=self.host)

    def _relative(self, url: URL) -> str:
        """A pagination link as a path (with query) under the upstream's base url."""
        prefix = URL(self._urls[self._preferred], encoded=True).raw_path.rstrip("/")
        path = url.raw_path_qs
        return path.removeprefix(prefix) if prefix and path.startswith(prefix + "/") else path

    def _invalid(self, message: str) -> UpstreamInvalid:
        return UpstreamInvalid(message, upstream=self.host)
