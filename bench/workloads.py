"""The rows of the benchmark, run against one server at a time.

For each server kind (registry:2, then Entrepot) ``run_server`` starts three instances in
turn, never two at once: one on the shared read fixture (request rates, blob downloads,
memory), one on an empty root (pushes), one on an empty root in pull-through mode in
front of the upstream registry:2 (cold and warm pull-through). Every workload is checked
once with a plain request before it is measured, so that a wrong answer (a 404 served
very fast) cannot pass for speed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import clients, gc
from bench.fixtures import (
    MANIFEST_ACCEPT,
    PROXIED_REPO,
    Blob,
    Image,
    PushLayer,
    ReadFixture,
)
from bench.gc import GcStore
from bench.gcloop import CollectorLoop, Window, collector_share, paired_rows, window_order
from bench.loadgen import LoadResult, lua_script, run_ab_head, run_wrk
from bench.rawhttp import RawClient
from bench.servers import RssSampler, Server, cpu_seconds, pss_bytes, rss_bytes, running

GROUPS = ("read", "memory", "push", "pull", "gc", "scale", "s3")
LATENCY_CONNECTIONS = 256  # the second latency row (the first is at --connections)
GC_PAIRS = 4  # idle and busy windows per row of pulls while collecting


@dataclass
class Settings:
    quick: bool
    layer_size: int
    repos: int
    tags: int
    duration: int  # seconds per load-generator measurement
    warmup: int  # seconds of load before each measurement, not counted
    push_repeats: int
    chunk: int
    server_cpus: str
    client_cpus: str
    workers: int | None
    connections: int = 32
    push_client: str = "raw"  # "raw" (bench/rawhttp.py, sendfile) or "httpx"
    wrk_threads: int = 1
    pull_clients: int = 8
    memory_clients: int = 16
    memory_rate: str | None = "48M"
    s3_tags: int = 100  # tags of the S3 rows' image (pushed through each server, untimed)
    groups: tuple[str, ...] = GROUPS
    profile: str | None = None  # a row key: py-spy records Entrepot during that row
    workdir: Path = Path("/tmp")  # fixtures, logs, scripts (tmpfs when there is one)
    datadir: Path = Path("/tmp")  # what the servers write: push roots, pull-through caches
    results_dir: Path = Path("bench/results")


@dataclass
class Shared:
    """What every server run uses: fixtures and the upstream for pull-through."""

    read: ReadFixture
    layer: Blob
    push_layer: PushLayer
    upstream: Server | None
    upstream_image: Image | None
    gc: GcStore | None = None  # the store to collect
    # Each collector's collections of it (collect_in_turn), by kind ("floor" too), and
    # the store Entrepot's last one collected, kept for the serving rows.
    gc_runs: dict[str, list[Any]] = field(default_factory=dict)
    gc_served: Path | None = None
    upstream_fill_layer: Blob | None = None  # another uncached blob of the upstream


# Each measurement: {"value": float, ...details}; rows[row_key] = that dict.
Rows = dict[str, dict[str, Any]]


@dataclass
class ServerRun:
    kind: str
    settings: Settings
    shared: Shared
    rows: Rows = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # --- helpers ---

    def _server(self, root: Path, *, proxy_url: str | None = None) -> Server:
        s = self.settings
        return Server(
            self.kind,
            root=root,
            workdir=s.workdir / "logs",
            cpus=s.server_cpus,
            workers=s.workers,
            proxy_url=proxy_url,
        )

    def _wrk(self, key: str, server: Server, url: str, script: Path, connections: int) -> None:
        s = self.settings
        if s.warmup > 0:
            run_wrk(
                url,
                script,
                connections=connections,
                duration=s.warmup,
                cpus=s.client_cpus,
                threads=s.wrk_threads,
            )
        with self._profiled(key, server, s.duration):
            result = run_wrk(
                url,
                script,
                connections=connections,
                duration=s.duration,
                cpus=s.client_cpus,
                threads=s.wrk_threads,
            )
        self._record(key, result)

    def _ab_head(
        self, key: str, server: Server, url: str, headers: dict[str, str] | None, connections: int
    ) -> None:
        s = self.settings
        if s.warmup > 0:
            run_ab_head(
                url, connections=connections, duration=s.warmup, cpus=s.client_cpus, headers=headers
            )
        with self._profiled(key, server, s.duration):
            result = run_ab_head(
                url,
                connections=connections,
                duration=s.duration,
                cpus=s.client_cpus,
                headers=headers,
            )
        self._record(key, result)

    def _record(self, key: str, result: LoadResult) -> None:
        row: dict[str, Any] = {"load": result.as_dict()}
        if key.removeprefix("s3_").startswith("blob_get"):
            row["value"] = result.bytes_per_s
        else:
            row["value"] = result.req_per_s
        if result.errors:
            row["errors"] = result.errors
            self.notes.append(f"{self.kind} {key}: {result.tool} counted {result.errors} errors")
        self.rows[key] = row
        _progress(
            f"  {self.kind:9} {key:16} {_fmt_progress(key, row['value'])}"
            f"  (p99 {result.latency_p99_us / 1000:.1f} ms, errors {result.errors})"
        )

    @contextlib.contextmanager
    def _profiled(self, key: str, server: Server, seconds: float) -> Iterator[None]:
        s = self.settings
        if s.profile != key or self.kind != "entrepot":
            yield
            return
        out = s.results_dir / f"profile-{key}.txt"
        argv = [
            py_spy(),
            "record",
            "--pid",
            str(server.pid),
            "--subprocesses",
            "--format",
            "raw",
            "--output",
            str(out),
            "--duration",
            str(max(1, round(seconds))),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.wait(timeout=seconds + 60)
            self.notes.append(f"entrepot {key} was measured under py-spy: profile in {out}")

    def _script(self, name: str, method: str = "GET", accept: str | None = None) -> Path:
        headers = {"Accept": accept} if accept else None
        return lua_script(self.settings.workdir / f"{name}.lua", method, headers)

    # --- groups ---

    def run(self) -> None:
        s = self.settings
        if "read" in s.groups or "memory" in s.groups:
            with running(self._server(self.shared.read.root)) as server:
                _progress(f"{self.kind}: read workloads on {server.url} (pid {server.pid})")
                self._check_read(server)
                if "read" in s.groups:
                    self._read_rows(server)
                if "memory" in s.groups:
                    self._memory_row(server)
        if "push" in s.groups:
            root = s.datadir / f"push-{self.kind}"
            try:
                with running(self._server(root)) as server:
                    _progress(f"{self.kind}: pushes on {server.url}")
                    self._push_rows(server)
            finally:
                remove_tree(root)
        if "gc" in s.groups and self.shared.gc_runs:
            self._gc_rows()
        if "pull" in s.groups:
            assert self.shared.upstream is not None
            root = s.datadir / f"cache-{self.kind}"
            remove_tree(root)
            try:
                with running(self._server(root, proxy_url=self.shared.upstream.url)) as server:
                    _progress(f"{self.kind}: pull-through on {server.url}")
                    self._pull_rows(server, root)
            finally:
                remove_tree(root)

    def _gc_rows(self) -> None:
        """The median of this collector's collections (collect_in_turn: the runs' times
        are in the JSON); Entrepot's with the floor's, and pulls from the store its last
        collection collected."""
        shared = self.shared
        if self.kind == "entrepot":
            self._gc_floor_rows(shared.gc_runs["floor"])
        self._gc_median_rows(shared.gc_runs[self.kind])
        if self.kind == "entrepot" and shared.gc_served is not None:
            try:
                self._gc_serving_rows(shared.gc_served)
            finally:
                remove_tree(shared.gc_served)
                shared.gc_served = None

    def _gc_floor_rows(self, floors: list[tuple[dict[str, float], float]]) -> None:
        """bench.gcfloor's collections, as many as a collector's, the median one's rows."""
        floor, load = gc.median_run(floors, lambda run: run[0]["safe"])
        self.rows["gc_floor"] = {
            "value": floor["safe"],
            "phases": floor,
            "loadavg": load,
            "runs": [run["safe"] for run, _ in floors],
        }
        self.rows["gc_floor_bare"] = {"value": floor["bare"]}

    def _gc_median_rows(self, runs: list[tuple[float, float, float, list[float]]]) -> None:
        seconds, cpu, rested, loads = gc.median_run(runs, lambda run: run[0])
        self.rows["gc"] = {
            "value": seconds,
            "loadavg": loads,
            "rested": rested,
            "runs": [run[0] for run in runs],
        }
        self.rows["gc_cpu"] = {"value": cpu, "runs": [run[1] for run in runs]}

    def _gc_serving_rows(self, root: Path) -> None:
        """Manifest and blob GETs on the collected store, in idle and busy windows in turn
        (bench/gcloop.py), busy while ``entrepot garbage-collect`` runs on it again and
        again (each run marks the whole store and finds nothing to delete: a scheduled
        collection's usual run); and the collector's share of the CPUs meanwhile."""
        s = self.settings
        cpus = len(clients.parse_cpus(s.server_cpus))
        with running(self._server(root)) as server:
            manifest, blob = (f"{server.url}{path}" for path in gc.pull_paths())
            with httpx.Client(timeout=120) as c:
                for url in (manifest, blob):
                    r = c.get(url, headers={"Accept": MANIFEST_ACCEPT})
                    _expect(r.status_code == 200, f"{url} answered {r.status_code}")
            get_m = self._script("manifest-get", "GET", MANIFEST_ACCEPT)
            get = self._script("get", "GET")
            rows = (("manifest", manifest, get_m), ("blob", blob, get))
            busy: list[Window] = []
            with gc.collecting(root, s.workdir, s.server_cpus) as loop:
                for key, url, script in rows:
                    finished = loop.finished
                    windows = self._paired_windows(loop, url, script)
                    idle_row, busy_row = paired_rows(windows, cpus)
                    busy_row["collections_finished"] = loop.finished - finished
                    for side, row in (("idle", idle_row), ("busy", busy_row)):
                        self._paired_record(f"gc_{side}_{key}", row)
                    busy += [w for w in windows if w.busy]
            self.rows["gc_collector_cpu"] = collector_share(busy, cpus)

    def _paired_windows(self, loop: CollectorLoop, url: str, script: Path) -> list[Window]:
        """wrk in ``GC_PAIRS`` pairs of an idle and a busy window (half a row's duration
        each), after a warm-up; the collector paused at the end."""
        s = self.settings
        load = functools.partial(
            run_wrk,
            url,
            script,
            connections=s.connections,
            cpus=s.client_cpus,
            threads=s.wrk_threads,
        )
        if s.warmup > 0:
            load(duration=s.warmup)
        windows = []
        for busy in window_order(GC_PAIRS):
            if busy:
                loop.resume()
            else:
                loop.pause()
            before = loop.cpu_seconds()
            result = load(duration=max(1, s.duration // 2))
            cpu = loop.cpu_seconds() - before
            windows.append(Window(busy, result, cpu, os.getloadavg()[0]))
        loop.pause()
        return windows

    def _paired_record(self, key: str, row: dict[str, Any]) -> None:
        if row.get("errors"):
            self.notes.append(f"{self.kind} {key}: wrk counted {row['errors']} errors")
        self.rows[key] = row
        _progress(f"  {self.kind:9} {key:16} {_fmt_progress(key, row['value'])}")

    def _check_read(self, server: Server) -> None:
        fx = self.shared.read
        base = f"{server.url}/v2/{fx.repo}"
        accept = {"Accept": MANIFEST_ACCEPT}
        with httpx.Client(timeout=120) as c:
            r = c.get(f"{base}/manifests/{fx.tag}", headers=accept)
            _expect(
                r.status_code == 200 and r.content == fx.image.manifest,
                f"{self.kind}: manifest GET answered {r.status_code} {r.text[:200]}",
            )
            r = c.head(f"{base}/manifests/{fx.tag}", headers=accept)
            _expect(
                r.status_code == 200
                and r.headers.get("docker-content-digest") == fx.image.manifest_blob.digest,
                f"{self.kind}: manifest HEAD answered {r.status_code}",
            )
            r = c.head(f"{base}/blobs/{fx.image.layer.digest}")
            _expect(
                r.status_code == 200
                and int(r.headers.get("content-length", -1)) == fx.image.layer.size,
                f"{self.kind}: blob HEAD answered {r.status_code}",
            )
            check_tags(c, self.kind, base, fx.tags)
            r = c.get(f"{server.url}/v2/_catalog?n=100")
            repos = r.json().get("repositories") if r.status_code == 200 else None
            expected = sorted(["bench/app"] + [f"library/repo-{i:05d}" for i in range(99)])
            _expect(
                repos == expected,
                f"{self.kind}: _catalog?n=100 answered {r.status_code} {str(repos)[:200]}",
            )
            check_blob(c, self.kind, base, fx.image.layer)

    def _read_rows(self, server: Server) -> None:
        s = self.settings
        fx = self.shared.read
        base = f"{server.url}/v2/{fx.repo}"
        get_m = self._script("manifest-get", "GET", MANIFEST_ACCEPT)
        get = self._script("get", "GET")
        n = s.connections
        manifest = f"{base}/manifests/{fx.tag}"
        self._wrk("manifest_get", server, manifest, get_m, n)
        self._ab_head("manifest_head", server, manifest, {"Accept": MANIFEST_ACCEPT}, n)
        self._ab_head("blob_head", server, f"{base}/blobs/{fx.image.layer.digest}", None, n)
        self._wrk("tags_list", server, f"{base}/tags/list", get, n)
        self._wrk("catalog", server, f"{server.url}/v2/_catalog?n=100", get, n)
        blob = f"{base}/blobs/{fx.image.layer.digest}"
        self._wrk("blob_get_1", server, blob, get, 1)
        self._wrk("blob_get_4", server, blob, get, 4)
        # Last: 256 connections leave a backlog that would slow the next row.
        self._wrk("manifest_get_256", server, manifest, get_m, LATENCY_CONNECTIONS)
        if self.kind == "entrepot":
            self._ceiling_row(get_m)

    def _ceiling_row(self, script: Path) -> None:
        """Bare Starlette on Granian with Entrepot's worker count, constant answer, to GET
        (wrk) and to HEAD (ab, as the HEAD rows)."""
        ceiling = Server(
            "ceiling",
            root=self.settings.workdir / "ceiling",
            workdir=self.settings.workdir / "logs",
            cpus=self.settings.server_cpus,
            workers=self.settings.workers,
        )
        with running(ceiling):
            url = f"{ceiling.url}/v2/any/manifests/latest"  # (its port, once started)
            self._wrk("ceiling", ceiling, url, script, 32)
            # The HEAD rows' client (ab, one thread) against the same constant answer.
            self._ab_head("ceiling_head", ceiling, url, {"Accept": MANIFEST_ACCEPT}, 32)

    def _memory_row(self, server: Server) -> None:
        s = self.settings
        fx = self.shared.read
        url = f"{server.url}/v2/{fx.repo}/blobs/{fx.image.layer.digest}"
        idle = rss_bytes(server.pid)
        idle_pss = pss_bytes(server.pid)
        with RssSampler(server.pid) as sampler:
            dl = clients.parallel_downloads(
                url, s.memory_clients, s.client_cpus, limit_rate=s.memory_rate
            )
        ok = all(code == 200 for code in dl.statuses) and all(
            size == fx.image.layer.size for size in dl.sizes
        )
        _expect(ok, f"{self.kind}: memory row downloads: {dl.statuses} {dl.sizes}")
        self.rows["memory"] = {
            "value": sampler.peak,
            "idle_rss": idle,
            "idle_pss": idle_pss,
            "peak_pss": sampler.peak_pss,
            "processes": sampler.processes,
            "samples": sampler.samples,
            "clients": s.memory_clients,
            "limit_rate": s.memory_rate,
            "seconds": dl.seconds,
            "bytes_per_s": dl.total_bytes / dl.seconds,
        }
        _progress(
            f"  {self.kind:9} memory           peak RSS {sampler.peak / 1e6:.0f} MB "
            f"(idle {idle / 1e6:.0f} MB, {sampler.processes} processes, "
            f"{dl.total_bytes / dl.seconds / 1e9:.2f} GB/s)"
        )

    def _push_rows(self, server: Server) -> None:
        s = self.settings
        layer = self.shared.push_layer
        if self.kind == "entrepot":  # the disk's durable write speed, in the same run
            self.rows["disk_fsync"] = clients.dd_fsync(s.datadir, layer.size)
            _progress(
                f"  disk      dd conv=fsync    {self.rows['disk_fsync']['value'] / 1e6:,.0f} MB/s"
            )
        variant = 0
        with clients.pinned(s.client_cpus), self._push_client(server) as send:
            for key, chunk in (("push_monolithic", None), ("push_chunked", s.chunk)):
                variants = range(variant, variant + s.push_repeats)
                variant += s.push_repeats
                self._pushes(key, server, send, chunk, variants)
        # What the pushes left in the server's memory (a worker keeps some heap for the
        # next body, see entrepot.heap)
        self.rows["push_chunked"]["rss_after"] = rss_bytes(server.pid)
        if self.kind == "entrepot":
            self._floor_rows()

    def _floor_rows(self) -> None:
        """The push floor (bench/floor.py, with Entrepot's worker count): the same pushes
        into bare Starlette on Granian dropping the bytes, then hashing them (no disk),
        then hashing them and writing them to the servers' disk with one fsync; and,
        with the raw client, the drop floor as httpx reaches it."""
        s = self.settings
        n = range(s.push_repeats)  # the variants pushed above: their digests are known
        floors = [
            ("floor", "drop", s.push_client),
            ("floor_sha256", "sha256", s.push_client),
            ("floor_disk", "disk", s.push_client),
        ]
        if s.push_client == "raw":
            floors.append(("floor_httpx", "drop", "httpx"))
        disk_dir = s.datadir / "push-floor"  # the disk dd and the pushes write to
        disk_dir.mkdir(exist_ok=True)
        for prefix, mode, client in floors:
            floor = Server(
                "floor",
                root=s.workdir / "floor",
                workdir=s.workdir / "logs",
                cpus=s.server_cpus,
                workers=s.workers,
                env={"ENTREPOT_BENCH_FLOOR": mode, "ENTREPOT_BENCH_FLOOR_DIR": str(disk_dir)},
                name=prefix,
            )
            with (
                running(floor),
                clients.pinned(s.client_cpus),
                self._push_client(floor, client) as send,
            ):
                for key, chunk in (("monolithic", None), ("chunked", s.chunk)):
                    self._pushes(f"{prefix}_{key}", floor, send, chunk, n, verify=False)

    @contextlib.contextmanager
    def _push_client(self, server: Server, kind: str | None = None) -> Iterator[clients.Send]:
        """The push rows' client (``Settings.push_client``, or ``kind``) for ``server``."""
        layer = self.shared.push_layer
        if (kind or self.settings.push_client) == "raw":
            with RawClient(server.url) as raw:
                yield clients.raw_sender(raw, layer)
        else:
            with httpx.Client(timeout=300) as c:
                yield clients.httpx_sender(c, layer)

    def _pushes(
        self,
        key: str,
        server: Server,
        send: clients.Send,
        chunk: int | None,
        variants: range,
        *,
        verify: bool = True,
    ) -> None:
        """Row ``key``: the median of one push of each of the layer's ``variants`` (their
        digests were computed beforehand)."""
        layer = self.shared.push_layer
        results = []
        server_cpu = []  # the server's CPU seconds per push (less noisy than its speed)
        for i, n in enumerate(variants):
            digest = layer.variant(n)
            with self._profiled(key if i == 0 else "", server, 3):
                cpu = cpu_seconds(server.pid)
                results.append(
                    clients.push_blob(
                        send, server.url, f"bench/{key}-{i}", layer, digest, chunk, verify=verify
                    )
                )
                server_cpu.append(round(cpu_seconds(server.pid) - cpu, 3))
        speeds = sorted(r.bytes_per_s for r in results)
        median = speeds[len(speeds) // 2]
        self.rows[key] = {
            "value": median,
            "runs_seconds": [round(r.seconds, 3) for r in results],
            "runs_bytes_per_s": [round(r.bytes_per_s) for r in results],
            "client_cpu_seconds": [round(r.client_cpu_s, 3) for r in results],
            "server_cpu_seconds": server_cpu,
            "requests_per_push": results[0].requests,
            "size": layer.size,
        }
        _progress(
            f"  {self.kind:9} {key:16} {_fmt_progress(key, median)} "
            f"(runs: {', '.join(f'{r.seconds:.2f}s' for r in results)}; "
            f"server CPU {', '.join(f'{c:.2f}s' for c in server_cpu)})"
        )

    def _pull_rows(self, server: Server, cache_root: Path) -> None:
        s = self.settings
        upstream = self.shared.upstream
        image = self.shared.upstream_image
        assert upstream is not None and image is not None
        layer = image.layer
        blob_url = f"{server.url}/v2/{PROXIED_REPO}/blobs/{layer.digest}"
        cached = cache_root / "docker/registry/v2/blobs/sha256" / layer.hex[:2] / layer.hex / "data"

        self.cold_pull("pull_cold", server, blob_url, cached.exists)
        direct_url = f"{upstream.url}/v2/{PROXIED_REPO}/blobs/{layer.digest}"
        self._pull_floor_rows(blob_url, direct_url, layer.size)
        self._pull_fill_rows(server, cache_root)

        # warm: the image pulled once through the proxy, then manifest GETs by tag
        url = f"{server.url}/v2/{PROXIED_REPO}/manifests/latest"
        with httpx.Client(timeout=60) as c:
            r = c.get(url, headers={"Accept": MANIFEST_ACCEPT})
            _expect(
                r.status_code == 200 and r.content == image.manifest,
                f"{self.kind}: pull-through manifest GET answered {r.status_code}",
            )
            r = c.get(f"{server.url}/v2/{PROXIED_REPO}/blobs/{image.config_blob.digest}")
            _expect(
                r.status_code == 200 and r.content == image.config,
                f"{self.kind}: pull-through config GET answered {r.status_code}",
            )
        script = self._script("manifest-get", "GET", MANIFEST_ACCEPT)
        mark = upstream.log_size()
        self._wrk("pull_warm", server, url, script, s.connections)
        _wait_quiet(upstream, lambda: True, timeout=10)
        self.rows["pull_warm"]["upstream"] = upstream_traffic(upstream.log_since(mark))

    def _pull_floor_rows(self, blob_url: str, direct_url: str, size: int) -> None:
        """What the cold row cannot beat, measured right after it in the same conditions:
        the same clients fetching the blob now cached (``pull_cached_time``: sent from the
        file), and one client fetching it from the upstream alone (``pull_upstream_time``:
        the download a fill makes, without hashing or writing it)."""
        s = self.settings
        for key, url, count in (
            ("pull_cached_time", blob_url, s.pull_clients),
            ("pull_upstream_time", direct_url, 1),
        ):
            dl = clients.parallel_downloads(url, count, s.client_cpus)
            _expect(
                all(code == 200 for code in dl.statuses) and all(got == size for got in dl.sizes),
                f"{self.kind}: {key} downloads: {dl.statuses} {dl.sizes}",
            )
            self.rows[key] = {"value": dl.seconds, "client_seconds": dl.client_seconds}
            _progress(f"  {self.kind:9} {key:16} {dl.seconds:.2f} s wall, {count} clients")

    def _pull_fill_rows(self, server: Server, cache_root: Path) -> None:
        """What one fill costs, next to the cold row: one client pulling another uncached
        blob of the same size through the server (``pull_fill_time``: the fill, then one
        send), and the disk's durable write of that size (``pull_disk_time``: ``dd
        conv=fsync``), which a fill that makes the blob durable before sending it cannot
        beat."""
        s = self.settings
        blob = self.shared.upstream_fill_layer
        if blob is None:
            return
        url = f"{server.url}/v2/{PROXIED_REPO}/blobs/{blob.digest}"
        dl = clients.parallel_downloads(url, 1, s.client_cpus)
        _expect(
            dl.statuses == [200] and dl.sizes == [blob.size],
            f"{self.kind}: pull_fill_time download: {dl.statuses} {dl.sizes}",
        )
        self.rows["pull_fill_time"] = {"value": dl.seconds, "client_seconds": dl.client_seconds}
        # registry:2 stores it in the background: let that end before the next rows.
        cached = cache_root / "docker/registry/v2/blobs/sha256" / blob.hex[:2] / blob.hex / "data"
        assert self.shared.upstream is not None
        _wait_quiet(self.shared.upstream, cached.exists, timeout=120)
        _progress(f"  {self.kind:9} pull_fill_time   {dl.seconds:.2f} s wall, 1 client")
        if self.kind == "entrepot":
            disk = clients.dd_fsync(s.datadir, blob.size)
            rate = disk["value"]
            assert isinstance(rate, float)
            seconds = blob.size / rate
            self.rows["pull_disk_time"] = {**disk, "value": seconds}
            _progress(f"  disk      pull_disk_time   {seconds:.2f} s")

    def cold_pull(
        self,
        key: str,
        server: Server,
        blob_url: str,
        cached: Callable[[], bool],
        **details: Any,
    ) -> None:
        """The upstream's layer fetched at once by the pull clients from ``blob_url``,
        nothing cached: rows ``KEY_bytes`` (upstream bytes, from its access log, in
        layers) and ``KEY_time`` (wall time). ``cached``: whether the server stored it."""
        s = self.settings
        upstream = self.shared.upstream
        image = self.shared.upstream_image
        assert upstream is not None and image is not None
        layer = image.layer
        mark = upstream.log_size()
        with self._profiled(key, server, 5):
            dl = clients.parallel_downloads(blob_url, s.pull_clients, s.client_cpus)
        ok = all(code == 200 for code in dl.statuses) and all(sz == layer.size for sz in dl.sizes)
        _expect(
            ok, f"{self.kind}: cold pull downloads: {dl.statuses} {dl.sizes}\n{server.log_tail()}"
        )
        # registry:2 stores the blob in the background: wait until it is cached and the
        # upstream has been quiet for a second before counting its bytes.
        _wait_quiet(upstream, cached, timeout=120)
        traffic = upstream_traffic(upstream.log_since(mark))
        with httpx.Client(timeout=120) as c:
            status, digest, _size = clients.fetch_digest(c, blob_url)
        _expect(
            status == 200 and digest == layer.digest,
            f"{self.kind}: cached blob GET answered {status}, {digest}",
        )
        self.rows[f"{key}_bytes"] = {
            "value": traffic["blob_bytes"] / layer.size,
            "upstream": traffic,
            "layer_size": layer.size,
        }
        self.rows[f"{key}_time"] = {
            "value": dl.seconds,
            "client_seconds": dl.client_seconds,
            "clients": s.pull_clients,
            **details,
        }
        _progress(
            f"  {self.kind:9} {key:16} {dl.seconds:.2f} s wall, upstream "
            f"{traffic['blob_bytes'] / layer.size:.2f}x the layer "
            f"({traffic['blob_gets']} blob GETs)"
        )


def check_tags(c: httpx.Client, who: str, base: str, count: int) -> None:
    """``base``/tags/list answers ``count`` tags."""
    r = c.get(f"{base}/tags/list")
    tags = r.json().get("tags") if r.status_code == 200 else None
    _expect(
        isinstance(tags, list) and len(tags) == count,
        f"{who}: tags list answered {r.status_code}, {len(tags or [])} tags",
    )


def check_blob(c: httpx.Client, who: str, base: str, blob: Blob) -> None:
    """A GET of ``blob`` in the repository at ``base`` answers its bytes."""
    status, digest, size = clients.fetch_digest(c, f"{base}/blobs/{blob.digest}")
    _expect(
        status == 200 and digest == blob.digest and size == blob.size,
        f"{who}: blob GET answered {status}, {size} bytes, {digest}",
    )


# registry:2's access log (gorilla's combined format): "... "GET /path HTTP/1.1" 200 1234 ..."
_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def upstream_traffic(log: str) -> dict[str, int]:
    out = {"requests": 0, "bytes": 0, "blob_gets": 0, "blob_bytes": 0, "manifest_requests": 0}
    for m in _ACCESS.finditer(log):
        method, path, _status, size = m.groups()
        n = 0 if size == "-" else int(size)
        out["requests"] += 1
        out["bytes"] += n
        if "/blobs/" in path and method == "GET":
            out["blob_gets"] += 1
            out["blob_bytes"] += n
        if "/manifests/" in path:
            out["manifest_requests"] += 1
    return out


def py_spy() -> str:
    """py-spy from PATH, else from this interpreter's venv."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else "py-spy")


def collect_in_turn(shared: Shared, settings: Settings, servers: Sequence[str]) -> None:
    """Every collector's collections of the bench store (``gc.GC_RUNS`` each, and the
    floor's with Entrepot's), each of a copy, in turn (gc.in_turn), into ``shared``; the
    servers' runs make their rows from them."""
    store = shared.gc
    assert store is not None
    kinds = [*servers, *(["floor"] if "entrepot" in servers else [])]
    _progress(f"garbage-collect ({store.medium}, {gc.GC_RUNS} runs each in turn: {kinds})")

    def collect_one(kind: str, root: Path) -> Any:
        load = os.getloadavg()[0]
        if kind == "floor":
            return gc.collect_floor(root, store.kept, settings.server_cpus), load
        seconds, cpu, rested = gc.collect(
            kind, root, store.kept, settings.workdir, settings.server_cpus
        )
        if rested:
            _progress(f"{kind}: the collection rested {rested:.1f}s of {seconds:.1f}s")
        return seconds, cpu, rested, [load, os.getloadavg()[0]]

    shared.gc_runs, shared.gc_served = gc.in_turn(store, kinds, collect_one, keep="entrepot")


def remove_tree(path: Path) -> None:
    """``rm -rf``: much faster than shutil.rmtree on the 10,000-repository fixture."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def _wait_quiet(server: Server, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, since = server.log_size(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        size = server.log_size()
        if size != last:
            last, since = size, time.monotonic()
        elif ready() and time.monotonic() - since >= 1.0:
            return


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def _fmt_progress(key: str, value: float) -> str:
    if key.removeprefix("s3_").startswith(("blob_get", "push", "floor")):
        return f"{value / 1e6:,.0f} MB/s"
    return f"{value:,.0f} req/s"


def _progress(text: str) -> None:
    print(text, flush=True)
