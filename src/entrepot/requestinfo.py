"""What one request did, for its access-log line: its id, and what the cache did.

A leaf module (standard library only, below every layer), so that the proxy can say "this
pull was a cache hit" and the log line that the HTTP layer writes can say it too, without
the proxy knowing about HTTP. The holder is one mutable object per request in a context
variable: tasks that copy the context (a streamed response) still reach the same object.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(slots=True)
class RequestInfo:
    request_id: str = "-"
    cache: str = "-"  # hit, revalidated, fill, stale; "-": no upstream content involved
    upstream: str = "-"


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "entrepot_request", default=None
)


# Requests this process began and ended: a scheduled garbage collection rests while its
# worker serves (registry/gcpace.py).
_counts = [0, 0]


def begin(request_id: str) -> tuple[RequestInfo, contextvars.Token[RequestInfo | None]]:
    info = RequestInfo(request_id)
    _counts[0] += 1
    return info, _current.set(info)


def end(token: contextvars.Token[RequestInfo | None]) -> None:
    _counts[1] += 1
    _current.reset(token)


def serving() -> tuple[int, int]:
    """(requests this process began so far, requests in flight now)."""
    begun, ended = _counts
    return begun, begun - ended


def current_request_id() -> str:
    info = _current.get()
    return info.request_id if info is not None else "-"


# What the cache did, least to most telling: a request that both revalidated and filled
# is logged as a fill.
_OUTCOMES = ("-", "hit", "revalidated", "fill", "stale")


def note_cache(outcome: str, upstream: str) -> None:
    """Record what the cache did for this request (hit, revalidated, fill or stale)."""
    info = _current.get()
    if info is not None and _OUTCOMES.index(outcome) > _OUTCOMES.index(info.cache):
        info.cache = outcome
        info.upstream = upstream
