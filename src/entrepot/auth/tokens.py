"""Docker token-spec JWTs: issued by Entrepot itself (HMAC-signed with a secret shared by
its workers), or issued by an external token server and verified against registry:2's
``rootcertbundle`` (``x5c`` certificate chain or libtrust ``kid``)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrepot.auth.access import Access

# PyJWT and cryptography are large imports (about 10 MB a process): they are loaded when
# tokens are configured (the token classes' constructors), not by every worker.
if TYPE_CHECKING:
    from cryptography import x509

_LEEWAY = 30.0  # seconds of clock skew tolerated on exp/nbf
_CACHE_ENTRIES = 4096


class TokenInvalid(Exception):
    """The token cannot be trusted; the message says why, without the token."""


class TokenExpired(TokenInvalid):
    """The token was trustworthy and is no longer: its time is up (clients then fetch
    another; routine, unlike a token that never was)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str  # "" for anonymous
    access: tuple[Access, ...]
    expires: float


def _access_from_claims(claims: dict[str, Any]) -> tuple[Access, ...]:
    parsed = []
    for entry in claims.get("access") or []:
        if not isinstance(entry, dict):
            continue
        type_, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if isinstance(type_, str) and isinstance(name, str) and isinstance(actions, list):
            parsed.append(Access(type_, name, frozenset(a for a in actions if isinstance(a, str))))
    return tuple(parsed)


def _decode(token: str, key: Any, algorithms: list[str], service: str, issuer: str) -> TokenClaims:
    """Verify signature, audience (the service), issuer and time, as registry:2 does."""
    import jwt

    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=service,
            issuer=issuer,
            leeway=_LEEWAY,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired(f"invalid token: {exc}") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"invalid token: {exc}") from exc
    return TokenClaims(str(claims.get("sub") or ""), _access_from_claims(claims), claims["exp"])


class _VerifiedCache:
    """Tokens already verified, so a client's requests cost one signature check."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, TokenClaims] = OrderedDict()

    def get(self, token: str) -> TokenClaims | None:
        claims = self._items.get(token)
        if claims is not None and claims.expires + _LEEWAY < time.time():
            del self._items[token]
            return None
        return claims

    def put(self, token: str, claims: TokenClaims) -> None:
        self._items[token] = claims
        if len(self._items) > _CACHE_ENTRIES:
            self._items.popitem(last=False)


class BuiltinTokens:
    """Entrepot's own tokens (HS256). Every worker shares ``secret``."""

    def __init__(self, secret: bytes, issuer: str, service: str, lifetime: float) -> None:
        self.secret = secret
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime
        self._cache = _VerifiedCache()
        importlib.import_module("jwt")  # now, not in the first request that needs it

    def issue(self, subject: str, access: list[Access]) -> tuple[str, float, float]:
        """A signed token; returns (token, issued_at, expires_in)."""
        import jwt

        now = time.time()
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now) - 1,
            "exp": int(now + self.lifetime),
            "jti": secrets.token_hex(12),
            "access": [a.claim() for a in access],
        }
        return jwt.encode(claims, self.secret, algorithm="HS256"), now, self.lifetime

    def verify(self, token: str) -> TokenClaims:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        verified = _decode(token, self.secret, ["HS256"], self.service, self.issuer)
        self._cache.put(token, verified)
        return verified


def libtrust_key_id(public_key_der: bytes) -> str:
    """The ``kid`` registry:2 computes: SHA-256 of the DER public key, first 240 bits,
    base32 without padding, in 12 groups of 4 joined by ':'."""
    digest = hashlib.sha256(public_key_der).digest()[:30]
    text = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, 48, 4))


class ExternalTokens:
    """Tokens of an external token server, verified like registry:2's ``auth.token``."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"]

    def __init__(self, rootcertbundle: Path, issuer: str, service: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        importlib.import_module("jwt")  # now, not in the first request that needs it
        self.issuer = issuer
        self.service = service
        pem = rootcertbundle.read_bytes()
        self.roots: list[x509.Certificate] = x509.load_pem_x509_certificates(pem)
        if not self.roots:
            raise ValueError(f"no certificates in {rootcertbundle}")
        self._by_kid = {
            libtrust_key_id(
                cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            ): cert
            for cert in self.roots
        }
        self._cache = _VerifiedCache()

    def _signing_key(self, header: dict[str, Any]) -> Any:
        from cryptography import x509

        chain = header.get("x5c")
        if isinstance(chain, list) and chain:
            try:
                leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
            except ValueError as exc:
                raise TokenInvalid("invalid x5c certificate") from exc
            for root in self.roots:
                if leaf == root:
                    return leaf.public_key()
                try:
                    leaf.verify_directly_issued_by(root)
                except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure: try next
                    continue
                return leaf.public_key()
            raise TokenInvalid("token certificate is not signed by a trusted root")
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._by_kid:
            return self._by_kid[kid].public_key()
        raise TokenInvalid("token names no trusted signing key (x5c or kid)")

    def verify(self, token: str) -> TokenClaims:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        import jwt

        try:
            key = self._signing_key(jwt.get_unverified_header(token))
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from exc
        verified = _decode(token, key, self.ALGORITHMS, self.service, self.issuer)
        self._cache.put(token, verified)
        return verified
