"""Hostile requests against a running ``entrepot serve`` with the built-in token service.

One server for the module, holding ``team/app:1`` (pushed by alice with skopeo) and an
upload alice has open. Each row of the table is sent as raw bytes on a socket (no client
library normalising ``..`` or escapes away): path traversal in names, tags, digests and
upload ids; forged and other-repository or other-user upload ids; an oversize manifest and
oversize headers; bad, forged, expired and foreign tokens. Each must get exactly its status
and spec error code, leave the storage root byte for byte as it was, and leave the server
serving.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from entrepot.root_auth import derive_key

from . import clients
from .images import build_image
from .servers import ManagedServer, entrepot_server, requests_to, settled_access_log

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
SECRET = "hostile-e2e-secret"  # http.secret: the test can sign tokens as the server does
SERVICE = "entrepot"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
NO_ALG = {"alg": "none", "typ": "JWT"}
FORGED_REQUEST = '"DELETE /v2/team/app/manifests/1 HTTP/1.1" 202 -'
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
OVERSIZE_MANIFEST = b"{" + b" " * (4 * MIB - 1) + b"}"  # 4 MiB + 1 byte
assert len(OVERSIZE_MANIFEST) == 4 * MIB + 1


# --- raw HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def codes(self) -> list[str]:
        """The spec error codes of the body ([] without a JSON error body)."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return []
        return [str(error.get("code")) for error in document.get("errors", [])]

    def challenge(self) -> dict[str, str]:
        return clients.bearer_challenge(self.headers.get("www-authenticate", ""))

    def __str__(self) -> str:
        return f"{self.status} {dict(self.headers)} {self.body[:500]!r}"


