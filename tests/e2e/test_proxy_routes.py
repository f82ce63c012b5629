"""One endpoint that is both a private registry and a pull-through cache, driven by real clients.

The upstreams are real registry:2 processes on loopback standing in for Docker Hub ("hub",
configured as host docker.io) and ghcr.io ("ghcr"). The clients reach the cache the three
ways the design names: containerd's hosts.toml mirror (``?ns=<host>``), a path prefix
(podman's registries.conf mirror, or an explicit ``ENTREPOT/ghcr.io/...`` reference), and
plain names (local first, then the mirror upstream). The upstreams' access logs say how
often each blob was downloaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .clients import Ctr, Podman
from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    ImageLayout,
    assert_layout_holds,
    build_image,
)
from .servers import (
    AccessLogEntry,
    ManagedServer,
    ServerFactory,
    access_log,
    find_free_port,
)

pytestmark = pytest.mark.e2e

MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


# --- helpers ----------------------------------------------------------------------------------


def _seed(upstream: ManagedServer, tmp_path: Path, repo: str, tag: str, seed: int) -> ImageLayout:
    """Build an image and push it to the upstream with skopeo, as its owner would."""
    image = build_image(tmp_path / f"seed-{seed}", seed=seed, label=f"upstream-{seed}")
    clients.push(image.ref, upstream.host, repo, tag)
    return image


def _pull_and_check(host: str, repo: str, tag: str, expected: ImageLayout, dest: Path) -> None:
    clients.pull_to_layout(host, repo, tag, dest, dest_tag=tag)
    assert_layout_holds(dest, tag, expected)


def _catalog(server: ManagedServer) -> list[str]:
    response = httpx.get(f"{server.url}/v2/_catalog", params={"n": 1000}, timeout=10)
    assert response.status_code == 200, response.text
    repositories: list[str] = response.json()["repositories"]
    return repositories


def _error_codes(response: httpx.Response) -> list[str]:
    body: dict[str, Any] = json.loads(response.content or b"{}")
    return [str(error.get("code")) for error in body.get("errors", [])]


def _proxy(host: str, upstream: ManagedServer, **options: Any) -> dict[str, Any]:
    return {"host": host, "remoteurl": upstream.url, **options}


def _dead_url() -> str:
    """A loopback address nothing listens on: where clients may fall back, and fail."""
    return f"http://127.0.0.1:{find_free_port()}"


def _by_entrepot(upstream: ManagedServer) -> list[AccessLogEntry]:
    """What Entrepot asked the upstream (not the tests' own seeding and checks)."""
    return [e for e in access_log(upstream) if e.agent.startswith("entrepot/")]


def _assert_blobs_fetched_once(upstream: ManagedServer, repo: str, image: ImageLayout) -> None:
    """Entrepot downloaded each blob of the image, and its manifest, exactly once."""
    log = _by_entrepot(upstream)
    for digest in image.images["linux/amd64"].blob_digests:
        gets = [e for e in log if e.method == "GET" and e.path == f"/v2/{repo}/blobs/{digest}"]
        assert len(gets) == 1, f"{repo}@{digest}: {len(gets)} upstream GETs: {gets}"
    manifest_gets = [
        e for e in log if e.method == "GET" and e.path.startswith(f"/v2/{repo}/manifests/")
    ]
    assert len(manifest_gets) == 1, f"{repo}: manifest GETs upstream: {manifest_gets}"


# --- push and pull-through on one endpoint ------------------------------------------------------


def test_push_and_cached_pull_on_the_same_endpoint(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    hub = registry2_factory()
    app = _seed(hub, tmp_path, "library/app", "1", seed=21)
    entrepot = entrepot_factory(
        config={"proxies": [_proxy("docker.io", hub, mirror=True)]},
    )

    # A push of our own image, and a pull of Docker Hub's image, on one endpoint.
    private = build_image(tmp_path / "private", seed=22, label="private")
    clients.push(private.ref, entrepot.host, "team/private", "1")
    _pull_and_check(entrepot.host, "library/app", "1", app, tmp_path / "pulled-app")
    _pull_and_check(entrepot.host, "team/private", "1", private, tmp_path / "pulled-private")

    # The exact bytes of upstream: same digest; a one-component name gains library/.
    upstream_digest = clients.inspect_digest(hub.host, "library/app", "1")
    assert upstream_digest == app.digest
    assert clients.inspect_digest(entrepot.host, "library/app", "1") == upstream_digest
    assert clients.inspect_digest(entrepot.host, "app", "1") == upstream_digest
    assert clients.inspect_digest(entrepot.host, "team/private", "1") == private.digest

    catalog = _catalog(entrepot)
    assert "team/private" in catalog
    assert "docker.io/library/app" in catalog
    # The push stayed here: nothing of team/private was written to the mirror's upstream.
    assert not [e for e in access_log(hub) if e.method in WRITES and "team/private" in e.path]
    _assert_blobs_fetched_once(hub, "library/app", app)


def test_push_of_an_image_the_mirror_also_serves(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    """`docker pull app; docker tag app ENTREPOT/app:mine; docker push ENTREPOT/app:mine`:
    the pushed image shares every blob with the mirror's library/app. The push must end with
    the image stored here, whether the mirror's cache holds those blobs yet or not: a blob
    check answered "already there" must not end in MANIFEST_BLOB_UNKNOWN for the manifest.
    """
    hub = registry2_factory()
    app = _seed(hub, tmp_path, "library/app", "1", seed=25)
    entrepot = entrepot_factory(config={"proxies": [_proxy("docker.io", hub, mirror=True)]})
    upstream_ref = f"docker://{hub.host}/library/app:1"

    # The blobs are upstream only: nothing was pulled through Entrepot yet.
    clients.skopeo_copy(upstream_ref, f"docker://{entrepot.host}/library/app:mine")
    assert clients.inspect_digest(entrepot.host, "library/app", "mine") == app.digest

    # The blobs are in the mirror's cache: app:1 was pulled through Entrepot first.
    _pull_and_check(entrepot.host, "app", "1", app, tmp_path / "pulled-1")
    clients.skopeo_copy(upstream_ref, f"docker://{entrepot.host}/app:mine")
    assert clients.inspect_digest(entrepot.host, "app", "mine") == app.digest

    # The pushed images are Entrepot's own: they pull with the upstream gone.
    hub.stop()
    _pull_and_check(entrepot.host, "app", "mine", app, tmp_path / "pulled-mine")
    _pull_and_check(entrepot.host, "library/app", "mine", app, tmp_path / "pulled-lib-mine")


def test_registry2_proxy_block_accepts_pushes(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    """The user's story: registry:2's own `proxy:` config, then a push to the same endpoint."""
    hub = registry2_factory()
    app = _seed(hub, tmp_path, "library/app", "1", seed=23)
    proxy_config = {"proxy": {"remoteurl": hub.url}}
    private = build_image(tmp_path / "private", seed=24, label="private")

    # The peer: registry:2 in proxy mode refuses every upload with 405 UNSUPPORTED.
    peer = registry2_factory(config=proxy_config)
    refused = httpx.post(f"{peer.url}/v2/team/private/blobs/uploads/", timeout=10)
    assert refused.status_code == 405, refused.text
    assert _error_codes(refused) == ["UNSUPPORTED"]
    with pytest.raises(clients.ClientError):
        clients.push(private.ref, peer.host, "team/private", "1", timeout=60)

    # Entrepot on the same config: the push works, and so does the cached pull.
    entrepot = entrepot_factory(config=proxy_config)
    clients.push(private.ref, entrepot.host, "team/private", "1")
    _pull_and_check(entrepot.host, "team/private", "1", private, tmp_path / "pulled-private")
    _pull_and_check(entrepot.host, "library/app", "1", app, tmp_path / "pulled-app")
    assert clients.inspect_digest(entrepot.host, "library/app", "1") == app.digest
    assert not [e for e in access_log(hub) if e.method in WRITES and "team/private" in e.path]
    _assert_blobs_fetched_once(hub, "library/app", app)


# --- three routes, one cache ---------------------------------------------------------------------


def test_three_routes_reach_one_cached_copy(
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    ctr: Ctr,
    podman: Podman,
    tmp_path: Path,
) -> None:
    hub = registry2_factory()
    ghcr = registry2_factory()
    app = _seed(hub, tmp_path, "library/app", "1", seed=31)
    tool = _seed(ghcr, tmp_path, "org/tool", "1", seed=32)
    entrepot = entrepot_factory(
        config={
            "proxies": [
                _proxy("docker.io", hub, mirror=True),
                _proxy("ghcr.io", ghcr),
            ]
        }
    )

    # (a) containerd, with hosts.toml mirrors: requests carry ?ns=docker.io / ?ns=ghcr.io.
    hosts_dir = tmp_path / "certs.d"
    for registry in ("docker.io", "ghcr.io"):
        clients.write_containerd_hosts(hosts_dir, registry, entrepot.url, server=_dead_url())
    clients.ctr_pull_with_hosts(ctr, hosts_dir, "docker.io/library/app:1")
    clients.ctr_pull_with_hosts(ctr, hosts_dir, "ghcr.io/org/tool:1")
    pulled = ctr.images()
    assert pulled["docker.io/library/app:1"].digest == app.digest
    assert pulled["ghcr.io/org/tool:1"].digest == tool.digest
    assert ctr.content(tool.digest) == tool.blob(tool.digest)
    # containerd asked for the unprefixed /v2/org/tool/...: neither a local repository nor
    # the docker.io mirror has it, so only its ?ns=ghcr.io can have routed it to ghcr.
    by_ctr = [e for e in access_log(entrepot) if e.agent.startswith("containerd")]
    assert {e.path.split("/")[2] for e in by_ctr} == {"library", "org"}, by_ctr
    assert any(e.path.startswith("/v2/org/tool/blobs/") for e in by_ctr), by_ctr

    # The ns route says which namespace answered (distribution-spec "Registry Proxying").
    answered = httpx.head(
        f"{entrepot.url}/v2/org/tool/manifests/1",
        params={"ns": "ghcr.io"},
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=10,
    )
    assert answered.status_code == 200
    assert answered.headers["oci-namespace"] == "ghcr.io"
    assert answered.headers["docker-content-digest"] == tool.digest

    # (b) podman, with a registries.conf mirror that has a path: /v2/ghcr.io/org/tool/...
    # (The registry's own location is a dead loopback port: no fallback leaves the machine.)
    conf = clients.write_registries_conf(
        tmp_path / "registries.conf",
        [
            {
                "prefix": "ghcr.io",
                "location": _dead_url().removeprefix("http://"),
                "insecure": True,
                "mirror": [{"location": f"{entrepot.host}/ghcr.io", "insecure": True}],
            }
        ],
    )
    env = {"CONTAINERS_REGISTRIES_CONF": str(conf)}
    clients.podman_with_env(podman, env, "pull", "ghcr.io/org/tool:1")
    info = podman.image_inspect("ghcr.io/org/tool:1")
    assert info["Digest"] == tool.digest
    assert info["Id"] == tool.images["linux/amd64"].config.digest.split(":", 1)[1]
    by_podman = [e for e in access_log(entrepot) if e.path.startswith("/v2/ghcr.io/org/tool/")]
    assert any("/manifests/" in e.path for e in by_podman), access_log(entrepot)

    # (c) skopeo, naming the cache explicitly: ENTREPOT/ghcr.io/org/tool:1.
    _pull_and_check(entrepot.host, "ghcr.io/org/tool", "1", tool, tmp_path / "pulled-tool")
    assert clients.inspect_digest(entrepot.host, "ghcr.io/org/tool", "1") == tool.digest
    assert clients.inspect_digest(ghcr.host, "org/tool", "1") == tool.digest

    # One cached copy each, whatever the route: listed once, each blob downloaded once.
    catalog = _catalog(entrepot)
    assert catalog.count("ghcr.io/org/tool") == 1, catalog
    assert catalog.count("docker.io/library/app") == 1, catalog
    assert sorted(catalog) == ["docker.io/library/app", "ghcr.io/org/tool"]
    _assert_blobs_fetched_once(ghcr, "org/tool", tool)
    _assert_blobs_fetched_once(hub, "library/app", app)


# --- pushes into a cache namespace ---------------------------------------------------------------


def test_push_into_a_cache_namespace(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    ghcr = registry2_factory()
    tool = _seed(ghcr, tmp_path, "org/tool", "1", seed=41)
    ours = build_image(tmp_path / "ours", seed=42, label="ours")

    # By default a cache namespace is read-only: DENIED, and nothing is stored.
    closed = entrepot_factory(config={"proxies": [_proxy("ghcr.io", ghcr)]})
    with pytest.raises(clients.ClientError) as refused:
        clients.push(ours.ref, closed.host, "ghcr.io/org/x", "1", timeout=60)
    assert "denied" in refused.value.stderr.lower(), refused.value.stderr
    upload = httpx.post(f"{closed.url}/v2/ghcr.io/org/x/blobs/uploads/", timeout=10)
    assert upload.status_code == 403, upload.text
    assert _error_codes(upload) == ["DENIED"]
    assert "ghcr.io/org/x" not in _catalog(closed)

    # allowpush: pushes are accepted, and a pushed tag is never replaced from upstream.
    open_ = entrepot_factory(
        config={"proxies": [_proxy("ghcr.io", ghcr, allowpush=True, tagttl="1s")]}
    )
    assert clients.inspect_digest(open_.host, "ghcr.io/org/tool", "1") == tool.digest  # cached
    clients.push(ours.ref, open_.host, "ghcr.io/org/x", "1")
    clients.push(ours.ref, open_.host, "ghcr.io/org/tool", "1")  # over the cached tag
    asked_before = _manifest_requests(ghcr, "org/tool")
    time.sleep(1.5)  # past tagttl: an upstream tag would be revalidated now

    assert clients.inspect_digest(open_.host, "ghcr.io/org/tool", "1") == ours.digest
    by_ns = httpx.get(
        f"{open_.url}/v2/org/tool/manifests/1",
        params={"ns": "ghcr.io"},
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=10,
    )
    assert by_ns.status_code == 200, by_ns.text
    assert by_ns.headers["docker-content-digest"] == ours.digest
    _pull_and_check(open_.host, "ghcr.io/org/tool", "1", ours, tmp_path / "pulled-tool")
    _pull_and_check(open_.host, "ghcr.io/org/x", "1", ours, tmp_path / "pulled-x")
    # Upstream is untouched, and was not asked again about the pushed tag.
    assert clients.inspect_digest(ghcr.host, "org/tool", "1") == tool.digest
    assert not [e for e in _by_entrepot(ghcr) if e.method in WRITES]
    assert _manifest_requests(ghcr, "org/tool") == asked_before


def _manifest_requests(upstream: ManagedServer, repo: str) -> list[AccessLogEntry]:
    return [e for e in _by_entrepot(upstream) if e.path.startswith(f"/v2/{repo}/manifests/")]
