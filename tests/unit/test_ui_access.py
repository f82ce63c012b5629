"""The web UI's view of the access rules and its session cookies."""

from __future__ import annotations

import pytest

from entrepot.auth.guard import OpenGuard, TokenGuard
from entrepot.auth.tokens import BuiltinTokens
from entrepot.http.ui.access import SESSION_SECONDS, Sessions, access_for


def test_an_external_token_server_leaves_the_ui_nothing_to_show() -> None:
    # auth.token: Entrepot knows neither the users nor the rules of the token server.
    tokens = BuiltinTokens(b"k" * 32, "issuer", "service", 300)
    access = access_for(TokenGuard(tokens, "https://auth.example.test/token", "service"), None)
    assert not access.sign_in
    assert not access.may(None, "library/app", "pull")
    assert not access.may("alice", "library/app", "pull")


def test_no_auth_lets_everyone_do_everything() -> None:
    access = access_for(OpenGuard(), None)
    assert not access.sign_in
    assert access.may(None, "any/repo", "delete")


@pytest.mark.parametrize("user", ["alice", "名前", "a.b.c"])
def test_a_session_names_its_user_until_it_expires(user: str) -> None:
    sessions = Sessions(b"key")
    cookie = sessions.issue(user, now=1000.0)
    assert sessions.user(cookie, now=1000.0 + SESSION_SECONDS - 1) == user
    assert sessions.user(cookie, now=1000.0 + SESSION_SECONDS + 1) is None


def test_forged_sessions_and_form_tokens_are_refused() -> None:
    sessions = Sessions(b"key")
    cookie = sessions.issue("alice", now=1000.0)
    encoded, expiry, signature = cookie.split(".")
    assert sessions.user(f"{encoded}.{int(expiry) + 1}.{signature}", now=1000.0) is None
    assert Sessions(b"other key").user(cookie, now=1000.0) is None
    assert sessions.user("garbage", now=1000.0) is None
    token = sessions.form_token("alice")
    assert sessions.check_form_token("alice", token)
    assert not sessions.check_form_token("bob", token)
    assert not sessions.check_form_token(None, token)
