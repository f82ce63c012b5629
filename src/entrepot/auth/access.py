"""Docker token-spec scopes: ``repository:<name>:<action>[,<action>]`` and
``registry:catalog:*``, and the access a request needs."""

from __future__ import annotations

from dataclasses import dataclass

PULL = "pull"
PUSH = "push"
DELETE = "delete"
ALL_ACTIONS = frozenset({PULL, PUSH, DELETE, "*"})


@dataclass(frozen=True, slots=True)
class Access:
    type: str  # "repository" or "registry"
    name: str  # repository name, or "catalog"
    actions: frozenset[str]

    @property
    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        """This access as a JWT ``access`` claim entry."""
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


CATALOG = Access("registry", "catalog", frozenset({"*"}))


def repository(name: str, *actions: str) -> Access:
    return Access("repository", name, frozenset(actions))


def parse_scopes(values: list[str]) -> list[Access]:
    """Parse ``scope`` query values; several may be given, each maybe space-separated.
    Malformed entries are skipped, as the token spec's servers do."""
    parsed: list[Access] = []
    for value in values:
        for item in value.split():
            # The name may itself contain ':' only in a registry host with a port, which
            # repository names cannot have, so split from both ends.
            type_, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            if not type_ or not name or not actions:
                continue
            parsed.append(Access(type_, name, frozenset(a for a in actions.split(",") if a)))
    return parsed


def covers(granted: list[Access], needed: Access) -> bool:
    """Whether the granted accesses include every action ``needed`` asks for."""
    have: set[str] = set()
    for access in granted:
        if access.type == needed.type and access.name == needed.name:
            have |= access.actions
    return "*" in have or needed.actions <= have


def challenge_scope(needed: list[Access]) -> str:
    return " ".join(access.scope for access in needed)
