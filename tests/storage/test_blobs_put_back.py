"""A blob linked while a garbage collection has it aside, on every driver: the request
that links it puts its bytes back and leaves a note the collection reads after its
deletes (BlobStore.confirm, quarantine.put_back_blobs); bytes already deleted leave no
link behind. (The collection's side of it: tests/unit/test_gc_put_back.py; the requests':
tests/api/test_push_while_collecting.py.)"""

from __future__ import annotations

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.blobs import BlobGone
from entrepot.registry.local import LocalRegistry
from entrepot.registry.quarantine import put_back_blobs, quarantine_key
from entrepot.registry.storecalls import Limited
from entrepot.storage import StorageDriver, StorageNotFound

NAME = "team/app"


async def set_aside(driver: StorageDriver, data: bytes) -> Digest:
    """A blob the collection has set aside: its bytes at ``collecting``."""
    digest = Digest.of(data)
    await driver.put_content(layout.blob_data(digest), data)
    await driver.move(layout.blob_data(digest), quarantine_key(digest))
    return digest


async def test_a_blob_linked_while_aside_is_put_back_with_a_note(driver: StorageDriver) -> None:
    digest = await set_aside(driver, b"a layer a push links now")
    local = LocalRegistry(driver)
    await local.links.write(NAME, layout.layer_link(NAME, digest), digest)
    assert await driver.get_content(layout.blob_data(digest)) == b"a layer a push links now"
    with pytest.raises(StorageNotFound):
        await driver.stat(quarantine_key(digest))
    # The collection, after its deletes, reads the note (and drops it).
    store = Limited(driver, 4)
    assert await put_back_blobs(store) == {digest}
    assert await put_back_blobs(store) == set()


async def test_a_blob_deleted_while_aside_leaves_no_link(driver: StorageDriver) -> None:
    digest = await set_aside(driver, b"a layer the collection deleted")
    await driver.delete(quarantine_key(digest))  # the sweep's delete came first
    local = LocalRegistry(driver)
    link = layout.layer_link(NAME, digest)
    with pytest.raises(BlobGone):
        await local.links.write(NAME, link, digest)
    with pytest.raises(StorageNotFound):
        await driver.stat(link)
    assert await put_back_blobs(Limited(driver, 4)) == set()  # nothing was put back
