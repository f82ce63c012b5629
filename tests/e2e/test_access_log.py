"""The logs answer "what happened?": one access line per request with the query (containerd's
``ns``), the size, the duration, the request id and what the cache did; a line per upstream
fill; and the request id (``X-Request-Id``, the client's or a new one) on every line of a
request."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from . import clients
from .images import OCI_MANIFEST, build_image
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e


def _lines(server: ManagedServer, marker: str) -> list[str]:
    return [line for line in server.log().splitlines() if marker in line]


def test_pull_through_logs_say_what_the_cache_did(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=41, label="logs")
    clients.push(image.ref, registry2.host, "e2e/logs", "1")
    entrepot = entrepot_factory(
        config={"proxies": [{"host": "upstream.test", "remoteurl": registry2.url}]}
    )
    manifest_url = f"{entrepot.url}/v2/e2e/logs/manifests/1?ns=upstream.test"
    accept = {"Accept": OCI_MANIFEST}

    first = httpx.get(manifest_url, headers={**accept, "X-Request-Id": "pull-one"})
    assert first.status_code == 200, first.text
    assert first.headers["x-request-id"] == "pull-one"
    second = httpx.get(manifest_url, headers={**accept, "X-Request-Id": "pull-two"})
    assert second.status_code == 200
    (single,) = image.images.values()
    layer = single.layers[0].descriptor
    blob = httpx.get(
        f"{entrepot.url}/v2/e2e/logs/blobs/{layer.digest}?ns=upstream.test",
        headers={"X-Request-Id": "blob-one"},
    )
    assert blob.status_code == 200
    missing = httpx.get(
        f"{entrepot.url}/v2/e2e/logs/manifests/nope?ns=upstream.test",
        headers={**accept, "X-Request-Id": "missing-one"},
    )
    assert missing.status_code == 404
    made_up = httpx.get(
        f"{entrepot.url}/v2/", headers={"X-Request-Id": 'bad id "quoted" ' + "x" * 200}
    )
    assert re.fullmatch(r"[0-9a-f]{16}", made_up.headers["x-request-id"])

    (filled,) = _lines(entrepot, "id=pull-one cache=")
    assert '"GET /v2/e2e/logs/manifests/1?ns=upstream.test HTTP/1.1" 200 ' in filled
    assert f" {len(first.content)} " in filled
    assert re.search(r" \d+\.\dms id=pull-one cache=fill upstream=upstream.test$", filled)
    (hit,) = _lines(entrepot, "id=pull-two cache=")
    assert hit.endswith("cache=hit upstream=upstream.test")
    (blob_line,) = _lines(entrepot, "id=blob-one cache=")
    assert "cache=fill upstream=upstream.test" in blob_line
    # The fill has a line of its own, with the request id of the request that started it.
    fill_lines = _lines(entrepot, f"filled upstream.test e2e/logs@{layer.digest}")
    assert len(fill_lines) == 1
    assert f": {layer.size} bytes in " in fill_lines[0]
    assert fill_lines[0].endswith("id=blob-one")
    # Each upstream error has a line of its own, naming the upstream, repository and reference.
    (error_line,) = _lines(entrepot, "upstream upstream.test: e2e/logs nope: not found")
    assert error_line.endswith("id=missing-one")
