"""Prometheus metrics: registry:2's ``registry_http_*`` (counted by http/front.py),
the cache's (proxy/metrics.py), exposed by prometheus-client.

With several workers each writes its values to ``PROMETHEUS_MULTIPROC_DIR`` (the CLI
makes it) and a scrape, in any process, sums them: one scrape sees the whole server.
"""

from __future__ import annotations

import bisect
import functools
import glob
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "HttpMetrics",
    "Sample",
    "handler_of",
    "mark_dead_workers",
    "metrics_endpoint",
    "samples",
    "scrape_registry",
    "upstream_figures",
    "worker_stopped",
    "workers_registry",
]

Collect = Callable[[], CollectorRegistry]

# registry:2's handler names (its route names), from the path after /v2/.
_HANDLERS = (
    (re.compile(r"^/v2/?$"), "base"),
    (re.compile(r"^/v2/_catalog$"), "catalog"),
    (re.compile(r"^/v2/.+/tags/list$"), "tags"),
    (re.compile(r"^/v2/.+/manifests/[^/]+$"), "manifest"),
    (re.compile(r"^/v2/.+/blobs/uploads/?$"), "blob_upload"),
    (re.compile(r"^/v2/.+/blobs/uploads/[^/]+$"), "blob_upload_chunk"),
    (re.compile(r"^/v2/.+/blobs/[^/]+$"), "blob"),
    (re.compile(r"^/v2/.+/referrers/[^/]+$"), "referrers"),
)


# Label children looked up once: prometheus-client's labels() validates and locks on each
# call. Bounded: methods and codes come from clients, the lookup is only cached for the
# first _MAX_CHILDREN label sets.
_MAX_CHILDREN = 512


class _Children:
    def __init__(self, metric: Any, wrap: Callable[[Any], Any] = lambda child: child) -> None:
        self.metric = metric
        self.wrap = wrap
        self.cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.cache.get(values)
        if child is None:
            child = self.wrap(self.metric.labels(*values))
            if len(self.cache) < _MAX_CHILDREN:
                self.cache[values] = child
        return child


_WRITE_DOUBLE = struct.Struct("d").pack_into


def _place(value: Any) -> int | None:
    """Where ``value`` (a count, a sum, a bucket) is in this worker's prometheus-client
    file, or None with in-memory values (one process: no multiprocess directory)."""
    file = getattr(value, "_file", None)
    key = getattr(value, "_key", None)
    if file is None or key is None or not hasattr(file, "_positions"):
        return None
    file.read_value(key)  # (makes the value's place in the file if it has none yet)
    place: int = file._positions[key]
    return place


def _adder(value: Any) -> Callable[[float], None]:
    """What adds to one value of a metric child (a count, a sum, a bucket).

    prometheus-client takes a lock, asks the OS for the process id (fork check) and looks
    the value's place up in its per-process file on every write: several µs, seven times
    a request. With per-process files (multiprocess mode, what ``entrepot serve`` runs)
    this writes the new double at its known place instead, as prometheus-client does
    (same file, same layout, timestamp left 0.0), so a scrape in any process reads the
    exact value at once. Safe because these values are written only by the event loop's
    thread of the process that built the app (each worker builds its own, after the
    fork); a file prometheus-client replaced (a fork it noticed) is followed.
    """
    place = _place(value)
    if place is None:
        add: Callable[[float], None] = value.inc
        return add  # one process, in-memory values: prometheus-client's own
    pos = place
    file = value._file
    key = value._key

    def add_in_file(amount: float) -> None:
        nonlocal file, pos
        total = value._value + amount
        value._value = total
        current = value._file
        if current is not file:  # prometheus-client reopened its files
            file = current
            pos = file._positions[key]
        _WRITE_DOUBLE(file._m, pos, total)  # (its map: replaced when the file grows)

    return add_in_file


class FastCounter:
    """A counter child whose increments go through ``_adder``. Its methods are the
    adder itself, bound to the amount (no Python frame of their own: they run several
    times a request)."""

    __slots__ = ("inc",)

    def __init__(self, child: Any) -> None:
        self.inc: Callable[[], None] = functools.partial(_adder(child._value), 1.0)


class FastGauge:
    """A gauge child (in-flight requests) whose moves go through ``_adder``."""

    __slots__ = ("dec", "inc")

    def __init__(self, child: Any) -> None:
        add = _adder(child._value)
        self.inc: Callable[[], None] = functools.partial(add, 1.0)
        self.dec: Callable[[], None] = functools.partial(add, -1.0)


