"""Metrics on registry:2's debug address (``http.debug.addr``), from a real server with
several worker processes: one scrape sums what every worker counted."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .servers import ManagedServer, ServerFactory

BASE_REQUESTS = 'registry_http_requests_total{code="200",handler="base",method="GET"}'


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = response.read().decode()
        return text


def settled(url: str, sample: str) -> float:
    """``sample``'s value once it stops moving: a request is counted just after its answer,
    so a scrape right after the last answer (or the factory's readiness probe) may come
    first (seen in CI: one request more, counted after the scrape before)."""
    last = value(scrape(url), sample)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = value(scrape(url), sample)
        if now == last:
            break
        last = now
    return last


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _start(
    entrepot_factory: ServerFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ManagedServer, str]:
    debug_port = free_port()
    config = {
        "http": {
            "debug": {
                "addr": f"127.0.0.1:{debug_port}",
                "prometheus": {"enabled": True, "path": "/metrics"},
            }
        },
        **(extra or {}),
    }
    # TMPDIR: where the CLI makes the workers' metrics directory, so the test can look.
    server = entrepot_factory(config=config, env={"ENTREPOT_WORKERS": "2", "TMPDIR": str(tmp_path)})
    return server, f"http://127.0.0.1:{debug_port}/metrics"


def test_one_scrape_sums_every_worker(
    entrepot_factory: ServerFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    server, metrics_url = _start(entrepot_factory, free_port, tmp_path)
    before = settled(metrics_url, BASE_REQUESTS)

    def counting_pids() -> set[str]:
        files = tmp_path.glob("entrepot-metrics-*/counter_*.db")
        return {re.search(r"_(\d+)\.db$", f.name).group(1) for f in files}  # type: ignore[union-attr]

    n = 0
    # A new connection each: the kernel spreads them over the workers, though a busy machine
    # may give one worker many in a row, so ask until both have counted some.
    while n < 60 or (len(counting_pids()) < 2 and n < 2000):
        assert status(f"{server.url}/v2/") == 200
        n += 1
    assert settled(metrics_url, BASE_REQUESTS) == before + n
    # Both workers counted some of them: each wrote its own file, and the scrape summed.
    assert len(counting_pids()) == 2
    # Without access control the main address serves the same sums (as it always did).
    assert settled(f"{server.url}/metrics", BASE_REQUESTS) == before + n
    assert status(metrics_url.replace("/metrics", "/other")) == 404
    server.stop()
    assert not list(tmp_path.glob("entrepot-metrics-*")), "the metrics directory is removed"


def test_with_access_control_metrics_are_only_on_the_debug_address(
    entrepot_factory: ServerFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    auth = {"auth": {"htpasswd": {"realm": "r", "path": str(_htpasswd(tmp_path))}}}
    server, metrics_url = _start(entrepot_factory, free_port, tmp_path, auth)
    assert status(f"{server.url}/v2/") == 401
    assert status(f"{server.url}/metrics") == 404
    code_401 = 'registry_http_requests_total{code="401",handler="base",method="GET"}'
    assert value(scrape(metrics_url), code_401) >= 1


def _htpasswd(tmp_path: Path) -> Path:
    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    return path
