"""Upload endpoints: /v2/<name>/blobs/uploads/[<id>] (distribution-spec "Pushing blobs":
monolithic POST+PUT, POST with digest, chunked PATCH, status, mount, cancel)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from entrepot.auth.access import repository as access
from entrepot.http import events
from entrepot.http.bodies import body_chunks
from entrepot.http.context import ApiContext, context, identity
from entrepot.http.repositories import writes_for
from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.api import BlobInfo, BlobWriter, UploadStatus

_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/(?:\d+|\*))?$")
log = logging.getLogger("entrepot.http.uploads")
# At most one warning about upload states with a foreign signature per this many seconds
# (per process): behind a load balancer, replicas with different secrets fail every push.
STATE_WARNING_INTERVAL = 60.0


class _ForeignStates:
    """Rate-limited warnings about ``_state`` signatures this server did not make."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last: float | None = None
        self.unsaid = 0

    def saw(self, name: str, upload_id: str) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < STATE_WARNING_INTERVAL:
            self.unsaid += 1
            return
        more = f" ({self.unsaid} more since the last warning)" if self.unsaid else ""
        self.last, self.unsaid = now, 0
        log.warning(
            "upload state for %s upload %s has a signature this server did not make: "
            "do all replicas share http.secret?%s",
            name,
            upload_id,
            more,
        )


_foreign_states = _ForeignStates()


def _upload_state(request: Request, name: str, upload_id: str) -> str | None:
    """registry:2's ``_state``: an HMAC binding the upload to its repository and user."""
    secret = context(request).upload_secret
    if secret is None:
        return None
    who = identity(request)
    user = who.user if who is not None and who.user else ""
    message = f"{name}\0{upload_id}\0{user}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]


def _check_state(request: Request, name: str, upload_id: str) -> None:
    expected = _upload_state(request, name, upload_id)
    if expected is None:
        return
    given = request.query_params.get("_state", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        if given:  # signed, not by us (for this repository and user): say so, not just 404
            _foreign_states.saw(name, upload_id)
        # Another repository's or user's upload, or a forged id: as if it did not exist.
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_UNKNOWN, "blob upload unknown to registry", {"uuid": upload_id}
        )


def _upload_headers(request: Request, name: str, status: UploadStatus) -> dict[str, str]:
    ctx = context(request)
    location = f"/v2/{name}/blobs/uploads/{status.upload_id}"
    state = _upload_state(request, name, status.upload_id)
    if state is not None:
        location += f"?_state={state}"
    return ctx.headers(
        Location=ctx.location(location),
        Range=f"0-{max(status.size - 1, 0)}",
        Docker_Upload_UUID=status.upload_id,
    )


def _created(ctx: ApiContext, name: str, info: BlobInfo) -> Response:
    digest = str(info.digest)
    headers = ctx.headers(
        Location=ctx.location(f"/v2/{name}/blobs/{digest}"), Docker_Content_Digest=digest
    )
    return Response(b"", status_code=201, headers=headers)


def _digest_param(request: Request) -> Digest:
    raw = request.query_params.get("digest")
    if not raw:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    return Digest.parse(raw)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


async def start_upload(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    blobs = (await writes_for(request, name)).blobs
    params = request.query_params
    mount = params.get("mount")
    if mount:
        source = params.get("from") or None
        if source is not None:
            # An invalid source name is the client's error, not a silent fallback.
            await ctx.resolver.repository(source)
        who = identity(request)
        if source is None and who is not None and who.granted is not None:
            # With access rules, mount only from a repository the client may read.
            info = None
        elif source is not None and who is not None and not who.allows(access(source, "pull")):
            info = None
        else:
            info = await blobs.mount(Digest.parse(mount), source)
        if info is not None:
            events.blob_mounted(request, name, info, source)
            return _created(ctx, name, info)
        # Not mountable: the spec says fall back to an ordinary upload session.
    digest = _digest_param(request) if params.get("digest") is not None and not mount else None
    status = await blobs.start_upload()
    if digest is not None:
        try:
            info = await blobs.finish_upload(status.upload_id, digest, body_chunks(request))
        except BaseException:
            await _cancel_quietly(blobs, status.upload_id)
            raise
        events.blob_pushed(request, name, info)
        return _created(ctx, name, info)
    return Response(b"", status_code=202, headers=_upload_headers(request, name, status))


async def _cancel_quietly(blobs: BlobWriter, upload_id: str) -> None:
    with contextlib.suppress(RegistryError):
        await blobs.cancel_upload(upload_id)


async def upload_status(request: Request, name: str, reference: str) -> Response:
    _check_state(request, name, reference)
    blobs = (await writes_for(request, name)).blobs
    status = await blobs.upload_status(reference)
    return Response(b"", status_code=204, headers=_upload_headers(request, name, status))


async def patch_upload(request: Request, name: str, reference: str) -> Response:
    _check_state(request, name, reference)
    blobs = (await writes_for(request, name)).blobs
    start: int | None = None
    content_range = request.headers.get("content-range")
    if content_range:
        match = _CONTENT_RANGE.match(content_range.strip())
        if match is None or int(match.group(2)) < int(match.group(1)):
            status = await blobs.upload_status(reference)
            raise RegistryError(
                ErrorCode.RANGE_INVALID,
                f"invalid Content-Range {content_range!r}",
                headers=_upload_headers(request, name, status),
            )
        start = int(match.group(1))
    status = await blobs.append_upload(reference, body_chunks(request), start)
    return Response(b"", status_code=202, headers=_upload_headers(request, name, status))


async def finish_upload(request: Request, name: str, reference: str) -> Response:
    _check_state(request, name, reference)
    ctx = context(request)
    blobs = (await writes_for(request, name)).blobs
    digest = _digest_param(request)
    chunks = body_chunks(request) if _has_body(request) else None
    info = await blobs.finish_upload(reference, digest, chunks)
    events.blob_pushed(request, name, info)
    return _created(ctx, name, info)


async def cancel_upload(request: Request, name: str, reference: str) -> Response:
    _check_state(request, name, reference)
    ctx = context(request)
    blobs = (await writes_for(request, name)).blobs
    await blobs.cancel_upload(reference)
    return Response(b"", status_code=204, headers=ctx.headers())
