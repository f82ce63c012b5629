"""The ASGI application: one route table for the /v2/ API, parsed right to left because
repository names contain slashes, and the endpoints that probe the application itself
(/v2/, /health)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from entrepot.auth.access import CATALOG, Access
from entrepot.auth.access import repository as repository_access
from entrepot.auth.guard import OpenGuard, Refused
from entrepot.http import blobs, discovery, manifests, token, uploads
from entrepot.http.context import ApiContext, context, realm_base
from entrepot.http.errors import (
    handle_http_exception,
    handle_registry_error,
    handle_storage_error,
    handle_unexpected,
)
from entrepot.http.front import FrontDoor
from entrepot.http.metrics import HttpMetrics
from entrepot.http.repositories import namespace_of
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.names import validate_name
from entrepot.storage import StorageError

Handler = Callable[[Request, str, str], Awaitable[Response]]
PULL = frozenset({"pull"})
PUSH = frozenset({"pull", "push"})  # registry:2 asks both of uploads and manifest pushes
DELETE = frozenset({"delete"})

# (a literal every match contains, pattern over the path after /v2/, {method: (handler,
# actions it needs)}); first match wins. The literal skips most patterns without running
# them: a pattern starting with "(.+)" backtracks over the whole path when it fails.
# The name is lazy ("(.+?)"): what follows it holds no free slash, so the match is the
# greedy one, found from the left rather than by backing over a 71-character digest.
_ENDPOINTS: list[tuple[str, re.Pattern[str], dict[str, tuple[Handler, frozenset[str]]]]] = [
    ("/tags/list", re.compile(r"^(.+?)/tags/list()$"), {"GET": (discovery.tags_list, PULL)}),
    (
        "/manifests/",
        re.compile(r"^(.+?)/manifests/([^/]+)$"),
        {
            "GET": (manifests.get_manifest, PULL),
            "PUT": (manifests.put_manifest, PUSH),
            "DELETE": (manifests.delete_manifest, DELETE),
        },
    ),
    (
        "/blobs/uploads",
        re.compile(r"^(.+?)/blobs/uploads/?()$"),
        {"POST": (uploads.start_upload, PUSH)},
    ),
    (
        "/blobs/uploads/",
        re.compile(r"^(.+?)/blobs/uploads/([^/]+)$"),
        {
            "GET": (uploads.upload_status, PUSH),
            "PATCH": (uploads.patch_upload, PUSH),
            "PUT": (uploads.finish_upload, PUSH),
            "DELETE": (uploads.cancel_upload, PUSH),
        },
    ),
    (
        "/blobs/",
        re.compile(r"^(.+?)/blobs/([^/]+)$"),
        {"GET": (blobs.get_blob, PULL), "DELETE": (blobs.delete_blob, DELETE)},
    ),
    (
        "/referrers/",
        re.compile(r"^(.+?)/referrers/([^/]+)$"),
        {"GET": (discovery.referrers, PULL)},
    ),
]

_ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
# Percent-escapes that would smuggle a separator or NUL into a repository name.
_SMUGGLED = ("%2f", "%5c", "%00", "%2e")


async def guard(request: Request, needed: list[Access]) -> None:
    """Let the request through if its credentials give it ``needed``; else raise."""
    ctx = context(request)
    if isinstance(ctx.guard, OpenGuard):
        return
    client = ctx.client_addresses.of(request.scope)
    try:
        request.state.identity = await ctx.guard.check(
            request.headers.get("authorization"),
            client,
            needed,
            realm_base(request),
            bodyless=request.method == "HEAD",
        )
    except Refused as refused:
        request.state.identity = refused.identity  # the access log names who was refused
        raise


async def dispatch(request: Request) -> Response:
    path: str = request.path_params["path"]
    scope = request.scope
    raw_path = scope.get("raw_path", b"")
    if b"%" in raw_path and any(e in raw_path.decode("latin-1").lower() for e in _SMUGGLED):
        raise RegistryError(ErrorCode.NAME_INVALID, "escaped characters are not allowed in names")
    method: str = scope["method"]
    handler, actions, name, reference = _routed.get((path, method)) or _route(path, method)
    ctx = context(request)
    if not isinstance(ctx.guard, OpenGuard):  # (what guard checks first, done early)
        scope_name = ctx.resolver.scope_name(name, namespace_of(request))
        await guard(request, [repository_access(scope_name, *actions)])
    return await handler(request, name, reference)


# What a path after /v2/ and a method are routed to: (handler, actions it needs, name,
# reference), remembered for the most recent _ROUTED_KEPT valid ones (a pull fleet asks
# for the same few paths over and over; the table's patterns cost a tenth of a request).
_ROUTED_KEPT = 4096
_routed: dict[tuple[str, str], tuple[Handler, frozenset[str], str, str]] = {}


def _route(path: str, method: str) -> tuple[Handler, frozenset[str], str, str]:
    """``path``'s endpoint in the table, its name validated, or the error to answer."""
    for literal, pattern, handlers in _ENDPOINTS:
        if literal not in path:
            continue
        match = pattern.match(path)
        if match is None:
            continue
        entry = handlers.get("GET" if method == "HEAD" else method)
        if entry is None:
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"{method} is not supported on this endpoint",
                headers={"Allow": ", ".join(sorted(handlers))},
            )
        handler, actions = entry
        routed = (handler, actions, validate_name(match.group(1)), match.group(2))
        if len(_routed) >= _ROUTED_KEPT:
            del _routed[next(iter(_routed))]  # the oldest kept
        _routed[(path, method)] = routed
        return routed
    raise HTTPException(404)


