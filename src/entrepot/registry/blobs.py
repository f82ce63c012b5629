"""The content-addressed blob store shared by all repositories, and repository links.

A blob is visible in a repository when the repository has a link to it (registry:2's
``_layers/<alg>/<hex>/link``); the bytes live once under ``blobs/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from entrepot.oci.digest import Digest, DigestVerifier
from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.registry import layout
from entrepot.registry.api import BlobContent, BlobInfo
from entrepot.registry.streams import pump
from entrepot.storage import StorageConflict, StorageDriver, StorageError, StorageNotFound

RepositoryNoter = Callable[[str], Awaitable[None]]

log = logging.getLogger("entrepot.storage")

# Blob sizes BlobStore remembers (about 250 bytes each).
SEEN_BLOBS = 4096


def storage_unavailable(exc: StorageError) -> RegistryError:
    """The client's error for a storage failure. The client learns only that storage is
    unavailable; the log line keeps the driver's reason (key or path, OS or S3 error)."""
    log.error("storage failure: %s", exc)
    return RegistryError(ErrorCode.UNAVAILABLE, "storage is unavailable, try again later")


async def read_link(driver: StorageDriver, key: str) -> Digest | None:
    """The digest a link file points at, or None when there is no link."""
    try:
        raw = await driver.get_content(key)
    except StorageNotFound:
        return None
    except StorageError as exc:
        raise storage_unavailable(exc) from exc
    return _linked(raw)


async def links_to(driver: StorageDriver, key: str, digest: Digest) -> bool:
    """Whether the link at ``key`` names ``digest`` (``read_link`` gives it): the check
    of every blob request."""
    linked = await read_link(driver, key)
    return linked is digest or linked == digest


# What link contents name, by content: a link is read on every manifest and blob
# request, bytes keep their hash, and a driver that keeps small files gives the same
# object back. The most recent LINK_DIGESTS_KEPT are kept.
LINK_DIGESTS_KEPT = 4096
_link_digests: dict[bytes, Digest | None] = {}


def _linked(raw: bytes) -> Digest | None:
    try:
        return _link_digests[raw]
    except KeyError:
        pass
    try:
        linked: Digest | None = Digest.parse(raw.decode("ascii", "replace").strip())
    except RegistryError:
        linked = None  # a corrupt link is treated as absent rather than trusted
    if len(_link_digests) >= LINK_DIGESTS_KEPT:
        del _link_digests[next(iter(_link_digests))]  # the oldest kept
    _link_digests[raw] = linked
    return linked


async def write_link(driver: StorageDriver, key: str, digest: Digest) -> None:
    try:
        await driver.put_content(key, str(digest).encode())
    except StorageError as exc:
        raise storage_unavailable(exc) from exc


async def delete_key(driver: StorageDriver, key: str) -> bool:
    """Delete a key or prefix; False when it was not there."""
    try:
        await driver.delete(key)
    except StorageNotFound:
        return False
    except StorageError as exc:
        raise storage_unavailable(exc) from exc
    return True


async def count_link(driver: StorageDriver) -> None:
    """Count a repository link just written, or an upload just begun, before the request
    looks at the bytes it needs (BlobStore.confirm), where a garbage collection reads the
    count (a disk: registry.gcrecheck.EarlyRecheck). Where the count did not move, the
    collection's re-read of the repositories, made before it set blobs aside, missed no
    link: one written after that re-read counted before its request's look, which, made
    before the set-aside, the count read after the set-aside sees. Where it did not move
    since before the mark read anything, the mark missed none: nothing is read again."""
    if not driver.folder_mtimes:
        return
    try:
        await driver.tally(layout.LINKS_WRITTEN)
    except StorageError as exc:
        raise storage_unavailable(exc) from exc


