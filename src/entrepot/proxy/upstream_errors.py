"""What can go wrong with an upstream, as the cache sees it. Apart from the client
(upstream_client.py, which imports aiohttp) so that a worker serving no upstream does not
load aiohttp at all: every module the cache imports at start only needs these."""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream failure. Messages never contain credentials, tokens or signed URLs."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(f"{upstream}: {message}" if upstream else message)
        self.upstream = upstream
        self.message = message


class UpstreamNotFound(UpstreamError):
    """404: the manifest, blob or repository is unknown upstream."""


class UpstreamUnavailable(UpstreamError):
    """Connection error, timeout, 5xx, broken body, or every url failed."""


class UpstreamOffline(UpstreamUnavailable):
    """The upstream is offline (configured, or after failed connections): nothing was sent."""


class UpstreamRateLimited(UpstreamError):
    """429; ``retry_after`` is the upstream's Retry-After header, if any."""

    def __init__(self, message: str, *, upstream: str = "", retry_after: str | None = None) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after


class UpstreamDenied(UpstreamError):
    """401/403 after authenticating. Docker Hub also answers 401 for unknown repositories."""


class UpstreamInvalid(UpstreamError):
    """A response that breaks the protocol: digest mismatch, bad JSON, missing headers."""
