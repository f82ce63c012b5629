"""The local mirror of an S3 cache fill (storage/s3mirror.py): one file per fill shared by
the processes of a machine. Two ``Mirrors`` on one directory stand for two processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from entrepot.storage.s3mirror import STALE, Mirrors

KEY = "repositories/r/_uploads/fill-x/token-1"


async def read_all(mirrors: Mirrors, offset: int, length: int) -> bytes:
    mirror = mirrors.open(KEY, create=False)
    assert mirror is not None
    return b"".join([chunk async for chunk in mirror.read(offset, length)])


async def test_another_process_reads_what_the_feeder_wrote_while_it_grows(tmp_path: Path) -> None:
    leader, other = Mirrors(str(tmp_path)), Mirrors(str(tmp_path))
    assert other.open(KEY, create=False) is None  # nothing here yet
    mirror = leader.create(KEY)
    assert mirror is not None and mirror.feeding
    await mirror.append(b"first ")
    assert await read_all(other, 0, 6) == b"first "
    await mirror.append(b"second")
    assert await read_all(other, 6, 6) == b"second"
    # One feeder at a time: the other process cannot take it while the leader feeds.
    seen = other.open(KEY, create=False)
    assert seen is not None and not seen.try_feed()
    mirror.stop_feeding()
    assert seen.try_feed()
    seen.stop_feeding()
    await leader.close()
    await other.close()


async def test_a_dropped_mirror_is_seen_as_such_by_those_who_have_it_open(tmp_path: Path) -> None:
    leader, other = Mirrors(str(tmp_path)), Mirrors(str(tmp_path))
    mirror = leader.create(KEY)
    assert mirror is not None
    await mirror.append(b"partial")
    seen = other.open(KEY, create=False)
    assert seen is not None and not seen.dropped
    mirror.drop()  # a cancelled fill
    assert seen.dropped
    assert Mirrors(str(tmp_path)).open(KEY, create=False) is None
    await leader.close()
    await other.close()


async def test_the_last_process_to_close_a_mirror_removes_it(tmp_path: Path) -> None:
    one, two = Mirrors(str(tmp_path)), Mirrors(str(tmp_path))
    mirror = one.create(KEY)
    assert mirror is not None
    await mirror.append(b"bytes")
    mirror.stop_feeding()
    assert two.open(KEY, create=False) is not None
    await one.close()
    assert len(os.listdir(tmp_path)) == 2  # the data and its lock file: two still has it
    await two.close()
    assert os.listdir(tmp_path) == []


async def test_mirrors_left_by_dead_processes_are_swept_long_after(tmp_path: Path) -> None:
    old, recent = tmp_path / ("a" * 40), tmp_path / ("b" * 40)
    old.write_bytes(b"left by a process that died")
    recent.write_bytes(b"a process here may be about to open it")
    long_ago = time.time() - STALE - 60
    os.utime(old, (long_ago, long_ago))
    mirrors = Mirrors(str(tmp_path))
    assert mirrors.create(KEY) is not None
    assert not old.exists() and recent.exists()
    await mirrors.close()


def test_lock_files_and_mirrors_are_kept_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # A command run with sudo must not leave the server's user a root-owned directory.
    from entrepot.storage.s3 import local_lease_directory
    from entrepot.storage.s3mirror import mirror_directory

    places = {}
    for uid in (0, 1000):
        monkeypatch.setattr(os, "geteuid", lambda uid=uid: uid)
        places[uid] = (local_lease_directory("e", "b", "r"), mirror_directory("e", "b", "r"))
    (lease0, mirror0), (lease1, mirror1) = places[0], places[1000]
    assert lease0 != lease1 and mirror0 != mirror1
    assert os.path.dirname(lease1).endswith("entrepot-leases-1000")
    assert os.path.dirname(mirror1).endswith("entrepot-mirrors-1000")
