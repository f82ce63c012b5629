"""Which repository a request addresses: its name, routed by the ``ns`` query parameter."""

from __future__ import annotations

from starlette.requests import Request

from entrepot.http.context import context
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry.api import Repository, Writes


def namespace_of(request: Request) -> str | None:
    # Parse the query only when it can hold ns: this runs on every request.
    if b"ns=" in request.scope.get("query_string", b""):
        return request.query_params.get("ns") or None
    return None


async def repository_for(request: Request, name: str) -> Repository:
    """The repository a pull addresses, routed by name and the ``ns`` query parameter."""
    return await context(request).resolver.repository(name, namespace=namespace_of(request))


async def writes_for(request: Request, name: str) -> Writes:
    """What a push or a delete to ``name`` writes through. The one place a read-only
    repository (a cache of an upstream, which has no writes) refuses them."""
    resolver = context(request).resolver
    repo = await resolver.repository(name, for_push=True, namespace=namespace_of(request))
    if repo.writes is None:
        raise RegistryError(
            ErrorCode.DENIED,
            f"{repo.namespace or repo.name} is a cache of an upstream registry; pushes to it "
            "are not allowed (set allowpush on that upstream to allow them)",
        )
    return repo.writes
