"""What routes to an upstream by name. Kept apart from the upstream client (aiohttp) so that
the CLI can decide a store's repositories before serving without importing it."""

from __future__ import annotations

# Names Docker Hub is known by in image references and containerd's ns parameter.
DOCKER_HUB_ALIASES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
)


def host_aliases(host: str, other_hosts: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What routes to an upstream: its hosts as ns values and as a path's first component
    (where a port's colon becomes "_"), and Docker Hub's other names."""
    hosts = {host, *other_hosts}
    names = hosts | {name.replace(":", "_") for name in hosts}
    if host in DOCKER_HUB_ALIASES:
        names.update(DOCKER_HUB_ALIASES)
    return tuple(sorted(names))
