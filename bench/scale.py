"""``python -m bench.scale [--sizes 1000,10000,100000]``: the scale rows, side by side.

For each size, a generated registry:2 layout (``library/repo-NNNNN`` repositories with
one tag each, and ``bench/app`` with ``--tags`` tags) is served by registry:2 and by
Entrepot (its default workers, one per core), each started fresh on it, and measured
as a user meets it: start-up time (until every worker answers), the first
``_catalog?n=100`` after start, the slowest of the next ``--probes`` first pages (on
new connections, so every worker answers some: each must be fast, not only the first),
the first tags list of ``bench/app`` and the first manifest GET, and the RSS of the
whole process tree after these requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import fixtures, servers
from bench.servers import Server, rss_bytes
from bench.workloads import remove_tree

KINDS = ("registry2", "entrepot")


def _timed_get(url: str, **headers: str) -> tuple[float, httpx.Response]:
    """curl's own total time (a light client, so a loaded machine skews it least), and
    the response. A new connection per request: Granian's workers share the socket, so
    successive connections reach different workers."""
    with tempfile.NamedTemporaryFile() as body:
        argv = ["curl", "-sS", "-o", body.name, "-w", "%{http_code} %{time_total}", url]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
        status, seconds = out.stdout.split()
        content = Path(body.name).read_bytes()
    return float(seconds), httpx.Response(int(status), content=content)


def measure(
    kind: str, fx: fixtures.ReadFixture, workdir: Path, probes: int, source: Path | None
) -> dict[str, Any]:
    """One server started fresh on the layout; ``source``: Entrepot from another checkout."""
    server = Server(kind.split("@")[0], root=fx.root, workdir=workdir, cpus=_all_cpus())
    t = time.perf_counter()
    saved = servers.REPO_ROOT
    servers.REPO_ROOT = source or saved
    try:
        server.start(timeout=600)
    finally:
        servers.REPO_ROOT = saved
    row: dict[str, Any] = {"startup_s": time.perf_counter() - t}
    try:
        row["idle_rss"] = rss_bytes(server.pid)
        catalog = f"{server.url}/v2/_catalog?n=100"
        expected = sorted(["bench/app"] + [f"library/repo-{i:05d}" for i in range(99)])
        first, response = _timed_get(catalog)
        if response.json().get("repositories") != expected:
            raise RuntimeError(f"{kind}: wrong first catalog page: {response.text[:200]}")
        row["catalog_first_s"] = first
        row["catalog_next_max_s"] = max(_timed_get(catalog)[0] for _ in range(probes))
        seconds, response = _timed_get(f"{server.url}/v2/{fx.repo}/tags/list")
        if len(response.json().get("tags") or []) != fx.tags:
            raise RuntimeError(f"{kind}: wrong tags list: {response.text[:200]}")
        row["tags_first_s"] = seconds
        seconds, response = _timed_get(
            f"{server.url}/v2/{fx.repo}/manifests/{fx.tag}", Accept=fixtures.MANIFEST_ACCEPT
        )
        if response.content != fx.image.manifest:
            raise RuntimeError(f"{kind}: wrong manifest: {response.status_code}")
        row["manifest_first_s"] = seconds
        row["rss"] = rss_bytes(server.pid)
    finally:
        server.stop()
    return row


def _all_cpus() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    cols = [
        ("start-up", "startup_s", _ms),
        ("1st catalog page", "catalog_first_s", _ms),
        ("next pages, max", "catalog_next_max_s", _ms),
        ("1st tags list", "tags_first_s", _ms),
        ("1st manifest GET", "manifest_first_s", _ms),
        ("RSS after", "rss", lambda v: f"{v / 1e6:,.0f} MB"),
    ]
    lines = [
        "| repositories | server | " + " | ".join(c[0] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for size, by_kind in results.items():
        for kind, row in by_kind.items():
            cells = " | ".join(fmt(row[key]) for _, key, fmt in cols)
            lines.append(f"| {size:,} | {kind} | {cells} |")
    return "\n".join(lines)


def run_scale(
    sizes: list[int],
    tags: int,
    probes: int,
    servers: list[str],
    tmpdir: Path,
    compare: Path | None = None,
) -> dict[int, dict[str, dict[str, Any]]]:
    """Each size's layout served fresh by each server: {size: {server: figures}}."""
    workdir = Path(tempfile.mkdtemp(prefix="entrepot-scale-", dir=tmpdir))
    results: dict[int, dict[str, dict[str, Any]]] = {}
    try:
        layer_file = workdir / "layer.bin"
        layer = fixtures.make_layer(layer_file, fixtures.MiB)
        for size in sizes:
            root = workdir / f"layout-{size}"
            t = time.monotonic()
            fx = fixtures.write_read_fixture(root, layer_file, layer, size, tags)
            print(f"bench.scale: {size:,} repositories in {time.monotonic() - t:.0f} s", flush=True)
            results[size] = {}
            kinds: list[tuple[str, Path | None]] = [(k, None) for k in servers]
            if compare:
                kinds.append((f"entrepot@{compare}", compare))
            for kind, source in kinds:
                row = measure(kind, fx, workdir / "logs", probes, source)
                results[size][kind] = row
                print(f"  {kind}: {row}", flush=True)
            remove_tree(root)
    finally:
        remove_tree(workdir)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--sizes", default="1000,10000,100000", help="repository counts")
    p.add_argument("--tags", type=int, default=10_000, help="tags of bench/app")
    p.add_argument("--probes", type=int, default=8, help="first pages after the first")
    p.add_argument("--servers", default=",".join(KINDS))
    p.add_argument("--tmpdir", type=Path, default=fixtures.default_tmpdir())
    p.add_argument(
        "--compare",
        type=Path,
        help="also run Entrepot from this checkout (e.g. before a change), as entrepot@PATH",
    )
    args = p.parse_args(argv)
    if not shutil.which("taskset"):
        print("bench.scale: taskset missing (apt-get install util-linux)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    servers = args.servers.split(",")
    results = run_scale(sizes, args.tags, args.probes, servers, args.tmpdir, args.compare)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
