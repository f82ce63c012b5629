"""The pull-through cache and an upstream's pull budget (Docker Hub's ``ratelimit-limit`` /
``ratelimit-remaining`` headers): Debian's nginx in front of a Debian ``docker-registry``
adds them to every response, as Docker Hub does. With little budget left, a cached tag is
served from cache, within its tagttl and beyond it, instead of spending a pull; and a
cached tag is never refused when the upstream answers 429."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from . import clients
from .images import OCI_INDEX, OCI_MANIFEST, build_image, layout_tags
from .servers import ManagedServer, ServerFactory, find_free_port

UPSTREAM = "limited.test"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"

_CONF = """\
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
  log_format upstream '$request_method $uri $status';
  access_log {dir}/access.log upstream;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_buffering off;
    proxy_request_buffering off;
{refuse}
    location / {{
      proxy_pass http://127.0.0.1:{registry_port};
      proxy_set_header Host $http_host;
      add_header ratelimit-limit "100;w=21600" always;
      add_header ratelimit-remaining "{remaining};w=21600" always;
    }}
  }}
}}
"""
# Docker Hub once the budget is spent: 429 for manifests, with a Retry-After.
_REFUSE = """\
    location ~ /manifests/ {
      add_header ratelimit-remaining "0;w=21600" always;
      add_header Retry-After "3600" always;
      return 429;
    }
"""


class Nginx:
    """nginx in the foreground, proxying to a registry and reporting a pull budget."""

    def __init__(self, directory: Path, registry: ManagedServer) -> None:
        self.dir = directory
        self.registry = registry
        self.port = find_free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, remaining: int, refuse_manifests: bool = False) -> None:
        self.stop()
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = _CONF.format(
            dir=self.dir,
            port=self.port,
            registry_port=self.registry.port,
            remaining=remaining,
            refuse=_REFUSE if refuse_manifests else "",
        )
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def manifest_requests(self, method: str) -> int:
        log = self.dir / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(1 for line in lines if re.match(rf"{method} /v2/.+/manifests/", line))


@pytest.fixture
def nginx(registry2: ManagedServer, tmp_path: Path) -> Iterator[Nginx]:
    clients.require("nginx")
    front = Nginx(tmp_path / "nginx", registry2)
    yield front
    front.stop()


def _get_manifest(entrepot: ManagedServer, name: str, tag: str) -> httpx.Response:
    return httpx.get(
        f"{entrepot.url}/v2/{name}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=30
    )


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_a_low_budget_serves_cached_tags_without_spending_pulls(
    registry2: ManagedServer,
    nginx: Nginx,
    entrepot_factory: ServerFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    first = build_image(tmp_path / "first", seed=31, label="budget")
    second = build_image(tmp_path / "second", seed=32, label="budget")
    clients.push(first.ref, registry2.host, "e2e/app", "v1")
    nginx.start(remaining=5)  # of 100: under 10%, low
    ttl = 1.0
    debug_port = free_port()
    entrepot = entrepot_factory(
        config={
            "proxies": [{"host": UPSTREAM, "remoteurl": nginx.url, "tagttl": f"{ttl:g}s"}],
            "http": {"debug": {"addr": f"127.0.0.1:{debug_port}", "prometheus": {"enabled": True}}},
        }
    )
    name = f"{UPSTREAM}/e2e/app"
    # Not cached yet: fetched, whatever the budget.
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull1")
    assert layout_tags(tmp_path / "pull1")["latest"] == first.digest
    gets = nginx.manifest_requests("GET")
    assert gets >= 1

    clients.push(second.ref, registry2.host, "e2e/app", "v1")  # the tag moves upstream
    within = _get_manifest(entrepot, name, "v1")
    time.sleep(ttl + 0.3)
    beyond = [_get_manifest(entrepot, name, "v1") for _ in range(3)]
    for response in [within, *beyond]:
        assert response.status_code == 200, response.text
        assert response.headers["docker-content-digest"] == first.digest
    assert nginx.manifest_requests("GET") == gets  # no pull spent
    assert nginx.manifest_requests("HEAD") >= 1  # HEADs are free, and tell the budget

    metrics = _scrape(f"http://127.0.0.1:{debug_port}/metrics")
    assert f'entrepot_upstream_ratelimit_remaining{{upstream="{UPSTREAM}"}} 5.0' in metrics
    assert f'entrepot_upstream_ratelimit_limit{{upstream="{UPSTREAM}"}} 100.0' in metrics
    assert re.search(
        rf'entrepot_proxy_pulls_deferred_total{{upstream="{UPSTREAM}"}} [1-9]', metrics
    )

    # The window restarts: plenty left. The next revalidation fetches the moved tag.
    nginx.start(remaining=90)
    time.sleep(ttl + 0.3)
    response = _get_manifest(entrepot, name, "v1")
    assert response.headers["docker-content-digest"] == second.digest
    assert nginx.manifest_requests("GET") > gets


def test_a_cached_tag_is_never_refused_when_the_upstream_answers_429(
    registry2: ManagedServer, nginx: Nginx, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "image", seed=33, label="refused")
    clients.push(image.ref, registry2.host, "e2e/app", "v1")
    nginx.start(remaining=50)
    ttl = 1.0
    entrepot = entrepot_factory(
        config={"proxies": [{"host": UPSTREAM, "remoteurl": nginx.url, "tagttl": f"{ttl:g}s"}]}
    )
    name = f"{UPSTREAM}/e2e/app"
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull1")

    nginx.start(remaining=0, refuse_manifests=True)
    time.sleep(ttl + 0.3)
    cached = _get_manifest(entrepot, name, "v1")
    assert cached.status_code == 200, cached.text
    assert cached.headers["docker-content-digest"] == image.digest
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull2")  # a whole pull
    assert layout_tags(tmp_path / "pull2")["latest"] == image.digest
    uncached = _get_manifest(entrepot, name, "v2")
    assert uncached.status_code == 429
    assert uncached.headers["retry-after"] == "3600"
