"""Access control with real clients against a running ``entrepot serve``: an operator turns on
one of the three ``auth`` modes, users sign in with their usual tools.

* registry:2's ``auth.htpasswd``: a bcrypt file as ``htpasswd -B`` writes it; skopeo's
  ``--dest-creds``/``--src-creds`` get in, no or wrong credentials do not.
* Entrepot's ``auth.builtin`` token service with access rules: the fleet pulls cached Docker
  Hub images anonymously (skopeo, containerd's token dance), nobody pushes anonymously,
  alice (group ``team``) pushes and pulls ``team/*`` with skopeo, podman and docker, and is
  told "denied" outside it.
* registry:2's ``auth.token``: Entrepot trusts the tokens of an external issuer (the
  ``token_registry2`` fixture's) for its own service, and no other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from . import clients
from .clients import ClientError, Ctr, Podman
from .images import ImageLayout, build_image, layout_tags
from .servers import ManagedServer, ServerFactory, access_log, requests_to
from .token_issuer import Access, TokenRegistry

if TYPE_CHECKING:
    from .conftest import DockerEngine

DockerdFactory = Callable[..., "DockerEngine"]

pytestmark = pytest.mark.e2e

USERS = {"alice": "alice-secret", "carol": "carol-secret"}
ALICE = ("alice", USERS["alice"])
HUB_REPO = "library/app"  # on the upstream, which stands for Docker Hub
CACHED_REPO = f"docker.io/{HUB_REPO}"  # the same through Entrepot's path-prefix route
# How skopeo, podman and docker word a 401 (a HEAD's 401 has no body; containers/image then
# says "denied: requested access to the resource is denied").
AUTH_FAILURE = re.compile(r"unauthorized|authentication required|requested access .* is denied")
# A signed-in user the rules refuse gets 403 DENIED on GET and HEAD. containers/image
# (skopeo, podman) reports a refused HEAD by its status, "403 (forbidden)"; Docker shows
# the reason from the challenge header's error_description; bodies say "denied".
SIGNED_IN_REFUSAL = re.compile(r"denied|403 \(forbidden\)")


def creds(user: tuple[str, str]) -> str:
    return f"{user[0]}:{user[1]}"


def empty_authfile(tmp_path: Path) -> Path:
    """An auth file with no entries: skopeo/podman must not find credentials elsewhere."""
    path = tmp_path / "no-auth.json"
    path.write_text('{"auths": {}}')
    return path


def skopeo_push(layout: ImageLayout, host: str, repo: str, tag: str, *flags: str) -> None:
    clients.skopeo_copy(layout.ref, f"docker://{host}/{repo}:{tag}", extra=list(flags))


def skopeo_pull(host: str, repo: str, tag: str, dest: Path, *flags: str) -> dict[str, str]:
    """Copy HOST/REPO:TAG into the OCI layout DEST; the layout's tags afterwards."""
    dest.mkdir(parents=True, exist_ok=True)
    clients.skopeo_copy(f"docker://{host}/{repo}:{tag}", f"oci:{dest}:{tag}", extra=list(flags))
    return layout_tags(dest)


def assert_same_blobs(image: ImageLayout, pulled: Path) -> None:
    for digest in image.all_digests:
        copy = pulled / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert copy.read_bytes() == image.blob(digest), digest


def refused(call: Callable[..., object], *args: Any) -> str:
    """Run a client command (``call(*args)``) that must fail; its stderr, lower-cased."""
    with pytest.raises(ClientError) as failure:
        call(*args)
    return failure.value.stderr.lower()


def repositories(server: ManagedServer) -> list[str]:
    """Repository names that exist in the storage root (what _catalog would list)."""
    base = server.root / "docker" / "registry" / "v2" / "repositories"
    if not base.exists():
        return []
    return sorted(
        str(path.parent.relative_to(base)) for path in base.rglob("_manifests") if path.is_dir()
    )


# --- registry:2's htpasswd mode -----------------------------------------------------------------


