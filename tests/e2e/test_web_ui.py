"""The web UI in a real browser: Debian's chromium driven by Playwright, against a served
Entrepot with the built-in token service, images pushed by skopeo, and a Debian
docker-registry standing in for Docker Hub behind the pull-through cache.

Screenshots are kept as artefacts in $ENTREPOT_UI_SCREENSHOTS (default: a directory under
the system's temporary directory); `ENTREPOT_UI_SCREENSHOTS=docs` refreshes the README's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .clients import require
from .images import OCI_CONFIG, OCI_MANIFEST, ImageLayout, build_image, build_index
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USERS = {"alice": "alice-secret", "ops": "ops-secret"}
SBOM = "application/spdx+json"
HUB_REPO = "library/app"


def screenshots_dir() -> Path:
    configured = os.environ.get("ENTREPOT_UI_SCREENSHOTS")
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "entrepot-ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    context.close()


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(screenshots_dir() / f"ui-{name}.png"), full_page=True)


@dataclass(frozen=True)
class Site:
    entrepot: ManagedServer
    hub: ManagedServer
    hub_image: ImageLayout
    web_index: ImageLayout
    web_single: ImageLayout


def token(entrepot: ManagedServer, user: str, scope: str) -> str:
    response = httpx.get(
        f"{entrepot.url}/auth/token",
        params={"service": "entrepot", "scope": scope},
        auth=(user, USERS[user]),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["token"]
    return value


def api_tags(entrepot: ManagedServer, repo: str) -> list[str]:
    bearer = token(entrepot, "ops", f"repository:{repo}:pull")
    response = httpx.get(
        f"{entrepot.url}/v2/{repo}/tags/list",
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    tags: list[str] = response.json()["tags"]
    return tags


def attach_sbom(entrepot: ManagedServer, repo: str, subject: ImageLayout) -> str:
    """Push an SBOM whose subject is ``subject`` (what `oras attach` does)."""
    headers = {"Authorization": f"Bearer {token(entrepot, 'ops', f'repository:{repo}:pull,push')}"}
    blobs = [b"{}", json.dumps({"spdxVersion": "SPDX-2.3", "name": "web"}).encode()]
    with httpx.Client(base_url=entrepot.url, headers=headers, timeout=10) as http:
        for blob in blobs:
            started = http.post(f"/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202, started.text
            digest = clients.sha256_digest(blob)
            location = started.headers["location"]
            separator = "&" if "?" in location else "?"
            done = http.put(f"{location}{separator}digest={digest}", content=blob)
            assert done.status_code == 201, done.text
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": SBOM,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": clients.sha256_digest(blobs[0]),
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": SBOM,
                        "digest": clients.sha256_digest(blobs[1]),
                        "size": len(blobs[1]),
                    }
                ],
                "subject": {
                    "mediaType": subject.media_type,
                    "digest": subject.digest,
                    "size": len(subject.blob(subject.digest)),
                },
                "annotations": {"org.opencontainers.image.created": "2026-11-29T00:00:00Z"},
            }
        ).encode()
        digest = clients.sha256_digest(manifest)
        put = http.put(
            f"/v2/{repo}/manifests/{digest}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
    return digest


def start_site(
    registry2_factory: ServerFactory,
    entrepot_factory: ServerFactory,
    tmp_path: Path,
    env: dict[str, str] | None = None,
) -> Site:
    """Docker Hub's stand-in holding library/app:1; an Entrepot caching it, where anonymous
    may pull docker.io/*, alice may pull and push team/*, and ops may do everything."""
    hub = registry2_factory()
    hub_image = build_image(tmp_path / "hub", seed=301, label="hub-app")
    clients.push(hub_image.ref, hub.host, HUB_REPO, "1")
    htpasswd = clients.write_htpasswd(tmp_path / "htpasswd", USERS)
    rules = [
        {"who": ["anonymous"], "repositories": ["docker.io/*"], "actions": ["pull"]},
        {"who": ["alice"], "repositories": ["team/*"], "actions": ["pull", "push"]},
        {"who": ["ops"], "repositories": ["*"], "actions": ["*"], "catalog": True},
    ]
    entrepot = entrepot_factory(
        config={
            "proxies": [{"host": "docker.io", "remoteurl": hub.url, "mirror": True}],
            "auth": {"builtin": {"htpasswd": str(htpasswd), "access": rules}},
        },
        env=env,
    )
    creds = ["--dest-creds", f"ops:{USERS['ops']}"]
    web_index = build_index(tmp_path / "web-index", tag="2.0", seed=302, label="web")
    web_single = build_image(tmp_path / "web-single", tag="1.0", seed=303, label="web-1")
    api = build_image(tmp_path / "api", seed=304, label="api")
    target = f"docker://{entrepot.host}"
    clients.skopeo_copy(web_index.ref, f"{target}/team/web:2.0", all_images=True, extra=creds)
    clients.skopeo_copy(web_single.ref, f"{target}/team/web:1.0", extra=creds)
    clients.skopeo_copy(web_single.ref, f"{target}/team/web:old", extra=creds)
    clients.skopeo_copy(api.ref, f"{target}/team/api:1", extra=creds)
    attach_sbom(entrepot, "team/web", web_single)
    return Site(entrepot, hub, hub_image, web_index, web_single)


@pytest.fixture
def site(registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path) -> Site:
    """One worker: the cache counters are still kept per process, so the page that shows
    them must be served by the process that did the fills."""
    return start_site(registry2_factory, entrepot_factory, tmp_path)


@pytest.fixture
def two_worker_site(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> Site:
    """Two workers: a sign-in through one is honoured by the other."""
    return start_site(registry2_factory, entrepot_factory, tmp_path, {"ENTREPOT_WORKERS": "2"})


def sign_in(page: Any, site: Site, user: str) -> None:
    page.goto(f"{site.entrepot.url}/ui/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", USERS[user])
    page.click("form.login button")
    page.wait_for_selector("#user")


def listed(page: Any) -> list[str]:
    return [a.inner_text() for a in page.query_selector_all("#repositories td a")]


def test_browse_search_and_open_a_manifest(two_worker_site: Site, page: Any) -> None:
    site = two_worker_site
    # Anonymous may pull only docker.io/*, of which nothing is cached yet.
    page.goto(site.entrepot.url)
    assert page.url == f"{site.entrepot.url}/ui/"
    assert "No repositories" in page.inner_text("main")

    page.click("text=Sign in")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", USERS["alice"])
    page.click("form.login button")
    page.wait_for_selector("#repositories")
    assert listed(page) == ["team/api", "team/web"]
    shoot(page, "repositories")

    page.fill("input[name=q]", "web")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**/ui/?q=web")
    assert listed(page) == ["team/web"]

    page.click("#repositories >> text=team/web")
    page.wait_for_selector("#tags")
    rows = {
        row.get_attribute("data-tag"): row.inner_text()
        for row in page.query_selector_all("#tags tbody tr")
    }
    assert set(rows) == {"1.0", "2.0", "old"}
    assert "linux/amd64, linux/arm64/v8" in rows["2.0"]
    assert site.web_index.digest.removeprefix("sha256:")[:12] in rows["2.0"]
    assert "KiB" in rows["1.0"] and "linux/amd64" in rows["1.0"]
    assert page.query_selector("text=Delete tag") is None  # alice may not delete
    shoot(page, "repository")

    page.click('[data-tag="2.0"] a.digest')
    page.wait_for_selector("#children")
    assert "linux/arm64/v8" in page.inner_text("#children")
    page.click("#children >> text=" + site.web_index.images["linux/arm64"].manifest.digest[:19])
    page.wait_for_selector("#layers")
    layer_rows = page.query_selector_all("#layers tbody tr")
    assert len(layer_rows) == len(site.web_index.images["linux/arm64"].layers)
    assert "KiB" in layer_rows[0].inner_text()

    page.goto(f"{site.entrepot.url}/ui/m/team/web@{site.web_single.digest}")
    referrers = page.inner_text("#referrers")
    assert SBOM in referrers
    shoot(page, "manifest")


