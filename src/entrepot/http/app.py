"""The ASGI application: one route table for the /v2/ API, parsed right to left because
repository names contain slashes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from entrepot.http import blobs, listing, manifests, uploads
from entrepot.http.context import ApiContext
from entrepot.http.errors import handle_http_exception, handle_registry_error, handle_unexpected
from entrepot.oci.errors import ErrorCode, RegistryError

Handler = Callable[[Request, str, str], Awaitable[Response]]

# (pattern over the path after /v2/, {method: handler}); first match wins.
_ENDPOINTS: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"^(.+)/tags/list()$"), {"GET": listing.tags_list}),
    (
        re.compile(r"^(.+)/manifests/([^/]+)$"),
        {
            "GET": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    (re.compile(r"^(.+)/blobs/uploads/?()$"), {"POST": uploads.start_upload}),
    (
        re.compile(r"^(.+)/blobs/uploads/([^/]+)$"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    (re.compile(r"^(.+)/blobs/([^/]+)$"), {"GET": blobs.get_blob, "DELETE": blobs.delete_blob}),
    (re.compile(r"^(.+)/referrers/([^/]+)$"), {"GET": listing.referrers}),
]

_ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
# Percent-escapes that would smuggle a separator or NUL into a repository name.
_SMUGGLED = ("%2f", "%5c", "%00", "%2e")


async def dispatch(request: Request) -> Response:
    path: str = request.path_params["path"]
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").lower()
    if any(escape in raw_path for escape in _SMUGGLED):
        raise RegistryError(ErrorCode.NAME_INVALID, "escaped characters are not allowed in names")
    method = "GET" if request.method == "HEAD" else request.method
    for pattern, handlers in _ENDPOINTS:
        match = pattern.match(path)
        if match is None:
            continue
        handler = handlers.get(method)
        if handler is None:
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"{request.method} is not supported on this endpoint",
                headers={"Allow": ", ".join(sorted(handlers))},
            )
        return await handler(request, match.group(1), match.group(2))
    raise HTTPException(404)


def build_app(
    api: ApiContext,
    *,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra_routes: Sequence[Route] = (),
) -> Starlette:
    routes = [
        Route("/v2/", listing.base, methods=["GET", "HEAD"]),
        Route("/v2", listing.base, methods=["GET", "HEAD"]),
        Route("/v2/_catalog", listing.catalog, methods=["GET"]),
        Route("/v2/{path:path}", dispatch, methods=_ALL_METHODS),
        Route("/health", listing.health, methods=["GET", "HEAD"]),
        *extra_routes,
    ]

    @asynccontextmanager
    async def default_lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    app = Starlette(
        routes=routes,
        exception_handlers={
            RegistryError: handle_registry_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan or default_lifespan,
    )
    app.state.api = api
    return app
