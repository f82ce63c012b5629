"""A tag moved by another process (another worker, a replica, registry:2 itself) is seen
by the very next pull, although the filesystem driver keeps the bytes of small settled
files (storage/smallfiles.py) rather than read a tag's link on every request, and what
a pull answers with is made once per manifest. Likewise a blob deleted or collected is
gone for the very next HEAD, although its size, link and headers were kept."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from entrepot.storage.smallfiles import SETTLE_NS
from tests.api.oci_client import OciClient, make_image, sha256

# How another process moves a tag: Entrepot writes a temp file and renames it over the
# link; registry:2's filesystem driver rewrites the link file in place.
_RENAME = "import os, sys; open(sys.argv[1] + '.new', 'w').write(sys.argv[2]); " + (
    "os.replace(sys.argv[1] + '.new', sys.argv[1])"
)
_IN_PLACE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"


async def _settled(path: Path) -> None:
    """Wait until ``path`` last changed long enough ago to be kept in memory."""
    deadline = time.monotonic() + 30
    while time.time_ns() - os.stat(path).st_ctime_ns <= SETTLE_NS:
        assert time.monotonic() < deadline, f"{path} never settled"
        await asyncio.sleep(0.05)


async def test_tag_moved_by_another_process_is_seen_at_once(client: OciClient, root: Path) -> None:
    first, second, third = (make_image(seed) for seed in "abc")
    await client.push_image("lib/app", first, tag="latest")
    for image in (second, third):
        await client.push_image("lib/app", image)
    link = root / "docker/registry/v2/repositories/lib/app/_manifests/tags/latest/current/link"
    for script, image in ((_IN_PLACE, second), (_RENAME, third)):
        await _settled(link)
        for _ in range(2):  # the second read is answered from the kept copy
            response = await client.get_manifest("lib/app", "latest", method="HEAD")
            assert response.headers["docker-content-digest"] != image.digest
        move = [sys.executable, "-c", script, str(link), image.digest]
        await asyncio.to_thread(subprocess.run, move, check=True)
        # The same size, and (in place) the same inode: only ctime tells the change.
        assert os.stat(link).st_size == len(first.digest)
        for method in ("HEAD", "GET"):
            response = await client.get_manifest("lib/app", "latest", method=method)
            assert response.headers["docker-content-digest"] == image.digest
            assert response.headers["content-length"] == str(len(image.manifest))
        assert response.content == image.manifest


async def test_a_blob_deleted_or_collected_is_gone_for_the_next_head(
    client: OciClient, root: Path
) -> None:
    image = make_image("d")
    for repo in ("lib/app", "lib/other"):
        await client.push_image(repo, image, tag="v1")
    layer = sha256(image.layers[0])
    store = root / "docker/registry/v2"
    await _settled(store / f"repositories/lib/app/_layers/sha256/{layer[7:]}/link")
    for repo in ("lib/app", "lib/other"):
        for _ in range(2):  # the second answer comes from what the first one kept
            response = await client.http.head(f"/v2/{repo}/blobs/{layer}")
            assert response.status_code == 200
            assert response.headers["content-length"] == str(len(image.layers[0]))
    # Deleted from one repository (its link goes), still in the other.
    assert (await client.http.delete(f"/v2/lib/app/blobs/{layer}")).status_code == 202
    assert (await client.http.head(f"/v2/lib/app/blobs/{layer}")).status_code == 404
    assert (await client.http.head(f"/v2/lib/other/blobs/{layer}")).status_code == 200
    # Collected by another process (its data goes): gone from the other too.
    (store / f"blobs/sha256/{layer[7:9]}/{layer[7:]}/data").unlink()
    assert (await client.http.head(f"/v2/lib/other/blobs/{layer}")).status_code == 404
