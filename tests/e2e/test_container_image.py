"""The container image replaces registry:2 on the command line: the repository's Dockerfile,
built by a real Docker Engine (dockerd with vfs) on a Debian base made here with debootstrap
(no registry is reachable from the test machine), takes over a store that registry:2 wrote,
serves a push and a pull, reports healthy, and runs as a user that is not root.

The test's dockerd has no bridge network, so the container runs with ``--network host`` and
``REGISTRY_HTTP_ADDR`` on a free loopback port instead of ``-p 5000:5000``; the image's own
settings (port 5000, the volume) are checked on the built image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import clients, debian_base
from .images import build_image
from .servers import REPO_ROOT, ServerFactory, find_free_port

if TYPE_CHECKING:
    from .conftest import DockerEngine

pytestmark = pytest.mark.e2e

IMAGE = "entrepot:e2e"
IMAGE_USER = "entrepot:entrepot"
IMAGE_UID = 10001  # the Dockerfile's user and group
STORE = "/var/lib/registry"
BUILD_TIMEOUT = 1200.0  # vfs copies the root filesystem at each step; pip fetches from PyPI
HEALTHY_TIMEOUT = 180.0


def _inspect(engine: DockerEngine, *args: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(engine("inspect", *args).stdout)
    return data[0]


def _build(engine: DockerEngine) -> dict[str, Any]:
    """Import the debootstrapped base, build the Dockerfile on it; the image's config."""
    release = debian_base.host_release()
    base = f"entrepot-e2e-base:{release}"
    engine("import", str(debian_base.base_tarball()), base, timeout=600)
    # BuildKit: the classic builder commits a container, two full copies of the root
    # filesystem under vfs, for each instruction, USER and EXPOSE included.
    clients.run(
        [
            engine.docker, "build",
            "--progress", "plain",
            "--network", "host",  # no bridge here; RUN pip install needs PyPI
            "--build-arg", f"BASE={base}",
            "--tag", IMAGE,
            str(REPO_ROOT),
        ],
        env={**engine.env, "DOCKER_BUILDKIT": "1"},
        timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    return _inspect(engine, "--type", "image", IMAGE)


def _run(engine: DockerEngine, store: Path, port: int) -> str:
    """``docker run -d -v STORE:/var/lib/registry entrepot`` on a loopback port; the id."""
    return engine(
        "run", "--detach",
        "--network", "host",
        "--env", f"REGISTRY_HTTP_ADDR=127.0.0.1:{port}",
        "--volume", f"{store}:{STORE}",
        IMAGE,
    ).stdout.strip()  # fmt: skip


def _wait_healthy(engine: DockerEngine, container: str) -> dict[str, Any]:
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while True:
        state: dict[str, Any] = _inspect(engine, "--type", "container", container)["State"]
        health = state.get("Health") or {}
        if health.get("Status") == "healthy":
            return state
        if not state["Running"] or time.monotonic() > deadline:
            logs = engine("logs", container, check=False)
            pytest.fail(
                f"container not healthy (state {state['Status']}, health {health}):\n"
                f"{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}"
            )
        time.sleep(1)


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), uid, uid)


def test_the_image_takes_over_a_registry2_store_and_serves_push_and_pull(
    registry2_factory: ServerFactory,
    dockerd_factory: Callable[..., DockerEngine],
    tmp_path: Path,
) -> None:
    clients.require("debootstrap", "skopeo")
    if os.geteuid() != 0:
        pytest.skip("debootstrap, dockerd and the store's ownership need root")

    # A store as registry:2 (which runs as root) left it, with an image in it.
    store = tmp_path / "srv-registry"
    old = build_image(tmp_path / "old", seed=12, label="from-registry2")
    registry2 = registry2_factory(root=store)
    clients.push(old.ref, registry2.host, "team/old", "1")
    registry2.stop()

    engine = dockerd_factory()
    image = _build(engine)
    config = image["Config"]
    # registry:2's paths and port, a user that is not root, a health check.
    assert config["User"] == IMAGE_USER
    assert "5000/tcp" in config["ExposedPorts"]
    assert STORE in config["Volumes"]
    assert config["Cmd"] == ["/etc/docker/registry/config.yml"]
    assert config["Healthcheck"]["Test"][0] == "CMD"

    # Not given to the image's user yet: it refuses to start, naming the path and the user.
    port = find_free_port()
    container = _run(engine, store, port)
    assert engine("wait", container, timeout=120).stdout.strip() == "1"
    refusal = engine("logs", container).stderr
    assert f"storage.filesystem.rootdirectory {STORE}" in refusal, refusal
    assert f"uid {IMAGE_UID}" in refusal, refusal

    # What the README tells the operator to do once; then the same container serves (started
    # again rather than anew: each new container is two copies of the image under vfs).
    _chown_tree(store, IMAGE_UID)
    engine("start", container)
    state = _wait_healthy(engine, container)
    host = f"127.0.0.1:{port}"

    # The process serving is not root: Docker's view and the kernel's.
    assert engine("exec", container, "id", "-u").stdout.strip() == str(IMAGE_UID)
    assert _uids(state["Pid"]) == [IMAGE_UID] * 4
    # The entrypoint passes subcommands and flags to `entrepot`, as registry:2's does.
    version = engine("exec", container, "/entrypoint.sh", "--version").stdout
    assert version.startswith("entrepot ")

    # registry:2's image is served as it was...
    assert clients.inspect_digest(host, "team/old", "1") == old.digest
    # ...and a push lands in the bind-mounted store and pulls back whole.
    new = build_image(tmp_path / "new", seed=13, label="pushed-to-the-image")
    clients.push(new.ref, host, "team/new", "1")
    pulled = tmp_path / "pulled"
    clients.pull_to_layout(host, "team/new", "1", pulled)
    assert clients.inspect_digest(host, "team/new", "1") == new.digest
    for digest in new.images["linux/amd64"].blob_digests:
        algorithm, encoded = digest.split(":")
        assert (pulled / "blobs" / algorithm / encoded).exists()
        blob = store / "docker/registry/v2/blobs" / algorithm / encoded[:2] / encoded / "data"
        assert blob.stat().st_uid == IMAGE_UID
    tags = store / "docker/registry/v2/repositories/team/new/_manifests/tags/1/current/link"
    assert tags.read_text() == new.digest

    # `docker stop` ends it cleanly (SIGTERM reaches the server), well before Docker's 10 s
    # grace would turn into SIGKILL (exit 137).
    engine("stop", container, timeout=120)
    assert _inspect(engine, "--type", "container", container)["State"]["ExitCode"] != 137
