"""Whether an upstream is offline, and the health check that brings it back.

An upstream is offline when its configuration says so (``offline: true``: for good), or
automatically after ``offline_after`` requests in a row got no answer at all (refused or
timed-out connections, whatever the URL). While offline the cache serves what it holds
and sends nothing upstream. An automatic offline ends when a cheap ``GET /v2/`` probe,
sent in the background with a growing interval, gets any HTTP answer below 500. Both
transitions are logged with the upstream's name and reported to ``on_change``.

Each worker process keeps its own state (its own failures and its own probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("entrepot.proxy")

MAX_PROBE_INTERVAL = 300.0  # the probe interval doubles up to this many seconds

Probe = Callable[[], Awaitable[str]]  # what answered; raises when nothing did


class UpstreamHealth:
    def __init__(
        self,
        host: str,
        *,
        configured_offline: bool = False,
        offline_after: int = 0,
        probe_interval: float = 5.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.host = host
        self.configured_offline = configured_offline
        self.offline_after = offline_after  # 0: never offline automatically
        self.probe_interval = probe_interval
        self.on_change = on_change or (lambda offline: None)
        self.failures = 0  # requests in a row that got no answer
        self.offline_since: float | None = None  # automatic offline
        self._probe_task: asyncio.Task[None] | None = None
        self.on_change(configured_offline)

    @property
    def offline(self) -> bool:
        return self.configured_offline or self.offline_since is not None

    @property
    def reason(self) -> str | None:
        """Why nothing is sent upstream now, for messages; None when online."""
        if self.configured_offline:
            return f"upstream {self.host} is configured offline: only cached content is served"
        if self.offline_since is not None:
            return (
                f"upstream {self.host} is offline after {self.offline_after} failed "
                "connections in a row: only cached content is served until it answers again"
            )
        return None

    def answered(self) -> None:
        """A request got an HTTP answer (any status)."""
        self.failures = 0

    def unanswered(self, reason: str, probe: Probe) -> None:
        """A request got no answer from any URL; ``probe`` checks the upstream when it went
        offline."""
        self.failures += 1
        if self.offline or not self.offline_after or self.failures < self.offline_after:
            return
        self.offline_since = time.monotonic()
        log.warning(
            "upstream %s is offline after %d failed connections in a row (last: %s): "
            "serving cached content only; checking GET /v2/ in the background",
            self.host,
            self.failures,
            reason,
        )
        self.on_change(True)
        self._probe_task = asyncio.get_running_loop().create_task(self._until_back(probe))

    async def _until_back(self, probe: Probe) -> None:
        interval = self.probe_interval
        while True:
            await asyncio.sleep(interval)
            try:
                answer = await probe()
            except Exception as exc:  # noqa: BLE001 - any failure: still offline
                log.debug("upstream %s: health check failed: %s", self.host, exc)
                interval = min(interval * 2, MAX_PROBE_INTERVAL)
                continue
            break
        since = self.offline_since or time.monotonic()
        self.offline_since = None
        self.failures = 0
        log.warning(
            "upstream %s is back online (%s) after %.0f s offline",
            self.host,
            answer,
            time.monotonic() - since,
        )
        self.on_change(False)

    async def aclose(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
