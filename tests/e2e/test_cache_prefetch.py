"""``entrepot cache prefetch`` and ``entrepot cache ls`` against a real registry:2 upstream
(Debian's docker-registry), filed in the config as the registry ``upstream.test``:
prefetched images pull with the upstream stopped, only the platforms asked for are
fetched (counted in the upstream's access log), and mistakes get one line and exit 1."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from . import clients
from .images import build_image, build_index
from .servers import (
    REPO_ROOT,
    ManagedServer,
    ServerFactory,
    ThrottledForwarder,
    access_log,
    registry_config,
    requests_to,
)

pytestmark = pytest.mark.e2e

UPSTREAM = "upstream.test"


def _config(tmp_path: Path, upstream: ManagedServer, root: Path) -> Path:
    """A config for the cache on ``root``, as the server would take it."""
    config = registry_config(root, 0, {"proxies": [{"host": UPSTREAM, "remoteurl": upstream.url}]})
    path = tmp_path / "cache-config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _entrepot(*args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(
        p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "entrepot", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_a_prefetched_image_pulls_with_the_upstream_stopped(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "image", tag="1.27", layer_sizes=(4096, 70_000))
    clients.push(f"oci:{image.path}:1.27", registry2.host, "library/nginx", "1.27")
    root = tmp_path / "cache"
    config = _config(tmp_path, registry2, root)

    # No server runs on the storage yet: the command fills the cache on its own.
    out = _ok(_entrepot("cache", "prefetch", str(config), f"{UPSTREAM}/library/nginx:1.27"))
    assert f"prefetched {UPSTREAM}/library/nginx:1.27" in out
    assert out.count(": fetched") == 3, out  # a config and two layers

    registry2.stop()
    cache = entrepot_factory(
        root, config={"proxies": [{"host": UPSTREAM, "remoteurl": registry2.url}]}
    )
    pulled = tmp_path / "pulled"
    clients.pull_to_layout(cache.host, f"{UPSTREAM}/library/nginx", "1.27", pulled)
    assert clients.inspect_digest(cache.host, f"{UPSTREAM}/library/nginx", "1.27") == image.digest

    # A second prefetch finds everything cached (the upstream is still down: it is only
    # asked about the tag, whose cached copy is served).
    again = _ok(_entrepot("cache", "prefetch", str(config), f"{UPSTREAM}/library/nginx:1.27"))
    assert again.count(": cached already") == 3, again
    assert "0 bytes fetched" in again


def test_prefetch_of_one_platform_fetches_only_that_child_and_cache_ls_lists_it(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    platforms = ("linux/amd64", "linux/arm64", "linux/s390x")
    index = build_index(tmp_path / "multi", tag="2", platforms=platforms, layer_sizes=(3000,))
    clients.push(f"oci:{index.path}:2", registry2.host, "app/multi", "2", all_images=True)
    # A server runs on the cache's storage meanwhile: the command works beside it.
    # A ttl turns pull recording on (cache ls then shows the last pull).
    cache = entrepot_factory(
        config={"proxies": [{"host": UPSTREAM, "remoteurl": registry2.url, "ttl": "720h"}]}
    )
    config = _config(tmp_path, registry2, cache.root)

    out = _ok(
        _entrepot(
            "cache", "prefetch", "--platform", "linux/amd64", str(config), f"{UPSTREAM}/app/multi:2"
        )
    )
    assert "(linux/amd64)" in out, out

    wanted = index.images["linux/amd64"]
    assert (
        len(requests_to(registry2, "GET", f"/v2/app/multi/manifests/{wanted.manifest.digest}")) == 1
    )
    for blob in wanted.blob_digests:
        assert len(requests_to(registry2, "GET", f"/v2/app/multi/blobs/{blob}")) == 1
    for other in ("linux/arm64", "linux/s390x"):
        image = index.images[other]
        assert (
            requests_to(registry2, "GET", f"/v2/app/multi/manifests/{image.manifest.digest}") == []
        )
        for blob in image.blob_digests:
            assert requests_to(registry2, "GET", f"/v2/app/multi/blobs/{blob}") == []

    # The server serves what the command cached, without a blob fetch of its own.
    assert clients.inspect_digest(cache.host, f"{UPSTREAM}/app/multi", "2") == index.digest

    listing = _ok(_entrepot("cache", "ls", str(config)))
    header, *rows = listing.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CACHED", "CHECKED", "PULLED"]
    row = next(r.split() for r in rows if r.startswith(f"{UPSTREAM}/app/multi "))
    assert row[:3] == [f"{UPSTREAM}/app/multi", "2", index.digest]

    # The server writes the pull it served when it stops (else every few seconds).
    cache.stop()
    listing = _ok(_entrepot("cache", "ls", str(config)))
    row = next(r.split() for r in listing.splitlines() if r.startswith(f"{UPSTREAM}/app/multi "))
    assert len(row) == 11 and row[-1] != "-", row  # the date and time of the last pull
    assert _ok(_entrepot("cache", "ls", str(config), UPSTREAM)) == listing


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("library/nginx:1.27", "must start with its registry host"),
        ("ghcr.io/org/app:1", "no upstream is configured for registry ghcr.io"),
        ("upstream.test/Bad_Name:1", "is not a valid reference"),
    ],
    ids=["no-host", "unknown-host", "bad-name"],
)
def test_a_bad_image_gets_one_line_and_exit_1(
    registry2: ManagedServer, tmp_path: Path, image: str, message: str
) -> None:
    config = _config(tmp_path, registry2, tmp_path / "cache")
    result = _entrepot("cache", "prefetch", str(config), image)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    asked = [e for e in access_log(registry2) if e.agent.startswith("entrepot")]
    assert asked == [], "nothing may be asked upstream for a refused image"


def test_the_server_prefetches_the_configured_list(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    index = build_index(tmp_path / "multi", tag="3", layer_sizes=(2500,))
    clients.push(f"oci:{index.path}:3", registry2.host, "app/listed", "3", all_images=True)
    cache = entrepot_factory(
        config={
            "proxies": [{"host": UPSTREAM, "remoteurl": registry2.url}],
            "proxycache": {
                "prefetch": {
                    "interval": "1h",
                    "images": [f"{UPSTREAM}/app/listed:3"],
                    "platforms": ["linux/arm64"],
                }
            },
        }
    )
    arm64 = index.images["linux/arm64"]
    deadline = time.monotonic() + 60
    while "prefetched upstream.test/app/listed:3" not in cache.log():
        assert time.monotonic() < deadline, f"no prefetch logged:\n{cache.log()[-3000:]}"
        time.sleep(0.2)
    for blob in arm64.blob_digests:
        assert len(requests_to(registry2, "GET", f"/v2/app/listed/blobs/{blob}")) == 1
    for blob in index.images["linux/amd64"].blob_digests:
        assert requests_to(registry2, "GET", f"/v2/app/listed/blobs/{blob}") == []

    # With the upstream gone, the prefetched platform still pulls.
    registry2.stop()
    pulled = tmp_path / "pulled"
    clients.skopeo_copy(
        f"docker://{cache.host}/{UPSTREAM}/app/listed:3",
        f"oci:{pulled}:3",
        extra=["--override-arch", "arm64", "--override-variant", "v8"],
    )


def test_an_image_the_upstream_lacks_gets_one_line_and_exit_1_the_others_are_fetched(
    registry2: ManagedServer, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "image", tag="1", layer_sizes=(1000,))
    clients.push(f"oci:{image.path}:1", registry2.host, "app/here", "1")
    config = _config(tmp_path, registry2, tmp_path / "cache")
    result = _entrepot(
        "cache", "prefetch", str(config), f"{UPSTREAM}/app/missing:1", f"{UPSTREAM}/app/here:1"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{UPSTREAM}/app/missing:1" in lines[0], result.stderr
    assert "not found upstream" in lines[0]
    assert f"prefetched {UPSTREAM}/app/here:1" in result.stdout


def _follows_spool(pid: int, digest: str) -> bool:
    """Whether process ``pid`` has the cache fill spool of ``digest`` open."""
    spool = f"fill-sha256-{digest.removeprefix('sha256:')}"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if spool in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            continue
    return False


def _asked_for_manifest(server: ManagedServer, repo: str, tag: str) -> bool:
    path = f"/v2/{repo}/manifests/{tag}"
    return bool(requests_to(server, "HEAD", path) or requests_to(server, "GET", path))


def test_prefetch_joins_a_fill_a_client_of_the_server_started(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    throttled_forwarder: Callable[..., ThrottledForwarder],
    tmp_path: Path,
) -> None:
    image = build_image(tmp_path / "image", tag="1", layer_sizes=(4 * 1024 * 1024,))
    clients.push(f"oci:{image.path}:1", registry2.host, "app/big", "1")
    layer = image.images["linux/amd64"].layers[0].descriptor.digest
    # The server reaches the upstream through a link that holds its answers after 1 MiB.
    link = throttled_forwarder(registry2.port, hold_after=1024 * 1024)
    # The held read must outlast the wait below on a busy machine (the server's read of
    # an upstream gives up after readtimeout: 30 s by default).
    upstream = {"host": UPSTREAM, "remoteurl": link.url, "readtimeout": "150s"}
    cache = entrepot_factory(config={"proxies": [upstream]})
    config = _config(tmp_path, registry2, cache.root)  # the command's own way is direct

    received: list[bytes] = []
    client = threading.Thread(
        target=lambda: received.append(
            httpx.get(f"{cache.url}/v2/{UPSTREAM}/app/big/blobs/{layer}", timeout=120).content
        )
    )
    client.start()
    assert link.wait_until_holding(), "the server's download did not start"
    pythonpath = os.pathsep.join(
        p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    command = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrepot",
            "cache",
            "prefetch",
            str(config),
            f"{UPSTREAM}/app/big:1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    try:
        # Release the held download once the command follows it: seen when it has the
        # fill's file open, which it has only while it reads (not while it waits for more
        # bytes), so failing that, a few seconds after it asked for the manifest (it then
        # reaches the layer at once; it asks by a HEAD of the tag, then a GET by digest,
        # which this once missed, waiting up to 46 s for a glimpse of the open file). The
        # server's own read of the held upstream times out after its readtimeout (150 s
        # here), so this must not wait that long.
        deadline = time.monotonic() + 90
        asked_at: float | None = None
        while not _follows_spool(command.pid, layer):
            assert command.poll() is None, command.communicate()
            assert time.monotonic() < deadline, "the command did not reach the layer"
            if asked_at is None and _asked_for_manifest(registry2, "app/big", "1"):
                asked_at = time.monotonic()
            if asked_at is not None and time.monotonic() - asked_at > 3:
                break
            time.sleep(0.02)
        link.release()
        out, err = command.communicate(timeout=120)
    finally:
        if command.poll() is None:
            command.kill()
    client.join(120)
    assert command.returncode == 0, err
    assert f"{layer}: fetched" in out, out
    assert [hashlib.sha256(body).hexdigest() for body in received] == [layer[7:]]
    # One download from the upstream for both: the server's.
    assert len(requests_to(registry2, "GET", f"/v2/app/big/blobs/{layer}")) == 1
