"""What every handler shares: the application's ApiContext (the resolver, access control,
response conventions) and who is asking."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from entrepot.auth.guard import Guard, Identity, OpenGuard, TokenService
from entrepot.http.clientaddr import ClientAddresses
from entrepot.registry.api import Repository, RepositoryResolver

if TYPE_CHECKING:  # notify reports its counters through metrics, which needs this module
    from entrepot.http.notify import Notifier


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
    # Who the client is behind trusted reverse proxies (http.trustedproxies).
    client_addresses: ClientAddresses = field(default_factory=ClientAddresses)
    # What /metrics reports (see http/metrics.py); nothing by default.
    metrics: Callable[[], Iterable[Any]] = lambda: ()
    # registry:2's notifications (http/events.py); None when no endpoint is configured.
    notifier: Notifier | None = None

    def headers(self, repo: Repository | None = None, /, **values: str) -> dict[str, str]:
        headers = {"Docker-Distribution-Api-Version": "registry/2.0", **self.extra_headers}
        if repo is not None and repo.namespace is not None:
            # distribution-spec "Registry Proxying": say which namespace answered.
            headers["OCI-Namespace"] = repo.namespace
        for key, value in values.items():
            headers[key.replace("_", "-")] = value
        return headers

    @functools.cached_property
    def _raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers().items()
        ]

    def raw_headers(self, repo: Repository | None = None) -> list[tuple[bytes, bytes]]:
        """``headers(repo)`` as a fresh list of ASGI header pairs (lower-case names), for
        ``ready_response``: made once, not encoded again on every request."""
        raw = self._raw_headers.copy()
        if repo is not None and repo.namespace is not None:
            raw.append((b"oci-namespace", repo.namespace.encode("latin-1")))
        return raw

    def location(self, path: str) -> str:
        return f"{self.base_url}{path}"


# Where the request's scope holds the ApiContext: put there by the front door for the
# /v2/<name>/... endpoints, else after the first look-up (a request asks several times,
# and app.state's attribute look-up is slower than a dict's).
API_IN_SCOPE = "entrepot.api"


def context(request: Request) -> ApiContext:
    scope = request.scope
    ctx: ApiContext | None = scope.get(API_IN_SCOPE)
    if ctx is None:
        ctx = scope[API_IN_SCOPE] = request.app.state.api
    return ctx


def ready_response(
    body: bytes, raw_headers: list[tuple[bytes, bytes]], status: int = 200
) -> Response:
    """A ``Response`` whose headers are given as ASGI pairs, Content-Type and
    Content-Length among them: what ``Response(...)`` would be, without encoding its
    headers again (the hot read answers: manifests and blob HEADs)."""
    response = Response.__new__(Response)
    response.status_code = status
    response.background = None
    response.body = body
    response.raw_headers = raw_headers
    return response


RawHeaders = tuple[tuple[bytes, bytes], ...]


class HeadersMade:
    """Response headers made once per key (a digest, a size...) rather than encoded on
    every request: at most ``kept`` sets, the oldest pushed out."""

    def __init__(self, make: Callable[..., RawHeaders], kept: int = 4096) -> None:
        self.make = make
        self.kept = kept
        self.made: dict[tuple[Hashable, ...], RawHeaders] = {}

    def __call__(self, *key: Hashable) -> RawHeaders:
        made = self.made.get(key)
        if made is None:
            made = self.make(*key)
            if len(self.made) >= self.kept:
                del self.made[next(iter(self.made))]
            self.made[key] = made
        return made


def identity(request: Request) -> Identity | None:
    """Who made the request, once the guard let it through (None without auth)."""
    found: Identity | None = getattr(request.state, "identity", None)
    return found


def realm_base(request: Request) -> str:
    """This registry's base URL as the client sees it (for the token realm)."""
    ctx = context(request)
    if ctx.base_url.startswith(("http://", "https://")):
        return ctx.base_url
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{scheme}://{host}{ctx.base_url}"
