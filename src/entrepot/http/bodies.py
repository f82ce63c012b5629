"""Request bodies: streamed as they arrive, or read whole up to a limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from entrepot.oci.errors import ErrorCode, RegistryError


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
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
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
