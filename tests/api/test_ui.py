"""The web UI in-process: browsing, search and pagination, a repository's tags, a manifest
page, deletes, sign-in and the API's access rules, and the cache page."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from entrepot.config import load_config
from entrepot.preflight import create_driver
from entrepot.registry.usage import record_usage
from entrepot.root import create_app
from tests.api.auth_setup import PASSWORDS, basic, write_htpasswd
from tests.api.oci_client import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    OciClient,
    descriptor,
    make_image,
    make_index,
    sha256,
)
from tests.api.test_auth import BUILTIN as BUILTIN_RULES

BUILTIN = BUILTIN_RULES.replace(
    '        repositories: ["team/*"]\n        actions: [pull, push]\n',
    '        repositories: ["team/*"]\n        actions: [pull, push]\n'
    '      - who: [bob]\n        repositories: ["team/*"]\n        actions: [pull, delete]\n',
)
SBOM = "application/spdx+json"


def write_config(tmp_path: Path, extra: str = "", *, delete: bool = True) -> Path:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"  delete:\n    enabled: {str(delete).lower()}\n"
        "http:\n  addr: :5000\n  secret: test-secret\n" + extra
    )
    return config


def client_for(config: Path) -> httpx.AsyncClient:
    app = create_app(load_config(config))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry.test"
    )


def dated_image(created: str, layer_sizes: tuple[int, ...] = (1000, 3000)) -> Image:
    config = json.dumps({"created": created, "os": "linux", "architecture": "arm64"}).encode()
    layers = [os.urandom(size) for size in layer_sizes]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        "annotations": {"org.opencontainers.image.source": "https://example.test/app"},
    }
    return Image(config, layers, json.dumps(body).encode())


async def seed(tmp_path: Path, names: list[str]) -> dict[str, Image]:
    """Push through an open registry on the same storage, as any client would."""
    pushed: dict[str, Image] = {}
    async with client_for(write_config(tmp_path)) as http:
        client = OciClient(http)
        for name in names:
            image = dated_image("2026-03-04T05:06:07Z")
            assert (await client.push_image(name, image, tag="v1")).status_code == 201
            pushed[name] = image
    return pushed


def links(page: httpx.Response, prefix: str) -> list[str]:
    return re.findall(rf'href="{re.escape(prefix)}([^"?]+)"', page.text)


@pytest.fixture
async def open_ui(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(write_config(tmp_path)) as http:
        yield http


async def test_root_redirects_to_the_ui(open_ui: httpx.AsyncClient) -> None:
    response = await open_ui.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"
    page = await open_ui.get("/ui/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    # Nothing from elsewhere, no script, never framed by another site.
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "<script" not in page.text
    css = await open_ui.get("/ui/static/ui.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]


async def test_search_and_pages_list_every_repository_once(tmp_path: Path) -> None:
    names = [f"apps/service-{i:02d}" for i in range(7)] + ["tools/builder"]
    await seed(tmp_path, names)
    async with client_for(write_config(tmp_path)) as http:
        seen: list[str] = []
        url: str | None = "/ui/?n=3"
        while url is not None:
            page = await http.get(url.replace("&amp;", "&"))
            assert page.status_code == 200
            seen += links(page, "/ui/r/")
            found = re.search(r'<a rel="next" href="([^"]+)"', page.text)
            url = found.group(1) if found else None
        assert seen == sorted(names)

        found_page = await http.get("/ui/", params={"q": "BUILD"})
        assert links(found_page, "/ui/r/") == ["tools/builder"]
        none = await http.get("/ui/", params={"q": "nothing-like-this"})
        assert links(none, "/ui/r/") == [] and "No repositories match" in none.text


async def test_repository_page_shows_tags_with_digest_size_platforms_and_date(
    tmp_path: Path,
) -> None:
    async with client_for(write_config(tmp_path)) as http:
        client = OciClient(http)
        image = dated_image("2026-03-04T05:06:07Z", (1000, 3000))
        assert (await client.push_image("shop/web", image, tag="1.0")).status_code == 201
        children = [make_image("x"), make_image("y")]
        for child in children:
            assert (await client.push_image("shop/web", child)).status_code == 201
        index = make_index(children)
        put = await client.put_manifest("shop/web", "multi", index, OCI_INDEX)
        assert put.status_code == 201

        page = await http.get("/ui/r/shop/web")
        assert page.status_code == 200
        rows = dict(re.findall(r'<tr data-tag="([^"]+)">(.*?)</tr>', page.text, re.S))
        assert set(rows) == {"1.0", "multi"}
        single = rows["1.0"]
        assert f"/ui/m/shop/web@{image.digest}" in single
        total = len(image.manifest) + len(image.config) + 4000
        assert f"{total / 1024:.1f} KiB" in single
        assert "linux/arm64" in single and "2026-03-04 05:06:07" in single
        assert "linux/amd64, linux/arm64" in rows["multi"]


async def test_manifest_page_lists_platforms_layers_annotations_and_referrers(
    tmp_path: Path,
) -> None:
    async with client_for(write_config(tmp_path)) as http:
        client = OciClient(http)
        image = dated_image("2026-01-01T00:00:00Z", (2048,))
        await client.push_image("shop/api", image, tag="1")
        subject = descriptor(OCI_MANIFEST, image.manifest)
        sbom = make_image("sbom", subject=subject, artifact_type=SBOM, layer_sizes=(10,))
        assert (await client.push_image("shop/api", sbom)).status_code == 201

        page = await http.get(f"/ui/m/shop/api@{image.digest}")
        assert page.status_code == 200
        layers = page.text.split('id="layers"')[1].split("</table>")[0]
        assert sha256(image.layers[0])[:19] in layers and "2.0 KiB" in layers
        assert "org.opencontainers.image.source" in page.text
        referrers = page.text.split('id="referrers"')[1].split("</table>")[0]
        assert SBOM in referrers and sbom.digest in referrers

        by_tag = await http.get("/ui/m/shop/api@1")
        assert by_tag.status_code == 200 and image.digest in by_tag.text

        children = [make_image("a"), make_image("b")]
        for child in children:
            await client.push_image("shop/api", child)
        index = make_index(children)
        await client.put_manifest(
            "shop/api", "all", index, "application/vnd.oci.image.index.v1+json"
        )
        index_page = await http.get(f"/ui/m/shop/api@{sha256(index)}")
        platforms = index_page.text.split('id="children"')[1].split("</table>")[0]
        assert "linux/amd64" in platforms and "linux/arm64" in platforms
        assert children[1].digest in platforms

        missing = await http.get(f"/ui/m/shop/api@sha256:{'0' * 64}")
        assert missing.status_code == 404 and "MANIFEST_UNKNOWN" in missing.text
        unknown = await http.get("/ui/r/no/such-repo")
        assert unknown.status_code == 404


async def test_delete_is_offered_and_done_only_where_storage_allows(tmp_path: Path) -> None:
    await seed(tmp_path, ["team/app"])
    async with client_for(write_config(tmp_path)) as http:
        page = await http.get("/ui/r/team/app")
        assert "Delete tag" in page.text
        token = re.search(r'name="form_token" value="([^"]+)"', page.text)
        assert token is not None
        form = {"name": "team/app", "reference": "v1", "form_token": token.group(1)}
    async with client_for(write_config(tmp_path, delete=False)) as http:
        assert "Delete tag" not in (await http.get("/ui/r/team/app")).text
        refused = await http.post("/ui/delete", data=form)
        assert refused.status_code == 405 and "storage.delete.enabled" in refused.text
    async with client_for(write_config(tmp_path)) as http:
        deleted = await http.post("/ui/delete", data=form)
        assert deleted.status_code == 303
        assert deleted.headers["location"] == "/ui/r/team/app?deleted=v1"
        assert (await OciClient(http).get_manifest("team/app", "v1")).status_code == 404


@pytest.fixture
async def builtin_ui(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await seed(tmp_path, ["public/base", "team/app", "secret/keys"])
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    auth = "auth:\n" + BUILTIN.format(htpasswd=htpasswd)
    async with client_for(write_config(tmp_path, auth)) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, user: str, next_url: str = "") -> httpx.Response:
    form = {"username": user, "password": PASSWORDS[user], "next": next_url}
    return await http.post("/ui/login", data=form)


async def test_anonymous_sees_what_anonymous_may_pull(builtin_ui: httpx.AsyncClient) -> None:
    page = await builtin_ui.get("/ui/")
    assert links(page, "/ui/r/") == ["public/base"]
    assert (await builtin_ui.get("/ui/r/public/base")).status_code == 200
    private = await builtin_ui.get("/ui/r/team/app")
    assert private.status_code == 303
    assert private.headers["location"] == "/ui/login?next=%2Fui%2Fr%2Fteam%2Fapp"


async def test_signed_in_user_sees_and_does_what_the_rules_allow(
    builtin_ui: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = await builtin_ui.post("/ui/login", data={"username": "alice", "password": "nope"})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert "entrepot_session" not in wrong.headers.get("set-cookie", "")

    signed_in = await sign_in(builtin_ui, "alice", "/ui/r/team/app")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/r/team/app"
    assert "httponly" in signed_in.headers["set-cookie"].lower()
    page = await builtin_ui.get("/ui/")
    # As through the API: what anonymous may pull, signed-in users may too.
    assert links(page, "/ui/r/") == ["public/base", "team/app"]
    assert 'id="user">alice<' in page.text
    repo = await builtin_ui.get("/ui/r/team/app")
    assert repo.status_code == 200 and "Delete tag" not in repo.text  # alice may not delete
    token = re.search(r'name="form_token" value="([^"]+)"', repo.text)
    assert token is not None
    form = {"name": "team/app", "reference": "v1", "form_token": token.group(1)}
    caplog.clear()
    with caplog.at_level(logging.WARNING, "entrepot.auth"):
        refused = await builtin_ui.post("/ui/delete", data=form)
    assert refused.status_code == 403 and "may not delete team/app" in refused.text
    # Logged as the API logs a refusal: who, from where, what.
    assert [r.getMessage() for r in caplog.records if r.name == "entrepot.auth"] == [
        'access denied: user "alice" from 127.0.0.1 may not delete team/app (web UI)'
    ]
    secret = await builtin_ui.get("/ui/r/secret/keys")
    assert secret.status_code == 403 and "user 'alice' may not pull secret/keys" in unescape(
        secret.text
    )

    builtin_ui.cookies.clear()
    await sign_in(builtin_ui, "bob")
    bob_page = await builtin_ui.get("/ui/r/team/app")
    assert "Delete tag" in bob_page.text
    forged = await builtin_ui.post("/ui/delete", data={**form, "form_token": "forged"})
    assert forged.status_code == 403
    bob_token = re.search(r'name="form_token" value="([^"]+)"', bob_page.text)
    assert bob_token is not None
    deleted = await builtin_ui.post("/ui/delete", data={**form, "form_token": bob_token.group(1)})
    assert deleted.status_code == 303
    assert "v1" not in (await builtin_ui.get("/ui/r/team/app")).text.split('id="tags"')[-1]


async def test_sign_out_and_forged_cookies(builtin_ui: httpx.AsyncClient) -> None:
    await sign_in(builtin_ui, "admin")
    page = await builtin_ui.get("/ui/")
    assert "secret/keys" in page.text
    cookie = builtin_ui.cookies["entrepot_session"]
    user, expiry, signature = cookie.split(".")
    builtin_ui.cookies.clear()
    builtin_ui.cookies.set("entrepot_session", f"{user}.{int(expiry) + 99}.{signature}")
    assert links(await builtin_ui.get("/ui/"), "/ui/r/") == ["public/base"]

    builtin_ui.cookies.set("entrepot_session", cookie)
    token = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert token is not None
    out = await builtin_ui.post("/ui/logout", data={"form_token": token.group(1)})
    assert out.status_code == 303
    assert 'entrepot_session=""' in out.headers["set-cookie"]


async def test_htpasswd_users_sign_in_with_basic_credentials(tmp_path: Path) -> None:
    await seed(tmp_path, ["any/repo"])
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    async with client_for(write_config(tmp_path, auth)) as http:
        anonymous = await http.get("/ui/")
        assert links(anonymous, "/ui/r/") == [] and "Sign in" in anonymous.text
        headers = {"Authorization": basic("alice", PASSWORDS["alice"])}
        page = await http.get("/ui/", headers=headers)
        assert links(page, "/ui/r/") == ["any/repo"]
        bad = await http.get("/ui/", headers={"Authorization": basic("alice", "wrong")})
        assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Basic")


async def test_cache_page_lists_each_upstream_and_its_cached_repositories(
    tmp_path: Path,
) -> None:
    proxies = (
        "proxies:\n"
        "  - host: registry.example.test\n    remoteurl: http://127.0.0.1:9\n"
        "  - host: docker.io\n    remoteurl: http://127.0.0.1:9\n    mirror: true\n"
    )
    await seed(tmp_path, ["mine/app"])
    async with client_for(write_config(tmp_path, proxies)) as http:
        page = await http.get("/ui/cache")
        assert page.status_code == 200
        assert 'id="upstream-registry.example.test"' in page.text
        assert 'id="upstream-docker.io"' in page.text and "Docker Hub mirror" in page.text
        assert page.text.count("Nothing fetched from this upstream") == 2
        pushed = await http.get("/ui/", params={"group": ""})
        assert links(pushed, "/ui/r/") == ["mine/app"]
        cached = await http.get("/ui/", params={"group": "docker.io"})
        assert links(cached, "/ui/r/") == []
        unknown = await http.get("/ui/", params={"group": "nowhere.test"})
        assert unknown.status_code == 404


async def test_cache_page_shows_the_recorded_storage_use(tmp_path: Path) -> None:
    pushed = await seed(tmp_path, ["team/one", "team/two"])
    config = load_config(write_config(tmp_path))
    async with client_for(write_config(tmp_path)) as http:
        before = await http.get("/ui/cache")
        assert "Not measured yet" in before.text
        # What the background meter does (registry.usage), then any page view shows it.
        driver = create_driver(config)
        try:
            recorded = await record_usage(driver)
        finally:
            await driver.close()
        # Configs, layers and the manifests themselves (registry:2 keeps them as blobs too).
        blobs = {
            sha256(blob): len(blob)
            for image in pushed.values()
            for blob in (image.config, *image.layers, image.manifest)
        }
        assert (recorded.blobs, recorded.bytes) == (len(blobs), sum(blobs.values()))
        page = await http.get("/ui/cache")
        shown = unescape(re.sub(r"\s+", " ", page.text))
        assert f"{len(blobs):,} blobs" in shown
        assert f"({sum(blobs.values()):,} bytes)" in shown
