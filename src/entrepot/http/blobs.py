"""Blob endpoints: /v2/<name>/blobs/<digest> (distribution-spec "Pulling blobs",
"Deleting Blobs"), Range requests included."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from entrepot.http import events
from entrepot.http.context import HeadersMade, RawHeaders, context, ready_response
from entrepot.http.repositories import repository_for, writes_for
from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
OCTET_STREAM = "application/octet-stream"


def _single_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for a single satisfiable byte range, None to send it all."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        start, end = max(size - int(last), 0), size
    elif last and int(last) < int(first):
        return None  # RFC 9110: an invalid range-spec makes the header ignored
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise RegistryError(
            ErrorCode.RANGE_INVALID,
            f"requested range not satisfiable for a blob of {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def _make_head_headers(digest: Digest, size: int) -> RawHeaders:
    text = str(digest).encode()
    return (
        (b"docker-content-digest", text),
        (b"etag", b'"' + text + b'"'),
        (b"cache-control", b"max-age=31536000"),
        (b"content-length", str(size).encode()),
        (b"accept-ranges", b"bytes"),
        (b"content-type", OCTET_STREAM.encode()),
    )


# A blob HEAD's own headers, by (digest, size).
_head_headers = HeadersMade(_make_head_headers)


async def get_blob(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    digest = Digest.parse(reference)
    repo = await repository_for(request, name)
    if request.method == "HEAD":
        info = await repo.blobs.stat(digest)
        if ctx.notifier is not None:  # (as events checks: skipped here, on every HEAD)
            events.blob_pulled(request, repo, info)  # registry:2 counts a HEAD as a pull
        raw_headers = ctx.raw_headers(repo)
        raw_headers += _head_headers(digest, info.size)
        return ready_response(b"", raw_headers)
    headers = ctx.headers(repo, Docker_Content_Digest=str(digest), ETag=f'"{digest}"')
    headers["Cache-Control"] = "max-age=31536000"
    blob = await repo.blobs.open(digest)
    events.blob_pulled(request, repo, blob.info)
    if blob.redirect_url is not None and (url := await blob.redirect_url()) is not None:
        # As registry:2: the client fetches the bytes from the storage backend itself.
        return RedirectResponse(url, status_code=307, headers=headers)
    range_header = request.headers.get("range")
    if blob.settled is not None and range_header is None:
        # A fill about to end: send its complete file rather than stream it through here.
        blob = await blob.settled() or blob
    if blob.local_path is not None and range_header is None:
        # Ranges go the streamed way below: FileResponse would answer a bad or
        # unsatisfiable one in plain text, not in the spec's error format.
        return FileResponse(blob.local_path, media_type=OCTET_STREAM, headers=headers)
    size = blob.info.size
    if size < 0:
        # A cache fill whose upstream did not announce a length: stream it as it comes.
        return StreamingResponse(
            blob.open_stream(0, None), media_type=OCTET_STREAM, headers=headers
        )
    headers["Accept-Ranges"] = "bytes"
    span = _single_range(range_header or "", size)
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            blob.open_stream(0, None), media_type=OCTET_STREAM, headers=headers
        )
    start, end = span
    headers["Content-Length"] = str(end - start)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(
        blob.open_stream(start, end - start),
        status_code=206,
        media_type=OCTET_STREAM,
        headers=headers,
    )


async def delete_blob(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    writes = await writes_for(request, name)
    digest = Digest.parse(reference)
    await writes.blobs.delete(digest)
    events.blob_deleted(request, name, digest)
    return Response(b"", status_code=202, headers=ctx.headers())
