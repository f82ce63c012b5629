"""``python -m bench [--quick] [--workers N] ...``: registry:2 against Entrepot, one table."""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import fixtures, gc, report, s3, scale
from bench.servers import REGISTRY2_BINARY, REPO_ROOT, Server
from bench.workloads import (
    GROUPS,
    ServerRun,
    Settings,
    Shared,
    collect_in_turn,
    py_spy,
    remove_tree,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVERS = ("registry2", "entrepot")


def _parser() -> argparse.ArgumentParser:
    all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Entrepot against registry:2 (Debian's docker-registry) on "
        "127.0.0.1 and print one table of figures with the ratio Entrepot/registry:2.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small data (32 MiB layer, 1,000 repos, 100 tags), "
        "2 s per row; a few minutes (the s3 group about 3)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="Entrepot worker processes (default: Entrepot's own, one per core, as users get)",
    )
    p.add_argument(
        "--server-cpus",
        default=all_cpus,
        help=f"taskset CPU list for each server and the upstream (default {all_cpus})",
    )
    p.add_argument(
        "--client-cpus",
        default=all_cpus,
        help=f"taskset CPU list for wrk, curl and the push client (default {all_cpus})",
    )
    p.add_argument("--duration", type=int, help="seconds per wrk row (default 8, quick 2)")
    p.add_argument("--warmup", type=int, help="wrk warm-up seconds per row (default 2, quick 1)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run, of {', '.join(GROUPS)} (default all)",
    )
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated servers to run (default registry2,entrepot)",
    )
    p.add_argument(
        "--profile",
        metavar="ROW",
        help="record Entrepot with py-spy during this row (e.g. catalog); the "
        "profile goes to bench/results/profile-ROW.txt and that row is slowed",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="JSON results file (default bench/results/latest.json)",
    )
    p.add_argument(
        "--tmpdir",
        type=Path,
        default=fixtures.default_tmpdir(),
        help="fixtures (the read-only data both servers serve, the layer files), "
        "logs (default /dev/shm when it is a writable tmpfs, else /tmp)",
    )
    p.add_argument(
        "--datadir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="what the servers write: push targets and pull-through caches, on a "
        "real filesystem so that fsync costs what it costs (default /tmp)",
    )
    p.add_argument(
        "--push-client",
        choices=("raw", "httpx"),
        default="raw",
        help="the push rows' client: raw (HTTP/1.1 with sendfile from the layer file, "
        "bench/rawhttp.py; default) or httpx (as before)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def _check_tools(profile: bool, groups: tuple[str, ...]) -> list[str]:
    missing = s3.missing_tools() if "s3" in groups else []
    if not Path(REGISTRY2_BINARY).exists():
        missing.append(f"{REGISTRY2_BINARY} (apt-get install docker-registry)")
    for tool, package in (
        ("wrk", "wrk"),
        ("ab", "apache2-utils"),
        ("curl", "curl"),
        ("taskset", "util-linux"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if profile and shutil.which(py_spy()) is None:
        missing.append("py-spy (pip install py-spy)")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.time()
    t0 = time.monotonic()
    groups = tuple(g for g in args.only.split(",") if g)
    servers = tuple(s for s in args.servers.split(",") if s)
    missing = _check_tools(bool(args.profile), groups)
    if missing:
        print("bench: missing tools: " + "; ".join(missing), file=sys.stderr)
        return 2
    if bad := [g for g in groups if g not in GROUPS] + [s for s in servers if s not in SERVERS]:
        print(f"bench: unknown group or server: {', '.join(bad)}", file=sys.stderr)
        return 2

    quick = args.quick
    # Entrepot as users run it: pip and the container image compile its bytecode. Run from
    # a checkout where PYTHONDONTWRITEBYTECODE is set (this machine sets it), each process
    # Entrepot starts would compile its modules again: 0.3-0.8 s of a collection's CPU.
    compileall.compile_dir(REPO_ROOT / "src", quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="entrepot-bench-", dir=args.tmpdir))
    datadir = Path(tempfile.mkdtemp(prefix="entrepot-bench-data-", dir=args.datadir))
    settings = Settings(
        quick=quick,
        layer_size=(32 if quick else 256) * fixtures.MiB,
        repos=1_000 if quick else 10_000,
        tags=100 if quick else 1_000,
        s3_tags=20 if quick else 100,
        duration=args.duration or (2 if quick else 8),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        push_repeats=1 if quick else 3,
        chunk=16 * fixtures.MiB,
        push_client=args.push_client,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
        workers=args.workers,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        groups=groups,
        profile=args.profile,
        workdir=workdir,
        datadir=datadir,
        results_dir=args.output.parent,
    )
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    gc_blobs = 10 * settings.repos  # 100,000 blobs for 10,000 repositories
    machine = report.machine()
    print(f"bench: fixtures in {workdir}, server data in {datadir}", flush=True)
    upstream: Server | None = None
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    scale_results: dict[int, dict[str, dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    gc_medium = ""
    try:
        t = time.monotonic()
        layer_file = workdir / "layer.bin"
        layer = fixtures.make_layer(layer_file, settings.layer_size)
        # Only the read and memory rows serve the 10,000 repositories (a minute to write).
        serves_read = "read" in groups or "memory" in groups
        read = fixtures.write_read_fixture(
            workdir / "read",
            layer_file,
            layer,
            settings.repos if serves_read else 1,
            settings.tags if serves_read else 1,
        )
        push_layer = fixtures.PushLayer(workdir / "push.bin", layer_file)
        for n in range(2 * settings.push_repeats if "push" in groups else 0):  # digests first
            push_layer.variant(n)
        for n in range(2 * s3.PUSH_REPEATS if "s3" in groups else 0):
            push_layer.variant(s3.FIRST_VARIANT + n)
        upstream_image = None
        if "pull" in groups or "s3" in groups:
            up_layer_file = workdir / "upstream-layer.bin"
            up_layer = fixtures.make_layer(up_layer_file, settings.layer_size)
            if "pull" in groups:  # a second uncached blob, for the one-client fill row
                fill_file = workdir / "upstream-fill-layer.bin"
                fill_layer = fixtures.make_layer(fill_file, settings.layer_size)
            upstream_image = fixtures.write_upstream_fixture(
                workdir / "upstream",
                up_layer_file,
                up_layer,
                (fill_file, fill_layer) if "pull" in groups else None,
            )
            upstream = Server(
                "upstream",
                root=workdir / "upstream",
                workdir=workdir / "logs",
                cpus=settings.server_cpus,
                quiet=False,
            ).start()
        timings["fixtures_s"] = time.monotonic() - t
        print(
            f"bench: fixtures ready in {timings['fixtures_s']:.1f} s "
            f"({settings.repos:,} repos, {settings.tags:,} tags, "
            f"{report.size_label(layer.size)} layer)",
            flush=True,
        )
        shared = Shared(read, layer, push_layer, upstream, upstream_image)
        if "pull" in groups:
            shared.upstream_fill_layer = fill_layer
        if "gc" in groups:
            where = gc.store_dir(workdir, datadir, settings.repos)
            # Entrepot's row adds collections of copies of its own: the floor's.
            collectors = (len(servers) + ("entrepot" in servers)) * gc.GC_RUNS
            shared.gc = gc.GcStore(where, settings.repos, gc_blobs, collectors)
            gc_medium = shared.gc.medium
            t = time.monotonic()
            collect_in_turn(shared, settings, servers)
            timings["gc_s"] = time.monotonic() - t
        for kind in servers:
            t = time.monotonic()
            run = ServerRun(kind, settings, shared)
            try:
                run.run()
            finally:
                results[kind] = run.rows
                notes.extend(run.notes)
                timings[f"{kind}_s"] = time.monotonic() - t
        if "s3" in groups:
            t = time.monotonic()
            s3.run_s3(servers, settings, shared, settings.s3_tags, results, notes)
            timings["s3_s"] = time.monotonic() - t
        push_layer.close()
        if "scale" in groups:
            t = time.monotonic()
            sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
            scale_results = scale.run_scale(
                sizes, 1_000 if quick else 10_000, 8, list(servers), args.tmpdir
            )
            timings["scale_s"] = time.monotonic() - t
    finally:
        if upstream is not None:
            upstream.stop()
        if args.keep:
            print(f"bench: kept {workdir} and {datadir}", file=sys.stderr)
        else:
            remove_tree(workdir)
            remove_tree(datadir)

    labels = {
        "layer": report.size_label(settings.layer_size),
        "conns": settings.connections,
        "tags": settings.tags,
        "repos": settings.repos,
        "chunk": report.size_label(settings.chunk),
        "pull": settings.pull_clients,
        "mem": settings.memory_clients,
        "gc_blobs": gc_blobs,
        "gc_medium": gc_medium,
        "s3_tags": settings.s3_tags,
    }
    report.derive(results)
    rows = report.build_rows(results, labels)
    runtime = time.monotonic() - t0
    settings_dict = {k: v for k, v in asdict(settings).items() if k != "results_dir"}
    table = report.markdown_table(rows)
    print()
    print(table)
    print()
    print(report.machine_line(machine, settings_dict))
    if scale_results:
        print()
        print(scale.table(scale_results))
    for note in notes:
        print(f"note: {note}")
    print(f"Total runtime {runtime:.0f} s; results in {args.output}")
    report.write_json(
        args.output,
        {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "runtime_s": round(runtime, 1),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "machine": machine,
            "settings": settings_dict,
            "rows": rows,
            "notes": notes,
            "table_markdown": table,
            "scale": {str(size): rows for size, rows in scale_results.items()},
            "scale_table_markdown": scale.table(scale_results) if scale_results else "",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
