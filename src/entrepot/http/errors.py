"""The one handler that writes every error body, the framework's own 404/405 included."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.blobs import storage_unavailable
from entrepot.storage import StorageError

log = logging.getLogger("entrepot.http")

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")

_HTTP_STATUS_CODES = {
    404: ErrorCode.NAME_UNKNOWN,
    405: ErrorCode.UNSUPPORTED,
    413: ErrorCode.SIZE_INVALID,
    416: ErrorCode.RANGE_INVALID,
}


def error_response(
    error: RegistryError, head: bool = False, extra_headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(error.body()).encode()
    headers = {
        API_VERSION_HEADER[0]: API_VERSION_HEADER[1],
        **(extra_headers or {}),
        **error.headers,
    }
    if error.code is ErrorCode.UNAUTHORIZED and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = 'Basic realm="entrepot"'
    response = Response(
        b"" if head else body,
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )
    if head:
        response.headers["Content-Length"] = str(len(body))
    return response


def _configured_headers(request: Request) -> dict[str, str]:
    api = getattr(request.app.state, "api", None)
    headers: dict[str, str] | None = getattr(api, "extra_headers", None)
    return headers or {}


async def handle_registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    if exc.status >= 500:
        log.warning("%s %s -> %s: %s", request.method, _target(request), exc.status, exc)
    return error_response(exc, request.method == "HEAD", _configured_headers(request))


def _target(request: Request) -> str:
    """The request's path and query, as the access log has them: without containerd's
    ``ns``, ``/v2/org/tool/...?ns=ghcr.io`` would read as a request for a pushed
    ``org/tool``."""
    url = request.url
    return f"{url.path}?{url.query}" if url.query else url.path


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method) in the spec's error format."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_STATUS_CODES.get(exc.status_code, ErrorCode.UNKNOWN)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no such endpoint: {request.url.path}"
    error = RegistryError(code, message, status=exc.status_code, headers=dict(exc.headers or {}))
    return error_response(error, request.method == "HEAD", _configured_headers(request))


async def handle_storage_error(request: Request, exc: Exception) -> Response:
    """A storage failure no service turned into UNAVAILABLE itself (an epoch read, say):
    the client may retry (503), the log keeps the driver's reason."""
    assert isinstance(exc, StorageError)
    return await handle_registry_error(request, storage_unavailable(exc))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, _target(request), exc_info=exc)
    error = RegistryError(ErrorCode.UNKNOWN, "internal server error")
    return error_response(error, request.method == "HEAD", _configured_headers(request))
