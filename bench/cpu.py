"""CPU time per request, in-process: the hot read rows through the ASGI app as the CLI
builds it (``create_app`` on the bench's registry:2 config), no sockets, no load generator.

    python -m bench.cpu [--requests 20000] [--runs 3] [--access-log] [--profile ROW]

Unlike the request rates of ``python -m bench``, this figure hardly moves with the load
on the machine (``time.process_time`` counts only this process's CPU), so two checkouts
can be compared on a busy machine: run it in each, alternating, and compare the minimums.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.fixtures import MANIFEST_ACCEPT, make_layer, write_read_fixture
from bench.servers import registry_config

Scope = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:5000"), (b"user-agent", b"wrk"), *headers],
        "server": ("127.0.0.1", 5000),
        "client": ("127.0.0.1", 40000),
    }


async def _request(app: App, scope: Scope) -> int:
    """One request; the status it was answered with."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _lifespan(app: App) -> tuple[asyncio.Queue[Any], asyncio.Task[Any]]:
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message
    return inbox, task


async def measure(
    app: App, rows: dict[str, tuple[App, Scope]], requests: int, runs: int, profile: str | None
) -> dict[str, float]:
    """The least CPU µs per request of ``runs`` runs of ``requests``, per row (each row
    names the app it goes to: ``app``, or the framework's ceiling)."""
    inbox, task = await _lifespan(app)
    best: dict[str, float] = {}
    try:
        for name, (target, scope) in rows.items():
            status = await _request(target, scope)
            assert status == 200, f"{name}: answered {status}"
            for _ in range(200):  # warm-up: caches, first-call imports
                await _request(target, scope)
        for _ in range(runs):
            for name, (target, scope) in rows.items():
                profiler = cProfile.Profile() if name == profile else None
                started = time.process_time()
                if profiler is not None:
                    profiler.enable()
                for _ in range(requests):
                    await _request(target, scope)
                if profiler is not None:
                    profiler.disable()
                micros = (time.process_time() - started) / requests * 1e6
                best[name] = min(best.get(name, micros), micros)
                if profiler is not None:
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
                    profile = None  # once
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await task
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--access-log", action="store_true", help="write access-log lines")
    parser.add_argument("--profile", help="cProfile one row (manifest_get, ...) once")
    args = parser.parse_args()

    import logging
    import os

    import yaml

    # As the CLI runs it: prometheus-client's per-process files (read at its import).
    metrics_dir = tempfile.mkdtemp(prefix="entrepot-cpu-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from entrepot.config.loader import load_config
    from entrepot.root import create_app

    with tempfile.TemporaryDirectory(prefix="entrepot-cpu-") as tmp:
        work = Path(tmp)
        layer = make_layer(work / "layer", 1024 * 1024)
        fixture = write_read_fixture(work / "root", work / "layer", layer, repos=3, tags=3)
        config = registry_config(fixture.root, 5000, quiet=not args.access_log)
        config_path = work / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.access_log:
            # Lines go to /dev/null, but are formatted and written as a server's are.
            from entrepot.http.accesslog import AccessLines

            devnull = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
            logging.getLogger("entrepot.access").addHandler(AccessLines(devnull))
            logging.getLogger("entrepot.access").setLevel(logging.INFO)
        app: App = create_app(load_config(str(config_path)))
        base = f"/v2/{fixture.repo}"
        accept = [(b"accept", MANIFEST_ACCEPT.encode())]
        from bench.ceiling import app as ceiling_app

        ceiling: App = ceiling_app
        manifest = f"{base}/manifests/{fixture.tag}"
        rows: dict[str, tuple[App, Scope]] = {
            "manifest_get": (app, _scope("GET", manifest, accept)),
            "manifest_head": (app, _scope("HEAD", manifest, accept)),
            "blob_head": (app, _scope("HEAD", f"{base}/blobs/{layer.digest}", [])),
            # bare Starlette answering a constant (what `python -m bench` calls the ceiling)
            "ceiling": (ceiling, _scope("GET", manifest, accept)),
        }
        best = asyncio.run(measure(app, rows, args.requests, args.runs, args.profile))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    for name, micros in best.items():
        print(f"{name:14} {micros:7.1f} µs CPU/request (least of {args.runs} x {args.requests})")


if __name__ == "__main__":
    main()
