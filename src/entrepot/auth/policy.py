"""Access rules of the built-in token service: who may do what on which repositories."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from entrepot.auth.access import ALL_ACTIONS, Access

ANONYMOUS = "anonymous"  # a client without credentials
AUTHENTICATED = "authenticated"  # any signed-in user


@dataclass(frozen=True)
class AccessRule:
    """``who`` lists user names, ``group:<name>``, ``anonymous`` (everyone, signed in or
    not), ``authenticated`` (any signed-in user) or ``*`` (everyone); ``repositories``
    are glob patterns (``team/*``, ``docker.io/*``, ``*``; ``*`` also matches '/');
    ``actions`` are pull, push, delete or ``*``."""

    who: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: frozenset[str]
    catalog: bool = False  # also grants registry:catalog:* (listing all repositories)

    def applies_to(self, user: str | None, groups: frozenset[str]) -> bool:
        # Rules add up: what anonymous may do, a signed-in user may do too (signing in
        # must never lose a right, e.g. pulling the caches after `docker login`).
        for subject in self.who:
            if subject in ("*", ANONYMOUS):
                return True
            if user is not None and (
                subject in (AUTHENTICATED, user)
                or (subject.startswith("group:") and subject[6:] in groups)
            ):
                return True
        return False


class AccessPolicy:
    def __init__(self, rules: Sequence[AccessRule], groups: Mapping[str, Sequence[str]]) -> None:
        self.rules = tuple(rules)
        self._groups_of: dict[str, set[str]] = {}
        for group, members in groups.items():
            for member in members:
                self._groups_of.setdefault(member, set()).add(group)

    def groups(self, user: str | None) -> frozenset[str]:
        return frozenset(self._groups_of.get(user, ())) if user else frozenset()

    def grant(self, user: str | None, requested: Access) -> Access | None:
        """What of ``requested`` the user may have: the spec's behaviour is to grant the
        allowed subset rather than refuse the whole request. None when nothing."""
        groups = self.groups(user)
        allowed: set[str] = set()
        for rule in self.rules:
            if not rule.applies_to(user, groups):
                continue
            if requested.type == "registry":
                if rule.catalog and requested.name == "catalog":
                    allowed |= requested.actions
                continue
            if requested.type != "repository":
                continue
            if any(fnmatch.fnmatchcase(requested.name, p) for p in rule.repositories):
                allowed |= requested.actions if "*" in rule.actions else rule.actions
        actions = (
            frozenset(requested.actions & allowed)
            if "*" not in requested.actions
            else (frozenset(allowed & ALL_ACTIONS))
        )
        if not actions:
            return None
        return Access(requested.type, requested.name, actions)
