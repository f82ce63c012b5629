"""What clients and load balancers probe: the base endpoint /v2/ (distribution-spec
"end-1") and /health."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from entrepot.http.context import context
from entrepot.oci.errors import ErrorCode, RegistryError

JSON = "application/json"


async def base(request: Request) -> Response:
    ctx = context(request)
    if not ctx.is_healthy():
        raise RegistryError(ErrorCode.UNAVAILABLE, "storage backend is unhealthy")
    return Response(b"{}", media_type=JSON, headers=ctx.headers())


async def health(request: Request) -> Response:
    """A plain endpoint for load balancers: 200 while storage is healthy, else 503."""
    ctx = context(request)
    healthy = ctx.is_healthy()
    body = json.dumps({"status": "ok" if healthy else "unhealthy"}).encode()
    return Response(body, status_code=200 if healthy else 503, media_type=JSON)
