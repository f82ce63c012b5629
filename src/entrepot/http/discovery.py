"""Content discovery: tags list, catalog, referrers (distribution-spec "Content Discovery"),
the lists paginated as registry:2 paginates them."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from entrepot.http.context import context
from entrepot.http.repositories import repository_for
from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.catalog import paginate

JSON = "application/json"
# registry:2 answers at most this many entries per page when ``n`` is larger.
MAX_PAGE = 10_000


def parse_page(request: Request) -> tuple[int | None, str | None]:
    """The ``n`` and ``last`` query parameters of a paginated list."""
    raw_n = request.query_params.get("n")
    last = request.query_params.get("last") or None
    if raw_n is None or raw_n == "":
        return None, last
    if not (raw_n.isascii() and raw_n.isdigit()):  # "²" is a digit to isdigit, not to int
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, "n must be a non-negative integer", {"n": raw_n}
        )
    return min(int(raw_n), MAX_PAGE), last


def ask_for(n: int | None) -> int | None:
    """How many entries to fetch for a page of ``n``: one more tells whether more follow."""
    return None if n is None else n + 1


def page_of(fetched: list[str], n: int | None, path: str) -> tuple[list[str], dict[str, str]]:
    """The page of ``n`` entries out of ``ask_for(n)`` fetched, and the RFC 5988 Link
    header to the next page when there is one."""
    if n is None or len(fetched) <= n or n == 0:
        return fetched[:n], {}
    page = fetched[:n]
    return page, {"Link": f'<{path}?{urlencode({"last": page[-1], "n": n})}>; rel="next"'}


async def tags_list(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    n, last = parse_page(request)
    repo = await repository_for(request, name)
    tags = sorted(await repo.tags.list())
    page, link = page_of(paginate(tags, ask_for(n), last), n, f"/v2/{name}/tags/list")
    body = json.dumps({"name": name, "tags": page}).encode()
    return Response(body, media_type=JSON, headers=ctx.headers(repo, **link))


async def catalog(request: Request) -> Response:
    ctx = context(request)
    n, last = parse_page(request)
    page, link = page_of(await ctx.resolver.catalog(ask_for(n), last), n, "/v2/_catalog")
    body = json.dumps({"repositories": page}).encode()
    return Response(body, media_type=JSON, headers=ctx.headers(**link))


async def referrers(request: Request, name: str, reference: str) -> Response:
    ctx = context(request)
    digest = Digest.parse(reference)
    artifact_type = request.query_params.get("artifactType") or None
    repo = await repository_for(request, name)
    entries = await repo.manifests.referrers(digest, artifact_type)
    headers = ctx.headers(repo)
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    return Response(json.dumps(index).encode(), media_type=mt.OCI_INDEX, headers=headers)
