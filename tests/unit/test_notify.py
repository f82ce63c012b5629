"""registry:2's notification endpoints: the envelope, the bounded queue, retries with
registry:2's threshold and backoff, and the real HTTP sender against a loopback receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from entrepot.http.notify import (
    EVENTS_MEDIA_TYPE,
    Endpoint,
    EndpointSettings,
    NotificationMetrics,
    Notifier,
    envelope,
    http_sender,
)


def an_event(action: str = "push", media_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"id": "1", "action": action, "target": {"mediaType": media_type, "size": 3}}


class FakeClock:
    """A clock that only moves when the endpoint sleeps, recording each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Script:
    """A sender answering with the given outcomes in turn (a status or an exception)."""

    def __init__(self, *outcomes: int | Exception) -> None:
        self.outcomes = list(outcomes)
        self.bodies: list[bytes] = []

    async def __call__(self, body: bytes) -> int:
        self.bodies.append(body)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_an_envelope_holds_one_event_as_registry2_sends_it() -> None:
    body = envelope(an_event())
    assert json.loads(body) == {"events": [an_event()]}
    assert body.startswith(b'{\n   "events": [\n')  # Go's MarshalIndent with three spaces


async def test_ignored_actions_and_media_types_are_never_queued() -> None:
    settings = EndpointSettings(
        "e",
        "http://127.0.0.1:9/",
        ignored_actions=frozenset({"pull"}),
        ignored_media_types=frozenset({"application/octet-stream"}),
    )
    endpoint = Endpoint(settings, Script())
    endpoint.offer(an_event("pull", "application/vnd.oci.image.manifest.v1+json"))
    endpoint.offer(an_event("push", "application/octet-stream"))
    endpoint.offer(an_event("push", "application/vnd.oci.image.manifest.v1+json"))
    assert endpoint.pending == 1
    assert endpoint.stats.events == 1
    assert endpoint.stats.dropped == 0


async def test_a_full_queue_drops_new_events_and_counts_them() -> None:
    endpoint = Endpoint(EndpointSettings("e", "http://127.0.0.1:9/", queue_size=2), Script())
    for i in range(5):
        endpoint.offer({**an_event(), "id": str(i)})  # returns at once: nothing is sent here
    assert endpoint.pending == 2
    assert (endpoint.stats.events, endpoint.stats.dropped) == (2, 3)


async def test_failures_are_retried_at_once_until_threshold_then_every_backoff() -> None:
    clock = FakeClock()
    send = Script(OSError("refused"), 500, OSError("refused"), 503, 202)
    endpoint = Endpoint(
        EndpointSettings("e", "http://127.0.0.1:9/", threshold=3, backoff=5.0),
        send,
        clock=clock.time,
        sleep=clock.sleep,
    )
    await endpoint.deliver(b"body")
    assert len(send.bodies) == 5 and set(send.bodies) == {b"body"}
    # Three attempts in a row without waiting; after the third failure, backoff each time.
    assert clock.sleeps == [5.0, 5.0]
    stats = endpoint.stats
    assert (stats.successes, stats.failures, stats.errors) == (1, 2, 2)
    assert stats.statuses == {500: 1, 503: 1, 202: 1}


async def test_a_success_resets_the_breaker() -> None:
    clock = FakeClock()
    send = Script(500, 500, 200, 500, 200)
    endpoint = Endpoint(
        EndpointSettings("e", "http://127.0.0.1:9/", threshold=2, backoff=1.0),
        send,
        clock=clock.time,
        sleep=clock.sleep,
    )
    await endpoint.deliver(b"one")
    assert clock.sleeps == [1.0]
    await endpoint.deliver(b"two")  # one failure after a success: retried at once
    assert clock.sleeps == [1.0]
    assert endpoint.stats.successes == 2


async def test_redirect_statuses_count_as_delivered() -> None:
    send = Script(302)
    endpoint = Endpoint(EndpointSettings("e", "http://127.0.0.1:9/"), send)
    await endpoint.deliver(b"x")
    assert endpoint.stats.successes == 1 and len(send.bodies) == 1


