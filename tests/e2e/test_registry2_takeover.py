"""Moving over from a registry:2 pull-through cache: the seed's operator ran registry:2 with a
``proxy:`` block. Debian's docker-registry runs in proxy mode on a storage root, in front of a
second docker-registry on loopback standing in for Docker Hub; it is stopped and Entrepot starts
on the same root with the same config. What registry:2 cached under plain names must stay a
cache (a tag moved upstream is followed), unless the operator says the store took pushes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .clients import Ctr
from .images import OCI_INDEX, OCI_MANIFEST, ImageLayout, assert_layout_holds, build_image
from .servers import ManagedServer, ServerFactory, find_free_port

pytestmark = pytest.mark.e2e

REPO = "library/app"
TAG = "1"
MANIFEST_ACCEPT = ", ".join(
    [OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json"]
)
V2 = Path("docker/registry/v2/repositories")


def _publish(hub: ManagedServer, tmp_path: Path, seed: int) -> ImageLayout:
    """Push an image to the stand-in Docker Hub as `library/app:1` (moving the tag)."""
    image = build_image(tmp_path / f"hub-{seed}", seed=seed, label=f"hub-{seed}")
    clients.push(image.ref, hub.host, REPO, TAG)
    return image


def _pull(server: ManagedServer, expected: ImageLayout, dest: Path) -> None:
    """A complete pull of `library/app:1` (every blob) that must give `expected`."""
    clients.pull_to_layout(server.host, REPO, TAG, dest, dest_tag=TAG)
    assert_layout_holds(dest, TAG, expected)


def _age(root: Path, seconds: float) -> None:
    """Make everything under `root` look written `seconds` ago: registry:2 cached it a while
    before the move, longer ago than the mirror's tagttl."""
    then = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(Path(directory) / name, (then, then))


def _tag_link(root: Path) -> str:
    return (root / V2 / REPO / "_manifests/tags" / TAG / "current/link").read_text()


def _registry2_cache(
    registry2_factory: ServerFactory, hub: ManagedServer, tmp_path: Path
) -> tuple[dict[str, Any], ImageLayout, Path]:
    """registry:2 in proxy mode in front of `hub` (the stand-in Docker Hub), `library/app:1`
    pulled through it and cached, then stopped. Returns the config, the image and the root."""
    config = {"proxy": {"remoteurl": hub.url}}
    old = _publish(hub, tmp_path, seed=61)
    root = tmp_path / "store"
    proxy = registry2_factory(root, config=config)
    # Proxy mode refuses every push: this store can only hold what registry:2 cached.
    refused = httpx.post(f"{proxy.url}/v2/team/app/blobs/uploads/", timeout=10)
    assert refused.status_code == 405, refused.text
    _pull(proxy, old, tmp_path / "through-registry2")
    proxy.stop()
    assert _tag_link(root) == old.digest
    assert not (root / "entrepot").exists()
    _age(root, 3600)
    return config, old, root


def test_registry2_cache_taken_over_follows_a_moved_upstream_tag(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    hub = registry2_factory()
    config, old, root = _registry2_cache(registry2_factory, hub, tmp_path)

    entrepot = entrepot_factory(root, config=config)
    # Until the tag moves, Entrepot serves what registry:2 cached.
    assert clients.inspect_digest(entrepot.host, REPO, TAG) == old.digest
    new = _publish(hub, tmp_path, seed=62)
    assert new.digest != old.digest
    _age(root, 3600)  # the revalidation above refreshed the tag; let tagttl pass again
    _pull(entrepot, new, tmp_path / "after-move")
    assert clients.inspect_digest(entrepot.host, REPO, TAG) == new.digest

    # The content stays where registry:2 keeps it: the tag moved in place, the decision is
    # recorded outside registry:2's tree.
    assert _tag_link(root) == new.digest
    assert (root / "entrepot/registry2-cache/names" / REPO / "_cache").is_file()
    assert not (root / V2 / "docker.io" / REPO).exists()
    assert "registry:2's pull-through cache" in entrepot.log()

    # Moving back is a restart too: registry:2 serves the moved tag, every blob included.
    entrepot.stop()
    back = registry2_factory(root)
    _pull(back, new, tmp_path / "moved-back")


def test_pushed_override_keeps_registry2_content_as_pushed(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    """For a store that took pushes before it became a proxy: its plain names stay pushed
    repositories, which the upstream never replaces."""
    hub = registry2_factory()
    config, old, root = _registry2_cache(registry2_factory, hub, tmp_path)

    config["proxycache"] = {"registry2store": "pushed"}
    entrepot = entrepot_factory(root, config=config)
    new = _publish(hub, tmp_path, seed=63)
    assert new.digest != old.digest
    _pull(entrepot, old, tmp_path / "after-move")
    assert clients.inspect_digest(entrepot.host, REPO, TAG) == old.digest
    assert _tag_link(root) == old.digest
    assert not (root / "entrepot/registry2-cache/names").exists()


def _dead_url() -> str:
    return f"http://127.0.0.1:{find_free_port()}"


def test_proxy_block_on_a_docker_hub_mirror_serves_ns_docker_io(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, ctr: Ctr, tmp_path: Path
) -> None:
    """The README's containerd set-up with registry:2's `proxy:` block: the remoteurl is a
    Docker Hub mirror (here on 127.0.0.1:PORT, as the seed used mirror.aliyuncs.com), and
    containerd asks with ?ns=docker.io."""
    mirror = registry2_factory()
    image = _publish(mirror, tmp_path, seed=64)
    entrepot = entrepot_factory(config={"proxy": {"remoteurl": mirror.url}})

    hosts_dir = tmp_path / "certs.d"
    clients.write_containerd_hosts(hosts_dir, "docker.io", entrepot.url, server=_dead_url())
    clients.ctr_pull_with_hosts(ctr, hosts_dir, f"docker.io/{REPO}:{TAG}")
    assert ctr.images()[f"docker.io/{REPO}:{TAG}"].digest == image.digest

    # The same by hand, and under the remoteurl's host, which still names the upstream.
    for namespace in ("docker.io", mirror.host):
        answered = httpx.get(
            f"{entrepot.url}/v2/{REPO}/manifests/{TAG}",
            params={"ns": namespace},
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=10,
        )
        assert answered.status_code == 200, (namespace, answered.text)
        assert answered.headers["docker-content-digest"] == image.digest
        assert answered.headers["oci-namespace"] == "docker.io"
