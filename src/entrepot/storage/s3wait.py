"""How long the S3 driver waits for a server that accepted the connection but does not
answer (stopped, overloaded, a half-dead load balancer).

obstore's own bound (its client's ``timeout``) covers a whole request, body included, so
it must stay long enough for a multi-GB blob streamed to a slow client; alone it held
requests for minutes. Here the driver bounds each wait instead: for the answer of a call
(its headers, or a small object's whole body) and between the pieces of a streamed body,
never the whole stream. A wait cut short raises ``NoAnswer``, an ``OSError`` the driver
turns into its usual StorageError naming bucket and key (UNAVAILABLE, 503, for clients).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

__all__ = ["ANSWER_TIMEOUT", "NoAnswer", "answered", "each_answered"]

# As long as obstore's retries may take (retry_timeout, see S3Driver._store_options): a
# refused or failing server still gets its retries, a silent one no more than this.
ANSWER_TIMEOUT = 30.0

T = TypeVar("T")


class NoAnswer(TimeoutError):
    """The server did not answer in time (an OSError, as obstore's I/O failures)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no answer from the S3 server in {seconds:g} s although it accepted the "
            "connection: check that it runs and is not overloaded"
        )


async def answered(call: Awaitable[T], seconds: float) -> T:
    """``call``'s result, or NoAnswer when it takes more than ``seconds`` (it is
    cancelled, which drops obstore's request)."""
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            return await call
    except TimeoutError as exc:
        if not bound.expired():
            raise
        raise NoAnswer(seconds) from exc


async def each_answered(items: AsyncIterator[T], seconds: float) -> AsyncIterator[T]:
    """``items`` as they come, NoAnswer when one takes more than ``seconds`` to come
    (the whole iteration may take as long as it needs)."""
    while True:
        try:
            item = await answered(anext(items), seconds)
        except StopAsyncIteration:
            return
        yield item
