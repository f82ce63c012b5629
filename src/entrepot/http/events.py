"""The events registry:2 notifies (``notifications/bridge.go``), built from the request
that caused them, with registry:2's JSON field names and order, for the same requests as
registry:2 v2.8: a manifest GET or HEAD (with the tag when pulled by tag), a blob GET or
HEAD, a blob upload's completion, a mount, a manifest PUT (with its tag), and deletes
(a manifest, then each tag it took away; a tag; a blob). Each function does nothing
when no endpoint is configured; none waits for delivery (``notify``)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from entrepot.http.context import context, identity, realm_base
from entrepot.http.notify import Event, Notifier
from entrepot.oci.digest import Digest, is_digest
from entrepot.oci.errors import RegistryError
from entrepot.oci.manifest import Descriptor, parse_manifest
from entrepot.registry.api import BlobInfo, ManifestContent, Repository
from entrepot.requestinfo import current_request_id

__all__ = [
    "blob_deleted",
    "blob_mounted",
    "blob_pulled",
    "blob_pushed",
    "manifest_deleted",
    "manifest_pulled",
    "manifest_pushed",
]

# registry:2 reports every blob as this, whatever the manifest says of it.
BLOB_MEDIA_TYPE = "application/octet-stream"


def manifest_pulled(
    request: Request, repo: Repository, reference: str, content: ManifestContent
) -> None:
    """A pull names the repository that holds what was served, as ``_catalog`` names it
    (a cache's ``<host>/<name>``, on every route), with a URL that fetches it again."""
    notifier = context(request).notifier
    if notifier is not None:
        name = content.held_by or repo.name
        media_type, raw = content.media_type, content.raw
        _manifest(notifier, request, "pull", name, reference, media_type, raw, content.digest)


def manifest_pushed(
    request: Request, name: str, reference: str, raw: bytes, digest: Digest
) -> None:
    notifier = context(request).notifier
    if notifier is not None:
        media_type = parse_manifest(raw, request.headers.get("content-type")).media_type
        _manifest(notifier, request, "push", name, reference, media_type, raw, digest)


def manifest_deleted(
    request: Request, name: str, reference: str, untagged: Iterable[str] = ()
) -> None:
    notifier = context(request).notifier
    if notifier is None:
        return
    if not is_digest(reference):
        _send(notifier, request, "delete", {"repository": name, "tag": reference})
        return
    _send(notifier, request, "delete", {"digest": reference, "repository": name})
    for tag in untagged:
        _send(notifier, request, "delete", {"repository": name, "tag": tag})


def blob_pulled(request: Request, repo: Repository, info: BlobInfo) -> None:
    """Named as a manifest pull is."""
    _blob(request, "pull", info.held_by or repo.name, info)


def blob_pushed(request: Request, name: str, info: BlobInfo) -> None:
    _blob(request, "push", name, info)


def blob_mounted(request: Request, name: str, info: BlobInfo, source: str | None) -> None:
    _blob(request, "mount", name, info, source)


def blob_deleted(request: Request, name: str, digest: Digest) -> None:
    notifier = context(request).notifier
    if notifier is not None:
        _send(notifier, request, "delete", {"digest": str(digest), "repository": name})


def _blob(
    request: Request, action: str, name: str, info: BlobInfo, source: str | None = None
) -> None:
    notifier = context(request).notifier
    if notifier is None:
        return
    target: dict[str, Any] = {"mediaType": BLOB_MEDIA_TYPE}
    if info.size > 0:  # a fill whose upstream gave no length has none yet (-1)
        target["size"] = info.size
    target["digest"] = str(info.digest)
    if info.size > 0:
        target["length"] = info.size
    target["repository"] = name
    if source:
        target["fromRepository"] = source
    target["url"] = f"{realm_base(request)}/v2/{name}/blobs/{info.digest}"
    _send(notifier, request, action, target)


def _manifest(
    notifier: Notifier,
    request: Request,
    action: str,
    name: str,
    reference: str,
    media_type: str,
    raw: bytes,
    digest: Digest,
) -> None:
    target: dict[str, Any] = {
        "mediaType": media_type,
        "size": len(raw),
        "digest": str(digest),
        "length": len(raw),
        "repository": name,
        "url": f"{realm_base(request)}/v2/{name}/manifests/{digest}",
    }
    if not is_digest(reference):
        target["tag"] = reference
    if notifier.include_references:
        references = _references(raw)
        if references:
            target["references"] = references
    _send(notifier, request, action, target)


def _references(raw: bytes) -> list[dict[str, Any]]:
    """What ``Manifest.References()`` gives: config then layers, or an index's manifests."""
    try:
        manifest = parse_manifest(raw)
    except RegistryError:
        return []
    found = [] if manifest.config is None else [manifest.config]
    return [_descriptor(d) for d in (*found, *manifest.layers, *manifest.manifests)]


def _descriptor(descriptor: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mediaType": descriptor.media_type,
        "size": descriptor.size,
        "digest": str(descriptor.digest),
    }
    if descriptor.urls:
        out["urls"] = list(descriptor.urls)
    if descriptor.annotations:
        out["annotations"] = descriptor.annotations
    return out


def _send(notifier: Notifier, request: Request, action: str, target: dict[str, Any]) -> None:
    notifier.publish(event(notifier, request, action, target))


def event(notifier: Notifier, request: Request, action: str, target: dict[str, Any]) -> Event:
    """An event as registry:2 writes one: id, timestamp, action, target, request, actor,
    source (Go's field order, the request record's id, method and useragent always set)."""
    who = identity(request)
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(),
        "action": action,
        "target": target,
        "request": {
            "id": current_request_id(),
            "addr": _remote_addr(request),
            "host": request.headers.get("host", ""),
            "method": request.method,
            "useragent": request.headers.get("user-agent", ""),
        },
        "actor": {"name": who.user} if who is not None and who.user else {},
        "source": notifier.source,
    }


def _timestamp() -> str:
    """Go's RFC 3339 time in UTC ("...T22:00:13.123339Z")."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _remote_addr(request: Request) -> str:
    """The client's address and port, as registry:2's request record has it; behind a
    trusted proxy (``http.trustedproxies``), the address its X-Forwarded-For names (a
    header from anyone else is not believed, unlike registry:2)."""
    client = request.client
    address = context(request).client_addresses.of(request.scope)
    if client is None or address != client.host:
        return address
    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"{host}:{client.port}"
