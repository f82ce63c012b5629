"""registry/blobs.py: BlobStore remembers the sizes of blobs it has seen, and still
finds a blob removed since (garbage collection) gone at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrepot.oci.digest import Digest
from entrepot.registry import blobs as blobs_module
from entrepot.registry import layout
from entrepot.registry.api import BlobInfo
from entrepot.registry.blobs import BlobStore
from entrepot.storage.filesystem import FilesystemDriver


async def test_a_seen_blob_removed_since_is_gone_at_once(tmp_path: Path) -> None:
    store = BlobStore(FilesystemDriver(str(tmp_path)))
    data = b"layer bytes"
    digest = Digest.of(data)
    assert await store.stat(digest) is None
    await store.put(digest, data)
    assert await store.stat(digest) == BlobInfo(digest, len(data))
    assert await store.stat(digest) == BlobInfo(digest, len(data))  # remembered
    (tmp_path / layout.blob_data(digest)).unlink()  # as a collection removes it
    assert await store.stat(digest) is None
    await store.put(digest, data)  # pushed again
    assert await store.stat(digest) == BlobInfo(digest, len(data))


async def test_remembered_sizes_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_module, "SEEN_BLOBS", 2)
    store = BlobStore(FilesystemDriver(str(tmp_path)))
    for n in range(4):
        data = b"blob %d" % n
        await store.put(Digest.of(data), data)
        assert await store.stat(Digest.of(data)) == BlobInfo(Digest.of(data), len(data))
    assert len(store._seen) == 2
