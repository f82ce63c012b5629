"""Access control through the HTTP API: registry:2's htpasswd and token modes, Entrepot's
built-in token service, and hostile requests (each refused with the exact spec error and
nothing changed in storage)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.auth_setup import PASSWORDS, app_client, basic, snapshot, write_htpasswd
from tests.api.oci_client import OciClient, error_code, make_image, sha256

BUILTIN = """\
  builtin:
    service: entrepot
    issuer: entrepot
    htpasswd: {htpasswd}
    groups:
      team: [alice]
    maxfailures: 3
    access:
      - who: [anonymous]
        repositories: ["docker.io/*", "public/*"]
        actions: [pull]
      - who: ["group:team"]
        repositories: ["team/*"]
        actions: [pull, push]
      - who: [admin]
        repositories: ["*"]
        actions: ["*"]
        catalog: true
"""


def challenge(response: httpx.Response) -> dict[str, str]:
    header = response.headers["www-authenticate"]
    scheme, _, params = header.partition(" ")
    values = dict(re.findall(r'(\w+)="([^"]*)"', params))
    values["scheme"] = scheme
    return values


class TokenClient:
    """What docker, skopeo and containerd do: follow the Bearer challenge to the realm."""

    def __init__(self, http: httpx.AsyncClient, user: str | None = None) -> None:
        self.http = http
        self.user = user

    async def token(self, scope: str) -> str:
        headers = {}
        if self.user:
            headers["Authorization"] = basic(self.user, PASSWORDS[self.user])
        response = await self.http.get(
            "/auth/token", params={"service": "entrepot", "scope": scope}, headers=headers
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        first = await self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        if first.status_code != 401:
            return first
        scope = challenge(first).get("scope", "")
        token = await self.token(scope)
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        headers["Authorization"] = f"Bearer {token}"
        return await self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def builtin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    async with app_client(tmp_path, BUILTIN.format(htpasswd=htpasswd)) as http:
        yield http


async def test_builtin_challenge_names_realm_service_and_scope(
    builtin: httpx.AsyncClient,
) -> None:
    base = await builtin.get("/v2/")
    assert base.status_code == 401
    assert error_code(base) == "UNAUTHORIZED"
    assert challenge(base) == {
        "scheme": "Bearer",
        "realm": "http://registry.test/auth/token",
        "service": "entrepot",
    }
    pull = await builtin.get("/v2/team/app/manifests/latest")
    assert challenge(pull)["scope"] == "repository:team/app:pull"


async def test_anonymous_pulls_public_but_cannot_push(builtin: httpx.AsyncClient) -> None:
    anonymous = TokenClient(builtin)
    assert (await anonymous.request("GET", "/v2/")).status_code == 200
    missing = await anonymous.request("GET", "/v2/public/app/manifests/latest")
    assert missing.status_code == 404  # allowed to look; nothing there
    push = await anonymous.request("POST", "/v2/public/app/blobs/uploads/")
    assert push.status_code == 401
    assert challenge(push)["error"] == "insufficient_scope"


async def test_team_member_pushes_inside_their_pattern_only(builtin: httpx.AsyncClient) -> None:
    alice = TokenClient(builtin, "alice")
    started = await alice.request("POST", "/v2/team/app/blobs/uploads/")
    assert started.status_code == 202
    outside = await alice.request("POST", "/v2/other/app/blobs/uploads/")
    assert outside.status_code == 403
    assert error_code(outside) == "DENIED"
    assert "alice" in outside.json()["errors"][0]["message"]
    catalog = await alice.request("GET", "/v2/_catalog")
    assert catalog.status_code == 403


async def test_token_grants_only_what_the_rules_allow(builtin: httpx.AsyncClient) -> None:
    response = await builtin.get(
        "/auth/token",
        params={"service": "entrepot", "scope": "repository:public/app:pull,push,delete"},
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    token = response.json()["token"]
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "public/app", "actions": ["pull"]}]
    assert claims["sub"] == ""


async def test_admin_pushes_pulls_deletes_and_lists(builtin: httpx.AsyncClient) -> None:
    admin = TokenClient(builtin, "admin")
    image = make_image()
    for blob in [image.config, *image.layers]:
        started = await admin.request("POST", "/v2/any/thing/blobs/uploads/")
        location = started.headers["location"]
        done = await admin.request("PUT", f"{location}&digest={sha256(blob)}", content=blob)
        assert done.status_code == 201, done.text
    put = await admin.request(
        "PUT",
        "/v2/any/thing/manifests/v1",
        content=image.manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert put.status_code == 201
    assert (await admin.request("GET", "/v2/_catalog")).json() == {"repositories": ["any/thing"]}
    deleted = await admin.request("DELETE", f"/v2/any/thing/manifests/{image.digest}")
    assert deleted.status_code == 202


async def test_wrong_password_at_the_token_endpoint(builtin: httpx.AsyncClient) -> None:
    response = await builtin.get(
        "/auth/token",
        params={"service": "entrepot", "scope": "repository:team/app:pull"},
        headers={"Authorization": basic("alice", "guess")},
    )
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert "guess" not in response.text


async def test_failed_sign_ins_are_limited_per_user_and_address(
    builtin: httpx.AsyncClient,
) -> None:
    async def sign_in(user: str, password: str) -> httpx.Response:
        return await builtin.get(
            "/auth/token",
            params={"service": "entrepot"},
            headers={"Authorization": basic(user, password)},
        )

    assert (await sign_in("alice", PASSWORDS["alice"])).status_code == 200
    statuses = [(await sign_in("alice", "guess")).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # alice's own clients, which signed in with her password before, keep working,
    assert (await sign_in("alice", PASSWORDS["alice"])).status_code == 200
    # and another user behind the same address (NAT, a proxy) is not locked out.
    assert (await sign_in("bob", PASSWORDS["bob"])).status_code == 200
    # A guesser's next try is refused unchecked, the right password included.
    for _ in range(3):
        await sign_in("admin", "guess")
    limited = await sign_in("admin", PASSWORDS["admin"])
    assert limited.status_code == 429
    assert error_code(limited) == "TOOMANYREQUESTS"
    assert int(limited.headers["retry-after"]) >= 1


async def test_signing_in_never_loses_what_anonymous_may_do(builtin: httpx.AsyncClient) -> None:
    admin_token = await TokenClient(builtin, "admin").token("repository:public/app:push,pull")
    builtin.headers["Authorization"] = f"Bearer {admin_token}"
    assert (
        await OciClient(builtin).push_image("public/app", make_image(), tag="1")
    ).status_code == 201
    del builtin.headers["Authorization"]

    anonymous = await TokenClient(builtin).request("GET", "/v2/public/app/manifests/1")
    assert anonymous.status_code == 200
    # bob has no rule of his own: signed in, he still has what anonymous has.
    bob = await TokenClient(builtin, "bob").request("GET", "/v2/public/app/manifests/1")
    assert bob.status_code == 200


async def test_signed_in_user_refused_gets_403_denied_on_get_and_head(
    builtin: httpx.AsyncClient,
) -> None:
    alice = TokenClient(builtin, "alice")
    for method in ("GET", "HEAD"):
        refused = await alice.request(method, "/v2/other/app/manifests/latest")
        assert refused.status_code == 403, method
        # A HEAD has no body: the challenge header carries the reason clients show.
        reason = challenge(refused)
        assert reason["error"] == "insufficient_scope"
        assert "alice" in reason["error_description"]
    assert error_code(await alice.request("GET", "/v2/other/app/manifests/latest")) == "DENIED"


async def test_a_token_narrower_than_the_rules_gets_the_challenge(
    builtin: httpx.AsyncClient,
) -> None:
    alice = TokenClient(builtin, "alice")
    pull_only = await alice.token("repository:team/app:pull")
    response = await builtin.post(
        "/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {pull_only}"}
    )
    # The rules would let alice push: 401, so her client fetches a token that says so.
    assert response.status_code == 401
    assert challenge(response)["error"] == "insufficient_scope"
    assert challenge(response)["scope"] == "repository:team/app:pull,push"


async def test_htpasswd_mode_is_registry2s_basic_auth(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    auth = f"  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
    async with app_client(tmp_path, auth) as http:
        anonymous = await http.get("/v2/")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Basic realm="basic-realm"'
        wrong = await http.get("/v2/", headers={"Authorization": basic("bob", "nope")})
        assert wrong.status_code == 401
        client = OciClient(http)
        http.headers["Authorization"] = basic("bob", PASSWORDS["bob"])
        assert (await client.push_image("any/repo", make_image(), tag="1")).status_code == 201
        assert (await client.get_manifest("any/repo", "1")).status_code == 200


@pytest.fixture
async def two_users(tmp_path: Path) -> AsyncIterator[tuple[TokenClient, TokenClient, Path]]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    rules = (
        BUILTIN.format(htpasswd=htpasswd).replace(
            'repositories: ["team/*"]', 'repositories: ["team/*", "shared/*"]'
        )
        + '      - who: [bob]\n        repositories: ["shared/*"]\n        actions: [pull, push]\n'
    )
    async with app_client(tmp_path, rules) as http:
        yield TokenClient(http, "alice"), TokenClient(http, "bob"), tmp_path / "data"


async def test_upload_is_bound_to_the_user_and_repository_that_opened_it(
    two_users: tuple[TokenClient, TokenClient, Path],
) -> None:
    alice, bob, root = two_users
    started = await alice.request("POST", "/v2/shared/app/blobs/uploads/")
    location = started.headers["location"]
    assert "_state=" in location
    before = snapshot(root)
    upload_id = location.split("/uploads/")[1].split("?")[0]
    attempts = [
        ("PATCH", location, b"bob writes"),  # the same URL, another user
        ("PATCH", f"/v2/shared/app/blobs/uploads/{upload_id}", b"x"),  # without _state
        ("PATCH", location.replace("shared/app", "shared/other"), b"x"),  # another repo
        ("PUT", f"{location}&digest={sha256(b'')}", b""),
        ("DELETE", location, b""),
    ]
    for method, url, body in attempts:
        response = await bob.request(method, url, content=body)
        assert response.status_code == 404, (method, url, response.text)
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    assert snapshot(root) == before
    finished = await alice.request("PUT", f"{location}&digest={sha256(b'')}", content=b"")
    assert finished.status_code == 201


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-jwt", "garbage"),
        ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "alg none"),
        ("Basic " + "YWRtaW46YWRtaW4tc2VjcmV0", "basic where a token is due"),
    ],
)
async def test_bad_tokens_are_unauthorized(
    builtin: httpx.AsyncClient, tmp_path: Path, authorization: str, reason: str
) -> None:
    before = snapshot(tmp_path / "data")
    response = await builtin.post(
        "/v2/team/app/blobs/uploads/", headers={"Authorization": authorization}
    )
    assert response.status_code == 401, reason
    assert error_code(response) == "UNAUTHORIZED"
    assert snapshot(tmp_path / "data") == before


async def test_expired_and_foreign_service_tokens_are_refused(
    builtin: httpx.AsyncClient, tmp_path: Path
) -> None:
    from entrepot.auth.access import repository
    from entrepot.auth.tokens import BuiltinTokens

    secret_tokens = [
        BuiltinTokens(b"wrong-key" * 4, "entrepot", "entrepot", 300),
    ]
    for tokens in secret_tokens:
        token, _, _ = tokens.issue("admin", [repository("team/app", "pull", "push")])
        response = await builtin.post(
            "/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert challenge(response)["error"] == "invalid_token"
    other_service = await builtin.get("/auth/token", params={"service": "someone-else"})
    assert other_service.status_code == 403
    assert error_code(other_service) == "DENIED"


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-trusted-proxy", "untrusted"])
async def test_sign_in_limit_uses_forwarded_address_only_from_trusted_proxies(
    tmp_path: Path, trusted: bool
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    extra = "  trustedproxies: [127.0.0.1]\n" if trusted else ""
    config = BUILTIN.format(htpasswd=htpasswd)
    async with app_client(tmp_path, config, http_extra=extra) as http:

        async def sign_in(password: str, forwarded_for: str) -> int:
            response = await http.get(
                "/auth/token",
                params={"service": "entrepot"},
                headers={
                    "Authorization": basic("alice", password),
                    "X-Forwarded-For": forwarded_for,
                },
            )
            return response.status_code

        guesses = [await sign_in("guess", "203.0.113.9") for _ in range(4)]
        assert guesses == [401, 401, 401, 429]
        # alice from another address behind the same proxy: her own limit, if the proxy
        # is trusted; the same one otherwise (the header is anyone's to write).
        elsewhere = await sign_in(PASSWORDS["alice"], "198.51.100.7")
        assert elsewhere == (200 if trusted else 429)


# Docker Hub's mirror (Docker's registry-mirrors); nothing listens at its address.
MIRROR = "proxies:\n  - {host: docker.io, remoteurl: 'http://127.0.0.1:9', mirror: true}\n"


async def granted(http: httpx.AsyncClient, scope: str, user: str | None = None) -> object:
    """The access an (anonymous) token for ``scope`` carries."""
    import jwt

    headers = {"Authorization": basic(user, PASSWORDS[user])} if user else {}
    response = await http.get(
        "/auth/token", params={"service": "entrepot", "scope": scope}, headers=headers
    )
    assert response.status_code == 200, response.text
    return jwt.decode(response.json()["token"], options={"verify_signature": False})["access"]


async def test_the_rule_for_the_mirrors_cache_covers_its_plain_names_not_pushed_ones(
    tmp_path: Path,
) -> None:
    # Docker sends no credentials to a mirror and asks for the plain name: the anonymous
    # rule for docker.io/* must cover grafana/grafana, or Docker pulls around the cache.
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    async with app_client(tmp_path, BUILTIN.format(htpasswd=htpasswd), extra=MIRROR) as http:
        pull = [{"type": "repository", "name": "grafana/grafana", "actions": ["pull"]}]
        assert await granted(http, "repository:grafana/grafana:pull") == pull
        assert await granted(http, "repository:grafana/grafana:pull,push") == pull
        answer = await TokenClient(http).request("GET", "/v2/grafana/grafana/manifests/1")
        assert answer.status_code == 503  # past the guard, on to the (unreachable) mirror
        assert error_code(answer) == "UNAVAILABLE"

        # Once pushed here, the name is judged as itself: anonymous may not read it.
        image = make_image("pushed")
        pusher = TokenClient(http, "admin")
        for blob in [image.config, *image.layers]:
            started = await pusher.request("POST", "/v2/grafana/grafana/blobs/uploads/")
            location = started.headers["location"]
            done = await pusher.request("PUT", f"{location}&digest={sha256(blob)}", content=blob)
            assert done.status_code == 201, done.text
        assert await granted(http, "repository:grafana/grafana:pull") == []
        assert await granted(http, "repository:grafana/grafana:pull", "admin") != []
        # Names the anonymous rule does not reach through the cache stay refused.
        assert await granted(http, "repository:docker.io/grafana/grafana:push") == []


async def test_without_a_mirror_plain_names_are_judged_as_themselves(
    builtin: httpx.AsyncClient,
) -> None:
    assert await granted(builtin, "repository:grafana/grafana:pull") == []
