"""A cached repository's blobs: served from the local store once held; else one fill
from the upstream per blob, whichever process or replica starts it, which every client
asking meanwhile joins (proxy/fetch.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from entrepot.oci.digest import Digest
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.cachebase import CachedFacet
from entrepot.proxy.fetch import FetchFailed, Spool
from entrepot.proxy.upstream_errors import UpstreamError
from entrepot.registry import layout
from entrepot.registry.api import BlobContent, BlobInfo
from entrepot.registry.blobs import BlobGone, read_link
from entrepot.requestinfo import note_cache

if TYPE_CHECKING:  # the client (aiohttp) is imported only with upstreams
    from entrepot.proxy.upstream_client import RemoteBlob


class CachedBlobs(CachedFacet):
    async def held(self, digest: Digest) -> BlobInfo | None:
        """The blob if this cache holds it already (verified) and may serve it; never asks
        upstream."""
        if self.upstream.names.refusal(self.upstream_name) is not None:
            return None
        if await read_link(self._driver, layout.layer_link(self.name, digest)) != digest:
            return None
        return await self._local.blobs.stat(digest)

    async def _confirm_upstream(self, digest: Digest) -> int:
        try:
            return await self.upstream.client.stat_blob(self.upstream_name, digest)
        except UpstreamError as exc:
            raise self._error(exc, ErrorCode.BLOB_UNKNOWN, str(digest)) from exc

    async def _link_if_held(self, digest: Digest, size: int) -> BlobInfo | None:
        """Bytes held for another repository serve this one once upstream confirmed them."""
        held = await self._local.blobs.stat(digest)
        if held is None or held.size != size:
            return None
        try:
            await self._local.links.write(self.name, layout.layer_link(self.name, digest), digest)
        except BlobGone:  # collected meanwhile: fetched again, as if never held
            return None
        return held

    async def stat(self, digest: Digest) -> BlobInfo:
        self._check_allowed()
        cached = await self.held(digest)
        if cached is not None:
            return cached
        fill = self.cache.filler.active(self._fill_key(digest))
        if fill is not None and fill.size is not None:
            return BlobInfo(digest, fill.size)
        self._unless_offline(ErrorCode.BLOB_UNKNOWN, str(digest))
        size = await self._confirm_upstream(digest)
        return await self._link_if_held(digest, size) or BlobInfo(digest, size)

    async def open(self, digest: Digest) -> BlobContent:
        self._check_allowed()
        cached = await self.held(digest)
        if cached is not None:
            note_cache("hit", self.upstream.host)
            return self._served(cached)
        note_cache("fill", self.upstream.host)  # started here, or joined
        key = self._fill_key(digest)
        fill = self.cache.filler.active(key)
        started = fill is None
        if fill is None:
            self._unless_offline(ErrorCode.BLOB_UNKNOWN, str(digest))
            if await self._local.blobs.stat(digest) is not None:
                held = await self._link_if_held(digest, await self._confirm_upstream(digest))
                if held is not None:
                    return self._served(held)
            client = self.upstream.client
            self._count("blob_fill")
            fill = self.cache.filler.start(
                key,
                self._spool(digest),
                lambda: _open_remote(client.open_blob(self.upstream_name, digest)),
            )
        try:
            await fill.wait_started()
        except FetchFailed as exc:
            raise self._fill_failed(exc, digest) from exc
        self._count("blob_miss")
        if started and fill.size is not None:
            self._count("blob_bytes_fetched", fill.size)
        size = fill.size if fill.size is not None else -1
        if self._driver.local_path(layout.blob_data(digest)) is None:
            return BlobContent(BlobInfo(digest, size), None, fill.read)

        async def settled() -> BlobContent | None:
            # Sending the file costs no Python per byte, streaming the fill does: wait for
            # the file when the fill is about to end (at most the upstream's fillwait).
            try:
                if not await fill.settle(self.upstream.policy.fill_wait) or fill.size is None:
                    return None
            except FetchFailed as exc:
                raise self._fill_failed(exc, digest) from exc
            return self._local.blobs.content(BlobInfo(digest, fill.size))

        return BlobContent(BlobInfo(digest, size), None, fill.read, settled=settled)

    def _fill_failed(self, exc: FetchFailed, digest: Digest) -> RegistryError:
        """The spec's error for a client of a fill that failed before it sent a byte."""
        if isinstance(exc.cause, UpstreamError):
            return self._error(exc.cause, ErrorCode.BLOB_UNKNOWN, str(digest))
        return RegistryError(ErrorCode.UNAVAILABLE, f"cache fill failed: {exc}")

    def _served(self, blob: BlobInfo) -> BlobContent:
        self._count("blob_hit")
        self._count("blob_bytes_served", blob.size)
        return self._local.blobs.content(blob)

    def _fill_key(self, digest: Digest) -> tuple[str, str, Digest]:
        return (self.upstream.host, self.upstream_name, digest)

    def _spool(self, digest: Digest) -> Spool:
        """One place per blob and repository where every process and replica filling it
        meets (fetch.py): an upload directory of the repository, so that what a crash
        leaves behind is a stale upload, which upload purging removes."""
        base = layout.upload_dir(self.name, f"fill-{digest.algorithm}-{digest.encoded}")
        link = layout.layer_link(self.name, digest)

        async def link_published() -> None:
            await self._local.links.write(self.name, link, digest)

        return Spool(self._driver, f"{base}/lease", base, layout.blob_data(digest), link_published)


@contextlib.asynccontextmanager
async def _open_remote(
    opening: contextlib.AbstractAsyncContextManager[RemoteBlob],
) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    async with opening as remote:
        yield remote.size, remote.chunks
