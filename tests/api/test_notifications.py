"""registry:2's notifications through the whole app (lifespan included): who pushed, pulled
and deleted what reaches a receiver on 127.0.0.1; ignore rules filter per endpoint; an
endpoint that never answers costs requests nothing and its overflow is counted."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from entrepot.config import load_config
from entrepot.root import create_app
from tests.api.auth_setup import PASSWORDS, write_htpasswd
from tests.api.oci_client import OCI_MANIFEST, make_image, sha256
from tests.event_sink import EventSink, events_of

ALICE = ("alice", PASSWORDS["alice"])


@pytest.fixture
def sink() -> Iterator[EventSink]:
    with EventSink() as receiver:
        yield receiver


def serve(tmp_path: Path, notifications: str, *, auth: bool = False) -> TestClient:
    config = tmp_path / "config.yml"
    access = ""
    if auth:
        htpasswd = write_htpasswd(tmp_path / "htpasswd")
        access = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n  addr: :5000\n  secret: test-secret\n"
        f"{access}notifications:\n{notifications}"
    )
    return TestClient(create_app(load_config(config)), base_url="http://registry.test")


def push_image(client: TestClient, name: str, tag: str) -> tuple[Any, list[bytes]]:
    image = make_image(tag, layer_sizes=(100,))
    for blob in (image.config, image.layers[0]):
        response = client.post(
            f"/v2/{name}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob
        )
        assert response.status_code == 201, response.text
    response = client.put(
        f"/v2/{name}/manifests/{tag}",
        content=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text
    return image, [image.config, image.layers[0]]


def test_a_users_push_pull_and_delete_reach_the_receiver(tmp_path: Path, sink: EventSink) -> None:
    endpoint = (
        "  events:\n    includereferences: true\n"
        f"  endpoints:\n    - name: ci\n      url: {sink.url}\n"
    )
    with serve(tmp_path, endpoint, auth=True) as client:
        client.auth = ALICE
        image, blobs = push_image(client, "team/app", "v1")
        pushed = events_of(sink.take(count=3))
        got = client.get(
            "/v2/team/app/manifests/v1",
            headers={"Accept": OCI_MANIFEST, "X-Request-Id": "pull-1", "User-Agent": "ci/1"},
        )
        assert got.status_code == 200
        (pulled,) = events_of(sink.take(count=1))
        assert client.get("/v2/team/app/manifests/nope").status_code == 404  # nothing happened
        assert client.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
        deleted = events_of(sink.take(count=2))

    assert [(e["action"], e["target"]["mediaType"]) for e in pushed] == [
        ("push", "application/octet-stream"),
        ("push", "application/octet-stream"),
        ("push", OCI_MANIFEST),
    ]
    assert {e["target"]["digest"] for e in pushed[:2]} == {sha256(b) for b in blobs}
    assert all(e["actor"] == {"name": "alice"} for e in [*pushed, pulled, *deleted])
    assert pulled["target"] == {
        "mediaType": OCI_MANIFEST,
        "size": len(image.manifest),
        "digest": image.digest,
        "length": len(image.manifest),
        "repository": "team/app",
        "url": f"http://registry.test/v2/team/app/manifests/{image.digest}",
        "tag": "v1",
        "references": [
            {"mediaType": d["mediaType"], "size": d["size"], "digest": d["digest"]}
            for d in (image_json(image)["config"], *image_json(image)["layers"])
        ],
    }
    assert pulled["request"]["id"] == "pull-1"
    assert pulled["request"]["useragent"] == "ci/1"
    assert pulled["request"]["method"] == "GET"
    assert [e["target"] for e in deleted] == [
        {"digest": image.digest, "repository": "team/app"},
        {"repository": "team/app", "tag": "v1"},  # the tag the deletion took away
    ]


def image_json(image: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(image.manifest)
    return body


def test_ignore_rules_filter_what_an_endpoint_is_sent(tmp_path: Path, sink: EventSink) -> None:
    endpoints = (
        "  endpoints:\n"
        f"    - name: manifests-only\n      url: {sink.url}\n"
        "      ignoredmediatypes: [application/octet-stream]\n"
        "      ignore:\n        actions: [pull]\n"
        f"    - name: switched-off\n      url: {sink.url}\n      disabled: true\n"
    )
    with serve(tmp_path, endpoints) as client:
        push_image(client, "team/app", "v1")
        assert client.get("/v2/team/app/manifests/v1").status_code == 200
        assert client.delete("/v2/team/app/manifests/v1").status_code == 202
        events = events_of(sink.take(count=2))
    assert [(e["action"], e["target"].get("mediaType")) for e in events] == [
        ("push", OCI_MANIFEST),
        ("delete", None),
    ]
    assert events[1]["target"] == {"repository": "team/app", "tag": "v1"}
    assert events[0]["actor"] == {}


def test_an_endpoint_that_never_answers_drops_beyond_its_queue(tmp_path: Path) -> None:
    # A port that takes connections (the kernel's backlog) and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/events"
    endpoint = (
        f"  endpoints:\n    - name: silent\n      url: {url}\n"
        "      timeout: 60s\n      queuesize: 2\n"
    )
    try:
        with serve(tmp_path, endpoint) as client:
            push_image(client, "team/app", "v1")  # three events: one in flight, two queued
            for _ in range(5):
                assert client.get("/v2/team/app/manifests/v1").status_code == 200
            metrics = client.get("/metrics").text
    finally:
        silent.close()
    counts = {
        (sample.name, sample.labels.get("type", "")): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.labels.get("endpoint") == "silent"
    }
    queued = counts[("registry_notifications_events_total", "Events")]
    dropped = counts[("entrepot_notifications_dropped_total", "")]
    # Eight events: at most one in flight plus two waiting were kept, the rest counted.
    assert queued + dropped == 8
    assert queued <= 3 and dropped >= 5
