"""The saved SHA-256 state is registry:2's own form: a hash state registry:2 wrote for a
chunked upload (``_uploads/<id>/hashstates/sha256/<offset>``, Go's ``MarshalBinary``)
resumes in Entrepot's ``ResumableSha256`` and gives the digest of the whole upload."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from entrepot.registry.hashstate import ResumableSha256

from .servers import ServerFactory

pytestmark = pytest.mark.e2e


def test_a_hash_state_registry2_saved_resumes_here(registry2_factory: ServerFactory) -> None:
    registry2 = registry2_factory()
    first, rest = os.urandom(100_003), os.urandom(5_000)
    with httpx.Client(base_url=registry2.url, timeout=60) as client:
        started = client.post("/v2/team/app/blobs/uploads/")
        assert started.status_code == 202, started.text
        upload = started.headers["docker-upload-uuid"]
        patched = client.patch(
            started.headers["location"],
            content=first,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert patched.status_code == 202, patched.text
    states = (
        registry2.root
        / f"docker/registry/v2/repositories/team/app/_uploads/{upload}/hashstates/sha256"
    )
    saved = (states / str(len(first))).read_bytes()
    hasher = ResumableSha256.restore(saved)
    assert hasher.size == len(first)
    assert hasher.digest().encoded == hashlib.sha256(first).hexdigest()
    hasher.update(rest)
    assert hasher.digest().encoded == hashlib.sha256(first + rest).hexdigest()
    # And what Entrepot saves is byte for byte what registry:2 would have saved.
    ours = ResumableSha256()
    ours.update(first)
    assert ours.save() == saved