def send_raw(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> RawResponse:
    """Send `head` (request line and headers) then `body` as they are, and read the answer.

    The body goes out from a thread, so that a server answering before reading it all (413)
    is read rather than deadlocking; an error while sending is then expected and ignored.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(head)
                if body:
                    sock.sendall(body)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = bytearray()
        expected: int | None = None
        header_end = -1
        with contextlib.suppress(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if header_end < 0:
                    header_end = data.find(b"\r\n\r\n")
                    if header_end >= 0:
                        match = re.search(
                            rb"\r\ncontent-length:\s*(\d+)", bytes(data[:header_end]), re.I
                        )
                        expected = int(match.group(1)) if match else None
                if expected is not None and len(data) >= header_end + 4 + expected:
                    break
        sender.join(timeout)
    if header_end < 0:
        raise AssertionError(f"no HTTP answer, only {bytes(data[:200])!r}")
    lines = bytes(data[:header_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, bytes(data[header_end + 4 :]))


# --- the server under attack --------------------------------------------------------------------


def _claims(subject: str, access: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": SERVICE,
        "sub": subject,
        "aud": SERVICE,
        "iat": now,
        "nbf": now - 1,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    claims.update(overrides)
    return claims


def _push_access(repo: str) -> list[dict[str, Any]]:
    return [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def server_signed(claims: dict[str, Any]) -> str:
    """A token signed with the key the server derives from http.secret (as it signs its own)."""
    return jwt.encode(claims, derive_key(SECRET.encode(), "tokens"), algorithm="HS256")


@dataclass
class Target:
    server: ManagedServer
    authorization: dict[str, str]  # name -> Authorization header value
    upload: str  # alice's open upload in team/app
    state: str  # its _state
    manifest_digest: str  # of team/app:1

    @property
    def root(self) -> Path:
        return self.server.root

    def still_serves(self) -> None:
        alice = {"Authorization": self.authorization["alice"]}
        manifest = httpx.get(
            f"{self.server.url}/v2/team/app/manifests/1",
            headers={**alice, "Accept": MANIFEST_TYPE},
            timeout=10,
        )
        assert manifest.status_code == 200, manifest.text
        assert manifest.headers["docker-content-digest"] == self.manifest_digest
        upload = httpx.get(
            f"{self.server.url}/v2/team/app/blobs/uploads/{self.upload}",
            params={"_state": self.state},
            headers=alice,
            timeout=10,
        )
        assert upload.status_code == 204, upload.text
        assert httpx.get(f"{self.server.url}/v2/", timeout=10).status_code == 401


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("hostile")
    htpasswd = clients.write_htpasswd(workdir / "htpasswd", USERS)
    config = {
        "http": {"secret": SECRET},
        "auth": {
            "builtin": {
                "service": SERVICE,
                "issuer": SERVICE,
                "htpasswd": str(htpasswd),
                "groups": {"team": ["alice", "bob"]},
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
    server = entrepot_server(workdir / "root", workdir, config=config).start()
    try:
        image = build_image(workdir / "src", tag="1", seed=301, label="hostile")
        clients.skopeo_copy(
            image.ref,
            f"docker://{server.host}/team/app:1",
            extra=["--dest-creds", f"alice:{USERS['alice']}"],
        )
        realm = f"{server.url}/auth/token"
        scope = ["repository:team/app:pull,push"]
        alice = clients.fetch_token(realm, SERVICE, scope, creds=("alice", USERS["alice"]))
        bob = clients.fetch_token(realm, SERVICE, scope, creds=("bob", USERS["bob"]))
        both = clients.fetch_token(
            realm,
            SERVICE,
            [*scope, "repository:team/other:pull,push"],
            creds=("alice", USERS["alice"]),
        )
        anonymous = clients.fetch_token(realm, SERVICE, scope)
        opened = httpx.post(
            f"{server.url}/v2/team/app/blobs/uploads/",
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert opened.status_code == 202, opened.text
        location = urlsplit(opened.headers["location"])
        upload = location.path.rsplit("/", 1)[1]
        state = parse_qs(location.query)["_state"][0]

        header, _claims_of_alice, signature = alice.split(".")
        attacker_key = ec.generate_private_key(ec.SECP256R1())
        push = _push_access("team/app")
        authorization = {
            "alice": f"Bearer {alice}",
            "alice, team/app and team/other": f"Bearer {both}",
            "bob": f"Bearer {bob}",
            "anonymous token": f"Bearer {anonymous}",
            "alice basic": "Basic " + base64.b64encode(f"alice:{USERS['alice']}".encode()).decode(),
            "empty bearer": "Bearer ",
            "garbage": "Bearer not.a-jwt.at-all",
            "alg none": f"Bearer {_b64(NO_ALG)}.{_b64(_claims('alice', push))}.",
            "wrong key": "Bearer "
            + jwt.encode(_claims("alice", push), b"not-the-key" * 3, algorithm="HS256"),
            "attacker's own key": "Bearer "
            + jwt.encode(
                _claims("alice", push),
                attacker_key,
                algorithm="ES256",
                headers={"jwk": {"kty": "EC", "crv": "P-256"}},
            ),
            "tampered claims": "Bearer "
            + f"{header}.{_b64(_claims('alice', _push_access('other/app')))}.{signature}",
            "expired": "Bearer "
            + server_signed(
                _claims(
                    "alice",
                    _push_access("team/app"),
                    iat=int(time.time()) - 900,
                    nbf=int(time.time()) - 900,
                    exp=int(time.time()) - 600,
                )
            ),
            "other service": "Bearer "
            + server_signed(_claims("alice", push, aud="another-registry")),
            "other issuer": "Bearer " + server_signed(_claims("alice", push, iss="someone-else")),
        }
        yield Target(server, authorization, upload, state, image.digest)
    finally:
        server.stop()


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One hostile request: `target` may hold {upload}, {state}, {tampered_state}, {uuid}."""

    method: str
    target: str
    status: int
    code: str | None  # the spec error code of the body; None: no body at all
    auth: str | None = "alice"  # a key of Target.authorization
    challenge_error: str | None = None  # WWW-Authenticate's error="..." on a 401
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False


UPLOAD = "/v2/team/app/blobs/uploads/{upload}"
STARTS_UPLOAD = "/v2/team/app/blobs/uploads/"  # POST: would create an upload if allowed

CASES: dict[str, Hostile] = {
    # Traversal and other invalid names, anonymous or signed in: refused before storage.
    "dot-dot name": Hostile("GET", "/v2/../../etc/passwd/tags/list", 400, "NAME_INVALID", None),
    "dot-dot inside a name": Hostile(
        "GET", "/v2/team/../../../etc/passwd/tags/list", 400, "NAME_INVALID"
    ),
    "dot-dot push": Hostile(
        "PUT", "/v2/team/../other/manifests/1", 400, "NAME_INVALID", body=b"{}"
    ),
    "encoded dots": Hostile("GET", "/v2/team/%2e%2e/%2e%2e/etc/tags/list", 400, "NAME_INVALID"),
    "encoded dots, upper case": Hostile(
        "GET", "/v2/team/%2E%2E/app/manifests/1", 400, "NAME_INVALID"
    ),
    "encoded slashes": Hostile(
        "GET", "/v2/team%2F..%2F..%2Fetc/tags/list", 400, "NAME_INVALID", None
    ),
    "encoded slashes in a tag": Hostile(
        "PUT", "/v2/team/app/manifests/..%2F..%2F..%2Fx", 400, "NAME_INVALID", body=b"{}"
    ),
    "backslashes": Hostile("GET", "/v2/team\\..\\..\\etc/tags/list", 400, "NAME_INVALID"),
    "encoded backslashes": Hostile(
        "GET", "/v2/team%5C..%5C..%5Cetc/tags/list", 400, "NAME_INVALID"
    ),
    "NUL in a name": Hostile("GET", "/v2/team/app%00/tags/list", 400, "NAME_INVALID"),
    "NUL in a tag": Hostile(
        "PUT", "/v2/team/app/manifests/1%00.bak", 400, "NAME_INVALID", body=b"{}"
    ),
    "absolute name": Hostile("GET", "/v2//etc/passwd/tags/list", 400, "NAME_INVALID"),
    "absolute path": Hostile("GET", "//etc/passwd", 404, "NAME_UNKNOWN", None),
    "upper-case name": Hostile("GET", "/v2/Team/App/tags/list", 400, "NAME_INVALID"),
    "name over 255 characters": Hostile(
        "GET", "/v2/team/" + "a" * 251 + "/tags/list", 400, "NAME_INVALID"
    ),
    "dot-dot tag": Hostile("GET", "/v2/team/app/manifests/..", 404, "MANIFEST_UNKNOWN"),
    "dot-dot digest": Hostile("GET", "/v2/team/app/blobs/sha256:..", 400, "DIGEST_INVALID"),
    "encoded traversal digest": Hostile(
        "GET", "/v2/team/app/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", 400, "NAME_INVALID"
    ),
    "dot-dot upload id": Hostile(
        "PATCH", "/v2/team/app/blobs/uploads/..", 404, "BLOB_UPLOAD_UNKNOWN", body=b"x"
    ),
    # Upload ids: forged, stripped of their _state, moved, tampered with, or someone else's.
    "forged upload id": Hostile(
        "PATCH", "/v2/team/app/blobs/uploads/{uuid}", 404, "BLOB_UPLOAD_UNKNOWN", body=b"x"
    ),
    "upload id without _state": Hostile("PATCH", UPLOAD, 404, "BLOB_UPLOAD_UNKNOWN", body=b"x"),
    "upload id in another repository": Hostile(
        "PATCH",
        "/v2/team/other/blobs/uploads/{upload}?_state={state}",
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "alice, team/app and team/other",
        body=b"x",
    ),
    "tampered _state": Hostile(
        "PATCH", UPLOAD + "?_state={tampered_state}", 404, "BLOB_UPLOAD_UNKNOWN", body=b"x"
    ),
    "another user's upload: PATCH": Hostile(
        "PATCH", UPLOAD + "?_state={state}", 404, "BLOB_UPLOAD_UNKNOWN", "bob", body=b"x"
    ),
    "another user's upload: PUT": Hostile(
        "PUT",
        UPLOAD + f"?_state={{state}}&digest={EMPTY_DIGEST}",
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "bob",
    ),
    "another user's upload: DELETE": Hostile(
        "DELETE", UPLOAD + "?_state={state}", 404, "BLOB_UPLOAD_UNKNOWN", "bob"
    ),
    "another user's upload: status": Hostile(
        "GET", UPLOAD + "?_state={state}", 404, "BLOB_UPLOAD_UNKNOWN", "bob"
    ),
    # Sizes.
    "manifest of 4 MiB + 1": Hostile(
        "PUT",
        "/v2/team/app/manifests/big",
        413,
        "SIZE_INVALID",
        body=OVERSIZE_MANIFEST,
        headers=(("Content-Type", MANIFEST_TYPE),),
    ),
    "chunked manifest of 4 MiB + 1": Hostile(
        "PUT",
        "/v2/team/app/manifests/big",
        413,
        "SIZE_INVALID",
        body=OVERSIZE_MANIFEST,
        headers=(("Content-Type", MANIFEST_TYPE),),
        chunked=True,
    ),
    "1 MiB header": Hostile("POST", STARTS_UPLOAD, 431, None, headers=(("X-Padding", "a" * MIB),)),
    "20000 headers": Hostile(
        "POST", STARTS_UPLOAD, 431, None, headers=tuple((f"X-H{i}", "v") for i in range(20000))
    ),
    "1 MiB request target": Hostile("GET", "/v2/team/" + "a" * MIB + "/tags/list", 431, None),
    # Credentials that must not open the door to a write.
    "no credentials": Hostile("POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", None),
    "Basic where a token is due": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "alice basic"
    ),
    "empty bearer token": Hostile("POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "empty bearer"),
    "garbage token": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "garbage", challenge_error="invalid_token"
    ),
    "alg none token": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "alg none", challenge_error="invalid_token"
    ),
    "token signed with a wrong key": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "wrong key", challenge_error="invalid_token"
    ),
    "token signed with the attacker's own key": Hostile(
        "POST",
        STARTS_UPLOAD,
        401,
        "UNAUTHORIZED",
        "attacker's own key",
        challenge_error="invalid_token",
    ),
    "genuine signature, tampered claims": Hostile(
        "POST",
        "/v2/other/app/blobs/uploads/",
        401,
        "UNAUTHORIZED",
        "tampered claims",
        challenge_error="invalid_token",
    ),
    "expired token": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "expired", challenge_error="invalid_token"
    ),
    "token for another service": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "other service", challenge_error="invalid_token"
    ),
    "token from another issuer": Hostile(
        "POST", STARTS_UPLOAD, 401, "UNAUTHORIZED", "other issuer", challenge_error="invalid_token"
    ),
    "anonymous token for a push": Hostile(
        "POST",
        STARTS_UPLOAD,
        401,
        "UNAUTHORIZED",
        "anonymous token",
        challenge_error="insufficient_scope",
    ),
    "alice's token on another repository": Hostile(
        "POST", "/v2/other/app/blobs/uploads/", 403, "DENIED"
    ),
    # The token endpoint itself.
    "token for another service from the endpoint": Hostile(
        "GET", "/auth/token?service=another-registry&scope=repository:team/app:push", 403, "DENIED"
    ),
    "wrong password at the endpoint": Hostile(
        "GET",
        "/auth/token?service=entrepot&scope=repository:team/app:push",
        401,
        "UNAUTHORIZED",
        None,
        headers=(("Authorization", "Basic " + base64.b64encode(b"alice:guess").decode()),),
    ),
    "bearer token at the endpoint": Hostile(
        "GET", "/auth/token?service=entrepot&scope=repository:team/app:push", 401, "UNAUTHORIZED"
    ),
}


