"""A Docker token server (the ``auth.token`` realm of registry:2) for the e2e tests.

It follows the distribution token spec (docs/content/spec/auth/token.md and jwt.md)::

    GET /token?service=SERVICE&scope=repository:NAME:pull,push[&scope=...][&account=USER]
        [Authorization: Basic base64(user:password)]
    200 {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": "...Z"}

Anonymous requests get the `anonymous_actions` (pull) on every repository; a configured user
with the right password gets the `user_actions` (pull, push) and ``registry:catalog:*``; a
wrong password or an unknown user gets 401. Every request to the server is recorded
(`TokenIssuer.requests`), so tests can count how often a client came back for a token.

The JWT is ES256 (or RS256), signed with a key whose self-signed certificate is written to
`cert_path`, the registry's ``rootcertbundle``. registry:2 (2.8) finds the signing key from the
JWT header in one of two ways, both supported here (`key_header`):

* ``"x5c"``: the header carries the certificate (``x5c: [base64 DER]``); registry:2 verifies it
  against the bundle, and a self-signed certificate that is itself in the bundle verifies.
* ``"kid"``: the header carries the libtrust fingerprint of the public key (`libtrust_key_id`);
  registry:2 looks it up among the keys of the bundle's certificates.

registry:2 allows 60 seconds of clock skew on ``exp`` and ``nbf``: a token stays valid for
``lifetime + 60`` seconds. To get tokens the registry refuses at once, set a `lifetime` of -120.
Clients (containers/image, containerd) treat an `expires_in` under 60 as 60.

Only the standard library serves HTTP; signing needs PyJWT and cryptography.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .servers import ManagedServer

KeyHeader = Literal["x5c", "kid"]
Algorithm = Literal["ES256", "RS256"]

DEFAULT_SERVICE = "test-registry"
DEFAULT_ISSUER = "test-issuer"
DEFAULT_USERS: Mapping[str, str] = {"pusher": "pusher-secret"}
# registry:2 accepts a token this long after its exp, and this long before its nbf.
REGISTRY_LEEWAY_SECONDS = 60


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The libtrust fingerprint registry:2 uses as a `kid`: the first 240 bits of the SHA-256 of
    the DER SubjectPublicKeyInfo, base32 without padding, in 12 groups of 4 joined by ':'."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass(frozen=True)
class Scope:
    """One requested scope, ``type[(class)]:name:action,action``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        # The name may itself hold ':' (a host:port prefix): type is before the first colon,
        # the actions after the last one.
        kind, rest = text.split(":", 1) if ":" in text else (text, "")
        name, _, actions = rest.rpartition(":")
        if "(" in kind:  # resource class, e.g. repository(plugin): ignored
            kind = kind.split("(", 1)[0]
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass(frozen=True)
class Access:
    """One entry of the JWT's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer received, as tests inspect it."""

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    scopes: tuple[str, ...]  # every requested scope, multiple `scope=` and space-separated
    service: str | None
    account: str | None
    basic_auth: bool  # an Authorization: Basic header was sent
    user: str | None  # the Basic user name, whether or not the password was right
    status: int
    granted: tuple[Access, ...]  # what the issued token allows (empty unless 200)
    at: float  # time.time()

    @property
    def authenticated(self) -> bool:
        """A user was named and the password was right."""
        return self.basic_auth and self.status == 200


