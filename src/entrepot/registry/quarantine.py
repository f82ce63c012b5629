"""Blobs the sweep has moved aside (``<blob dir>/collecting``) while it re-checks them.

A collection that stopped half-way (a crash, a lost lease) can leave blobs aside. The next
collection finds them in its walk of the blobs and puts them back before it marks, so a
blob a kept image needs is never left aside: the new run's own mark decides again. The
collector also writes the digests it moves aside to a journal (deleted when the sweep is
done), so a server puts them back at start with a single read, before its next run.
"""

from __future__ import annotations

from collections.abc import Iterable

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.gcscan import QUARANTINE, Limited, each, parse_digest

JOURNAL = "entrepot/gc/quarantined"


def quarantine_key(digest: Digest) -> str:
    return f"{layout.blob_dir(digest)}/{QUARANTINE}"


async def write_journal(store: Limited, digests: Iterable[Digest]) -> None:
    await store.driver.put_content(JOURNAL, "\n".join(str(d) for d in digests).encode())


async def close_journal(store: Limited) -> None:
    await store.delete(JOURNAL)


async def restore(store: Limited, digest: Digest) -> bool:
    """Put a quarantined blob back (or drop the quarantine if a push wrote the same bytes
    meanwhile); whether there was one."""
    if await store.stat(layout.blob_data(digest)) is not None:
        return await store.delete(quarantine_key(digest))
    return await store.move(quarantine_key(digest), layout.blob_data(digest))


async def recover(store: Limited) -> int:
    """Put back every blob an interrupted collection left aside; how many."""
    raw = await store.get(JOURNAL)
    if raw is None:
        return 0
    listed = [parse_digest(line) for line in raw.decode("ascii", "replace").split()]
    digests = [d for d in listed if d is not None]
    restored = sum(await each(digests, lambda d: restore(store, d)))
    await close_journal(store)
    return restored
