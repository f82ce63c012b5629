"""registry:2's notifications, compared with registry:2 itself: Debian's docker-registry and
Entrepot each notify a receiver on 127.0.0.1 while skopeo pushes, pulls and deletes the same
image (and plain HTTP mounts a blob); both send the same envelopes with the same events
(actions, targets, request methods and user agents), apart from ids, times and addresses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from entrepot.http.notify import EVENTS_MEDIA_TYPE
from tests.event_sink import Delivery, EventSink, events_of

from . import clients
from .images import ImageLayout, build_image
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

# Differ by nature between two servers and two runs.
_VOLATILE_REQUEST = ("id", "addr", "host")


def _notifications(sink: EventSink) -> dict[str, Any]:
    return {
        "notifications": {
            "endpoints": [
                {
                    "name": "receiver",
                    "url": sink.url,
                    "headers": {"Authorization": ["Bearer receiver-token"]},
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "1s",
                }
            ]
        }
    }


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` without what differs between servers: ids, times, addresses; the target's
    URL keeps its path."""
    target = dict(event["target"])
    if "url" in target:
        target["url"] = urlsplit(target["url"]).path
    request = {k: v for k, v in event["request"].items() if k not in _VOLATILE_REQUEST}
    return {
        "keys": list(event),  # registry:2's field order
        "action": event["action"],
        "target": target,
        "target_keys": list(event["target"]),
        "request": request,
        "request_keys": list(event["request"]),
        "actor": event["actor"],
        "source_keys": sorted(event["source"]),
    }


def _key(event: dict[str, Any]) -> str:
    return repr(sorted(event.items()))


def _workflow(
    server: ManagedServer, sink: EventSink, image: ImageLayout, tmp: Path
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Each step of the workflow and the events it caused, in a comparable form."""
    port = server.host.rsplit(":", 1)[1]  # a fresh layout per server (no ':' in its path)
    digest = image.digest
    layer = image.images["linux/amd64"].layers[0].descriptor.digest
    steps: list[tuple[str, Callable[[], object]]] = [
        ("push", lambda: clients.push(image.ref, server.host, "team/app", "v1")),
        ("push again", lambda: clients.push(image.ref, server.host, "team/app", "v2")),
        (
            "pull",
            lambda: clients.pull_to_layout(server.host, "team/app", "v1", tmp / f"pulled-{port}"),
        ),
        (
            "mount",
            lambda: httpx.post(
                f"{server.url}/v2/other/app/blobs/uploads/",
                params={"mount": layer, "from": "team/app"},
            ).raise_for_status(),
        ),
        ("delete", lambda: clients.delete(server.host, "team/app", digest)),
    ]
    for name, step in steps:
        step()
        yield name, [_comparable(e) for e in events_of(sink.take())]


def test_entrepot_notifies_what_registry2_notifies(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=12, layer_sizes=(2048, 4096), label="notify")
    with EventSink() as reference_sink, EventSink() as entrepot_sink:
        registry2 = registry2_factory(config=_notifications(reference_sink))
        entrepot = entrepot_factory(config=_notifications(entrepot_sink))
        expected = dict(_workflow(registry2, reference_sink, image, tmp_path))
        got = dict(_workflow(entrepot, entrepot_sink, image, tmp_path))
        deliveries = reference_sink.deliveries + entrepot_sink.deliveries

    # The workflow makes registry:2 say something at each step, so the comparison has teeth.
    assert {a for events in expected.values() for a in (e["action"] for e in events)} == {
        "push",
        "pull",
        "mount",
        "delete",
    }
    for step, events in expected.items():
        assert events, f"registry:2 sent nothing for {step}"
        assert sorted(got[step], key=_key) == sorted(events, key=_key), step

    assert not deliveries  # every delivery was taken by a step


def test_the_envelopes_and_their_headers_match_registry2(
    registry2_factory: ServerFactory, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=13, layer_sizes=(1024,), label="envelope")
    taken: dict[str, list[Delivery]] = {}
    with EventSink() as reference_sink, EventSink() as entrepot_sink:
        for name, factory, sink in (
            ("registry:2", registry2_factory, reference_sink),
            ("entrepot", entrepot_factory, entrepot_sink),
        ):
            server = factory(config=_notifications(sink))
            clients.push(image.ref, server.host, "team/envelope", "v1")
            taken[name] = sink.take(count=3)  # the config, the layer, the manifest
            port = server.host.rsplit(":", 1)[1]
            for delivery in taken[name]:
                assert delivery.path == "/events"
                assert delivery.headers["Content-Type"] == EVENTS_MEDIA_TYPE
                assert delivery.headers["Authorization"] == "Bearer receiver-token"
                assert list(delivery.body) == ["events"]
                (event,) = delivery.body["events"]  # one event per envelope, as registry:2
                assert event["id"] and event["request"]["id"]
                assert event["timestamp"].endswith("Z")
                assert event["request"]["host"] == server.host
                assert event["request"]["addr"].startswith("127.0.0.1:")
                assert event["source"]["addr"].endswith(f":{port}")
                assert event["source"]["instanceID"]
                assert event["target"]["url"].startswith(f"http://{server.host}/v2/team/envelope/")
    shapes = {
        name: sorted(
            (e["action"], e["target"]["mediaType"], list(e["target"]), list(e["request"]))
            for e in events_of(deliveries)
        )
        for name, deliveries in taken.items()
    }
    assert shapes["entrepot"] == shapes["registry:2"]
