"""The user's story with a real Docker Engine: one endpoint is the Docker Hub mirror and a
private registry at once (design.md sections 1-2).

An upstream registry:2 holds ``library/app:1`` and stands for Docker Hub. Entrepot runs with
registry:2's own ``proxy: remoteurl:`` block pointing at it, the config style the user had.
dockerd has ``registry-mirrors: [http://127.0.0.1:PORT]``, so ``docker pull app:1`` asks Entrepot
for ``/v2/library/app/...`` (no ``ns``). Then ``docker push 127.0.0.1:PORT/k8s-dns-kube-dns-amd64:
1.14.4``, which registry:2 in proxy mode refuses with 405 UNSUPPORTED, must work on the same
endpoint, and the pushed image must pull back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from . import clients
from .images import Image, build_image
from .servers import ManagedServer, ServerFactory

if TYPE_CHECKING:
    from .conftest import DockerEngine

# What the dockerd_factory fixture yields.
DockerdFactory = Callable[..., "DockerEngine"]

pytestmark = pytest.mark.e2e

PRIVATE_REPO = "k8s-dns-kube-dns-amd64"
PRIVATE_TAG = "1.14.4"
ENTREPOT_AGENT = '"entrepot/'  # the User-Agent of Entrepot's upstream client, in an access log
# A static binary that Debian's docker.io brings along (it Depends on tini): bind-mounted into a
# container, it runs whatever the image holds (the test images have files, no programs).
TINI_STATIC = Path("/usr/bin/tini-static")


def _hub_image(tmp_path: Path, registry2: ManagedServer) -> Image:
    """``library/app:1`` on the upstream: what Docker Hub's ``app:1`` stands for here."""
    layout = build_image(tmp_path / "hub", seed=42, label="docker-engine")
    clients.push(layout.ref, registry2.host, "library/app", "1")
    return layout.images["linux/amd64"]


def _mirror_and_engine(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    dockerd_factory: DockerdFactory,
) -> tuple[ManagedServer, DockerEngine]:
    """Entrepot as the user configured registry:2 (``proxy.remoteurl``), and a dockerd using it
    as its Docker Hub mirror."""
    entrepot = entrepot_factory(config={"proxy": {"remoteurl": registry2.url}})
    engine = dockerd_factory(registry_mirrors=[entrepot.url], insecure_registries=[entrepot.host])
    return entrepot, engine


