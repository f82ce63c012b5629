"""What the logs say about sign-ins and refusals, for audits and fail2ban: a failed
sign-in, a lock-out and a refused signed-in user are one WARNING line each on
``entrepot.auth`` (user, client address, reason; never the password), the access log
names the refused user, and the anonymous challenge every pull starts with logs nothing."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.auth_setup import app_client, basic, write_htpasswd
from tests.api.test_auth import BUILTIN, TokenClient

PROXY = "  trustedproxies: [127.0.0.1]\n"


def auth_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "entrepot.auth"]


def auth_config(mode: str, tmp_path: Path) -> str:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    if mode == "htpasswd":
        return f"  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
    return BUILTIN.format(htpasswd=htpasswd)


async def sign_in(
    http: httpx.AsyncClient, how: str, user: str, forwarded_for: str | None
) -> httpx.Response:
    """One sign-in with a wrong password: Basic auth on the API or the web UI, at the
    token endpoint, or through the web UI's form."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    if how == "form":
        form = {"username": user, "password": "guess-42"}
        return await http.post("/ui/login", data=form, headers=headers)
    headers["Authorization"] = basic(user, "guess-42")
    path = {"basic": "/v2/", "token": "/auth/token?service=entrepot", "ui": "/ui/"}[how]
    return await http.get(path, headers=headers)


@pytest.mark.parametrize(
    ("mode", "how", "user", "forwarded_for", "logged"),
    [
        ("htpasswd", "basic", "alice", None, '"alice" from 127.0.0.1: wrong password'),
        ("htpasswd", "basic", "mallory", None, '"mallory" from 127.0.0.1: no such user'),
        ("builtin", "token", "alice", None, '"alice" from 127.0.0.1: wrong password'),
        ("builtin", "token", "mallory", None, '"mallory" from 127.0.0.1: no such user'),
        # Behind a trusted proxy, the address the access log shows: the forwarded one.
        ("builtin", "token", "alice", "203.0.113.9", '"alice" from 203.0.113.9: wrong password'),
        ("builtin", "form", "alice", "203.0.113.9", '"alice" from 203.0.113.9: wrong password'),
        ("htpasswd", "ui", "alice", "203.0.113.9", '"alice" from 203.0.113.9: wrong password'),
        # A name that would end the quotes or start a forged line is escaped.
        (
            "htpasswd",
            "basic",
            'm" from 10.0.0.1\nx',
            None,
            r'"m\" from 10.0.0.1\nx" from 127.0.0.1',
        ),
    ],
    ids=[
        "htpasswd",
        "htpasswd-unknown",
        "token",
        "token-unknown",
        "token-proxied",
        "ui-form-proxied",
        "ui-basic-proxied",
        "hostile-name",
    ],
)
async def test_failed_sign_in_is_one_warning_naming_user_and_address(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    how: str,
    user: str,
    forwarded_for: str | None,
    logged: str,
) -> None:
    caplog.set_level("DEBUG", logger="entrepot.auth")
    extra = PROXY if forwarded_for else ""
    async with app_client(tmp_path, auth_config(mode, tmp_path), http_extra=extra) as http:
        response = await sign_in(http, how, user, forwarded_for)
    assert response.status_code == 401
    ((level, line),) = auth_lines(caplog)
    assert level == logging.WARNING
    assert line.startswith("error authenticating user ")
    assert logged in line
    assert "\n" not in line
    assert "guess-42" not in caplog.text


@pytest.fixture
async def builtin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(tmp_path, auth_config("builtin", tmp_path)) as http:
        yield http


@pytest.mark.parametrize(
    ("user", "method", "path", "logged"),
    [
        # bob is not in the team: nothing of team/app is his.
        ("bob", "POST", "/v2/team/app/blobs/uploads/", "may not pull,push team/app"),
        # Anyone may pull public/*: what was asked against what is allowed.
        ("bob", "POST", "/v2/public/app/blobs/uploads/", "may not push public/app (allowed: pull)"),
        ("alice", "HEAD", "/v2/other/app/manifests/1", "may not pull other/app"),
        ("alice", "GET", "/v2/_catalog", "may not list the catalog"),
    ],
    ids=["push", "push-beside-pull", "head", "catalog"],
)
async def test_refused_user_is_one_warning_and_named_in_the_access_log(
    builtin: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    user: str,
    method: str,
    path: str,
    logged: str,
) -> None:
    caplog.set_level("DEBUG", logger="entrepot.auth")
    caplog.set_level("INFO", logger="entrepot.access")
    # The client's steps: the challenge, a token for the user (sub: the user), the retry.
    refused = await TokenClient(builtin, user).request(method, path)
    assert refused.status_code == 403
    assert auth_lines(caplog) == [
        (logging.WARNING, f'access denied: user "{user}" from 127.0.0.1 {logged}')
    ]
    access = [r.getMessage() for r in caplog.records if r.name == "entrepot.access"]
    assert [line.split(" [")[0] for line in access] == [
        "127.0.0.1 - -",  # the challenge: nobody signed in yet
        "127.0.0.1 - -",  # the token endpoint
        f"127.0.0.1 - {user}",  # the 403
    ]
    assert re.search(rf'"{method} {re.escape(path)} HTTP/1.1" 403 ', access[-1])


async def test_the_anonymous_challenge_and_a_narrow_token_log_nothing(
    builtin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="entrepot.auth")
    anonymous = TokenClient(builtin)
    assert (await builtin.get("/v2/")).status_code == 401
    assert (await anonymous.request("GET", "/v2/team/app/manifests/1")).status_code == 401
    assert (await anonymous.request("POST", "/v2/public/app/blobs/uploads/")).status_code == 401
    # alice's pull token for a repository she may push to: fetch a wider one, no refusal.
    pull_only = await TokenClient(builtin, "alice").token("repository:team/app:pull")
    narrow = await builtin.post(
        "/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {pull_only}"}
    )
    assert narrow.status_code == 401
    assert auth_lines(caplog) == []


async def test_a_lock_out_is_one_warning_however_many_tries_it_refuses(
    builtin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="entrepot.auth")
    statuses = []
    for _ in range(6):  # maxfailures: 3
        response = await builtin.get(
            "/auth/token?service=entrepot", headers={"Authorization": basic("alice", "guess")}
        )
        statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 429, 429, 429]
    lines = [line for _, line in auth_lines(caplog)]
    assert lines[:3] == ['error authenticating user "alice" from 127.0.0.1: wrong password'] * 3
    (locked,) = lines[3:]
    match = re.fullmatch(
        r'too many failed sign-ins for user "alice" from 127.0.0.1: refused for (\d+) s', locked
    )
    assert match is not None and 1 <= int(match[1]) <= 61
    assert {level for level, _ in auth_lines(caplog)} == {logging.WARNING}
