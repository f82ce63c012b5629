"""Blobs the sweep has moved aside (``<blob dir>/collecting``) while it re-checks them.

Before moving any, the collector writes their digests to a journal; it deletes the journal
once each was deleted or put back. A collection that stopped half-way (a crash, a lost
lease) leaves the journal behind, and the next collection (or a server with a schedule, at
start) first puts every listed blob back, so a blob a kept image needs is never left
aside: the new run's own mark then decides again. A quarantine with no journal (left by
a version before it) is put back when a collection finds the blob without its ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable

from entrepot.oci.digest import Digest, digest_lines
from entrepot.registry import layout
from entrepot.registry.digestnames import parse_digest
from entrepot.registry.storecalls import Limited, each

JOURNAL = "entrepot/gc/quarantined"
QUARANTINE = layout.COLLECTING  # next to a blob's ``data`` while the sweep re-checks it


def quarantine_key(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{QUARANTINE}"


async def write_journal(store: Limited, digests: Iterable[Digest]) -> None:
    # Each as str(digest) is, joined without a call of Python's per digest.
    await store.driver.put_content(JOURNAL, "\n".join(digest_lines(digests)).encode())


async def close_journal(store: Limited) -> None:
    await store.delete(JOURNAL)


async def restore(store: Limited, digest: Digest) -> bool:
    """Put a quarantined blob back (or drop the quarantine if a push wrote the same bytes
    meanwhile); whether there was one."""
    if await store.stat(layout.blob_data(digest)) is not None:
        return await store.delete(quarantine_key(digest))
    return await store.move(quarantine_key(digest), layout.blob_data(digest))


async def recover(store: Limited) -> int:
    """Put back every blob an interrupted collection left aside; how many. Notes of blobs
    servers put back (put_back_blobs) are an earlier collection's: dropped."""
    await put_back_blobs(store)
    raw = await store.get(JOURNAL)
    if raw is None:
        return 0
    listed = [parse_digest(line) for line in raw.decode("ascii", "replace").split()]
    digests = [d for d in listed if d is not None]
    restored = sum(await each(digests, lambda d: restore(store, d)))
    await close_journal(store)
    return restored


async def put_back_blobs(store: Limited) -> set[Digest]:
    """The blobs servers put back from the quarantine since the last collection read
    their notes (BlobStore.confirm), the notes deleted: read after the deletes, they name
    every blob the sweep counted deleted whose bytes a request put back meanwhile."""
    names = await store.children(layout.PUT_BACK)
    if not names:
        return set()
    found = {parse_digest(name.replace("-", ":", 1)) for name in names}
    await each(names, lambda name: store.delete(f"{layout.PUT_BACK}/{name}"))
    return {digest for digest in found if digest is not None}
