"""Pulling through an upstream that wants Docker token auth (registry:2 behind token_issuer).

Entrepot answers the upstream's ``Bearer realm=...`` challenge, anonymously or with the
configured username and password, and reuses each token for its scope: the issuer's log
counts how often it came back. Without the right credentials a pull fails at once with a
registry error, it does not hang.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .images import ImageLayout, build_image, layout_tags
from .servers import ManagedServer, ServerFactory
from .token_issuer import Access, TokenRegistry

pytestmark = pytest.mark.e2e

HOST = "quay.io"  # the name the token upstream is cached under
REPO = "e2e/tok"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def _seed_two_tags(upstream: TokenRegistry, tmp_path: Path) -> dict[str, ImageLayout]:
    """Two different images in one upstream repository, pushed by its owner."""
    images = {}
    for number, tag in enumerate(("v1", "v2")):
        image = build_image(tmp_path / f"seed-{tag}", seed=60 + number, label=f"tok-{tag}")
        clients.skopeo_copy(
            image.ref,
            f"docker://{upstream.host}/{REPO}:{tag}",
            extra=["--dest-creds", upstream.creds],
        )
        images[tag] = image
    return images


def _entrepot_for(
    entrepot_factory: ServerFactory, upstream: TokenRegistry, **options: Any
) -> ManagedServer:
    proxy = {"host": HOST, "remoteurl": upstream.url, **options}
    return entrepot_factory(config={"proxies": [proxy]})


def _pull_both(entrepot: ManagedServer, images: dict[str, ImageLayout], tmp_path: Path) -> None:
    for tag, image in images.items():
        dest = tmp_path / f"pulled-{tag}"
        clients.pull_to_layout(entrepot.host, f"{HOST}/{REPO}", tag, dest, dest_tag=tag)
        assert layout_tags(dest)[tag] == image.digest
        for digest in image.all_digests:
            pulled = dest / "blobs" / "sha256" / digest.split(":", 1)[1]
            assert pulled.read_bytes() == image.blob(digest), digest


def _error_codes(response: httpx.Response) -> list[str]:
    body: dict[str, Any] = json.loads(response.content or b"{}")
    return [str(error.get("code")) for error in body.get("errors", [])]


def test_anonymous_pull_through_reuses_one_token(
    token_registry2: TokenRegistry, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    images = _seed_two_tags(token_registry2, tmp_path)
    issuer = token_registry2.issuer
    issuer.clear()
    entrepot = _entrepot_for(entrepot_factory, token_registry2)

    _pull_both(entrepot, images, tmp_path)

    # Two manifests and their blobs from one repository: one token, asked for once.
    asked = issuer.token_requests()
    assert len(asked) == 1, asked
    assert asked[0].status == 200
    assert not asked[0].basic_auth
    assert asked[0].scopes == (f"repository:{REPO}:pull",)
    assert asked[0].service == token_registry2.service
    assert asked[0].granted == (Access("repository", REPO, ("pull",)),)


def test_pull_through_with_credentials_and_without(
    token_registry2_factory: Callable[..., TokenRegistry],
    entrepot_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    private = token_registry2_factory(anonymous_actions=())
    images = _seed_two_tags(private, tmp_path)
    issuer = private.issuer

    # Anonymous access gets nothing there: the owner's credentials are required.
    issuer.clear()
    with_creds = _entrepot_for(
        entrepot_factory, private, username=private.username, password=private.password
    )
    _pull_both(with_creds, images, tmp_path / "with-creds")
    asked = issuer.token_requests()
    assert len(asked) == 1, asked
    assert (asked[0].user, asked[0].authenticated) == (private.username, True)
    assert asked[0].granted == (Access("repository", REPO, ("pull",)),)

    # Without credentials, or with a wrong password: a prompt, clear refusal.
    for label, options in (
        ("anonymous", {}),
        ("wrong password", {"username": private.username, "password": "not-the-password"}),
    ):
        entrepot = _entrepot_for(entrepot_factory, private, **options)
        started = time.monotonic()
        response = httpx.get(
            f"{entrepot.url}/v2/{HOST}/{REPO}/manifests/v1",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=20,
        )
        assert time.monotonic() - started < 10, label
        assert response.status_code in (401, 403), (label, response.text)
        assert set(_error_codes(response)) <= {"DENIED", "UNAUTHORIZED"}, (label, response.text)
        assert _error_codes(response), (label, response.text)
        assert "not-the-password" not in response.text
        assert "not-the-password" not in entrepot.log()

        with pytest.raises(clients.ClientError) as failed:
            clients.pull_to_layout(
                entrepot.host, f"{HOST}/{REPO}", "v2", tmp_path / f"refused-{label}", timeout=30
            )
        message = failed.value.stderr.lower()
        assert "denied" in message or "unauthorized" in message, (label, failed.value.stderr)
