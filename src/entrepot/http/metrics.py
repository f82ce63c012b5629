"""/metrics in the Prometheus text format: cache events and upstream requests, so serving
stale, fills and upstream trouble can be watched and alerted on. Counts are per process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from entrepot.http.context import context


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    labels: tuple[tuple[str, str], ...]
    value: float


HELP = {
    "entrepot_proxy_events_total": (
        "Pull-through cache events (stale_served, blob_fill, manifest_get) by upstream."
    ),
    "entrepot_upstream_requests_total": "Requests sent to each upstream registry, by kind.",
    "registry_notifications_events_total": "Notification events by type and endpoint.",
    "registry_notifications_status_total": "Notification responses by status and endpoint.",
    "entrepot_notifications_dropped_total": "Notification events dropped: the queue was full.",
}

MetricsSource = Callable[[], Iterable[Sample]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(samples: Iterable[Sample]) -> str:
    by_metric: dict[str, list[Sample]] = {}
    for sample in samples:
        by_metric.setdefault(sample.metric, []).append(sample)
    lines: list[str] = []
    for metric in sorted(set(by_metric) | set(HELP)):
        lines.append(f"# HELP {metric} {HELP.get(metric, metric)}")
        lines.append(f"# TYPE {metric} counter")
        for sample in by_metric.get(metric, []):
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
            lines.append(f"{metric}{{{labels}}} {sample.value:g}")
    return "\n".join(lines) + "\n"


async def metrics(request: Request) -> Response:
    body = render(context(request).metrics())
    return Response(body, media_type="text/plain; version=0.0.4")
