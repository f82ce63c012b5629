"""Metric updates: cache events and upstream requests as Prometheus counts, the pull
budget from ``ratelimit-*`` headers, registry:2's handler names, per-upstream figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from entrepot.http import front
from entrepot.http.metrics import HttpMetrics, handler_of, samples, upstream_figures
from entrepot.proxy.metrics import CacheEvents, ProxyMetrics, RequestCounts
from entrepot.proxy.ratelimit import RateBudget, parse_ratelimit
from entrepot.storage import StorageNotFound
from entrepot.storage.filesystem import FilesystemDriver
from entrepot.storage.timed import TimedDriver

HOST = "docker.io"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_cache_events_count_both_registry2_and_entrepot_metrics(
    registry: CollectorRegistry,
) -> None:
    events = CacheEvents(ProxyMetrics(registry))
    events[("manifest_hit", HOST)] += 1
    events[("manifest_bytes_served", HOST)] += 500
    events[("blob_miss", HOST)] += 1
    events[("blob_fill", HOST)] += 1
    events[("blob_bytes_fetched", HOST)] += 1000
    events[("stale_served", HOST)] += 1
    events[("error_rate_limited", HOST)] += 2
    events[("evicted_blobs", "*")] += 3
    assert events[("manifest_hit", HOST)] == 1  # still the plain per-process Counter
    assert value(registry, "registry_proxy_hits_total", type="manifest") == 1
    assert value(registry, "registry_proxy_requests_total", type="manifest") == 1
    assert value(registry, "registry_proxy_misses_total", type="blob") == 1
    assert value(registry, "registry_proxy_requests_total", type="blob") == 1
    assert value(registry, "registry_proxy_pulled_bytes_total", type="blob") == 1000
    assert value(registry, "registry_proxy_pushed_bytes_total", type="blob") == 1000
    assert value(registry, "registry_proxy_pushed_bytes_total", type="manifest") == 500
    assert value(registry, "entrepot_proxy_hits_total", upstream=HOST, type="manifest") == 1
    assert value(registry, "entrepot_proxy_fills_total", upstream=HOST) == 1
    assert value(registry, "entrepot_proxy_served_bytes_total", upstream=HOST, type="manifest") == (
        500
    )
    assert value(registry, "entrepot_proxy_stale_served_total", upstream=HOST) == 1
    errors = value(
        registry, "entrepot_proxy_upstream_errors_total", upstream=HOST, error="rate_limited"
    )
    assert errors == 2
    assert value(registry, "entrepot_proxy_evicted_blobs_total") == 3


def test_setting_a_count_lower_exports_nothing(registry: CollectorRegistry) -> None:
    events = CacheEvents(ProxyMetrics(registry))
    events[("stale_served", HOST)] += 2
    events.clear()  # a reset of the local view: Prometheus counters never go down
    events[("stale_served", HOST)] += 1
    assert value(registry, "entrepot_proxy_stale_served_total", upstream=HOST) == 3


def test_upstream_requests_and_the_budget_they_report(registry: CollectorRegistry) -> None:
    budget = RateBudget()
    requests = RequestCounts(HOST, ProxyMetrics(registry), budget)
    requests["HEAD manifest"] += 1
    requests["token"] += 1
    requests.saw({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"})
    assert value(registry, "entrepot_upstream_requests_total", upstream=HOST, request="token") == 1
    assert value(registry, "entrepot_upstream_ratelimit_remaining", upstream=HOST) == 76
    assert value(registry, "entrepot_upstream_ratelimit_limit", upstream=HOST) == 100
    assert not budget.low
    requests.saw({"content-type": "application/json"})  # no figures: the last ones stay
    assert value(registry, "entrepot_upstream_ratelimit_remaining", upstream=HOST) == 76


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("76;w=21600", (76, 21600)),
        ("100", (100, None)),
        (" 0 ; w = 60", (0, 60)),
        ("", None),
        (None, None),
        ("many", None),
    ],
)
def test_parse_ratelimit(header: str | None, parsed: tuple[int, int | None] | None) -> None:
    assert parse_ratelimit(header) == parsed


def test_the_budget_is_low_under_its_reserve_and_forgotten_after_its_window() -> None:
    now = [0.0]
    budget = RateBudget(clock=lambda: now[0])
    assert not budget.low  # nothing known
    budget.observe({"ratelimit-limit": "100;w=60", "ratelimit-remaining": "11;w=60"})
    assert not budget.low
    budget.observe({"ratelimit-limit": "100;w=60", "ratelimit-remaining": "10;w=60"})
    assert budget.low  # 10% of the limit
    now[0] = 61.0
    assert not budget.low  # the window has restarted since
    reserved = RateBudget(reserve=30, clock=lambda: now[0])
    reserved.observe({"ratelimit-remaining": "30"})
    assert reserved.low
    no_limit = RateBudget()
    no_limit.observe({"ratelimit-remaining": "1"})
    assert not no_limit.low
    no_limit.observe({"ratelimit-remaining": "0"})
    assert no_limit.low


@pytest.mark.parametrize(
    ("path", "handler"),
    [
        ("/v2/", "base"),
        ("/v2", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/library/nginx/tags/list", "tags"),
        ("/v2/library/nginx/manifests/latest", "manifest"),
        ("/v2/a/b/c/blobs/sha256:abc", "blob"),
        ("/v2/a/blobs/uploads/", "blob_upload"),
        ("/v2/a/blobs/uploads/0f3c", "blob_upload_chunk"),
        ("/v2/a/referrers/sha256:abc", "referrers"),
        ("/prefix/v2/a/manifests/1", "manifest"),
        ("/metrics", "other"),
        ("/ui/r/a", "other"),
    ],
)
def test_registry2_handler_names(path: str, handler: str, registry: CollectorRegistry) -> None:
    assert handler_of(path) == handler
    metrics = HttpMetrics(registry)
    for _ in range(2):  # found, then remembered
        route = metrics.route_for(path, "GET")
        assert (route.handler, route.method) == (handler, "GET")


def test_remembered_request_paths_are_bounded(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "KNOWN_PATHS", 10)
    door = front.FrontDoor(Starlette(), metrics=HttpMetrics(registry))
    for n in range(25):  # an upload's every request has a new path
        counted, _ = door._learn((f"/v2/a/blobs/uploads/{n}", "PATCH"))
        assert counted is not None and counted.handler == "blob_upload_chunk"
    assert len(door._known) == 10


def test_upstream_figures_for_a_page(registry: CollectorRegistry) -> None:
    metrics = ProxyMetrics(registry)
    metrics.upstream(HOST)
    events = CacheEvents(metrics)
    events[("blob_hit", HOST)] += 2
    events[("blob_bytes_served", HOST)] += 300
    events[("manifest_bytes_fetched", "ghcr.io")] += 40
    events[("blob_bytes_fetched", "ghcr.io")] += 60
    figures = upstream_figures(samples(registry))
    assert figures[HOST]["blob hits"] == 2
    assert figures[HOST]["manifest hits"] == 0
    assert figures[HOST]["bytes served from cache"] == 300
    assert "pull budget left" not in figures[HOST]
    assert figures["ghcr.io"]["bytes fetched"] == 100


@pytest.mark.parametrize("found_once", [False, True], ids=["by-name", "found-once"])
async def test_storage_actions_are_timed_with_registry2_names(
    registry: CollectorRegistry, tmp_path: Path, found_once: bool
) -> None:
    metrics = HttpMetrics(registry)
    observer_for = metrics.storage_observer if found_once else None
    driver = TimedDriver(FilesystemDriver(tmp_path), metrics.storage_action, observer_for)
    await driver.put_content("a/b", b"hello")
    assert await driver.get_content("a/b") == b"hello"
    assert b"".join([c async for c in driver.read("a/b", offset=1)]) == b"ello"
    assert (await driver.stat("a/b")).size == 5
    with pytest.raises(StorageNotFound):  # errors pass through, timed too
        await driver.get_content("missing")
    await driver.close()

    def count(action: str) -> float | None:
        name = "registry_storage_action_seconds_count"
        return value(registry, name, driver="filesystem", action=action)

    assert count("PutContent") == 1
    assert count("GetContent") == 2
    assert count("Reader") == 1
    assert count("Stat") == 1


def test_timed_driver_forwards_every_driver_method() -> None:
    # A method the wrapper does not forward silently falls back to the contract's
    # default: no presigned redirects on S3, a slow catalog walk on a filesystem.
    from entrepot.storage.driver import StorageDriver
    from entrepot.storage.timed import TimedDriver

    methods = [
        name
        for name, value in vars(StorageDriver).items()
        if callable(value) and not name.startswith("_")
    ]
    assert {"walk", "redirect_url", "local_path", "close"} <= set(methods)
    for name in methods:
        assert getattr(TimedDriver, name) is not getattr(StorageDriver, name), name


def test_request_metrics_written_to_worker_files_read_exactly_by_a_scrape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As `entrepot serve` runs: each worker writes its values to files of its own in
    # PROMETHEUS_MULTIPROC_DIR, which HttpMetrics writes without prometheus-client's
    # per-call lock; a scrape (in any process) must read every value exactly, at once.
    from prometheus_client import values
    from prometheus_client.multiprocess import MultiProcessCollector

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
    metrics = HttpMetrics(CollectorRegistry())
    scraped = CollectorRegistry()
    MultiProcessCollector(scraped, str(tmp_path))  # type: ignore[no-untyped-call]

    def scrape(name: str, **labels: str) -> float | None:
        return value(scraped, name, **labels)

    in_flight = metrics.in_flight_of("manifest")
    in_flight.inc()
    in_flight.inc()
    assert scrape("registry_http_in_flight_requests", handler="manifest") == 2
    in_flight.dec()
    assert scrape("registry_http_in_flight_requests", handler="manifest") == 1
    for seconds in (0.001, 0.004, 0.2, 20.0):
        metrics.duration_of("manifest", "GET").observe(seconds)
        metrics.requests_of("200", "manifest", "GET").inc()
    metrics.storage_action("filesystem", "Stat", 0.003)
    # prometheus-client's own way on the same child goes on from the same value.
    metrics.requests.labels("200", "manifest", "GET").inc()

    duration = "registry_http_request_duration_seconds"
    get = {"handler": "manifest", "method": "GET"}
    assert scrape("registry_http_requests_total", code="200", **get) == 5
    assert scrape(f"{duration}_count", **get) == 4
    assert scrape(f"{duration}_sum", **get) == pytest.approx(20.205)
    assert scrape(f"{duration}_bucket", le="0.005", **get) == 2  # 0.001 and 0.004
    assert scrape(f"{duration}_bucket", le="0.25", **get) == 3
    assert scrape(f"{duration}_bucket", le="10.0", **get) == 3
    assert scrape(f"{duration}_bucket", le="+Inf", **get) == 4
    stat = {"driver": "filesystem", "action": "Stat"}
    assert scrape("registry_storage_action_seconds_count", **stat) == 1
    assert scrape("registry_storage_action_seconds_bucket", le="0.005", **stat) == 1
    assert scrape("registry_storage_action_seconds_sum", **stat) == pytest.approx(0.003)


def test_worker_file_values_follow_files_prometheus_client_reopened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # prometheus-client reopens every file (under the new process id) when one of its own
    # calls finds the process forked: the values written here must go to the new files.
    from prometheus_client import values
    from prometheus_client.multiprocess import MultiProcessCollector

    pid = [1]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid[0]))  # type: ignore[no-untyped-call]
    metrics = HttpMetrics(CollectorRegistry())
    scraped = CollectorRegistry()
    MultiProcessCollector(scraped, str(tmp_path))  # type: ignore[no-untyped-call]
    duration = metrics.duration_of("blob", "HEAD")
    observe_stat = metrics.storage_observer("filesystem", "Stat")
    requests = metrics.requests_of("200", "blob", "HEAD")
    for _ in range(2):
        duration.observe(0.001)
        observe_stat(0.002)
        requests.inc()
    pid[0] = 2  # "forked": the next call of prometheus-client's own reopens its files
    metrics.requests.labels("200", "blob", "HEAD").inc()
    assert {p.name for p in tmp_path.iterdir()} >= {"counter_2.db", "histogram_2.db"}
    duration.observe(0.001)
    observe_stat(0.002)
    requests.inc()

    get = {"handler": "blob", "method": "HEAD"}
    name = "registry_http_request_duration_seconds"
    assert value(scraped, f"{name}_count", **get) == 3  # both files, summed
    assert value(scraped, f"{name}_bucket", le="0.005", **get) == 3
    assert value(scraped, "registry_http_requests_total", code="200", **get) == 4
    stat = {"driver": "filesystem", "action": "Stat"}
    assert value(scraped, "registry_storage_action_seconds_count", **stat) == 3
