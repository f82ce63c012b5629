"""registry:2's layout as keys: the batch forms give what the single ones give."""

from __future__ import annotations

from entrepot.oci.digest import Digest
from entrepot.registry import layout


def test_blob_dirs_are_each_digests_blob_dir() -> None:
    digests = [Digest.of(b"one"), Digest.of(b"two", "sha512"), Digest.of(b"three")]
    assert layout.blob_dirs(digests) == [layout.blob_dir(d) for d in digests]
    assert layout.blob_dirs(digests)[0] == (
        f"docker/registry/v2/blobs/sha256/{digests[0].encoded[:2]}/{digests[0].encoded}"
    )
    assert layout.blob_dirs([]) == []