def test_delete_as_an_allowed_user_and_refused_as_another(two_worker_site: Site, page: Any) -> None:
    site = two_worker_site
    sign_in(page, site, "alice")
    page.goto(f"{site.entrepot.url}/ui/r/team/web")
    assert page.query_selector("text=Delete tag") is None
    # A hand-made delete form (as a forged page would send): the server refuses it too.
    page.evaluate(
        """() => {
            const form = document.createElement('form');
            form.method = 'post';
            form.action = '/ui/delete';
            const token = document.querySelector('input[name=form_token]').value;
            const fields = [['name', 'team/web'], ['reference', 'old'], ['form_token', token]];
            for (const [k, v] of fields) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = k; input.value = v;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }"""
    )
    page.wait_for_selector("#error")
    assert "user 'alice' may not delete team/web" in page.inner_text("#error")
    shoot(page, "delete-refused")
    assert "old" in api_tags(site.entrepot, "team/web")

    page.click("text=Sign out")
    page.wait_for_selector("text=Sign in")
    sign_in(page, site, "ops")
    page.goto(f"{site.entrepot.url}/ui/r/team/web")
    page.click('[data-tag="old"] button.danger')
    page.wait_for_selector("#notice")
    assert "Deleted old" in page.inner_text("#notice")
    assert page.query_selector('[data-tag="old"]') is None
    assert sorted(api_tags(site.entrepot, "team/web")) == ["1.0", "2.0"]


def test_cache_page_after_a_pull_through(site: Site, page: Any, tmp_path: Path) -> None:
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    clients.skopeo_copy(
        f"docker://{site.entrepot.host}/docker.io/{HUB_REPO}:1",
        f"oci:{pulled}:1",
        extra=["--src-no-creds"],
    )
    page.goto(f"{site.entrepot.url}/ui/cache")
    section = page.inner_text("#upstream-docker\\.io")
    counters = {
        row.query_selector("th").inner_text(): int(row.query_selector("td").inner_text())
        for row in page.query_selector_all("#upstream-docker\\.io table.counters tr")
    }
    blobs = len(site.hub_image.images["linux/amd64"].blob_digests)
    assert counters["blob fills"] == blobs, section
    assert counters["blob misses"] == blobs, section
    assert counters["manifest misses"] >= 1, section
    assert counters["upstream requests"] >= blobs + 1, section
    assert counters["hit ratio (%)"] < 100, section
    shoot(page, "cache")

    page.click("text=Browse what is cached")
    page.wait_for_selector("#repositories")
    assert listed(page) == [f"docker.io/{HUB_REPO}"]  # anonymous may pull docker.io/*
    page.click(f"text=docker.io/{HUB_REPO}")
    page.wait_for_selector("#tags")
    assert page.query_selector('[data-tag="1"]') is not None

    # ops may pull everything: pushed and cached repositories, grouped by where they are from.
    sign_in(page, site, "ops")
    page.goto(f"{site.entrepot.url}/ui/")
    assert listed(page) == [f"docker.io/{HUB_REPO}", "team/api", "team/web"]
    groups = [cell.inner_text() for cell in page.query_selector_all("#repositories tr.group")]
    assert groups == ["Cached from docker.io", "Pushed here"]
    shoot(page, "overview")