class FastHistogram:
    """A histogram child: its sum and the one bucket an observation falls in (buckets
    are stored per bucket, not cumulated, as prometheus-client stores them). In a
    worker's file, both written by ``observe`` itself, as ``_adder``'s do (one Python
    frame: two or three observations a request)."""

    __slots__ = ("_bounds", "_buckets", "_file", "_places", "_sum", "_values")

    def __init__(self, child: Any) -> None:
        self._bounds: list[float] = list(child._upper_bounds)
        self._sum = _adder(child._sum)
        self._buckets = [functools.partial(_adder(bucket), 1.0) for bucket in child._buckets]
        values = [child._sum, *child._buckets]
        places = [_place(value) for value in values]
        files = {id(getattr(value, "_file", None)) for value in values}
        in_file = None not in places and len(files) == 1
        self._values: list[Any] | None = values if in_file else None
        self._file: Any = values[0]._file if in_file else None
        self._places: list[int] = [place or 0 for place in places]

    def observe(self, amount: float) -> None:
        values = self._values
        if values is None:  # in-memory values
            self._sum(amount)
            # The first bucket whose upper bound is >= amount (the last is +Inf).
            self._buckets[bisect.bisect_left(self._bounds, amount)]()
            return
        file = values[0]._file
        if file is not self._file:  # prometheus-client reopened its files (all at once)
            self._file = file
            self._places = [file._positions[value._key] for value in values]
        places = self._places
        view = file._m
        value = values[0]
        total = value._value + amount
        value._value = total
        _WRITE_DOUBLE(view, places[0], total)
        index = bisect.bisect_left(self._bounds, amount) + 1  # (after the sum)
        value = values[index]
        total = value._value + 1.0
        value._value = total
        _WRITE_DOUBLE(view, places[index], total)


# The same patterns (without their "^": matched from the "/v2") in one regex, whose
# alternatives are tried in order: one match per request.
_ONE_HANDLER = re.compile(
    "|".join(f"(?P<{name}>{pattern.pattern[1:]})" for pattern, name in _HANDLERS)
)


def handler_of(path: str) -> str:
    """registry:2's ``handler`` label for a request path (below any http.prefix)."""
    start = path.find("/v2")
    if start >= 0:
        match = _ONE_HANDLER.match(path, start)
        if match is not None and match.lastgroup is not None:
            return match.lastgroup
    return "other"


class RouteMetrics:
    """The ``registry_http_*`` children of one (handler, method): what a request of that
    route counts, found with one look-up."""

    __slots__ = ("_requests", "_requests_of", "duration", "handler", "in_flight", "method")

    def __init__(self, metrics: HttpMetrics, handler: str, method: str) -> None:
        self.handler = handler
        self.method = method
        self.in_flight: FastGauge = metrics.in_flight_of(handler)
        self.duration: FastHistogram = metrics.duration_of(handler, method)
        self._requests_of = metrics.requests_of
        self._requests: dict[int, FastCounter] = {}

    def requests(self, status: int) -> FastCounter:
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests_of(str(status), self.handler, self.method)
            if len(self._requests) < _MAX_CHILDREN:
                self._requests[status] = counter
        return counter


class HttpMetrics:
    """registry:2's ``registry_http_*`` metrics, as http/front.py counts them, and
    its ``registry_storage_action_seconds`` (fed by storage/timed.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "registry_http_requests",
            "Total number of HTTP requests made.",
            ["code", "handler", "method"],
            registry=registry,
        )
        self.duration = Histogram(
            "registry_http_request_duration_seconds",
            "The HTTP request latencies in seconds.",
            ["handler", "method"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "registry_http_in_flight_requests",
            "The in-flight HTTP requests",
            ["handler"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.storage_actions = Histogram(
            "registry_storage_action_seconds",
            "The number of seconds that the storage action takes",
            ["driver", "action"],
            registry=registry,
        )

        self.requests_of = _Children(self.requests, FastCounter)
        self.duration_of = _Children(self.duration, FastHistogram)
        self.in_flight_of = _Children(self.in_flight, FastGauge)
        self._storage_actions_of = _Children(self.storage_actions, FastHistogram)
        self._routes: dict[tuple[str, str], RouteMetrics] = {}

    def route_of(self, handler: str, method: str) -> RouteMetrics:
        """What a request of ``handler`` and ``method`` counts (the method comes from the
        client: only the first _MAX_CHILDREN pairs are kept)."""
        key = (handler, method)
        route = self._routes.get(key)
        if route is None:
            route = RouteMetrics(self, handler, method)
            if len(self._routes) < _MAX_CHILDREN:
                self._routes[key] = route
        return route

    def route_for(self, path: str, method: str) -> RouteMetrics:
        """``route_of`` the request's handler (http/front.py remembers it by path:
        handler_of's regex costs a tenth of a manifest request)."""
        return self.route_of(handler_of(path), method)

    def storage_action(self, driver: str, action: str, seconds: float) -> None:
        self._storage_actions_of(driver, action).observe(seconds)

    def storage_observer(self, driver: str, action: str) -> Callable[[float], None]:
        """``storage_action`` of one (driver, action), its child found once."""
        observe: Callable[[float], None] = self._storage_actions_of(driver, action).observe
        return observe