class BlobGone(RegistryError):
    """The bytes of a blob a request linked were deleted by a garbage collection (or a
    cache eviction) that found nothing linking them, between the request's check that
    they were there and its link."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(
            ErrorCode.BLOB_UNKNOWN,
            f"blob {digest} was deleted by a garbage collection as it was being linked;"
            " push it again",
            {"digest": str(digest)},
        )
        self.digest = digest


class LinkWriter:
    """Writes repository links; a repository's first ``_layers`` or ``_manifests`` link
    makes it exist, so the catalog index hears of it."""

    def __init__(
        self, driver: StorageDriver, blobs: BlobStore, on_new_repository: RepositoryNoter
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.on_new_repository = on_new_repository

    async def write(self, name: str, key: str, digest: Digest) -> None:
        """Link ``digest`` at ``key`` in repository ``name``, then make sure its bytes are
        still there (BlobStore.confirm); BlobGone, the link taken back, if they are not."""
        await write_link(self.driver, key, digest)
        await count_link(self.driver)
        if not await self.blobs.confirm(digest):
            await delete_key(self.driver, key.removesuffix("/link"))
            raise BlobGone(digest)
        try:
            await self.on_new_repository(name)
        except StorageError as exc:
            raise storage_unavailable(exc) from exc


class BlobStore:
    """Global blob bytes under ``blobs/``. Blobs enter only through ``adopt`` (a verified
    upload moved into place) or ``put`` (bytes whose digest was computed here)."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        # Sizes of blobs seen, the oldest pushed out: a digest's bytes never change, so
        # a blob seen before needs only its existence checked (garbage collection may
        # have removed it since), which a driver may do more cheaply than a stat.
        self._seen: dict[Digest, tuple[BlobInfo, str]] = {}  # (info, its data key)

    async def stat(self, digest: Digest) -> BlobInfo | None:
        seen = self._seen.get(digest)
        try:
            if seen is not None:
                if await self.driver.exists(seen[1]):
                    return seen[0]
                self._seen.pop(digest, None)
                return None
            key = layout.blob_data(digest)
            info = await self.driver.stat(key)
        except StorageNotFound:
            return None
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        found = BlobInfo(digest, info.size)
        if not info.is_dir:
            if len(self._seen) >= SEEN_BLOBS:
                del self._seen[next(iter(self._seen))]
            self._seen[digest] = (found, key)
        return found

    async def confirm(self, digest: Digest) -> bool:
        """Whether the bytes of a blob just linked are in place, put back first if a
        garbage collection or a cache eviction set them aside meanwhile (next to
        ``data``, layout.SET_ASIDE); False if they were deleted.

        Called after the link is written: a collection deletes what nothing links once
        it has set the bytes aside and read the repositories again, and a link written
        after that read goes unseen, though the request's check before it found the bytes.
        Seen here in its place: either the link came before the set-aside (the re-read
        finds it and the collection keeps the blob), or the bytes are aside, or gone."""
        if await self.stat(digest) is not None:
            return True
        data, note = layout.blob_data(digest), layout.put_back_note(digest)
        try:
            # First: the collection reads the notes after its deletes, so it sees this
            # one if the bytes were still aside to be put back.
            await self.driver.put_content(note, b"")
            for name in layout.SET_ASIDE:
                try:
                    await self.driver.move(f"{layout.blob_dir(digest)}/{name}", data)
                except StorageNotFound:
                    continue
                log.info("blob %s put back from %s: a request linked it", digest, name)
                return True
            with contextlib.suppress(StorageNotFound):
                await self.driver.delete(note)
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return False

    async def get(self, digest: Digest) -> bytes | None:
        try:
            return await self.driver.get_content(layout.blob_data(digest))
        except StorageNotFound:
            return None
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store small content (manifests) whose digest the caller computed from ``data``."""
        if await self.stat(digest) is not None:
            return
        try:
            await self.driver.put_content(layout.blob_data(digest), data)
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

    async def adopt(self, digest: Digest, source_key: str, version: str | None = None) -> bool:
        """Move verified bytes at ``source_key`` into place (atomic: a rename); False,
        nothing moved, where a copy is there already (same digest, same bytes: the caller
        keeps its own until the link is confirmed, LinkWriter.write). With ``version``,
        only the object of that version (the one verified): StorageConflict if another
        writer replaced it meanwhile, and nothing is moved."""
        try:
            if await self.stat(digest) is not None:
                return False
            await self.driver.move(source_key, layout.blob_data(digest), if_version=version)
        except StorageConflict:
            raise
        except StorageError as exc:
            raise storage_unavailable(exc) from exc
        return True

    async def assemble(self, digest: Digest, pieces: AsyncIterator[bytes]) -> bool:
        """Write the bytes of ``pieces`` (an upload's segments, in order) as the blob, in
        one pass, hashing them as they go: the blob appears (at commit) only if they are
        ``digest``'s bytes; StorageConflict if they are not (a segment was replaced since
        the upload was verified), and nothing is left. A blob already there is kept
        (False, as adopt)."""
        if await self.stat(digest) is not None:
            return False
        verifier = DigestVerifier(digest.algorithm)
        try:
            writer = await self.driver.writer(layout.blob_data(digest))
        except StorageError as exc:
            raise storage_unavailable(exc) from exc

        async def consume(data: bytes) -> None:
            await asyncio.gather(asyncio.to_thread(verifier.update, data), writer.write(data))

        try:
            try:
                await pump(pieces, consume)
            except StorageNotFound as exc:
                raise StorageConflict(f"an upload segment went away: {exc}") from exc
            if verifier.digest() != digest:
                raise StorageConflict(f"the upload's segments are no longer {digest}")
            await writer.commit()
        except BaseException as exc:
            with contextlib.suppress(StorageError):
                await writer.cancel()
            if isinstance(exc, StorageError) and not isinstance(exc, StorageConflict):
                raise storage_unavailable(exc) from exc
            raise
        return True

    def content(self, info: BlobInfo) -> BlobContent:
        key = layout.blob_data(info.digest)
        driver = self.driver

        async def open_stream(offset: int, length: int | None) -> AsyncIterator[bytes]:
            async for chunk in driver.read(key, offset, length):
                yield chunk

        async def redirect_url() -> str | None:
            try:
                return await driver.redirect_url(key)
            except StorageError as exc:
                raise storage_unavailable(exc) from exc

        return BlobContent(info, driver.local_path(key), open_stream, redirect_url)
