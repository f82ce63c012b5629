"""The resumable SHA-256: the same digests as hashlib, and a state saved in registry:2's
(Go's) form that resumes anywhere in a block."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from entrepot.registry.hashstate import GO_STATE_SIZE, ResumableSha256


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 127, 128, 4103, 1 << 20])
def test_saved_and_restored_anywhere_gives_hashlibs_digest(size: int) -> None:
    data = os.urandom(size)
    for cut in {0, size // 3, size}:
        first = ResumableSha256()
        first.update(data[:cut])
        saved = first.save()
        assert len(saved) == GO_STATE_SIZE
        resumed = ResumableSha256.restore(saved)
        resumed.update(data[cut:])
        assert resumed.size == size
        assert resumed.digest().encoded == hashlib.sha256(data).hexdigest()
        assert first.digest().encoded == hashlib.sha256(data[:cut]).hexdigest()


def test_copy_is_independent() -> None:
    hasher = ResumableSha256()
    hasher.update(b"abc")
    clone = hasher.copy()
    clone.update(b"def")
    assert hasher.digest().encoded == hashlib.sha256(b"abc").hexdigest()
    assert clone.digest().encoded == hashlib.sha256(b"abcdef").hexdigest()


def test_state_is_gos_marshal_format() -> None:
    """Go's sha256 MarshalBinary: magic, eight big-endian words, the block, the length.
    The state of the empty hash is SHA-256's initial vector."""
    saved = ResumableSha256().save()
    assert saved[:4] == b"sha\x03"
    assert struct.unpack(">8I", saved[4:36])[0] == 0x6A09E667
    assert saved[36:100] == bytes(64)
    assert saved[100:] == bytes(8)
    hasher = ResumableSha256()
    hasher.update(b"a" * 70)
    saved = hasher.save()
    assert saved[36:42] == b"aaaaaa" and saved[42:100] == bytes(58)
    assert struct.unpack(">Q", saved[100:])[0] == 70


@pytest.mark.parametrize("bad", [b"", b"sha\x03" + bytes(10), b"sha\x02" + bytes(104)])
def test_restore_refuses_what_is_not_a_state(bad: bytes) -> None:
    with pytest.raises(ValueError, match="not a saved SHA-256 state"):
        ResumableSha256.restore(bad)
