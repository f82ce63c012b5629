"""Manifest endpoints: /v2/<name>/manifests/<reference> (distribution-spec "Pulling
manifests", "Pushing Manifests", "Deleting Manifests")."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response

from entrepot.http import events
from entrepot.http.bodies import read_body
from entrepot.http.context import HeadersMade, RawHeaders, context, ready_response
from entrepot.http.repositories import repository_for, writes_for
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.manifest import MAX_MANIFEST_SIZE
from entrepot.oci.names import is_valid_tag
from entrepot.registry.manifests import manifest_unknown


def _accepts(accept_headers: tuple[bytes, ...], media_type: str) -> bool:
    """Whether the client's Accept headers admit ``media_type``. No Accept admits all."""
    return _accepted(accept_headers, media_type)


@functools.lru_cache(maxsize=1024)
def _accepted(accept_headers: tuple[bytes, ...], media_type: str) -> bool:
    # Cached: a fleet sends a handful of distinct Accept headers, once per request.
    offered = [
        part.split(";", 1)[0].strip().lower()
        for header in accept_headers
        for part in header.decode("latin-1").split(",")
        if part.strip()
    ]
    if not offered:
        return True
    major = media_type.split("/", 1)[0]
    return any(item in (media_type, "*/*", f"{major}/*") for item in offered)


def _make_content_headers(digest: Digest, media_type: str, size: int) -> RawHeaders:
    text = str(digest).encode()
    return (
        (b"docker-content-digest", text),
        (b"etag", b'"' + text + b'"'),
        (b"content-length", str(size).encode()),
        (b"content-type", media_type.encode("latin-1")),
    )


# A manifest answer's own headers, by (digest, media type, size).
_content_headers = HeadersMade(_make_content_headers)


def _existing(reference: str) -> str:
    """A reference that can name a stored manifest. Neither a tag nor a digest names none:
    404 MANIFEST_UNKNOWN, as registry:2 answers and the conformance suite expects (its
    "nonexistent manifest" is ``.INVALID_MANIFEST_NAME``). A push still gets TAG_INVALID."""
    if not is_digest(reference) and not is_valid_tag(reference):
        raise manifest_unknown(reference)
    return reference


async def get_manifest(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    _existing(reference)
    repo = await repository_for(request, name)
    content = await repo.manifests.get(reference)
    media_type = content.media_type
    accept = tuple([value for key, value in request.scope["headers"] if key == b"accept"])
    if not _accepts(accept, media_type):
        # registry:2 answers this way when a client cannot take the stored type.
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest is {media_type}, which the Accept header does not allow",
            {"reference": reference},
        )
    if ctx.notifier is not None:  # (as events checks: skipped here, on every pull)
        events.manifest_pulled(request, repo, reference, content)
    raw = content.raw
    headers = ctx.raw_headers(repo)
    headers += _content_headers(content.digest, media_type, len(raw))
    return ready_response(b"" if request.method == "HEAD" else raw, headers)


async def put_manifest(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    writes = await writes_for(request, name)
    raw = await read_body(request, MAX_MANIFEST_SIZE)
    result = await writes.manifests.put(reference, raw, request.headers.get("content-type"))
    events.manifest_pushed(request, name, reference, raw, result.digest)
    digest = str(result.digest)
    headers = ctx.headers(
        Location=ctx.location(f"/v2/{name}/manifests/{digest}"),
        Docker_Content_Digest=digest,
    )
    if result.subject is not None:
        headers["OCI-Subject"] = str(result.subject)
    return Response(b"", status_code=201, headers=headers)


async def delete_manifest(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    writes = await writes_for(request, name)
    untagged = await writes.manifests.delete(_existing(reference))
    events.manifest_deleted(request, name, reference, untagged)
    return Response(b"", status_code=202, headers=ctx.headers())
