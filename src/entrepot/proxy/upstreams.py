"""An upstream as the cache sees it: the client, the routing facts and the cache policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from entrepot.oci.errors import ErrorCode, RegistryError
from entrepot.proxy.access import NameRules
from entrepot.proxy.hostnames import DOCKER_HUB_ALIASES, host_aliases
from entrepot.proxy.ratelimit import RateBudget
from entrepot.proxy.upstream_errors import (
    UpstreamDenied,
    UpstreamError,
    UpstreamNotFound,
    UpstreamOffline,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

if TYPE_CHECKING:  # the client (aiohttp) is imported only with upstreams (root.py)
    from entrepot.proxy.upstream_client import UpstreamClient


@dataclass(frozen=True)
class CachePolicy:
    tag_ttl: float = 60.0  # a cached tag is served without asking upstream for this long
    negative_ttl: float = 15.0  # an upstream 404 is remembered for this long
    # A cached image not pulled for this long is evicted (registry:2's proxy.ttl); 0: never.
    expire_after: float = 0.0
    # A client of a blob being filled waits up to this long for the verified file (sent
    # from native code, no Python step per chunk) when the fill looks like ending by then.
    fill_wait: float = 2.0


@dataclass
class Upstream:
    host: str
    client: UpstreamClient
    policy: CachePolicy
    mirror: bool = False
    allow_push: bool = False
    # What the upstream last said about its pull budget (fed by the client's responses).
    budget: RateBudget = field(default_factory=RateBudget)
    # Hosts that also route here (registry:2's proxy block: its remoteurl's host).
    other_hosts: tuple[str, ...] = ()
    # Which repositories may be served from here (allow and deny lists).
    names: NameRules = field(default_factory=NameRules)

    @property
    def offline(self) -> bool:
        """Serving cached content only, sending nothing upstream (proxy/health.py)."""
        return self.client.health.offline

    @property
    def is_docker_hub(self) -> bool:
        return self.host in DOCKER_HUB_ALIASES

    @property
    def prefix(self) -> str:
        """The first name component of this upstream's cached repositories. A port's colon
        is not allowed in repository names, so "host:5000" becomes "host_5000"."""
        return self.host.replace(":", "_")

    @property
    def aliases(self) -> tuple[str, ...]:
        return host_aliases(self.host, self.other_hosts)

    def upstream_name(self, name: str) -> str:
        """The repository name upstream: Docker Hub's one-component names gain library/."""
        if self.is_docker_hub and "/" not in name:
            return f"library/{name}"
        return name

    def cache_name(self, upstream_name: str) -> str:
        return f"{self.prefix}/{upstream_name}"


def error_kind(exc: UpstreamError) -> str:
    """A short name for an upstream failure, as metrics label it."""
    kinds = (
        (UpstreamOffline, "offline"),
        (UpstreamNotFound, "not_found"),
        (UpstreamRateLimited, "rate_limited"),
        (UpstreamDenied, "denied"),
        (UpstreamUnavailable, "unavailable"),
    )
    return next((name for cls, name in kinds if isinstance(exc, cls)), "invalid")


def translate(exc: UpstreamError, host: str, missing: ErrorCode, reference: str) -> RegistryError:
    """An upstream failure as the error our client gets."""
    if isinstance(exc, UpstreamOffline):
        # What the spec says of content that is not here, and why it could not be fetched.
        return RegistryError(missing, f"not cached, and {exc.message}", {"reference": reference})
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(missing, f"not found upstream at {host}", {"reference": reference})
    if isinstance(exc, UpstreamRateLimited):
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            f"upstream {host} is rate limiting requests; try again later",
            headers=headers,
        )
    if isinstance(exc, UpstreamDenied):
        return RegistryError(ErrorCode.DENIED, f"upstream {host} refused access: {exc}")
    if isinstance(exc, UpstreamUnavailable):
        return RegistryError(ErrorCode.UNAVAILABLE, f"upstream {host} is unavailable: {exc}")
    return RegistryError(
        ErrorCode.UNAVAILABLE, f"upstream {host} sent an invalid response: {exc}", status=502
    )