async def base(request: Request) -> Response:
    """/v2/: clients check the API version here and learn how to authenticate."""
    await guard(request, [])
    ctx = context(request)
    if not ctx.is_healthy():
        raise RegistryError(ErrorCode.UNAVAILABLE, "storage backend is unhealthy")
    return Response(b"{}", media_type="application/json", headers=ctx.headers())


async def health(request: Request) -> Response:
    """A plain endpoint for load balancers: 200 while storage is healthy, else 503."""
    healthy = context(request).is_healthy()
    body = json.dumps({"status": "ok" if healthy else "unhealthy"}).encode()
    return Response(body, status_code=200 if healthy else 503, media_type="application/json")


async def catalog(request: Request) -> Response:
    await guard(request, [CATALOG])
    return await discovery.catalog(request)


def build_app(
    api: ApiContext,
    *,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    access_log: bool = True,
    metrics: HttpMetrics | None = None,
) -> Starlette:
    """The application; ``metrics``: where registry:2's ``registry_http_*`` are counted."""
    literal_routes = [
        Route("/v2/", base, methods=["GET", "HEAD"]),
        Route("/v2", base, methods=["GET", "HEAD"]),
        Route("/v2/_catalog", catalog, methods=["GET"]),
    ]
    api_route = Route("/v2/{path:path}", dispatch, methods=_ALL_METHODS)
    routes: list[BaseRoute] = [
        *literal_routes,
        api_route,  # early: most requests
        Route("/auth/token", token.issue_token, methods=["GET"]),
        Route("/health", health, methods=["GET", "HEAD"]),
        *extra_routes,
    ]

    @asynccontextmanager
    async def default_lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    error_handlers = {
        RegistryError: handle_registry_error,
        StorageError: handle_storage_error,
        HTTPException: handle_http_exception,
        Exception: handle_unexpected,
    }
    app = RegistryApp(
        routes=routes,
        exception_handlers=error_handlers,
        lifespan=lifespan or default_lifespan,
    )
    app.front = functools.partial(
        FrontDoor,
        access_log=access_log,
        addresses=api.client_addresses,
        metrics=metrics,
        api_route=api_route,
        api=api,
        routes_before=[route.path for route in literal_routes],
        error_handlers=error_handlers,
    )
    app.state.api = api
    return app


class RegistryApp(Starlette):
    """Starlette with http/front.py's FrontDoor outside all its middleware, the
    last-resort error handler included: the access-log line and the metrics then have the
    final status of every answer, and a /v2/<name>/... request passes one layer only."""

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)
