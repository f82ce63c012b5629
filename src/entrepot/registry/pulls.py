"""When each tag was last pulled, for retention rules (``keep_pulled_within``).

A pull only notes the tag in memory; every ``flush_every`` seconds each worker writes the
tags pulled since, one small object each (``entrepot/tagpulls/<name>/_pulled/<tag>``, holding
the time), so a tag pulled a thousand times a second costs one write a minute per worker.
Outside registry:2's tree; ``_pulled`` cannot be a repository name's component, so nested
repositories never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from entrepot.storage import StorageDriver, StorageError

log = logging.getLogger("entrepot.pulls")

PULLS = "entrepot/tagpulls"
_WRITES_IN_FLIGHT = 16


def pulls_dir(name: str) -> str:
    return f"{PULLS}/{name}/_pulled"


def pull_key(name: str, tag: str) -> str:
    return f"{pulls_dir(name)}/{tag}"


def parse_time(raw: bytes | None) -> float | None:
    """A pull record's time (None: none, or unreadable)."""
    if raw is None:
        return None
    try:
        return float(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


class PullRecorder:
    def __init__(
        self,
        driver: StorageDriver,
        flush_every: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.flush_every = flush_every
        self.clock = clock
        self._pending: dict[tuple[str, str], float] = {}

    def record(self, name: str, tag: str) -> None:
        """A pull of ``name:tag`` now (no storage call)."""
        self._pending[(name, tag)] = self.clock()

    async def flush(self) -> int:
        """Write what was pulled since the last flush; how many tags."""
        pending, self._pending = self._pending, {}
        slots = asyncio.Semaphore(_WRITES_IN_FLIGHT)

        async def write(name: str, tag: str, when: float) -> None:
            async with slots:
                await self.driver.put_content(pull_key(name, tag), repr(when).encode())

        results = await asyncio.gather(
            *(write(name, tag, when) for (name, tag), when in pending.items()),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("could not record %d tag pulls: %s", len(failed), failed[0])
            for failure in failed:
                if not isinstance(failure, StorageError):
                    raise failure
        return len(pending)

    async def run(self) -> None:
        """Flush every ``flush_every`` seconds; a last time when cancelled (shutdown)."""
        try:
            while True:
                await asyncio.sleep(self.flush_every)
                await self.flush()
        finally:
            with contextlib.suppress(StorageError):
                await self.flush()
