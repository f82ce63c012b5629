"""Which repository answers a request: containerd's ``ns`` parameter, a path prefix naming
an upstream (``/v2/ghcr.io/org/app/...``), or a plain name (local first, then the mirror
upstream). All three reach one shared cache, stored under ``<host>/<upstream name>``;
plain names that registry:2 cached before Entrepot took its store over stay the mirror's
cache where registry:2 stored them (registry2_store.py).

An upstream's allow and deny lists (access.py) are enforced by the cached side itself, on
every route; a pushed repository under a plain name the mirror refuses is served as if
there were no mirror."""

from __future__ import annotations

from collections.abc import Sequence

from entrepot.oci.digest import is_digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.oci.names import validate_name
from entrepot.proxy.cache import ProxyCache, cached_repository, pinned_marker
from entrepot.proxy.layered import layered_repository, registry2_cache_repository
from entrepot.proxy.registry2_store import Registry2Store
from entrepot.proxy.upstreams import Upstream
from entrepot.registry import layout
from entrepot.registry.api import ManifestPut, Repository
from entrepot.registry.blobs import write_link
from entrepot.registry.local import LocalRegistry, local_repository
from entrepot.registry.manifests import RepositoryManifests
from entrepot.storage import StorageNotFound


class ProxyResolver:
    def __init__(
        self,
        local: LocalRegistry,
        cache: ProxyCache,
        upstreams: Sequence[Upstream],
        *,
        readonly: bool = False,
        registry2: Registry2Store | None = None,
    ) -> None:
        self.local = local
        self.registry2 = registry2
        self.readonly = readonly
        self.cache = cache
        self.upstreams = tuple(upstreams)
        self._by_host: dict[str, Upstream] = {}
        for upstream in upstreams:
            for alias in upstream.aliases:
                self._by_host[alias] = upstream
        mirrors = [u for u in upstreams if u.mirror]
        self.mirror = mirrors[0] if mirrors else None

    async def repository(
        self, name: str, *, for_push: bool = False, namespace: str | None = None
    ) -> Repository:
        validate_name(name)
        if for_push and self.readonly:
            # storage.maintenance.readonly: registry:2 refuses writes the same way.
            raise RegistryError(
                ErrorCode.UNSUPPORTED, "the registry is in read-only mode for maintenance"
            )
        if namespace:
            upstream = self._by_host.get(namespace.lower())
            if upstream is not None:
                return await self._cached(upstream, name, for_push)
        first, _, rest = name.partition("/")
        upstream = self._by_host.get(first) if rest else None
        if upstream is not None:
            return await self._cached(upstream, rest, for_push)
        if self.mirror is None or namespace:
            # An ns we do not cache names some other registry (or this one): what was
            # pushed here answers, never the Docker Hub mirror.
            return local_repository(self.local, name)  # name validated above
        if self.registry2 is not None and await self.registry2.is_cache(name):
            # What registry:2 cached under this plain name: the mirror's cache, in place.
            return registry2_cache_repository(
                self.local, name, self.cache, self.mirror, self.registry2.release
            )
        refused = self.mirror.names.refusal(self.mirror.upstream_name(name)) is not None
        if refused and await self._pushed(name):
            # The mirror's lists do not concern what was pushed here: its misses are 404s.
            return local_repository(self.local, name)
        # Pushes too: writes go to the local side, and a manifest PUT adopts the blobs the
        # client skipped because the mirror answered their HEAD.
        return layered_repository(self.local, name, self.cache, self.mirror)

    async def _cached(self, upstream: Upstream, name: str, for_push: bool) -> Repository:
        upstream_name = upstream.upstream_name(name)
        if for_push and upstream.allow_push:
            upstream.names.check(upstream_name)  # what could not be pulled is not pushed
            name = upstream.cache_name(upstream_name)
            return local_repository(self.local, name, PinnedManifests(self.local.manifests, name))
        # Read-only: the HTTP layer refuses writes to a repository without them.
        return cached_repository(self.cache, upstream, upstream_name)

    async def _pushed(self, name: str) -> bool:
        """A pushed repository exists under this plain name (layers or manifests)."""
        try:
            children = await self.local.driver.list(layout.repository(name))
        except StorageNotFound:
            return False
        return bool({"_layers", "_manifests"} & set(children))

    async def mirrored_as(self, name: str) -> str | None:
        """The cache name under which the mirror serves the plain name ``name`` (Docker's
        ``registry-mirrors`` pulls), or None: not a plain name, no mirror, a name the
        mirror refuses, or one pushed content holds (which access rules judge under its
        own name). Access rules for the cache (``docker.io/*``) then cover such pulls."""
        first, _, rest = name.partition("/")
        if self.mirror is None or (rest and first in self._by_host):
            return None
        upstream_name = self.mirror.upstream_name(name)
        if self.mirror.names.refusal(upstream_name) is not None or await self._pushed(name):
            return None
        return self.mirror.cache_name(upstream_name)

    def scope_name(self, name: str, namespace: str | None) -> str:
        upstream = self._by_host.get(namespace.lower()) if namespace else None
        if upstream is None:
            return name
        return upstream.cache_name(upstream.upstream_name(name))

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        # Cached repositories live in the same layout, under their host prefix.
        return await self.local.catalog(n, last)


class PinnedManifests(RepositoryManifests):
    """Manifests pushed into a cache namespace (allowpush): their tags are marked so that
    cache revalidation never replaces them with upstream content."""

    async def put(self, reference: str, raw: bytes, content_type: str | None) -> ManifestPut:
        result = await super().put(reference, raw, content_type)
        if not is_digest(reference):
            await write_link(self.driver, pinned_marker(self.name, reference), result.digest)
        return result
