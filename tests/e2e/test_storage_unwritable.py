"""Storage that cannot be written shows: at start (one line naming the path, exit 1), in
the health check while serving (/v2/ 503), and in the log line of every failed write.

The storage is a real read-only mount (tmpfs remounted ``ro``), which even root cannot
write; without root a directory without write permission stands in for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import ServerFactory, ServerStartError, probe, wait_for_v2

pytestmark = pytest.mark.e2e


class SwitchableStorage:
    """A directory that can be made read-only and writable again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = os.geteuid() == 0
        if self.mounted:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True
            )

    def read_only(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        else:
            self.path.chmod(0o555)

    def writable(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)
        else:
            self.path.chmod(0o755)

    @property
    def reason(self) -> str:
        return "Read-only file system" if self.mounted else "Permission denied"

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
        else:
            self.path.chmod(0o755)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SwitchableStorage]:
    path = tmp_path / "store"
    path.mkdir()
    switchable = SwitchableStorage(path)
    try:
        yield switchable
    finally:
        switchable.close()


def _status(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_start_on_unwritable_storage_is_one_clear_error(
    entrepot_factory: ServerFactory, storage: SwitchableStorage
) -> None:
    storage.read_only()

    with pytest.raises(ServerStartError) as failed:
        entrepot_factory(storage.path)

    output = str(failed.value)
    assert "exited with code 1" in output
    assert f"storage.filesystem.rootdirectory {storage.path}" in output
    assert storage.reason in output
    assert "Traceback" not in output


def test_storage_turning_read_only_while_serving_shows_in_health_and_logs(
    entrepot_factory: ServerFactory, storage: SwitchableStorage
) -> None:
    health = {"storagedriver": {"enabled": True, "interval": "1s", "threshold": 1}}
    server = entrepot_factory(storage.path, config={"health": health})
    assert probe(f"{server.url}/v2/") == 200

    storage.read_only()
    status, body = _status(f"{server.url}/v2/team/app/blobs/uploads/", "POST")
    assert status == 503
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    wait_for_v2(server, 503)
    # The operator's log names the path and the OS's reason; the client's body does not.
    log = server.log()
    assert "storage failure" in log
    assert str(storage.path) in log
    assert storage.reason in log
    assert str(storage.path).encode() not in body

    storage.writable()
    wait_for_v2(server, 200)
    status, _ = _status(f"{server.url}/v2/team/app/blobs/uploads/", "POST")
    assert status == 202
