"""The harness's token-auth upstream proven with real clients: registry:2 behind token_issuer.

What the proxy's tests rely on: the registry challenges with ``Bearer realm=...,service=...``,
anonymous clients get pull tokens, the push user gets push, a wrong password gets nothing, and
the issuer logs every token request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from . import clients
from .images import build_image, layout_tags
from .token_issuer import Access, TokenIssuer, TokenRegistry

pytestmark = pytest.mark.e2e


def _challenge(header: str) -> dict[str, str]:
    """The parameters of a ``Bearer k="v",...`` challenge."""
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def test_anonymous_requests_are_challenged(token_registry2: TokenRegistry) -> None:
    clients.require("curl")
    out = clients.run(["curl", "-sS", "-i", f"{token_registry2.url}/v2/"]).stdout
    status_line, _, rest = out.partition("\r\n")
    assert " 401 " in status_line, out
    header = re.search(r"(?im)^www-authenticate: (.*?)\r?$", rest)
    assert header is not None, out
    assert _challenge(header.group(1)) == {
        "realm": token_registry2.realm,
        "service": "test-registry",
    }

    response = httpx.get(f"{token_registry2.url}/v2/e2e/any/manifests/v1")
    assert response.status_code == 401
    assert _challenge(response.headers["www-authenticate"]) == {
        "realm": token_registry2.realm,
        "service": "test-registry",
        "scope": "repository:e2e/any:pull",
    }
    assert token_registry2.issuer.requests == []  # the registry itself never calls the issuer


def test_push_with_credentials_then_anonymous_pull(
    token_registry2: TokenRegistry, tmp_path: Path
) -> None:
    issuer = token_registry2.issuer
    image = build_image(tmp_path / "src", seed=11)
    dest = f"docker://{token_registry2.host}/e2e/tok:v1"
    clients.skopeo_copy(image.ref, dest, extra=["--dest-creds", token_registry2.creds])

    pushes = issuer.token_requests(scope="repository:e2e/tok:pull,push")
    assert pushes, issuer.requests
    assert all(r.user == "pusher" and r.basic_auth and r.status == 200 for r in pushes)
    assert pushes[0].service == "test-registry"
    assert pushes[0].granted == (Access("repository", "e2e/tok", ("pull", "push")),)
    assert issuer.token_requests(status=401) == []

    issuer.clear()
    back = tmp_path / "back"
    back.mkdir()
    clients.skopeo_copy(dest, f"oci:{back}:v1", extra=["--src-no-creds"])
    assert layout_tags(back)["v1"] == image.digest
    for digest in image.all_digests:
        assert clients.sha256_digest(image.blob(digest)) == digest
        assert (back / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes() == image.blob(
            digest
        )

    pulls = issuer.token_requests()
    assert pulls, issuer.requests
    assert all(not r.basic_auth and r.user is None for r in pulls)
    assert {s for r in pulls for s in r.scopes} == {"repository:e2e/tok:pull"}
    assert all(r.granted == (Access("repository", "e2e/tok", ("pull",)),) for r in pulls)


def test_wrong_password_and_anonymous_push_fail(
    token_registry2: TokenRegistry, tmp_path: Path
) -> None:
    issuer = token_registry2.issuer
    image = build_image(tmp_path / "src", seed=12)
    dest = f"docker://{token_registry2.host}/e2e/denied:v1"

    with pytest.raises(clients.ClientError) as wrong:
        clients.skopeo_copy(image.ref, dest, extra=["--dest-creds", "pusher:wrong-password"])
    assert "401" in wrong.value.stderr or "unauthorized" in wrong.value.stderr.lower()
    refused = issuer.token_requests(user="pusher")
    assert refused, issuer.requests
    assert all(r.status == 401 and r.basic_auth and r.granted == () for r in refused)

    issuer.clear()
    with pytest.raises(clients.ClientError):
        clients.skopeo_copy(image.ref, dest, extra=["--dest-no-creds"])
    anonymous = issuer.token_requests(anonymous=True)
    assert anonymous, issuer.requests
    # Asked for push, got pull only: the registry then refused the upload.
    assert any("repository:e2e/denied:pull,push" in r.scopes for r in anonymous)
    assert all(a.actions == ("pull",) for r in anonymous for a in r.granted)

    token = httpx.get(
        issuer.realm, params={"service": issuer.service, "scope": "repository:e2e/denied:pull"}
    ).json()["token"]
    tags = httpx.get(
        f"{token_registry2.url}/v2/e2e/denied/tags/list",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert tags.status_code == 404, tags.text  # nothing was pushed


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("key_header", ["x5c", "kid"])
def test_registry_verifies_issued_tokens(
    token_registry2_factory: Callable[..., TokenRegistry], tmp_path: Path, key_header: str
) -> None:
    """registry:2 takes both JWT key headers, and checks scope, expiry and the signing key."""
    registry = token_registry2_factory(key_header=key_header, expires_in=7)
    issuer = registry.issuer
    uploads = f"{registry.url}/v2/e2e/raw/blobs/uploads/"
    scope = "repository:e2e/raw:pull,push"

    anonymous = httpx.get(issuer.realm, params={"service": issuer.service, "scope": scope})
    assert anonymous.status_code == 200
    body = anonymous.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 7
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["issued_at"])
    claims = issuer.decode(body["token"])
    assert claims["iss"] == "test-issuer"
    assert claims["aud"] == "test-registry"
    assert claims["sub"] == ""
    assert claims["exp"] - claims["iat"] == 7
    assert claims["access"] == [{"type": "repository", "name": "e2e/raw", "actions": ["pull"]}]
    assert httpx.get(f"{registry.url}/v2/", headers=_bearer(body["token"])).status_code == 200
    denied = httpx.post(uploads, headers=_bearer(body["token"]))
    assert denied.status_code == 401
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]

    issuer.expires_in = 30
    user = httpx.get(
        issuer.realm,
        params={"service": issuer.service, "scope": scope, "account": registry.username},
        auth=(registry.username, registry.password),
    )
    assert user.status_code == 200
    assert user.json()["expires_in"] == 30
    assert issuer.decode(user.json()["token"])["sub"] == "pusher"
    started = httpx.post(uploads, headers=_bearer(user.json()["token"]))
    assert started.status_code == 202, started.text

    wrong = httpx.get(
        issuer.realm,
        params={"service": issuer.service, "scope": scope},
        auth=(registry.username, "nope"),
    )
    assert wrong.status_code == 401
    assert "token" not in wrong.json()

    everything = (Access("repository", "e2e/raw", ("pull", "push")),)
    expired = issuer.issue("pusher", everything, lifetime=-120)  # past registry:2's 60s leeway
    assert httpx.post(uploads, headers=_bearer(expired)).status_code == 401
    stranger = TokenIssuer(tmp_path / "stranger", key_header=issuer.key_header)
    forged = stranger.issue("pusher", everything)
    assert httpx.post(uploads, headers=_bearer(forged)).status_code == 401

    log = issuer.token_requests()
    assert [(r.basic_auth, r.user, r.status) for r in log] == [
        (False, None, 200),
        (True, "pusher", 200),
        (True, "pusher", 401),
    ]
    assert log[1].account == "pusher"
