"""Access control building blocks: scopes, rules, htpasswd, tokens, sign-in limits."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time
from pathlib import Path

import bcrypt
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from entrepot.auth.access import CATALOG, covers, parse_scopes, repository
from entrepot.auth.guard import TokenGuard
from entrepot.auth.htpasswd import HtpasswdError, HtpasswdFile, check_password, parse_htpasswd
from entrepot.auth.policy import AccessPolicy, AccessRule
from entrepot.auth.ratelimit import FailedLoginLimiter
from entrepot.auth.tokens import BuiltinTokens, ExternalTokens, TokenInvalid, libtrust_key_id
from entrepot.oci.errors import RegistryError


def test_parse_scopes() -> None:
    parsed = parse_scopes(["repository:team/app:pull,push registry:catalog:*", "bogus"])
    assert parsed == [repository("team/app", "pull", "push"), CATALOG]


def test_covers_needs_every_action() -> None:
    granted = [repository("a", "pull")]
    assert covers(granted, repository("a", "pull"))
    assert not covers(granted, repository("a", "pull", "push"))
    assert not covers(granted, repository("b", "pull"))
    assert covers([repository("a", "*")], repository("a", "delete"))


POLICY = AccessPolicy(
    [
        AccessRule(("anonymous",), ("docker.io/*", "ghcr.io/*"), frozenset({"pull"})),
        AccessRule(("group:team",), ("team/*",), frozenset({"pull", "push"})),
        AccessRule(("authenticated",), ("shared/*",), frozenset({"pull"})),
        AccessRule(("admin",), ("*",), frozenset({"*"}), catalog=True),
    ],
    {"team": ["alice", "bob"]},
)


@pytest.mark.parametrize(
    ("user", "requested", "granted"),
    [
        (None, repository("docker.io/library/nginx", "pull"), {"pull"}),
        (None, repository("docker.io/library/nginx", "pull", "push"), {"pull"}),
        (None, repository("team/app", "pull"), None),
        ("alice", repository("team/app", "pull", "push"), {"pull", "push"}),
        ("alice", repository("team/app", "delete"), None),
        ("alice", repository("other/app", "push"), None),
        ("carol", repository("shared/x", "pull", "push"), {"pull"}),
        ("carol", repository("team/app", "pull"), None),
        (
            "admin",
            repository("anything/at/all", "pull", "push", "delete"),
            {"pull", "push", "delete"},
        ),
        ("admin", CATALOG, {"*"}),
        ("alice", CATALOG, None),
    ],
)
def test_policy_grants_the_allowed_subset(
    user: str | None, requested: object, granted: set[str] | None
) -> None:
    result = POLICY.grant(user, requested)  # type: ignore[arg-type]
    assert (None if result is None else set(result.actions)) == granted


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_htpasswd_file_reads_bcrypt_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{_hash('wonderland')}\n# comment\n")
    users = HtpasswdFile(path)
    assert check_password(users.lookup("alice"), "wonderland")
    assert not check_password(users.lookup("alice"), "wrong")
    assert not check_password(users.lookup("nobody"), "wonderland")
    time.sleep(0.01)
    apache_style = _hash("x").replace("$2b$", "$2y$", 1)
    path.write_text(f"bob:{apache_style}\n")
    assert users.lookup("alice") is None
    assert check_password(users.lookup("bob"), "x")


def test_htpasswd_file_turned_binary_keeps_the_users_read_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "htpasswd"
    hashed = _hash("wonderland")
    path.write_text(f"alice:{hashed}\n")
    users = HtpasswdFile(path)
    time.sleep(0.01)
    path.write_bytes(b"\xff\xfe\x00")
    assert users.lookup("alice") == hashed.encode()
    assert f"{path}: not a text file (byte 0 is not UTF-8)" in caplog.text


def test_htpasswd_refuses_non_bcrypt(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match="bcrypt"):
        parse_htpasswd("alice:{SHA}abcdef\n", "file")


def test_builtin_tokens_round_trip_and_reject_tampering() -> None:
    tokens = BuiltinTokens(b"k" * 32, "entrepot", "svc", 300)
    token, _, expires_in = tokens.issue("alice", [repository("team/app", "pull")])
    assert expires_in == 300
    claims = tokens.verify(token)
    assert claims.subject == "alice"
    assert claims.access == (repository("team/app", "pull"),)
    other = BuiltinTokens(b"x" * 32, "entrepot", "svc", 300)
    with pytest.raises(TokenInvalid):
        other.verify(token)
    wrong_service = BuiltinTokens(b"k" * 32, "entrepot", "other", 300)
    with pytest.raises(TokenInvalid):
        wrong_service.verify(token)


def test_builtin_token_expiry() -> None:
    tokens = BuiltinTokens(b"k" * 32, "entrepot", "svc", -120)
    token, _, _ = tokens.issue("alice", [])
    with pytest.raises(TokenInvalid, match="expired"):
        tokens.verify(token)


@pytest.mark.parametrize(
    ("issuer_key", "lifetime", "level", "why"),
    [
        (b"k" * 32, -120, logging.INFO, "Signature has expired"),  # routine: fetch another
        (b"forged!" * 5, 300, logging.WARNING, "Signature verification failed"),
    ],
    ids=["expired", "signed-with-another-key"],
)
async def test_a_refused_token_is_logged_with_its_client(
    caplog: pytest.LogCaptureFixture, issuer_key: bytes, lifetime: float, level: int, why: str
) -> None:
    # At 3 a.m., "docker push" says "unauthorized": the log says which client and why.
    guard = TokenGuard(BuiltinTokens(b"k" * 32, "entrepot", "svc", 300), None, "svc")
    token, _, _ = BuiltinTokens(issuer_key, "entrepot", "svc", lifetime).issue("alice", [])
    needed = [repository("team/app", "push")]
    with caplog.at_level(logging.INFO, "entrepot.auth"), pytest.raises(RegistryError):
        await guard.check(f"Bearer {token}", "192.0.2.7", needed, "https://r.example")
    [record] = [r for r in caplog.records if r.name == "entrepot.auth"]
    assert record.levelno == level
    assert record.getMessage() == f"token from 192.0.2.7 refused: invalid token: {why}"


def _self_signed(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "bundle.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _external_token(
    key: ec.EllipticCurvePrivateKey, headers: dict[str, object], **claims: object
) -> str:
    now = int(time.time())
    body = {
        "iss": "issuer",
        "aud": "svc",
        "sub": "ci",
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now,
        "access": [{"type": "repository", "name": "app", "actions": ["pull"]}],
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="ES256", headers=headers)


def test_external_tokens_by_x5c_and_kid(tmp_path: Path) -> None:
    key, cert, bundle = _self_signed(tmp_path)
    verifier = ExternalTokens(bundle, "issuer", "svc")
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    by_chain = verifier.verify(_external_token(key, {"x5c": [x5c]}))
    assert by_chain.subject == "ci"
    assert by_chain.access == (repository("app", "pull"),)
    kid = libtrust_key_id(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert verifier.verify(_external_token(key, {"kid": kid})).subject == "ci"


@pytest.mark.parametrize(
    "problem", ["untrusted-key", "wrong-audience", "wrong-issuer", "expired", "no-key-id"]
)
def test_external_tokens_refused(tmp_path: Path, problem: str) -> None:
    key, cert, bundle = _self_signed(tmp_path)
    verifier = ExternalTokens(bundle, "issuer", "svc")
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    if problem == "untrusted-key":
        (tmp_path / "other").mkdir()
        other_key, other_cert, _ = _self_signed(tmp_path / "other")
        other_der = other_cert.public_bytes(serialization.Encoding.DER)
        token = _external_token(other_key, {"x5c": [base64.b64encode(other_der).decode()]})
    elif problem == "wrong-audience":
        token = _external_token(key, {"x5c": x5c}, aud="other")
    elif problem == "wrong-issuer":
        token = _external_token(key, {"x5c": x5c}, iss="mallory")
    elif problem == "expired":
        token = _external_token(key, {"x5c": x5c}, exp=int(time.time()) - 600)
    else:
        token = _external_token(key, {})
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


def test_failed_logins_are_limited_per_client() -> None:
    limiter = FailedLoginLimiter(max_failures=3, window=60)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
    retry = limiter.retry_after("10.0.0.1")
    assert retry is not None and 1 <= retry <= 61
    assert limiter.retry_after("10.0.0.2") is None
