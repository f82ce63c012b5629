"""``notifications``: registry:2's webhooks, one entry of ``endpoints`` per receiver.

Zero or negative ``timeout``, ``threshold`` and ``backoff`` mean registry:2's defaults (1s,
10, 1s). ``queuesize`` is Entrepot's own: how many events wait for a slow or unreachable
endpoint before new ones are dropped (and counted); registry:2's queue has no bound.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, absolute_url, as_str, key

__all__ = ["EndpointConfig", "IgnoreConfig", "NotificationsConfig"]

DEFAULT_QUEUE_SIZE = 10_000


def _url(value: Any, key_path: str) -> str:
    text = as_str(value, key_path).strip()
    absolute_url(key_path, text, "https://listener.example.com/events")
    return text


@dataclass(frozen=True)
class IgnoreConfig:
    """``ignore``: events an endpoint is not sent."""

    mediatypes: tuple[str, ...] = key("mediatypes", (), doc="target media types not sent")
    actions: tuple[str, ...] = key("actions", (), doc="actions not sent: push, pull, mount, delete")


@dataclass(frozen=True)
class EndpointConfig:
    """One receiver of event envelopes (``notifications.endpoints[N]``)."""

    name: str = key("name", "", doc="names the endpoint in logs and metrics (required)")
    disabled: bool = key("disabled", False, doc="send nothing to this endpoint")
    url: str = key("url", "", parse=_url, doc="where the events are POSTed (required)")
    headers: dict[str, list[str]] = key(
        "headers",
        factory=dict,
        secret=True,  # often a token: masked by check-config
        doc="added to each request; each value a list",
    )
    timeout_s: float = key("timeout", 1.0, doc="for one request")
    threshold: int = key("threshold", 10, doc="failures in a row before backing off")
    backoff_s: float = key("backoff", 1.0, doc="wait between attempts once backing off")
    ignoredmediatypes: tuple[str, ...] = key(
        "ignoredmediatypes", (), doc="target media types not sent"
    )
    ignore: IgnoreConfig = key("ignore", factory=IgnoreConfig, doc="")
    queuesize: int = key(
        "queuesize",
        DEFAULT_QUEUE_SIZE,
        doc="(Entrepot) events held for a slow or down endpoint; more are dropped and counted",
    )

    def checked(self, at: At) -> EndpointConfig:
        for name in ("name", "url"):
            if not getattr(self, name):
                raise ConfigError(f"config key '{at.key(name)}' is required")
        if self.queuesize < 1:
            raise ConfigError(f"config key '{at.key('queuesize')}' must be at least 1")
        # registry:2's defaults for values that are absent, zero or negative.
        return replace(
            self,
            timeout_s=self.timeout_s or 1.0,
            threshold=self.threshold if self.threshold > 0 else 10,
            backoff_s=self.backoff_s or 1.0,
        )

    @property
    def ignored_media_types(self) -> frozenset[str]:
        return frozenset(self.ignoredmediatypes) | frozenset(self.ignore.mediatypes)


@dataclass(frozen=True)
class NotificationsConfig:
    """``notifications``."""

    includereferences: bool = key(
        "events.includereferences", False, doc="manifest events list the manifest's references"
    )
    endpoints: tuple[EndpointConfig, ...] = key(
        "endpoints", (), doc="webhooks sent registry:2's event envelopes"
    )

    def checked(self, at: At) -> NotificationsConfig:
        seen: set[str] = set()
        for i, endpoint in enumerate(self.endpoints):
            if endpoint.name in seen:
                raise ConfigError(
                    f"config key '{at.key(f'endpoints[{i}].name')}': {endpoint.name!r} names "
                    "another endpoint too; give each endpoint its own name"
                )
            seen.add(endpoint.name)
        return self
