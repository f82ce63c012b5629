"""Content discovery: tags list, catalog, referrers (distribution-spec "Content Discovery")
and the base endpoint."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from entrepot.http.context import context, next_link, parse_page, repository_for
from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.catalog import paginate

JSON = "application/json"


async def base(request: Request) -> Response:
    ctx = context(request)
    if not ctx.is_healthy():
        raise RegistryError(ErrorCode.UNAVAILABLE, "storage backend is unhealthy")
    return Response(b"{}", media_type=JSON, headers=ctx.headers())


async def tags_list(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    n, last = parse_page(request)
    repo = await repository_for(request, name)
    tags = sorted(await repo.list_tags())
    page = paginate(tags, None if n is None else n + 1, last)
    has_more = n is not None and len(page) > n
    page = page[:n] if n is not None else page
    headers = ctx.headers(repo, **next_link(f"/v2/{name}/tags/list", n, page, has_more))
    body = json.dumps({"name": name, "tags": page}).encode()
    return Response(body, media_type=JSON, headers=headers)


async def catalog(request: Request) -> Response:
    ctx = context(request)
    n, last = parse_page(request)
    page = await ctx.resolver.catalog(None if n is None else n + 1, last)
    has_more = n is not None and len(page) > n
    page = page[:n] if n is not None else page
    headers = ctx.headers(**next_link("/v2/_catalog", n, page, has_more))
    return Response(json.dumps({"repositories": page}).encode(), media_type=JSON, headers=headers)


async def referrers(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    digest = Digest.parse(reference)
    artifact_type = request.query_params.get("artifactType") or None
    repo = await repository_for(request, name)
    entries = await repo.referrers(digest, artifact_type)
    headers = ctx.headers(repo)
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    return Response(json.dumps(index).encode(), media_type=mt.OCI_INDEX, headers=headers)


async def health(request: Request) -> Response:
    """A plain endpoint for load balancers: 200 while storage is healthy, else 503."""
    ctx = context(request)
    healthy = ctx.is_healthy()
    body = json.dumps({"status": "ok" if healthy else "unhealthy"}).encode()
    return Response(body, status_code=200 if healthy else 503, media_type=JSON)
