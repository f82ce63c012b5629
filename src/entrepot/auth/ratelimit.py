"""Failed sign-ins are limited per key (the caller uses user and client address), so
passwords cannot be guessed fast."""

from __future__ import annotations

import time
from collections import deque


class FailedLoginLimiter:
    def __init__(self, max_failures: int = 10, window: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] < now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def _wait(self, times: deque[float], now: float) -> int:
        return max(1, int(times[0] + self.window - now) + 1)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.max_failures:
            return None
        return self._wait(times, now)

    def failed(self, client: str) -> int | None:
        """Count a failure. When it starts a lock-out, the seconds ``client`` is refused
        for (once per lock-out, for its log line); else None."""
        now = time.monotonic()
        self._recent(client, now)
        times = self._failures.setdefault(client, deque())
        times.append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))
        # (Concurrent checks may count past the limit: only reaching it starts a lock-out.)
        return self._wait(times, now) if len(times) == self.max_failures else None
