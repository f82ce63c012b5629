"""An upstream's pull budget, as its responses report it.

Docker Hub sends ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600``
(pulls allowed and left in a window of ``w`` seconds) on manifest responses, HEAD ones
included, which do not count as pulls. When the budget runs low the cache stops spending
pulls on tags it holds (see ``CachedRepository._revalidate``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping

__all__ = ["DEFAULT_RESERVE_FRACTION", "RateBudget", "parse_ratelimit"]

# Without proxies[].ratelimitreserve, the budget is low at 10% of the upstream's limit.
DEFAULT_RESERVE_FRACTION = 0.1
_FIGURE = re.compile(r"^\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?")


def parse_ratelimit(value: str | None) -> tuple[int, int | None] | None:
    """``"76;w=21600"`` -> (76, 21600); None when absent or not a figure."""
    if not value:
        return None
    match = _FIGURE.match(value)
    if match is None:
        return None
    window = match.group(2)
    return int(match.group(1)), int(window) if window else None


class RateBudget:
    """What one upstream last said about its budget. ``reserve``: low at or below this
    many pulls left (None: 10% of the upstream's ``ratelimit-limit``). Knowledge older
    than the upstream's window is forgotten (the window has restarted since)."""

    def __init__(
        self, reserve: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reserve = reserve
        self.remaining: int | None = None
        self.limit: int | None = None
        self._clock = clock
        self._expires = math.inf

    def observe(self, headers: Mapping[str, str]) -> bool:
        """Read a response's headers; whether they carried a budget."""
        remaining = parse_ratelimit(headers.get("ratelimit-remaining"))
        if remaining is None:
            return False
        limit = parse_ratelimit(headers.get("ratelimit-limit"))
        self.remaining = remaining[0]
        self.limit = limit[0] if limit else None
        window = remaining[1] or (limit[1] if limit else None)
        self._expires = self._clock() + window if window else math.inf
        return True

    @property
    def low(self) -> bool:
        if self.remaining is None or self._clock() > self._expires:
            return False
        if self.reserve is not None:
            return self.remaining <= self.reserve
        if self.limit is None:
            return self.remaining == 0
        return self.remaining <= math.ceil(self.limit * DEFAULT_RESERVE_FRACTION)