def _image_inspect(engine: DockerEngine, ref: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(engine("image", "inspect", ref).stdout)
    return data[0]


def _request_lines(log: str, path: str) -> list[str]:
    """The lines of a server log that record a request for `path` (a URL path prefix)."""
    return [line for line in log.splitlines() if path in line]


def test_docker_hub_mirror_and_private_push_on_one_endpoint(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    dockerd_factory: DockerdFactory,
    tmp_path: Path,
) -> None:
    hub = _hub_image(tmp_path, registry2)
    entrepot, docker = _mirror_and_engine(registry2, entrepot_factory, dockerd_factory)

    # 1. docker pull app:1 = docker.io/library/app:1, through the mirror.
    docker("pull", "app:1")
    pulled = _image_inspect(docker, "app:1")
    assert pulled["Id"] == hub.config.digest
    assert f"app@{hub.manifest.digest}" in pulled["RepoDigests"]
    # Docker asked Entrepot (its mirror) for the unprefixed name...
    docker_requests = [
        line
        for line in _request_lines(entrepot.log(), "/v2/library/app/manifests/1")
        if "docker/" in line
    ]
    assert docker_requests, f"dockerd never asked the mirror:\n{entrepot.log()[-4000:]}"
    # ...and Entrepot, not Docker, fetched it from the upstream: the tag and every blob.
    upstream = _request_lines(registry2.log(), "/v2/library/app/")
    assert not [line for line in upstream if "docker/" in line], "dockerd bypassed the mirror"
    via_entrepot = [line for line in upstream if ENTREPOT_AGENT in line]
    assert any("/manifests/" in line for line in via_entrepot), "\n".join(upstream)
    for digest in hub.blob_digests:
        assert any(f"/blobs/{digest}" in line for line in via_entrepot), (
            f"{digest} was not fetched through Entrepot:\n" + "\n".join(upstream)
        )
    # The cached copy is a repository of Entrepot's, under the upstream's host.
    catalog = httpx.get(f"{entrepot.url}/v2/_catalog").json()["repositories"]
    assert [repo for repo in catalog if repo.endswith("/library/app")], catalog

    # 2. The push that registry:2 in proxy mode refuses (405 UNSUPPORTED), on the same endpoint.
    private = f"{entrepot.host}/{PRIVATE_REPO}:{PRIVATE_TAG}"
    docker("tag", "app:1", private)
    out = docker("push", private).stdout
    match = re.search(rf"{re.escape(PRIVATE_TAG)}: digest: (sha256:[0-9a-f]{{64}}) size: \d+", out)
    assert match, f"no digest in the push output:\n{out}"
    pushed_digest = match.group(1)
    assert clients.inspect_digest(entrepot.host, PRIVATE_REPO, PRIVATE_TAG) == pushed_digest
    assert clients.list_tags(entrepot.host, PRIVATE_REPO) == [PRIVATE_TAG]
    # The push stayed here: nothing was written upstream.
    writes = [
        line
        for line in _request_lines(registry2.log(), f"/v2/{PRIVATE_REPO}/")
        if re.search(r'"(POST|PUT|PATCH|DELETE) ', line)
    ]
    assert not writes, "\n".join(writes)

    # 3. Forget the image entirely, then pull it back from the private repository.
    docker("rmi", private, "app:1")
    assert docker("image", "ls", "--quiet").stdout.strip() == ""
    docker("pull", private)
    back = _image_inspect(docker, private)
    assert back["Id"] == hub.config.digest
    assert f"{entrepot.host}/{PRIVATE_REPO}@{pushed_digest}" in back["RepoDigests"]
    # By digest too, as `docker push` printed it.
    docker("pull", f"{entrepot.host}/{PRIVATE_REPO}@{pushed_digest}")

    # The cached image is still there for the next `docker pull app:1`.
    docker("pull", "app:1")
    assert _image_inspect(docker, "app:1")["Id"] == hub.config.digest


def test_docker_push_works_while_the_mirror_upstream_is_down(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    dockerd_factory: DockerdFactory,
    tmp_path: Path,
) -> None:
    """The user's push, with the upstream unreachable (as their docker-cn mirror became):
    pushing never depends on the upstream."""
    hub = _hub_image(tmp_path, registry2)
    entrepot, docker = _mirror_and_engine(registry2, entrepot_factory, dockerd_factory)
    docker("pull", "app:1")
    registry2.stop()

    private = f"{entrepot.host}/{PRIVATE_REPO}:{PRIVATE_TAG}"
    docker("tag", "app:1", private)
    docker("push", private)
    docker("rmi", private, "app:1")
    docker("pull", private)
    assert _image_inspect(docker, private)["Id"] == hub.config.digest


def test_docker_push_of_a_name_the_mirror_also_serves(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    dockerd_factory: DockerdFactory,
    tmp_path: Path,
) -> None:
    """Re-pushing a Docker Hub image under its own name (``docker tag nginx REG/nginx:mine``;
    with a Docker Hub remoteurl, REG/nginx is library/nginx upstream): the push keeps a copy of
    its own, whatever the mirror already holds."""
    hub = _hub_image(tmp_path, registry2)
    entrepot, docker = _mirror_and_engine(registry2, entrepot_factory, dockerd_factory)
    docker("pull", "app:1")

    mine = f"{entrepot.host}/library/app:mine"
    docker("tag", "app:1", mine)
    docker("push", mine)
    # The pushed tag is served even when the upstream has gone.
    registry2.stop()
    docker("rmi", mine, "app:1")
    docker("pull", mine)
    assert _image_inspect(docker, mine)["Id"] == hub.config.digest


def test_docker_runs_a_container_from_an_image_pulled_through_the_mirror(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    dockerd_factory: DockerdFactory,
    tmp_path: Path,
) -> None:
    if not TINI_STATIC.exists():
        pytest.skip(f"no {TINI_STATIC} (Debian's tini, a dependency of docker.io)")
    hub = _hub_image(tmp_path, registry2)
    _, docker = _mirror_and_engine(registry2, entrepot_factory, dockerd_factory)
    docker("pull", "app:1")
    assert _image_inspect(docker, "app:1")["Id"] == hub.config.digest

    run = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--volume",
        f"{TINI_STATIC}:/tini:ro",
        "--entrypoint",
        "/tini",
        "app:1",
        "--version",
    )
    assert "tini version" in run.stdout + run.stderr
