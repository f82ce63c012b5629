"""A maintenance command run as root (``sudo entrepot garbage-collect``) on a store the
server's user owns goes on as that user: what it writes (``entrepot/`` folders, a
collection's journal, a cached image's folders) stays writable by the server, which
otherwise failed to record a tag push or take a lease there."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.gc import write_gc_fixture

from entrepot.cli import main

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")

# The command in a child process (it switches users for good). Its modules are imported
# before the switch and its walks and bulk calls run in-process: this machine's Python may
# be readable by root only, which a server's user would have to be able to run anyway.
COMMAND = """
import sys, concurrent.futures.thread
import entrepot.cli, entrepot.registry.gc, entrepot.storage.filesystem as fs
fs.FilesystemDriver.scan_apart = lambda self, prefix, fold=None, read=None, shard=None: (
    self.scan(prefix, fold=fold)
)
fs.FilesystemDriver.walks_apart = False
fs.FilesystemDriver.bulk_apart = fs.StorageDriver.bulk_apart
sys.exit(entrepot.cli.main(sys.argv[1:]))
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder the store's user can reach (pytest's own are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="entrepot-owner-", dir="/tmp"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where)


def _store(tmp_path: Path, owner: pwd.struct_passwd | None) -> Path:
    write_gc_fixture(tmp_path / "store", repos=4, blobs=40)
    if owner is not None:
        for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/store\n"
    )
    return config


def _blobs(tmp_path: Path) -> int:
    return sum(1 for _ in (tmp_path / "store").rglob("data"))


@needs_root
def test_garbage_collect_as_root_runs_as_the_stores_owner(tmp_path: Path) -> None:
    config = _store(tmp_path, NOBODY)
    before = _blobs(tmp_path)

    done = subprocess.run(
        [sys.executable, "-c", COMMAND, "garbage-collect", str(config), "--grace", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )

    assert done.returncode == 0, done.stderr
    assert f"running as nobody (uid {NOBODY.pw_uid}), the owner of" in done.stderr
    assert 0 < _blobs(tmp_path) < before  # it collected
    made = [p for p in (tmp_path / "store").rglob("*") if p.stat().st_uid != NOBODY.pw_uid]
    assert made == []  # nothing the server could not change (entrepot/gc/, the journal)
    assert (tmp_path / "store" / "entrepot").stat().st_uid == NOBODY.pw_uid


@needs_root
def test_a_store_root_owns_is_collected_as_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _store(tmp_path, None)
    assert main(["garbage-collect", str(config), "--grace", "0"]) == 0
    assert "running as" not in capsys.readouterr().err
    assert os.geteuid() == 0


def _cannot_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    for name in ("initgroups", "setgroups", "setgid", "setuid"):
        monkeypatch.setattr(os, name, refuse)


@needs_root
@pytest.mark.parametrize("command", [["garbage-collect", "{config}"], ["cache", "ls", "{config}"]])
def test_when_root_cannot_become_the_owner_the_command_stops_and_says_how(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    config = _store(tmp_path, NOBODY)
    before = _blobs(tmp_path)
    _cannot_switch(monkeypatch)

    assert main([arg.format(config=config) for arg in command]) == 1

    err = capsys.readouterr().err
    assert f"rootdirectory {tmp_path}/store belongs to nobody (uid {NOBODY.pw_uid})" in err
    assert "run it as that user (sudo -u nobody ...)" in err
    assert _blobs(tmp_path) == before
    assert not (tmp_path / "store" / "entrepot").exists()  # nothing written as root