def _request(case: Hostile, target: Target) -> tuple[bytes, bytes]:
    tampered = target.state[:-1] + ("0" if target.state[-1] != "0" else "1")
    path = case.target.format(
        upload=target.upload, state=target.state, tampered_state=tampered, uuid=uuid.uuid4()
    )
    lines = [f"{case.method} {path} HTTP/1.1", f"Host: {target.server.host}"]
    if case.auth is not None:
        lines.append(f"Authorization: {target.authorization[case.auth]}")
    lines += [f"{name}: {value}" for name, value in case.headers]
    body = case.body
    if case.chunked:
        lines.append("Transfer-Encoding: chunked")
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_hostile_request(name: str, target: Target) -> None:
    case = CASES[name]
    before = clients.storage_snapshot(target.root)
    head, body = _request(case, target)

    response = send_raw(target.server.port or 0, head, body)

    assert response.status == case.status, str(response)
    if case.code is None:
        assert response.body == b"", str(response)
    else:
        assert response.codes == [case.code], str(response)
        assert response.headers["content-type"] == "application/json", str(response)
    if case.challenge_error is not None:
        challenge = response.challenge()
        assert challenge.get("error") == case.challenge_error, str(response)
        assert challenge["realm"] == f"http://{target.server.host}/auth/token"
        assert challenge["service"] == SERVICE
    # Whatever came in, no secret went out.
    for secret in (*USERS.values(), SECRET):
        assert secret.encode() not in response.body
    assert clients.storage_snapshot(target.root) == before, "the storage root changed"
    target.still_serves()


