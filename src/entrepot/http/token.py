"""Entrepot's built-in token endpoint (Docker token spec): GET /auth/token?service=...&
scope=... with optional Basic credentials answers a JWT granting what the rules allow."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from entrepot.auth.access import parse_scopes
from entrepot.http.context import context
from entrepot.oci.errors import ErrorCode, RegistryError


async def issue_token(request: Request) -> Response:
    ctx = context(request)
    if ctx.token_service is None:
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            "this registry has no token service (auth.builtin is not set)",
            status=404,
        )
    client = context(request).client_addresses.of(request.scope)
    scopes = parse_scopes(request.query_params.getlist("scope"))
    token, issued_at, expires_in = await ctx.token_service.issue(
        request.headers.get("authorization"),
        client,
        request.query_params.get("service"),
        scopes,
    )
    body = {
        "token": token,
        "access_token": token,
        "expires_in": int(expires_in),
        "issued_at": datetime.fromtimestamp(issued_at, UTC).isoformat().replace("+00:00", "Z"),
    }
    # Tokens are credentials: never cached by anything between us and the client.
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return Response(json.dumps(body).encode(), media_type="application/json", headers=headers)
