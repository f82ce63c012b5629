"""What the cache may fetch and when, driven by real clients against real upstreams (Debian's
docker-registry on loopback): allow and deny lists through containerd's ``ns`` route and
Docker-style plain names, an upstream configured offline (connections to it counted by a TCP
relay), and an index of three platforms of which only the one pulled is fetched."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .clients import ClientError, Ctr
from .images import ImageLayout, assert_layout_holds, build_image, build_index
from .servers import (
    AccessLogEntry,
    ManagedServer,
    ServerFactory,
    ThrottledForwarder,
    access_log,
    find_free_port,
    settled_access_log,
)

pytestmark = pytest.mark.e2e

STORE = "docker/registry/v2"


def _seed(upstream: ManagedServer, tmp_path: Path, repo: str, seed: int) -> ImageLayout:
    image = build_image(tmp_path / f"seed-{seed}", seed=seed, label=f"policy-{seed}")
    clients.push(image.ref, upstream.host, repo, "1")
    return image


def _by_entrepot(upstream: ManagedServer) -> list[AccessLogEntry]:
    return [e for e in access_log(upstream) if e.agent.startswith("entrepot/")]


def _dead_url() -> str:
    return f"http://127.0.0.1:{find_free_port()}"


def test_allow_and_deny_lists_with_containerd_and_skopeo(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, ctr: Ctr, tmp_path: Path
) -> None:
    hub = registry2_factory()
    allowed = _seed(hub, tmp_path, "library/app", seed=41)
    _seed(hub, tmp_path, "library/secret-db", seed=42)
    _seed(hub, tmp_path, "other/tool", seed=43)
    hub_entry: dict[str, Any] = {
        "host": "docker.io",
        "remoteurl": hub.url,
        "mirror": True,
        "allow": ["library/*"],
        "deny": ["library/secret*"],
    }
    entrepot = entrepot_factory(config={"proxies": [hub_entry]})

    # containerd with a hosts.toml mirror: every request carries ?ns=docker.io.
    hosts_dir = tmp_path / "certs.d"
    clients.write_containerd_hosts(hosts_dir, "docker.io", entrepot.url, server=_dead_url())
    clients.ctr_pull_with_hosts(ctr, hosts_dir, "docker.io/library/app:1")
    assert ctr.images()["docker.io/library/app:1"].digest == allowed.digest
    for refused in ("docker.io/library/secret-db:1", "docker.io/other/tool:1"):
        with pytest.raises(ClientError) as failed:
            clients.ctr_pull_with_hosts(ctr, hosts_dir, refused)
        assert "403" in str(failed.value)
    by_ctr = [e for e in access_log(entrepot) if e.agent.startswith("containerd")]
    assert {e.status for e in by_ctr if "secret-db" in e.path or "other/tool" in e.path} == {403}
    assert all(e.query.get("ns") == ["docker.io"] for e in by_ctr)

    # Plain names, as Docker's registry-mirrors sends them (skopeo here): the rule is named.
    clients.pull_to_layout(entrepot.host, "app", "1", tmp_path / "app", dest_tag="1")
    assert_layout_holds(tmp_path / "app", "1", allowed)
    with pytest.raises(ClientError) as denied:
        clients.pull_to_layout(entrepot.host, "secret-db", "1", tmp_path / "secret", dest_tag="1")
    assert "deny rule 'library/secret*' of upstream docker.io" in str(denied.value)
    with pytest.raises(ClientError) as not_allowed:
        clients.inspect_raw(entrepot.host, "other/tool", "1")
    assert "no allow rule of upstream docker.io ('library/*')" in str(not_allowed.value)

    # Nothing of a refused name was asked upstream, on either route.
    asked = [e.path for e in _by_entrepot(hub)]
    assert asked and not [p for p in asked if "secret-db" in p or "other/tool" in p], asked


def test_offline_upstream_serves_the_cache_and_is_never_connected(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    hub = registry2_factory()
    cached = _seed(hub, tmp_path, "library/app", seed=44)
    _seed(hub, tmp_path, "library/other", seed=45)
    assert hub.port is not None
    relay = ThrottledForwarder(hub.port).start()
    try:
        root = tmp_path / "entrepot-root"
        entry: dict[str, Any] = {"host": "docker.io", "remoteurl": relay.url, "mirror": True}
        online = entrepot_factory(root, config={"proxies": [{**entry, "tagttl": "0s"}]})
        clients.pull_to_layout(online.host, "app", "1", tmp_path / "first", dest_tag="1")
        assert relay.connections > 0
        online.stop()

        offline = entrepot_factory(root, config={"proxies": [{**entry, "offline": True}]})
        before = relay.connections
        clients.pull_to_layout(offline.host, "app", "1", tmp_path / "again", dest_tag="1")
        assert_layout_holds(tmp_path / "again", "1", cached)
        via_prefix = clients.inspect_raw(offline.host, "docker.io/library/app", "1")
        assert hashlib.sha256(via_prefix).hexdigest() == cached.digest.split(":")[1]
        with pytest.raises(ClientError) as uncached:
            clients.pull_to_layout(offline.host, "other", "1", tmp_path / "other", dest_tag="1")
        assert "upstream docker.io is configured offline" in str(uncached.value)
        metrics = httpx.get(f"{offline.url}/metrics", timeout=10).text
        assert 'entrepot_upstream_offline{upstream="docker.io"} 1.0' in metrics
        assert relay.connections == before  # not one connection attempt
    finally:
        relay.stop()


def test_one_platform_of_a_three_platform_index_is_all_that_is_fetched(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    hub = registry2_factory()
    platforms = ("linux/amd64", "linux/arm64", "linux/s390x")
    index = build_index(tmp_path / "multi", seed=46, platforms=platforms, label="lazy")
    clients.push(index.ref, hub.host, "library/multi", "1", all_images=True)
    root = tmp_path / "entrepot-root"
    entrepot = entrepot_factory(
        root, config={"proxies": [{"host": "docker.io", "remoteurl": hub.url, "mirror": True}]}
    )

    clients.skopeo_copy(
        f"docker://{clients.docker_ref(entrepot.host, 'multi', '1')}",
        f"oci:{tmp_path / 'pulled'}:1",
        extra=("--override-os", "linux", "--override-arch", "amd64"),
    )

    # The index as upstream has it, byte for byte: served, and stored.
    upstream_raw = clients.inspect_raw(hub.host, "library/multi", "1")
    assert hashlib.sha256(upstream_raw).hexdigest() == index.digest.split(":")[1]
    assert clients.inspect_raw(entrepot.host, "library/multi", "1") == upstream_raw
    encoded = index.digest.split(":")[1]
    stored = root / STORE / "blobs" / "sha256" / encoded[:2] / encoded / "data"
    assert stored.read_bytes() == upstream_raw

    # Entrepot GETs from upstream the index (by digest, after a HEAD of the tag), the amd64
    # child's manifest and its blobs, each once; nothing of the other two platforms.
    amd64 = index.images["linux/amd64"]
    log = [e for e in settled_access_log(hub) if e.agent.startswith("entrepot/")]
    fetched = sorted(e.path for e in log if e.method == "GET")
    expected = sorted(
        [
            f"/v2/library/multi/manifests/{index.digest}",
            f"/v2/library/multi/manifests/{amd64.manifest.digest}",
            *(f"/v2/library/multi/blobs/{digest}" for digest in amd64.blob_digests),
        ]
    )
    assert fetched == expected
    for other in ("linux/arm64", "linux/s390x"):
        image = index.images[other]
        untouched = {image.manifest.digest, *image.blob_digests}
        assert not [e for e in log if any(d in e.path for d in untouched)], other


def _metric(server: ManagedServer, series: str) -> float:
    """The value of one series on the server's /metrics (0 when absent)."""
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def test_upstream_down_goes_offline_then_comes_back(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    hub = registry2_factory()
    cached = _seed(hub, tmp_path, "library/app", seed=47)
    later = _seed(hub, tmp_path, "library/later", seed=48)
    assert hub.port is not None
    relay = ThrottledForwarder(hub.port).start()
    offline = 'entrepot_upstream_offline{upstream="docker.io"}'
    probes = 'entrepot_upstream_requests_total{request="probe",upstream="docker.io"}'
    try:
        entry = {
            "host": "docker.io",
            "remoteurl": relay.url,
            "mirror": True,
            "tagttl": "0s",  # online, every pull of a tag asks upstream
            "offlineafter": 2,
            "probeinterval": "1s",
        }
        entrepot = entrepot_factory(config={"proxies": [entry]})
        clients.pull_to_layout(entrepot.host, "app", "1", tmp_path / "first", dest_tag="1")
        hub.stop()
        for _ in range(2):  # no answer: the relay finds nothing behind it
            failed = httpx.get(f"{entrepot.url}/v2/library/later/manifests/1", timeout=30)
            assert failed.status_code == 503, failed.text
        assert _metric(entrepot, offline) == 1.0
        assert "upstream docker.io is offline after 2 failed connections" in entrepot.log()

        # Offline: the cached image pulls; only the health check connects meanwhile.
        connections, probes_before = relay.connections, _metric(entrepot, probes)
        clients.pull_to_layout(entrepot.host, "app", "1", tmp_path / "offline", dest_tag="1")
        assert_layout_holds(tmp_path / "offline", "1", cached)
        for _ in range(10):
            refused = httpx.get(f"{entrepot.url}/v2/library/later/manifests/1", timeout=30)
            assert refused.status_code == 404
            assert "upstream docker.io is offline" in refused.text
        made = relay.connections - connections
        # aiohttp sends an idempotent request again once when the server hangs up (as the
        # relay does with nothing behind it): at most two connections per health check.
        assert made <= 2 * (_metric(entrepot, probes) - probes_before)

        hub.start()
        _wait_for(lambda: _metric(entrepot, offline) == 0.0, "the upstream is back online")
        assert "upstream docker.io is back online (GET /v2/ answered HTTP" in entrepot.log()
        clients.pull_to_layout(entrepot.host, "later", "1", tmp_path / "later", dest_tag="1")
        assert_layout_holds(tmp_path / "later", "1", later)
    finally:
        relay.stop()