def test_forged_tokens_are_made_with_the_servers_key(target: Target) -> None:
    """The control for the table: signed like the expired and foreign tokens, but valid and
    for this service, a token is accepted, so those were refused for what is wrong with them."""
    token = server_signed(_claims("alice", _push_access("team/app")))
    response = httpx.get(
        f"{target.server.url}/v2/team/app/manifests/1",
        headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_TYPE},
    )
    assert response.status_code == 200, response.text


def test_access_log_cannot_be_forged_through_the_path(target: Target) -> None:
    """A CR LF in the path must not start a line of its own in the access log: that line
    would read as a request that never happened (here a DELETE answered 202)."""
    forged = "127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] " + FORGED_REQUEST
    escaped = forged.replace(" ", "%20").replace('"', "%22").replace("[", "%5B").replace("]", "%5D")
    before = clients.storage_snapshot(target.root)
    head = (
        f"GET /v2/team/app%0d%0a{escaped}/tags/list HTTP/1.1\r\n"
        f"Host: {target.server.host}\r\nConnection: close\r\n\r\n"
    ).encode()

    response = send_raw(target.server.port or 0, head)

    # No route matches a path holding a line break: "no such endpoint".
    assert response.status == 404, str(response)
    assert response.codes == ["NAME_UNKNOWN"], str(response)
    assert clients.storage_snapshot(target.root) == before
    settled_access_log(target.server)
    lines = target.server.log().splitlines()
    injected = [line for line in lines if line.startswith(forged)]
    assert not injected, "\n".join(lines[-5:])
    assert not requests_to(target.server, "DELETE", "/v2/team/app/manifests/1"), (
        "a DELETE that never happened is in the access log"
    )
    target.still_serves()