@dataclass
class TokenIssuer:
    """The token server, on 127.0.0.1:<port the OS picks>, in a background thread.

    `expires_in`, `lifetime` and `users` can be changed between requests. `lifetime` (seconds
    until the JWT's exp) defaults to `expires_in`.
    """

    workdir: Path
    service: str = DEFAULT_SERVICE
    issuer: str = DEFAULT_ISSUER
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    expires_in: int = 300
    lifetime: int | None = None
    key_header: KeyHeader = "x5c"
    algorithm: Algorithm = "ES256"
    anonymous_actions: tuple[str, ...] = ("pull",)
    user_actions: tuple[str, ...] = ("pull", "push")

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.workdir / "token-issuer.crt"
        self._private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if self.algorithm == "ES256":
            self._private_key = ec.generate_private_key(ec.SECP256R1())
        else:
            self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = _self_signed_certificate(self._private_key, self.issuer)
        self.cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self.key_id = libtrust_key_id(self._private_key.public_key())
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token issuer has not been started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_auth_config(self) -> dict[str, Any]:
        """The registry:2 config section that sends clients here (deep-merge it)."""
        return {
            "auth": {
                "token": {
                    "realm": self.realm,
                    "service": self.service,
                    "issuer": self.issuer,
                    "rootcertbundle": str(self.cert_path),
                }
            }
        }

    # --- lifecycle ---

    def start(self) -> TokenIssuer:
        if self._server is not None:
            raise RuntimeError("token issuer is already running")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"token-issuer:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the request log ---

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def token_requests(
        self,
        *,
        scope: str | None = None,
        user: str | None = None,
        anonymous: bool | None = None,
        status: int | None = None,
    ) -> list[TokenRequest]:
        """The GET /token requests, filtered: `scope` must be among the requested ones, `user`
        the Basic user, `anonymous` whether no Basic auth was sent, `status` the answer's."""
        out = []
        for req in self.requests:
            if req.path != "/token" or req.method != "GET":
                continue
            if scope is not None and scope not in req.scopes:
                continue
            if user is not None and req.user != user:
                continue
            if anonymous is not None and req.basic_auth == anonymous:
                continue
            if status is not None and req.status != status:
                continue
            out.append(req)
        return out

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # --- tokens ---

    def issue(self, subject: str, access: Iterable[Access], *, lifetime: int | None = None) -> str:
        """A signed JWT for `subject` allowing `access` (the server uses this; tests may too)."""
        now = int(time.time())
        if lifetime is None:
            lifetime = self.lifetime if self.lifetime is not None else self.expires_in
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [a.to_json() for a in access],
        }
        headers: dict[str, Any]
        if self.key_header == "x5c":
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            headers = {"x5c": [base64.b64encode(der).decode()]}
        else:
            headers = {"kid": self.key_id}
        return jwt.encode(claims, self._private_key, algorithm=self.algorithm, headers=headers)

    def decode(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        """The claims of a token this issuer signed (signature, aud and iss checked)."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._private_key.public_key(),
            algorithms=[self.algorithm],
            audience=self.service,
            issuer=self.issuer,
            options={"verify_exp": verify_exp},
            leeway=REGISTRY_LEEWAY_SECONDS,
        )
        return claims

    def grant(self, scopes: Sequence[str], user: str | None) -> tuple[Access, ...]:
        """What `user` (None: anonymous) gets of the requested `scopes`."""
        allowed = self.user_actions if user is not None else self.anonymous_actions
        granted: list[Access] = []
        for text in scopes:
            scope = Scope.parse(text)
            if scope.type == "repository" and scope.name:
                actions = tuple(a for a in scope.actions if a in allowed or "*" in allowed)
            elif scope.type == "registry" and scope.name == "catalog" and user is not None:
                actions = tuple(a for a in scope.actions if a == "*")
            else:
                actions = ()
            if actions:
                granted.append(Access(scope.type, scope.name, actions))
        return tuple(granted)


def _self_signed_certificate(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, common_name: str
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic ...``, else None."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, _, password = decoded.partition(":")
    return user, password


def _handler_for(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "entrepot-e2e-token-issuer"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log is issuer.requests

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            # The OAuth2 form of the spec (oauth.md) is not implemented: 404 makes containerd
            # and containers/image fall back to GET.
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            parts = urllib.parse.urlsplit(self.path)
            raw_query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
            query = {key: tuple(values) for key, values in raw_query.items()}
            scopes = tuple(s for value in query.get("scope", ()) for s in value.split() if s)
            service = query.get("service", (None,))[0]
            account = query.get("account", (None,))[0]
            creds = _basic_credentials(self.headers.get("Authorization"))
            user = creds[0] if creds is not None else None

            granted: tuple[Access, ...] = ()
            extra: dict[str, str] = {}
            if self.command != "GET" or parts.path != "/token":
                status, body = 404, _error("NOT_FOUND", "no such endpoint")
            elif service is not None and service != issuer.service:
                status, body = 400, _error("DENIED", f"unknown service {service!r}")
            elif creds is not None and issuer.users.get(creds[0]) != creds[1]:
                status = 401
                body = _error("UNAUTHORIZED", "authentication failed")
                extra["WWW-Authenticate"] = f'Basic realm="{issuer.issuer}"'
            else:
                granted = issuer.grant(scopes, user)
                token = issuer.issue(user or "", granted)
                issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                status = 200
                body = {
                    "token": token,
                    "access_token": token,
                    "expires_in": issuer.expires_in,
                    "issued_at": issued_at,
                }
            issuer._record(
                TokenRequest(
                    method=self.command,
                    path=parts.path,
                    query=query,
                    scopes=scopes,
                    service=service,
                    account=account,
                    basic_auth=creds is not None,
                    user=user,
                    status=status,
                    granted=granted,
                    at=time.time(),
                )
            )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


@dataclass(frozen=True)
class TokenRegistry:
    """A registry:2 whose auth is the token `issuer`; what the token_registry2 fixture yields."""

    server: ManagedServer
    issuer: TokenIssuer
    username: str
    password: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def root(self) -> Path:
        return self.server.root

    @property
    def creds(self) -> str:
        """``user:password``, as skopeo's --src-creds / --dest-creds take it."""
        return f"{self.username}:{self.password}"

    @property
    def realm(self) -> str:
        return self.issuer.realm

    @property
    def service(self) -> str:
        return self.issuer.service
