"""storage/smallfiles.py: which files the filesystem driver keeps in memory, how many,
and on which filesystems it trusts stat at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrepot.storage import smallfiles
from entrepot.storage.smallfiles import SmallFiles, stat_is_live


def test_only_small_settled_files_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = tmp_path / "link", tmp_path / "manifest"
    small.write_bytes(b"sha256:" + b"0" * 64)
    large.write_bytes(b"x" * (smallfiles.MAX_FILE_BYTES + 1))
    files = SmallFiles()
    assert files.read(str(small)) == small.read_bytes()
    assert len(files) == 0  # changed just now: read again next time
    monkeypatch.setattr(smallfiles, "SETTLE_NS", -(1 << 62))  # as if long settled
    assert files.read(str(small)) == small.read_bytes()
    assert files.read(str(large)) == large.read_bytes()
    assert len(files) == 1  # the link only
    small.unlink()
    with pytest.raises(FileNotFoundError):
        files.read(str(small))


def test_kept_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smallfiles, "MAX_FILES", 3)
    monkeypatch.setattr(smallfiles, "SETTLE_NS", -(1 << 62))  # everything counts as settled
    files = SmallFiles()
    for n in range(5):
        path = tmp_path / f"link{n}"
        path.write_bytes(b"%d" % n)
        assert files.read(str(path)) == b"%d" % n
    assert len(files) == 3


@pytest.mark.parametrize(
    ("root", "live"),
    [
        ("/srv/registry", True),  # ext4 at /
        ("/srv/registry/data", False),  # nfs4 at /srv/registry/data: the longest match
        ("/srv/registry/data2", True),  # not below the nfs mount
        ("/mnt/share dir/r", False),  # cifs, mount point with a space
        ("/mnt/other", True),
    ],
)
def test_stat_is_trusted_on_local_filesystems_only(tmp_path: Path, root: str, live: bool) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "server:/export /srv/registry/data nfs4 rw 0 0\n"
        "//host/share /mnt/share\\040dir cifs rw 0 0\n"
    )
    assert stat_is_live(root, str(mounts)) is live
    assert stat_is_live(root, str(tmp_path / "missing")) is False
