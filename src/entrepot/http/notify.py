"""registry:2's notifications: each endpoint gets every event in an envelope of its own,
POSTed from a background task, so a request only appends to a queue and never waits.

As in registry:2 (``notifications/endpoint.go``, go-events' retrying sink and breaker):
events go out one at a time, in order; a failed POST (an error, or a status outside
2xx-3xx) is retried at once until ``threshold`` failures in a row, then once every
``backoff`` until one succeeds; an event filtered by ``ignore`` is never queued. Unlike
registry:2's, the queue is bounded (distribution #2422): when ``queuesize`` events are
waiting, new ones are dropped and counted. Queues live in memory, per worker process:
what is pending when the process stops is lost, as in registry:2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:  # aiohttp is imported only when endpoints are configured (a large import)
    import aiohttp

__all__ = [
    "EVENTS_MEDIA_TYPE",
    "Endpoint",
    "EndpointSettings",
    "EndpointStats",
    "NotificationMetrics",
    "Notifier",
    "http_sender",
]

log = logging.getLogger("entrepot.notifications")

# registry:2 v2.x's envelope media type (distribution v3 moved to v2+json).
EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"

Event = dict[str, Any]
# POSTs one envelope, returns the response status; raises on a transport error.
Sender = Callable[[bytes], Awaitable[int]]


@dataclass(frozen=True)
class EndpointSettings:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 1.0
    threshold: int = 10
    backoff: float = 1.0
    queue_size: int = 10_000
    ignored_media_types: frozenset[str] = frozenset()
    ignored_actions: frozenset[str] = frozenset()


@dataclass
class EndpointStats:
    """registry:2's endpoint metrics (events, successes, failures, errors, statuses), and
    the events dropped because the queue was full."""

    events: int = 0
    successes: int = 0
    failures: int = 0
    errors: int = 0
    dropped: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class NotificationMetrics:
    """registry:2's notification metrics (``registry_notifications_events_total`` by type,
    ``registry_notifications_status_total`` by code, ``registry_notifications_pending``)
    and Entrepot's ``entrepot_notifications_dropped_total``, per endpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "registry_notifications_events",
            "The number of total events",
            ["type", "endpoint"],
            registry=registry,
        )
        self.status = Counter(
            "registry_notifications_status",
            "The number of status code",
            ["code", "endpoint"],
            registry=registry,
        )
        self.pending = Gauge(
            "registry_notifications_pending",
            "The gauge of pending events in queue",
            ["endpoint"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.dropped = Counter(
            "entrepot_notifications_dropped",
            "Notification events dropped because the endpoint's queue was full",
            ["endpoint"],
            registry=registry,
        )


def envelope(event: Event) -> bytes:
    """One event in registry:2's envelope, indented as registry:2 indents it."""
    return json.dumps({"events": [event]}, indent=3).encode()


class Endpoint:
    """One endpoint's bounded queue and the task that delivers it."""

    def __init__(
        self,
        settings: EndpointSettings,
        send: Sender,
        *,
        metrics: NotificationMetrics | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.stats = EndpointStats()
        self._send = send
        self._metrics = metrics
        self._queue: asyncio.Queue[Event] = asyncio.Queue(settings.queue_size)
        self._clock = clock
        self._sleep = sleep
        self._failures = 0  # in a row
        self._last_failure = 0.0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def offer(self, event: Event) -> None:
        """Queue ``event`` unless this endpoint ignores it; never blocks."""
        settings = self.settings
        if event["action"] in settings.ignored_actions:
            return
        if event["target"].get("mediaType") in settings.ignored_media_types:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self._metrics is not None:
                self._metrics.dropped.labels(settings.name).inc()
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning(
                    "notification endpoint %s (%s): %d events waiting, %d dropped so far; "
                    "is the endpoint down or slow?",
                    settings.name,
                    settings.url,
                    self.pending,
                    self.stats.dropped,
                )
            return
        self.stats.events += 1
        self._count("Events")
        if self._metrics is not None:
            self._metrics.pending.labels(settings.name).inc()

    async def run(self) -> None:
        """Deliver queued events, one at a time, until cancelled."""
        while True:
            event = await self._queue.get()
            try:
                await self.deliver(envelope(event))
            finally:
                self._queue.task_done()
                if self._metrics is not None:
                    self._metrics.pending.labels(self.settings.name).dec()

    async def deliver(self, body: bytes) -> None:
        """POST ``body`` until the endpoint accepts it, backing off as registry:2 does."""
        settings = self.settings
        while True:
            if self._failures >= settings.threshold:
                wait = self._last_failure + settings.backoff - self._now()
                if wait > 0:
                    await self._sleep(wait)
            problem = await self._attempt(body)
            if problem is None:
                if self._failures >= settings.threshold:
                    log.info("notification endpoint %s delivers again", settings.name)
                self._failures = 0
                return
            self._failures += 1
            self._last_failure = self._now()
            if self._failures == 1 or self._failures == settings.threshold:
                backing = ", backing off" if self._failures == settings.threshold else ""
                log.warning(
                    "notification endpoint %s (%s): %s; retrying%s",
                    settings.name,
                    settings.url,
                    problem,
                    backing,
                )

    async def _attempt(self, body: bytes) -> str | None:
        """One POST; None if accepted, else what went wrong."""
        import aiohttp  # at module level it would load for servers that never notify

        stats = self.stats
        try:
            status = await self._send(body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stats.errors += 1
            self._count("Errors")
            return f"{type(exc).__name__}: {exc}".rstrip(": ")
        stats.statuses[status] = stats.statuses.get(status, 0) + 1
        if self._metrics is not None:
            self._metrics.status.labels(_status_text(status), self.settings.name).inc()
        if 200 <= status < 400:
            stats.successes += 1
            self._count("Successes")
            return None
        stats.failures += 1
        self._count("Failures")
        return f"answered {status}"

    def _count(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.events.labels(kind, self.settings.name).inc()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()


def _status_text(code: int) -> str:
    """Go's "202 Accepted", as registry:2 labels statuses."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def http_sender(session: aiohttp.ClientSession, settings: EndpointSettings) -> Sender:
    """POSTs an envelope to the endpoint with its headers and timeout (redirects followed,
    as Go's client follows them)."""
    import aiohttp

    headers = [("Content-Type", EVENTS_MEDIA_TYPE), *settings.headers]
    timeout = aiohttp.ClientTimeout(total=settings.timeout)

    async def send(body: bytes) -> int:
        async with session.post(settings.url, data=body, headers=headers, timeout=timeout) as r:
            await r.read()
            return r.status

    return send


class Notifier:
    """Every enabled endpoint; ``publish`` hands an event to each."""

    def __init__(
        self,
        settings: Iterable[EndpointSettings],
        *,
        source: dict[str, str],
        include_references: bool = False,
        metrics: NotificationMetrics | None = None,
    ) -> None:
        self.settings = tuple(settings)
        self.source = source
        self.include_references = include_references
        self.metrics = metrics
        self.endpoints: list[Endpoint] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def publish(self, event: Event) -> None:
        for endpoint in self.endpoints:
            endpoint.offer(event)

    async def start(self) -> None:
        """Create the endpoints' queues and start delivering (in the serving loop)."""
        import aiohttp

        self._session = aiohttp.ClientSession()
        for settings in self.settings:
            send = http_sender(self._session, settings)
            endpoint = Endpoint(settings, send, metrics=self.metrics)
            self.endpoints.append(endpoint)
            self._tasks.append(asyncio.create_task(endpoint.run()))
            log.info(
                "notification endpoint %s: %s, timeout %gs, threshold %d, backoff %gs",
                settings.name,
                settings.url,
                settings.timeout,
                settings.threshold,
                settings.backoff,
            )

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.endpoints.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