def test_htpasswd_users_push_and_pull_with_skopeo_creds(
    entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    htpasswd = clients.write_htpasswd(tmp_path / "htpasswd", USERS)
    entrepot = entrepot_factory(
        config={"auth": {"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}}
    )
    image = build_image(tmp_path / "src", seed=101, label="htpasswd")
    no_auth = empty_authfile(tmp_path)

    # The operator's users push and pull with their credentials.
    skopeo_push(image, entrepot.host, "ops/app", "1", "--dest-creds", creds(ALICE))
    pulled = tmp_path / "pulled"
    tags = skopeo_pull(entrepot.host, "ops/app", "1", pulled, "--src-creds", "carol:carol-secret")
    assert tags == {"1": image.digest}
    assert_same_blobs(image, pulled)

    # Without credentials: the Basic challenge, which skopeo reports as an auth failure.
    challenge = httpx.get(f"{entrepot.url}/v2/")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"] == 'Basic realm="basic-realm"'
    stderr = refused(
        lambda: skopeo_pull(
            entrepot.host, "ops/app", "1", tmp_path / "anon", "--src-authfile", str(no_auth)
        )
    )
    assert AUTH_FAILURE.search(stderr), stderr
    stderr = refused(
        lambda: skopeo_push(image, entrepot.host, "ops/other", "1", "--dest-authfile", str(no_auth))
    )
    assert AUTH_FAILURE.search(stderr), stderr

    # A wrong password is no better than none, for pulls and pushes alike.
    stderr = refused(
        lambda: skopeo_pull(
            entrepot.host, "ops/app", "1", tmp_path / "wrong", "--src-creds", "alice:guess"
        )
    )
    assert AUTH_FAILURE.search(stderr), stderr
    refused(lambda: skopeo_push(image, entrepot.host, "ops/other", "1", "--dest-creds", "bob:x"))
    assert repositories(entrepot) == ["ops/app"]


# --- Entrepot's built-in token service ----------------------------------------------------------


@dataclass(frozen=True)
class BuiltinSetup:
    entrepot: ManagedServer
    hub_image: ImageLayout  # library/app:1 on the upstream (Docker Hub's stand-in)
    no_auth: Path


@pytest.fixture
def builtin(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> BuiltinSetup:
    """An upstream holding library/app:1, cached by an Entrepot with the built-in token
    service: anonymous may pull docker.io/*, group team (alice) may pull and push team/*."""
    hub_image = build_image(tmp_path / "hub", seed=102, label="builtin-hub")
    clients.push(hub_image.ref, registry2.host, HUB_REPO, "1")
    htpasswd = clients.write_htpasswd(tmp_path / "htpasswd", USERS)
    config: dict[str, Any] = {
        "proxies": [{"host": "docker.io", "remoteurl": registry2.url, "mirror": True}],
        "auth": {
            "builtin": {
                "htpasswd": str(htpasswd),
                "groups": {"team": ["alice"]},
                "access": [
                    {"who": ["anonymous"], "repositories": ["docker.io/*"], "actions": ["pull"]},
                    {
                        "who": ["group:team"],
                        "repositories": ["team/*"],
                        "actions": ["pull", "push"],
                    },
                ],
            }
        },
    }
    return BuiltinSetup(entrepot_factory(config=config), hub_image, empty_authfile(tmp_path))


def test_anonymous_clients_pull_cached_images_and_cannot_push(
    builtin: BuiltinSetup, ctr: Ctr, tmp_path: Path
) -> None:
    entrepot, hub = builtin.entrepot, builtin.hub_image

    # skopeo without credentials, through the path-prefix route.
    pulled = tmp_path / "skopeo-pull"
    tags = skopeo_pull(entrepot.host, CACHED_REPO, "1", pulled, "--src-no-creds")
    assert tags == {"1": hub.digest}
    assert_same_blobs(hub, pulled)

    # containerd: 401 with a Bearer challenge, an anonymous token from /auth/token, then the
    # pull; it unpacks the layers, so every blob arrived intact.
    ctr.pull(entrepot.host, CACHED_REPO, "1")
    assert ctr.images()[f"{entrepot.host}/{CACHED_REPO}:1"].digest == hub.digest
    token_requests = requests_to(entrepot, "GET", "/auth/token", status=200)
    assert any("containerd" in entry.agent for entry in token_requests), token_requests

    # Nobody pushes anonymously: neither into the cache namespace the rules let them read,
    # nor into a team repository.
    before = clients.storage_snapshot(entrepot.root)
    logged = len(access_log(entrepot))
    for repo in (CACHED_REPO, "team/app"):
        stderr = refused(skopeo_push, hub, entrepot.host, repo, "anon", "--dest-no-creds")
        assert AUTH_FAILURE.search(stderr), stderr
    writes = [e for e in access_log(entrepot)[logged:] if e.method in ("POST", "PUT", "PATCH")]
    assert writes, "skopeo never tried to write"
    assert {e.status for e in writes} == {401}, writes
    assert clients.storage_snapshot(entrepot.root) == before
    assert repositories(entrepot) == [CACHED_REPO]


def test_team_member_pushes_and_pulls_team_repositories_only(
    builtin: BuiltinSetup, tmp_path: Path
) -> None:
    entrepot = builtin.entrepot
    image = build_image(tmp_path / "team-src", seed=103, label="team-app")

    skopeo_push(image, entrepot.host, "team/app", "1", "--dest-creds", creds(ALICE))
    pulled = tmp_path / "team-pull"
    tags = skopeo_pull(entrepot.host, "team/app", "1", pulled, "--src-creds", creds(ALICE))
    assert tags == {"1": image.digest}
    assert_same_blobs(image, pulled)

    # Outside team/*: a signed-in user is told plainly that this is denied to them.
    before = clients.storage_snapshot(entrepot.root)
    stderr = refused(
        lambda: skopeo_push(image, entrepot.host, "other/app", "1", "--dest-creds", creds(ALICE))
    )
    assert SIGNED_IN_REFUSAL.search(stderr), stderr
    # carol has an account but no rule: she cannot read alice's team repository either.
    stderr = refused(
        lambda: skopeo_pull(
            entrepot.host, "team/app", "1", tmp_path / "carol", "--src-creds", "carol:carol-secret"
        )
    )
    assert "denied" in stderr, stderr
    # Nor can anyone without credentials.
    stderr = refused(
        lambda: skopeo_pull(entrepot.host, "team/app", "1", tmp_path / "anon", "--src-no-creds")
    )
    assert AUTH_FAILURE.search(stderr), stderr
    assert clients.storage_snapshot(entrepot.root) == before
    assert repositories(entrepot) == ["team/app"]


def test_podman_login_push_and_pull(builtin: BuiltinSetup, podman: Podman, tmp_path: Path) -> None:
    entrepot = builtin.entrepot
    authfile = tmp_path / "podman-auth.json"  # not the machine's ${XDG_RUNTIME_DIR} one
    image = build_image(tmp_path / "podman-src", seed=104, label="podman")
    skopeo_push(image, entrepot.host, "team/base", "1", "--dest-creds", creds(ALICE))

    wrong = refused(
        lambda: podman(
            "login",
            "--tls-verify=false",
            "--authfile",
            str(authfile),
            "-u",
            "alice",
            "-p",
            "guess",
            entrepot.host,
        )
    )
    assert re.search(r"unauthorized|invalid username(/| or )password", wrong), wrong
    podman(
        "login",
        "--tls-verify=false",
        "--authfile",
        str(authfile),
        "-u",
        "alice",
        "-p",
        USERS["alice"],
        entrepot.host,
    )
    assert entrepot.host in json.loads(authfile.read_text())["auths"]

    auth = ["--tls-verify=false", "--authfile", str(authfile)]
    podman("pull", *auth, f"{entrepot.host}/team/base:1")
    pushed = f"{entrepot.host}/team/from-podman:1"
    podman("tag", f"{entrepot.host}/team/base:1", pushed)
    podman("push", *auth, pushed)
    podman("rmi", pushed, f"{entrepot.host}/team/base:1")
    podman("pull", *auth, pushed)
    config = podman.image_inspect(pushed)
    assert config["Labels"]["org.entrepot.test"] == "podman"
    assert "team/from-podman" in repositories(entrepot)

    # The login does not reach beyond alice's rules.
    other = f"{entrepot.host}/other/from-podman:1"
    podman("tag", pushed, other)
    assert SIGNED_IN_REFUSAL.search(refused(lambda: podman("push", *auth, other)))


def test_docker_login_push_and_pull(
    builtin: BuiltinSetup, dockerd_factory: DockerdFactory, tmp_path: Path
) -> None:
    entrepot = builtin.entrepot
    image = build_image(tmp_path / "docker-src", seed=105, label="docker")
    skopeo_push(image, entrepot.host, "team/base", "1", "--dest-creds", creds(ALICE))
    docker = dockerd_factory(insecure_registries=[entrepot.host])

    wrong = refused(lambda: docker("login", "-u", "alice", "-p", "guess", entrepot.host))
    assert re.search(r"unauthorized|invalid username(/| or )password", wrong), wrong
    assert (
        "Login Succeeded"
        in docker("login", "-u", "alice", "-p", USERS["alice"], entrepot.host).stdout
    )

    base = f"{entrepot.host}/team/base:1"
    docker("pull", base)
    pushed = f"{entrepot.host}/team/from-docker:1"
    docker("tag", base, pushed)
    out = docker("push", pushed).stdout
    match = re.search(r"1: digest: (sha256:[0-9a-f]{64}) size: \d+", out)
    assert match, out
    assert "team/from-docker" in repositories(entrepot)
    docker("rmi", pushed, base)
    docker("pull", pushed)
    inspected = json.loads(docker("image", "inspect", pushed).stdout)[0]
    assert f"{entrepot.host}/team/from-docker@{match.group(1)}" in inspected["RepoDigests"]

    other = f"{entrepot.host}/other/from-docker:1"
    docker("tag", pushed, other)
    assert "denied" in refused(lambda: docker("push", other))


# --- registry:2's token mode with an external token server ----------------------------------------


def test_external_token_server_tokens_push_and_pull(
    token_registry2: TokenRegistry, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    issuer = token_registry2.issuer
    entrepot = entrepot_factory(
        config={
            "auth": {
                "token": {
                    "realm": issuer.realm,
                    "service": issuer.service,
                    "issuer": issuer.issuer,
                    "rootcertbundle": str(issuer.cert_path),
                }
            }
        }
    )
    issuer.clear()
    image = build_image(tmp_path / "src", seed=106, label="external-token")

    skopeo_push(image, entrepot.host, "apps/web", "1", "--dest-creds", token_registry2.creds)
    pulled = tmp_path / "pulled"
    tags = skopeo_pull(entrepot.host, "apps/web", "1", pulled, "--src-creds", token_registry2.creds)
    assert tags == {"1": image.digest}
    assert_same_blobs(image, pulled)
    # skopeo got its tokens from the issuer Entrepot named, for Entrepot's service.
    signed = issuer.token_requests(user=token_registry2.username, status=200)
    assert signed, issuer.requests
    assert {request.service for request in signed} == {issuer.service}
    assert any("repository:apps/web:pull,push" in request.scopes for request in signed), signed

    # The issuer's anonymous tokens only allow pulls.
    before = clients.storage_snapshot(entrepot.root)
    stderr = refused(lambda: skopeo_push(image, entrepot.host, "apps/anon", "1", "--dest-no-creds"))
    assert AUTH_FAILURE.search(stderr), stderr

    # A token signed by the same trusted key, granting the same access, but for another
    # service (audience) is refused; the same token for Entrepot's service is accepted.
    access = [Access("repository", "apps/web", ("pull", "push"))]
    url = f"{entrepot.url}/v2/apps/web/manifests/1"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    good = issuer.issue(token_registry2.username, access)
    assert httpx.get(url, headers={**accept, "Authorization": f"Bearer {good}"}).status_code == 200
    foreign = _token_for_service(token_registry2, "some-other-registry", access)
    for method, target in (("GET", url), ("POST", f"{entrepot.url}/v2/apps/web/blobs/uploads/")):
        response = httpx.request(
            method, target, headers={**accept, "Authorization": f"Bearer {foreign}"}
        )
        assert response.status_code == 401, response.text
        assert [e["code"] for e in response.json()["errors"]] == ["UNAUTHORIZED"]
        challenge = clients.bearer_challenge(response.headers["www-authenticate"])
        assert challenge["error"] == "invalid_token", challenge
        assert challenge["realm"] == issuer.realm
        assert challenge["service"] == issuer.service
    assert clients.storage_snapshot(entrepot.root) == before


def _token_for_service(upstream: TokenRegistry, service: str, access: list[Access]) -> str:
    """A token the issuer signs with its trusted key, naming another service as audience."""
    issuer = upstream.issuer
    own = issuer.service
    issuer.service = service
    try:
        token = issuer.issue(upstream.username, access)
    finally:
        issuer.service = own
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
    return token
