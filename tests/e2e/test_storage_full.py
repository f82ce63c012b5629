"""A full disk: pushes get the spec's 503 (never a traceback, never a half-written blob,
manifest or upload chunk), reads go on, the log names the path and "No space left on
device", the health check reports the storage unwritable; once space is freed, pushes
work again and the store is consistent (layout check and ``entrepot garbage-collect
--dry-run``).

The storage root is a real size-limited tmpfs (as root, as ``make test`` runs); the disk is
filled with a ballast file beside the registry's tree (bench/diskfull.py, which the soak's
disk-full fault uses too), as another program would fill it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.diskfull import fill
from bench.soakcheck import check_layout

from .servers import REPO_ROOT, ManagedServer, ServerFactory, wait_for_v2

pytestmark = pytest.mark.e2e

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (make test runs as root)")
    path = tmp_path / "store"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    def __init__(self, server: ManagedServer) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def start(self, repo: str) -> httpx.Response:
        return self.http.post(f"/v2/{repo}/blobs/uploads/")

    def push_monolithic(self, repo: str, data: bytes) -> httpx.Response:
        started = self.start(repo)
        if started.status_code != 202:
            return started
        return self.http.put(
            started.headers["Location"], params={"digest": _digest(data)}, content=data
        )

    def push_chunked(self, repo: str, data: bytes, chunk: int) -> tuple[httpx.Response, str]:
        """(the first refused answer or the final PUT's, the upload's location)."""
        started = self.start(repo)
        if started.status_code != 202:
            return started, ""
        location = started.headers["Location"]
        for offset in range(0, len(data), chunk):
            part = data[offset : offset + chunk]
            answer = self.http.patch(
                location,
                content=part,
                headers={"Content-Range": f"{offset}-{offset + len(part) - 1}"},
            )
            if answer.status_code != 202:
                return answer, location
            location = answer.headers["Location"]
        return self.http.put(location, params={"digest": _digest(data)}), location

    def put_manifest(self, repo: str, tag: str, layers: list[bytes]) -> httpx.Response:
        config = b"{}"
        for blob in [config, *layers]:
            if self.http.head(f"/v2/{repo}/blobs/{_digest(blob)}").status_code != 200:
                assert self.push_monolithic(repo, blob).status_code == 201
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
        return self.http.put(
            f"/v2/{repo}/manifests/{tag}",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )

    def pull(self, repo: str, tag: str) -> list[bytes]:
        answer = self.http.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert answer.status_code == 200, answer.text
        blobs = []
        for layer in answer.json()["layers"]:
            got = self.http.get(f"/v2/{repo}/blobs/{layer['digest']}")
            assert got.status_code == 200 and _digest(got.content) == layer["digest"]
            blobs.append(got.content)
        return blobs


def _assert_unavailable(answer: httpx.Response) -> None:
    """The spec's error body for a storage failure: 503 UNAVAILABLE, nothing internal."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert "Traceback" not in answer.text and "/" not in answer.json()["errors"][0]["message"]


def test_full_disk_refuses_pushes_cleanly_and_recovers(
    entrepot_factory: ServerFactory, small_disk: Path
) -> None:
    health = {"storagedriver": {"enabled": True, "interval": "1s", "threshold": 1}}
    server = entrepot_factory(small_disk, config={"health": health})
    client = Client(server)
    kept = [os.urandom(MiB)]
    assert client.put_manifest("team/app", "v1", kept).status_code == 201

    # Two MiB left: a 4 MiB blob fails part-way, as one PUT and as 1 MiB PATCH chunks.
    fill(small_disk, leave=2 * MiB)
    big = os.urandom(4 * MiB)
    _assert_unavailable(client.push_monolithic("team/app", big))
    assert client.http.head(f"/v2/team/app/blobs/{_digest(big)}").status_code == 404
    refused, location = client.push_chunked("team/app", big, chunk=MiB)
    _assert_unavailable(refused)
    # The upload keeps exactly the chunks it acknowledged: no partly written tail.
    status = client.http.get(location)
    assert status.status_code == 204
    acknowledged = int(status.headers["Range"].split("-")[1]) + 1
    assert acknowledged % MiB == 0 and acknowledged < len(big)

    # Completely full: a manifest push is refused too, and the tag does not move.
    ballast = fill(small_disk)
    _assert_unavailable(client.put_manifest("team/app", "v1", []))
    assert client.pull("team/app", "v1") == kept
    wait_for_v2(server, 503)
    assert client.http.get("/health").json() == {"status": "unhealthy"}
    # Reads go on.
    assert client.pull("team/app", "v1") == kept

    log = server.log()
    assert "Traceback" not in log
    assert f"{small_disk}/" in log and "No space left on device" in log
    assert "free space on that filesystem" in log

    # Space freed: healthy again, the refused pushes go through, the store is consistent.
    ballast.unlink()
    wait_for_v2(server, 200)
    assert client.push_monolithic("team/app", big).status_code == 201
    assert client.put_manifest("team/app", "v2", [big]).status_code == 201
    assert client.pull("team/app", "v2") == [big]
    assert client.pull("team/app", "v1") == kept

    problems, counts = check_layout(small_disk)
    assert problems == [] and counts["revisions"] == 2
    collected = subprocess.run(
        [sys.executable, "-m", "entrepot", "garbage-collect", "--dry-run", str(server.config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
        timeout=120,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    assert "Traceback" not in collected.stdout + collected.stderr