async def test_events_go_out_in_order_one_envelope_each() -> None:
    send = Script(200, 200, 200)
    endpoint = Endpoint(EndpointSettings("e", "http://127.0.0.1:9/"), send)
    task = asyncio.create_task(endpoint.run())
    try:
        for i in range(3):
            endpoint.offer({**an_event(), "id": str(i)})
        await asyncio.wait_for(endpoint._queue.join(), 10)
    finally:
        task.cancel()
    assert [json.loads(b)["events"][0]["id"] for b in send.bodies] == ["0", "1", "2"]


async def test_a_hung_endpoint_holds_one_event_and_drops_beyond_the_queue() -> None:
    release = asyncio.Event()

    async def hangs(body: bytes) -> int:
        await release.wait()
        return 200

    endpoint = Endpoint(EndpointSettings("e", "http://127.0.0.1:9/", queue_size=2), hangs)
    task = asyncio.create_task(endpoint.run())
    try:
        endpoint.offer(an_event())
        await asyncio.sleep(0)  # the sender takes the first event and waits on the POST
        for _ in range(4):
            endpoint.offer(an_event())
        assert endpoint.pending == 2
        assert endpoint.stats.dropped == 2
        release.set()
        await asyncio.wait_for(endpoint._queue.join(), 10)
        assert endpoint.stats.successes == 3
    finally:
        task.cancel()


# --- the real sender, against a receiver on 127.0.0.1 ---------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def events(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.Response(status=202)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen, bodies
    finally:
        await runner.cleanup()


async def test_the_sender_posts_the_media_type_and_configured_headers(
    receiver: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, bodies = receiver
    settings = EndpointSettings(
        "e",
        f"{base}/events",
        headers=(("Authorization", "Bearer t0k"), ("X-Tag", "a"), ("X-Tag", "b")),
    )
    async with aiohttp.ClientSession() as session:
        status = await http_sender(session, settings)(envelope(an_event()))
    assert status == 202
    assert seen[0].headers["Content-Type"] == EVENTS_MEDIA_TYPE
    assert seen[0].headers["Authorization"] == "Bearer t0k"
    assert seen[0].headers.getall("X-Tag") == ["a", "b"]
    assert json.loads(bodies[0]) == {"events": [an_event()]}


async def test_the_sender_gives_up_on_a_request_after_the_timeout(
    receiver: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, _ = receiver
    settings = EndpointSettings("e", f"{base}/slow", timeout=0.2)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await http_sender(session, settings)(b"{}")


async def test_the_notifier_hands_each_event_to_every_endpoint_and_reports_counts(
    receiver: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, bodies = receiver
    registry = CollectorRegistry()
    notifier = Notifier(
        [
            EndpointSettings("all", f"{base}/events"),
            EndpointSettings("no-pulls", f"{base}/events", ignored_actions=frozenset({"pull"})),
        ],
        source={"addr": "host:5000", "instanceID": "x"},
        metrics=NotificationMetrics(registry),
    )
    await notifier.start()
    try:
        notifier.publish(an_event("push"))
        notifier.publish(an_event("pull"))
        for endpoint in notifier.endpoints:
            await asyncio.wait_for(endpoint._queue.join(), 10)
    finally:
        await notifier.aclose()
    assert sorted(json.loads(b)["events"][0]["action"] for b in bodies) == ["pull", "push", "push"]

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    events = "registry_notifications_events_total"
    assert value(events, type="Successes", endpoint="all") == 2
    assert value(events, type="Successes", endpoint="no-pulls") == 1
    assert value(events, type="Events", endpoint="no-pulls") == 1
    assert value("registry_notifications_status_total", code="202 Accepted", endpoint="all") == 2
    assert value("registry_notifications_pending", endpoint="all") == 0
    assert value("entrepot_notifications_dropped_total", endpoint="all") is None  # none yet
