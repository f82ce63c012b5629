"""What the UI reads, through the services the API handlers use: repository names from the
catalog index (in memory, never a walk per request), tags and manifests through the
repository interface. Every repository call is in ``RepositoryReader`` so a change of that
interface touches a few lines here. Reads go to the local store (what is pushed or held in
the cache), never upstream: browsing the cache must not spend an upstream's pull budget."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from entrepot.http.metrics import Sample, upstream_figures
from entrepot.oci.digest import Digest
from entrepot.oci.errors import RegistryError
from entrepot.oci.manifest import Descriptor, Manifest, parse_manifest
from entrepot.proxy.upstreams import Upstream
from entrepot.registry.api import Repository, RepositoryResolver

CONFIG_CAP = 1024 * 1024  # an image config larger than this is not read for display


@dataclass(frozen=True)
class Child:
    descriptor: Descriptor
    platform: str


@dataclass
class ManifestView:
    name: str
    manifest: Manifest
    children: list[Child] = field(default_factory=list)
    config: dict[str, Any] | None = None
    referrers: list[dict[str, object]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return pull_size(self.manifest)

    @property
    def pretty(self) -> str:
        return json.dumps(json.loads(self.manifest.raw), indent=2)


@dataclass(frozen=True)
class TagRow:
    tag: str
    digest: Digest
    media_type: str
    size: int | None  # None when some content is not held (a cache fills on demand)
    platforms: list[str]
    created: str | None


@dataclass(frozen=True)
class NamePage:
    names: list[str]
    next_last: str | None


def pull_size(manifest: Manifest) -> int:
    """An image manifest, its config and its layers: what a pull of it transfers."""
    blobs = (manifest.config, *manifest.layers)
    return len(manifest.raw) + sum(d.size for d in blobs if d is not None)


def platform_of(entry: Any) -> str:
    platform = entry.get("platform") if isinstance(entry, dict) else None
    if not isinstance(platform, dict):
        return "?"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


class RepositoryReader:
    """One repository as the UI reads it (the thin adapter over the Repository interface)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def tags(self) -> list[str]:
        return sorted(await self.repo.tags.list())

    async def manifest(self, reference: str) -> Manifest:
        content = await self.repo.manifests.get(reference)
        return parse_manifest(content.raw, content.media_type)

    async def referrers(self, digest: Digest) -> list[dict[str, object]]:
        return await self.repo.manifests.referrers(digest, None)

    async def json_blob(self, descriptor: Descriptor) -> dict[str, Any] | None:
        """A small JSON blob (an image config), or None when it is not held or not JSON."""
        if descriptor.size > CONFIG_CAP:
            return None
        try:
            content = await self.repo.blobs.open(descriptor.digest)
            raw = b"".join([chunk async for chunk in content.open_stream(0, None)])
            body = json.loads(raw)
        except (RegistryError, ValueError):
            return None
        return body if isinstance(body, dict) else None


class Browser:
    """Repository names, tags and manifests for the pages."""

    def __init__(self, store: RepositoryResolver, upstreams: Sequence[Upstream]) -> None:
        self.store = store
        self.upstreams = {u.prefix: u for u in upstreams}

    def group_of(self, name: str) -> str:
        """The upstream prefix a repository is cached under, or "" for a pushed one."""
        first, _, rest = name.partition("/")
        return first if rest and first in self.upstreams else ""

    async def find(
        self,
        visible: Callable[[str], bool],
        query: str,
        group: str | None,
        last: str | None,
        n: int,
    ) -> NamePage:
        """Up to ``n`` names after ``last`` containing ``query``, in ``group`` if given,
        that ``visible`` admits. Names sort, so an upstream's repositories are one run."""
        prefix = f"{group}/" if group else ""
        start = max(last or "", prefix) if prefix else last
        found: list[str] = []
        for name in await self.store.catalog(None, start or None):
            if prefix and not name.startswith(prefix):
                break
            if group == "" and self.group_of(name):
                continue
            if query in name and visible(name):
                found.append(name)
                if len(found) > n:
                    return NamePage(found[:n], found[n - 1])
        return NamePage(found, None)

    async def reader(self, name: str) -> RepositoryReader:
        return RepositoryReader(await self.store.repository(name))

    async def tag_rows(
        self, name: str, last: str | None, n: int
    ) -> tuple[list[TagRow], str | None]:
        reader = await self.reader(name)
        tags = [t for t in await reader.tags() if last is None or t > last]
        page, more = tags[:n], len(tags) > n
        rows = await asyncio.gather(*(self._tag_row(reader, tag) for tag in page))
        return [row for row in rows if row is not None], page[-1] if more else None

    async def _tag_row(self, reader: RepositoryReader, tag: str) -> TagRow | None:
        try:
            manifest = await reader.manifest(tag)
        except RegistryError:
            return None  # deleted meanwhile
        if not manifest.is_index:
            config = await self._config(reader, manifest)
            return TagRow(
                tag,
                manifest.digest,
                manifest.media_type,
                pull_size(manifest),
                [platform_of({"platform": config})] if config else [],
                _created(config),
            )
        body = json.loads(manifest.raw)
        platforms = [platform_of(entry) for entry in body.get("manifests", [])]
        size: int | None = len(manifest.raw)
        created = None
        for child in manifest.manifests:
            try:
                held = await reader.manifest(str(child.digest))
            except RegistryError:
                size = None  # a child not held: the cache fetches children when asked
                continue
            if size is not None:
                size += pull_size(held)
            if created is None and not held.is_index:
                created = _created(await self._config(reader, held))
        return TagRow(tag, manifest.digest, manifest.media_type, size, platforms, created)

    async def _config(self, reader: RepositoryReader, manifest: Manifest) -> dict[str, Any] | None:
        if manifest.config is None or "json" not in manifest.config.media_type:
            return None
        return await reader.json_blob(manifest.config)

    async def manifest_view(self, name: str, reference: str) -> ManifestView:
        reader = await self.reader(name)
        manifest = await reader.manifest(reference)
        view = ManifestView(name, manifest, referrers=await reader.referrers(manifest.digest))
        if manifest.is_index:
            entries = json.loads(manifest.raw).get("manifests", [])
            view.children = [
                Child(d, platform_of(e)) for d, e in zip(manifest.manifests, entries, strict=True)
            ]
        else:
            view.config = await self._config(reader, manifest)
        return view


def _created(config: dict[str, Any] | None) -> str | None:
    created = config.get("created") if config else None
    return created[:19].replace("T", " ") if isinstance(created, str) else None


def cache_counters(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """Per upstream host, its cache figures as /metrics counts them (all workers), with
    the hit ratio of the requests the cache answered."""
    # Counters of an upstream exist (at zero) before anything was fetched from it.
    figures = {host: mine for host, mine in upstream_figures(samples).items() if any(mine.values())}
    for mine in figures.values():
        hits = mine.get("manifest hits", 0.0) + mine.get("blob hits", 0.0)
        misses = mine.get("manifest misses", 0.0) + mine.get("blob misses", 0.0)
        if hits + misses:
            mine["hit ratio (%)"] = round(100 * hits / (hits + misses))
    return figures