def mark_dead_workers(path: str) -> None:
    """Drop the live gauges (in-flight requests) of worker processes that are gone, as
    prometheus-client asks; their counters stay, summed in."""
    pids = {
        int(match.group(1))
        for name in glob.glob(os.path.join(path, "gauge_live*_*.db"))
        if (match := re.search(r"_(\d+)\.db$", name))
    }
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's


def worker_stopped(path: str) -> None:
    """This worker is stopping: its live gauges no longer count."""
    multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


def scrape_registry(local: CollectorRegistry, multiproc_dir: str | None) -> Collect:
    """What a scrape reads: with a multiprocess directory, every worker's files (summed);
    else this process's ``local`` registry."""
    if multiproc_dir is None:
        return lambda: local
    return workers_registry(multiproc_dir)


def workers_registry(multiproc_dir: str) -> Collect:
    """Every worker's values, summed, from their files in ``multiproc_dir``."""
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed, multiproc_dir)  # type: ignore[no-untyped-call]

    def collect() -> CollectorRegistry:
        mark_dead_workers(multiproc_dir)
        return summed

    return collect


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition (Prometheus text, or OpenMetrics if asked) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_endpoint(collect: Collect) -> Callable[[Request], Response]:
    def metrics(request: Request) -> Response:
        body, content_type = render(collect(), request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return metrics


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    labels: tuple[tuple[str, str], ...]
    value: float


def samples(registry: CollectorRegistry) -> Iterable[Sample]:
    """Every counter and gauge value (``_created`` timestamps left out), for pages."""
    for family in registry.collect():
        if family.type not in ("counter", "gauge"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            yield Sample(sample.name, tuple(sorted(sample.labels.items())), sample.value)


# What a page shows per upstream: figure name -> (metric, labels it must have).
_FIGURES = {
    "manifest hits": ("entrepot_proxy_hits_total", {"type": "manifest"}),
    "blob hits": ("entrepot_proxy_hits_total", {"type": "blob"}),
    "manifest misses": ("entrepot_proxy_misses_total", {"type": "manifest"}),
    "blob misses": ("entrepot_proxy_misses_total", {"type": "blob"}),
    "blob fills": ("entrepot_proxy_fills_total", {}),
    "bytes fetched": ("entrepot_proxy_fetched_bytes_total", {}),
    "bytes served from cache": ("entrepot_proxy_served_bytes_total", {}),
    "stale serves": ("entrepot_proxy_stale_served_total", {}),
    "revalidations": ("entrepot_proxy_revalidations_total", {}),
    "pulls deferred (low budget)": ("entrepot_proxy_pulls_deferred_total", {}),
    "upstream errors": ("entrepot_proxy_upstream_errors_total", {}),
    "upstream requests": ("entrepot_upstream_requests_total", {}),
    "pull budget left": ("entrepot_upstream_ratelimit_remaining", {}),
    "pull budget": ("entrepot_upstream_ratelimit_limit", {}),
    "offline": ("entrepot_upstream_offline", {}),
}


def upstream_figures(found: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """Per upstream host, its cache figures (summed over other labels), for a page. The
    pull budget figures are there only once the upstream reported one."""
    figures: dict[str, dict[str, float]] = {}
    for sample in found:
        labels = dict(sample.labels)
        host = labels.get("upstream")
        if host is None:
            continue
        for figure, (metric, wanted) in _FIGURES.items():
            if sample.metric == metric and all(labels.get(k) == v for k, v in wanted.items()):
                mine = figures.setdefault(host, {})
                mine[figure] = mine.get(figure, 0.0) + sample.value
    return figures
