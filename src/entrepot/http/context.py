"""What handlers share: the repository resolver and the response conventions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect, Request

from entrepot.auth.guard import Guard, Identity, OpenGuard, TokenService
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.api import Repository, RepositoryResolver

# Pagination: registry:2 answers at most this many entries per page when ``n`` is larger.
MAX_PAGE = 10_000


@dataclass
class ApiContext:
    resolver: RepositoryResolver
    # Extra headers from http.headers, sent on every response (registry:2 does the same).
    extra_headers: dict[str, str] = field(default_factory=dict)
    # http.host: makes Location headers absolute, as registry:2 does when it is set.
    base_url: str = ""
    is_healthy: Callable[[], bool] = lambda: True
    guard: Guard = field(default_factory=OpenGuard)
    # Entrepot's own token endpoint (auth.builtin), served at /auth/token.
    token_service: TokenService | None = None
    # Signs upload locations (registry:2's "_state") so an upload is bound to the
    # repository and user that opened it; None when there is no access control.
    upload_secret: bytes | None = None
    # What /metrics reports (see http/metrics.py); nothing by default.
    metrics: Callable[[], Iterable[Any]] = lambda: ()

    def headers(self, repo: Repository | None = None, /, **values: str) -> dict[str, str]:
        headers = {"Docker-Distribution-Api-Version": "registry/2.0", **self.extra_headers}
        if repo is not None and repo.namespace is not None:
            # distribution-spec "Registry Proxying": say which namespace answered.
            headers["OCI-Namespace"] = repo.namespace
        for key, value in values.items():
            headers[key.replace("_", "-")] = value
        return headers

    def location(self, path: str) -> str:
        return f"{self.base_url}{path}"


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx


def identity(request: Request) -> Identity | None:
    """Who made the request, once the guard let it through (None without auth)."""
    found: Identity | None = getattr(request.state, "identity", None)
    return found


def namespace_of(request: Request) -> str | None:
    # Parse the query only when it can hold ns: this runs on every request.
    if b"ns=" in request.scope.get("query_string", b""):
        return request.query_params.get("ns") or None
    return None


def realm_base(request: Request) -> str:
    """This registry's base URL as the client sees it (for the token realm)."""
    ctx = context(request)
    if ctx.base_url.startswith(("http://", "https://")):
        return ctx.base_url
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{scheme}://{host}{ctx.base_url}"


async def repository_for(request: Request, name: str, *, for_push: bool = False) -> Repository:
    """The repository a request addresses, routed by name and the ``ns`` query parameter."""
    namespace = namespace_of(request)
    return await context(request).resolver.repository(name, for_push=for_push, namespace=namespace)


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away mid-body is an error, so
    whatever was being written from it is cancelled, never committed as if complete."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID, "client disconnected before the body was complete"
        ) from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing anything over ``limit`` bytes with 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in body_chunks(request):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> RegistryError:
    return RegistryError(
        ErrorCode.SIZE_INVALID, f"request body is larger than {limit} bytes", status=413
    )


def parse_page(request: Request) -> tuple[int | None, str | None]:
    """The ``n`` and ``last`` query parameters of a paginated list."""
    raw_n = request.query_params.get("n")
    last = request.query_params.get("last") or None
    if raw_n is None or raw_n == "":
        return None, last
    if not (raw_n.isascii() and raw_n.isdigit()):  # "²" is a digit to isdigit, not to int
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, "n must be a non-negative integer", {"n": raw_n}
        )
    return min(int(raw_n), MAX_PAGE), last


def next_link(path: str, n: int | None, page: list[str], has_more: bool) -> dict[str, str]:
    """RFC 5988 Link header to the next page, when there is one."""
    if n is None or not page or not has_more:
        return {}
    from urllib.parse import urlencode

    return {"Link": f'<{path}?{urlencode({"last": page[-1], "n": n})}>; rel="next"'}
