"""Which repositories an upstream may serve: its ``allow`` and ``deny`` lists.

Patterns are globs on the repository name as the upstream knows it (``library/nginx``
on Docker Hub), matched like the access rules of ``auth.builtin`` (``*`` also matches
'/'). A deny rule wins over an allow rule; without an allow list every name not denied
is allowed. On Docker Hub a pattern without '/' names official images as a plain name
does: ``nginx`` is ``library/nginx`` and ``python*`` is ``library/python*``, while ``*``
stays every name.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from entrepot.oci.errors import ErrorCode, RegistryError

__all__ = ["NameRules"]


def _normalised(pattern: str, docker_hub: bool) -> str:
    if docker_hub and "/" not in pattern and pattern != "*":
        return f"library/{pattern}"
    return pattern


@dataclass(frozen=True)
class NameRules:
    """An upstream's allow and deny lists (empty: no rule of that kind)."""

    host: str = ""
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, host: str, allow: tuple[str, ...], deny: tuple[str, ...], *, docker_hub: bool
    ) -> NameRules:
        return cls(
            host,
            tuple(_normalised(p, docker_hub) for p in allow),
            tuple(_normalised(p, docker_hub) for p in deny),
        )

    def refusal(self, name: str) -> str | None:
        """Why ``name`` (the upstream's name) may not be served from this upstream, or None."""
        denied = next((p for p in self.deny if fnmatch.fnmatchcase(name, p)), None)
        if denied is not None:
            return f"repository {name} matches the deny rule {denied!r} of upstream {self.host}"
        if self.allow and not any(fnmatch.fnmatchcase(name, p) for p in self.allow):
            rules = ", ".join(repr(p) for p in self.allow)
            return f"repository {name} matches no allow rule of upstream {self.host} ({rules})"
        return None

    def check(self, name: str) -> None:
        """Raise DENIED when ``name`` may not be served from this upstream."""
        refusal = self.refusal(name)
        if refusal is not None:
            raise RegistryError(ErrorCode.DENIED, refusal, {"name": name})
