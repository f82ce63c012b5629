"""The table (markdown, to be quoted in the README), the machine description, the JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fixtures import MiB
from bench.servers import REGISTRY2_BINARY


@dataclass(frozen=True)
class Row:
    key: str
    label: str  # formatted with the settings: {layer}, {conns}, {tags}, {repos}, ...
    unit: str  # "req/s", "bytes/s", "seconds", "layers", "bytes"
    target: str
    # met(registry2 value, entrepot value, ratio) -> bool; None: a figure, no target
    met: Callable[[float, float, float], bool] | None
    solo: bool = False  # Entrepot's column only (the ceiling, the disk, shares of them)


ROWS: tuple[Row, ...] = (
    Row(
        "manifest_get",
        "manifest GET by tag, warm, {conns} conns",
        "req/s",
        ">= 8x",
        lambda r, e, x: x >= 8,
    ),
    Row(
        "manifest_head",
        "manifest HEAD by tag, {conns} conns",
        "req/s",
        ">= 8x",
        lambda r, e, x: x >= 8,
    ),
    Row("blob_head", "blob HEAD, {conns} conns", "req/s", ">= 8x", lambda r, e, x: x >= 8),
    Row(
        "ceiling",
        "framework ceiling: bare Starlette on Granian, constant answer, same workers, 32 conns",
        "req/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "ceiling_share",
        "manifest GET by tag / framework ceiling",
        "share",
        ">= 0.5",
        lambda r, e, x: e >= 0.5,
        solo=True,
    ),
    Row(
        "ceiling_head",
        "framework ceiling for HEAD: the same, answering HEAD (`ab -i -k`), 32 conns",
        "req/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "manifest_head_share",
        "manifest HEAD by tag / HEAD ceiling",
        "share",
        ">= 0.5",
        lambda r, e, x: e >= 0.5,
        solo=True,
    ),
    Row(
        "blob_head_share",
        "blob HEAD / HEAD ceiling",
        "share",
        ">= 0.5",
        lambda r, e, x: e >= 0.5,
        solo=True,
    ),
    Row(
        "ceiling_head_bound",
        "HEAD ceiling / registry:2's blob HEAD: the most a HEAD row's ratio can be here",
        "share",
        "",
        None,
        solo=True,
    ),
    Row("latency_32", "manifest GET latency, {conns} conns", "latency", "", None),
    Row("latency_256", "manifest GET latency, 256 conns", "latency", "", None),
    Row(
        "tags_list",
        "tags list, repo with {tags:,} tags, {conns} conns",
        "req/s",
        ">= 3x",
        lambda r, e, x: x >= 3,
    ),
    Row(
        "catalog",
        "`_catalog?n=100`, {repos:,} repos, {conns} conns",
        "req/s",
        ">= 10x",
        lambda r, e, x: x >= 10,
    ),
    Row("blob_get_1", "blob GET {layer}, 1 conn", "bytes/s", ">= 1.0x", lambda r, e, x: x >= 1),
    Row("blob_get_4", "blob GET {layer}, 4 conns", "bytes/s", ">= 1.0x", lambda r, e, x: x >= 1),
    Row(
        "push_monolithic",
        "push {layer}, monolithic (POST + PUT)",
        "bytes/s",
        ">= 2x",
        lambda r, e, x: x >= 2,
    ),
    Row(
        "push_chunked",
        "push {layer}, {chunk} PATCH chunks",
        "bytes/s",
        ">= 2x",
        lambda r, e, x: x >= 2,
    ),
    Row(
        "disk_fsync",
        "this disk's durable writes: dd {layer} conv=fsync",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "push_monolithic_disk",
        "push {layer} monolithic / dd conv=fsync",
        "share",
        ">= 0.9",
        lambda r, e, x: e >= 0.9,
        solo=True,
    ),
    Row(
        "push_chunked_disk",
        "push {layer} in {chunk} chunks / dd conv=fsync",
        "share",
        ">= 0.9",
        lambda r, e, x: e >= 0.9,
        solo=True,
    ),
    Row(
        "floor_monolithic",
        "push floor: bare Starlette on Granian receiving {layer} monolithic, bytes dropped",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_chunked",
        "push floor: the same in {chunk} PATCH chunks",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_sha256_monolithic",
        "push floor with SHA-256 (no disk), monolithic",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_sha256_chunked",
        "push floor with SHA-256 (no disk), {chunk} chunks",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_disk_monolithic",
        "push floor with SHA-256 and the disk (written back as it comes, one fsync), monolithic",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_disk_chunked",
        "push floor with SHA-256 and the disk, {chunk} chunks",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_httpx_monolithic",
        "push floor, monolithic, sent by httpx (the client check)",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_httpx_chunked",
        "push floor, {chunk} chunks, sent by httpx",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_monolithic_disk",
        "push floor monolithic / dd conv=fsync",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_chunked_disk",
        "push floor in {chunk} chunks / dd conv=fsync",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_disk_monolithic_disk",
        "push floor with SHA-256 and the disk, monolithic / dd conv=fsync",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "floor_disk_chunked_disk",
        "push floor with SHA-256 and the disk, {chunk} chunks / dd conv=fsync",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "push_monolithic_floor_disk",
        "push {layer} monolithic / push floor with SHA-256 and the disk",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "push_chunked_floor_disk",
        "push {layer} in {chunk} chunks / push floor with SHA-256 and the disk",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "push_monolithic_floor",
        "push {layer} monolithic / push floor",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "push_chunked_floor",
        "push {layer} in {chunk} chunks / push floor",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "pull_cold_bytes",
        "cold pull-through {layer}, {pull} clients: upstream bytes",
        "layers",
        "Entrepot 1.0x layer",
        lambda r, e, x: abs(e - 1.0) < 1e-9,
    ),
    Row(
        "pull_cold_time",
        "cold pull-through {layer}, {pull} clients: wall time",
        "seconds",
        "<= 0.5x",
        lambda r, e, x: x <= 0.5,
    ),
    Row(
        "pull_cached_time",
        "the same {pull} clients once the blob is cached (cold row's floor): wall time",
        "seconds",
        "",
        None,
    ),
    Row(
        "pull_upstream_time",
        "the upstream alone: blob GET {layer}, 1 client (the fill's download): wall time",
        "seconds",
        "",
        None,
    ),
    Row(
        "pull_cold_floor",
        "cold pull-through / (upstream alone + cached)",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "pull_fill_time",
        "one client pulling another uncached {layer} blob through (the fill, one send): wall time",
        "seconds",
        "",
        None,
    ),
    Row(
        "pull_disk_time",
        "the disk alone: dd conv=fsync of {layer} (a durable fill's floor): wall time",
        "seconds",
        "",
        None,
        solo=True,
    ),
    Row(
        "pull_cold_fill",
        "cold pull-through / (one-client fill + cached)",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "pull_durable_floor",
        "(disk alone + cached) / (registry:2's cold time x 0.5): above 1, no fill made durable "
        "before clients get the file meets the target here",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "pull_warm",
        "warm pull-through, manifest GET by tag, {conns} conns",
        "req/s",
        ">= 3x",
        lambda r, e, x: x >= 3,
    ),
    Row(
        "gc",
        "garbage-collect, {repos:,} repos, {gc_blobs:,} blobs (half unreferenced), on "
        "{gc_medium}: wall time",
        "seconds",
        "",
        None,
    ),
    Row(
        "gc_speedup",
        "garbage-collect: registry:2's wall time / Entrepot's",
        "times",
        ">= 5x",
        lambda r, e, x: e >= 5,
        solo=True,
    ),
    Row("gc_cpu", "garbage-collect: CPU time (user + system)", "seconds", "", None),
    Row(
        "gc_floor",
        "the least a collection with Entrepot's safety steps does here: bench/gcfloor.py, "
        "plain system-call loops in 2 processes",
        "seconds",
        "",
        None,
        solo=True,
    ),
    Row(
        "gc_floor_bare",
        "the same without the safety steps (registry:2's work: list, mark, delete)",
        "seconds",
        "",
        None,
        solo=True,
    ),
    Row(
        "gc_floor_target",
        "that floor / (registry:2's wall time / 5): above 1, no collection with these "
        "steps meets 5x here; below 1, what is left is Entrepot's own cost",
        "times",
        "",
        None,
        solo=True,
    ),
    Row(
        "gc_serving_manifest",
        "manifest GET while garbage-collect runs in a loop / idle, {conns} conns, "
        "idle and busy windows in turn",
        "share",
        ">= 0.8",
        lambda r, e, x: e >= 0.8,
        solo=True,
    ),
    Row(
        "gc_serving_blob",
        "blob GET (small) while garbage-collect runs in a loop / idle, {conns} conns, "
        "idle and busy windows in turn",
        "share",
        ">= 0.8",
        lambda r, e, x: e >= 0.8,
        solo=True,
    ),
    Row(
        "gc_collector_cpu",
        "garbage-collect's CPU (its processes) during those busy windows / their time / "
        "the server's CPUs",
        "share",
        "",
        None,
        solo=True,
    ),
    Row(
        "memory",
        "peak RSS, {mem} clients downloading {layer} at once",
        "bytes",
        "Entrepot < 200 MB",
        lambda r, e, x: e < 200e6,
    ),
    # group s3: both servers on one radosgw, redirect disabled (bench/s3.py)
    Row(
        "s3_push_monolithic",
        "S3: push {layer}, monolithic (POST + PUT)",
        "bytes/s",
        ">= 1.0x",
        lambda r, e, x: x >= 1,
    ),
    Row(
        "s3_push_chunked",
        "S3: push {layer}, {chunk} PATCH chunks",
        "bytes/s",
        ">= 1.0x",
        lambda r, e, x: x >= 1,
    ),
    Row(
        "s3_blob_get_1",
        "S3: blob GET {layer}, 1 conn",
        "bytes/s",
        ">= 1.0x",
        lambda r, e, x: x >= 1,
    ),
    Row(
        "s3_blob_get_floor",
        "S3 blob GET floor: bare Granian streaming the object from S3 (obstore), 1 conn",
        "bytes/s",
        "",
        None,
        solo=True,
    ),
    Row(
        "s3_manifest_get",
        "S3: manifest GET by tag, {conns} conns",
        "req/s",
        ">= 3x",
        lambda r, e, x: x >= 3,
    ),
    Row(
        "s3_tags_list",
        "S3: tags list, repo with {s3_tags:,} tags, {conns} conns",
        "req/s",
        ">= 1.0x",
        lambda r, e, x: x >= 1,
    ),
    Row(
        "s3_pull_cold_bytes",
        "S3: cold pull-through {layer}, {pull} clients over 2 replicas: upstream bytes",
        "layers",
        "Entrepot 1.0x layer",
        lambda r, e, x: abs(e - 1.0) < 1e-9,
    ),
    Row(
        "s3_pull_cold_time",
        "S3: cold pull-through {layer}, {pull} clients over 2 replicas: wall time",
        "seconds",
        "<= 1.0x",
        lambda r, e, x: x <= 1,
    ),
    Row(
        "s3_pull_floor",
        "S3 pull floor: the {pull} clients straight from the upstream (no cache, S3 or nginx)",
        "seconds",
        "",
        None,
        solo=True,
    ),
)


def fmt_value(unit: str, value: float, details: dict[str, Any] | None = None) -> str:
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "bytes/s":
        return f"{value / 1e9:.2f} GB/s" if value >= 1e9 else f"{value / 1e6:,.0f} MB/s"
    if unit == "seconds":
        return f"{value:.2f} s"
    if unit == "share":
        return f"{value:.2f}"
    if unit == "times":
        return f"{value:.2f}x"
    if unit == "latency" and details:
        return f"p50 {details['p50_us'] / 1000:.1f} ms, p99 {value / 1000:.1f} ms"
    if unit == "layers":
        return f"{value:.2f}x layer"
    if unit == "bytes":
        procs = f" ({details['processes']} proc.)" if details and details.get("processes") else ""
        return f"{value / 1e6:,.0f} MB{procs}"
    return f"{value:g}"


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size % MiB == 0 else f"{size:,} B"


def derive(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Add the rows computed from others: latencies from the wrk runs, Entrepot's shares
    of the framework ceiling and of the disk's durable write speed."""
    for rows in results.values():
        for key, source in (("latency_32", "manifest_get"), ("latency_256", "manifest_get_256")):
            load = rows.get(source, {}).get("load")
            if load:
                rows[key] = {"value": load["latency_p99_us"], "p50_us": load["latency_p50_us"]}
    ep = results.get("entrepot", {})
    r2_gc, ep_gc = results.get("registry2", {}).get("gc"), ep.get("gc")
    if r2_gc and ep_gc and ep_gc["value"]:
        ep["gc_speedup"] = {"value": r2_gc["value"] / ep_gc["value"]}
    if r2_gc and r2_gc["value"] and "gc_floor" in ep:
        ep["gc_floor_target"] = {"value": ep["gc_floor"]["value"] / (r2_gc["value"] / 5)}
    for key, part, whole in (
        ("ceiling_share", "manifest_get", "ceiling"),
        ("manifest_head_share", "manifest_head", "ceiling_head"),
        ("blob_head_share", "blob_head", "ceiling_head"),
        ("push_monolithic_disk", "push_monolithic", "disk_fsync"),
        ("push_chunked_disk", "push_chunked", "disk_fsync"),
        ("floor_monolithic_disk", "floor_monolithic", "disk_fsync"),
        ("floor_chunked_disk", "floor_chunked", "disk_fsync"),
        ("floor_disk_monolithic_disk", "floor_disk_monolithic", "disk_fsync"),
        ("floor_disk_chunked_disk", "floor_disk_chunked", "disk_fsync"),
        ("push_monolithic_floor_disk", "push_monolithic", "floor_disk_monolithic"),
        ("push_chunked_floor_disk", "push_chunked", "floor_disk_chunked"),
        ("push_monolithic_floor", "push_monolithic", "floor_monolithic"),
        ("push_chunked_floor", "push_chunked", "floor_chunked"),
        ("gc_serving_manifest", "gc_busy_manifest", "gc_idle_manifest"),
        ("gc_serving_blob", "gc_busy_blob", "gc_idle_blob"),
    ):
        if part in ep and ep.get(whole, {}).get("value"):
            ep[key] = {"value": ep[part]["value"] / ep[whole]["value"]}
    for kind in ("manifest", "blob"):  # the pairs behind the ratio (bench/gcloop.py)
        busy, idle = ep.get(f"gc_busy_{kind}", {}), ep.get(f"gc_idle_{kind}", {})
        if f"gc_serving_{kind}" in ep:
            ep[f"gc_serving_{kind}"].update(
                {k: v for k, v in busy.items() if k not in ("value", "windows", "loadavg")},
                busy=busy["value"],
                idle=idle["value"],
                loadavg={"idle": idle.get("loadavg"), "busy": busy.get("loadavg")},
            )
    # The cold pull-through cannot end before the download and the cached send.
    floor = [ep.get(k, {}).get("value", 0.0) for k in ("pull_upstream_time", "pull_cached_time")]
    if "pull_cold_time" in ep and all(floor):
        ep["pull_cold_floor"] = {"value": ep["pull_cold_time"]["value"] / (floor[0] + floor[1])}
    cached = ep.get("pull_cached_time", {}).get("value", 0.0)
    if "pull_cold_time" in ep and cached and ep.get("pull_fill_time", {}).get("value"):
        fill = ep["pull_fill_time"]["value"]
        ep["pull_cold_fill"] = {"value": ep["pull_cold_time"]["value"] / (fill + cached)}
    r2_cold = results.get("registry2", {}).get("pull_cold_time", {}).get("value")
    if r2_cold and cached and "pull_disk_time" in ep:
        disk = ep["pull_disk_time"]["value"]
        ep["pull_durable_floor"] = {"value": (disk + cached) / (r2_cold * 0.5)}
    r2_blob_head = results.get("registry2", {}).get("blob_head", {}).get("value")
    if "ceiling_head" in ep and r2_blob_head:
        ep["ceiling_head_bound"] = {"value": ep["ceiling_head"]["value"] / r2_blob_head}


def build_rows(
    results: dict[str, dict[str, dict[str, Any]]], labels: dict[str, Any]
) -> list[dict[str, Any]]:
    """One dict per row present for both servers: label, values, ratio, target, met."""
    out = []
    for row in ROWS:
        r2 = results.get("registry2", {}).get(row.key)
        ep = results.get("entrepot", {}).get(row.key)
        if r2 is None and ep is None:
            continue
        entry: dict[str, Any] = {
            "key": row.key,
            "workload": row.label.format(**labels),
            "unit": row.unit,
            "target": row.target or "-",
            "registry2": r2,
            "entrepot": ep,
            "ratio": None,
            "met": None,
        }
        if r2 is not None and ep is not None and r2["value"]:
            ratio = ep["value"] / r2["value"]
            entry["ratio"] = ratio
            if row.met is not None:
                entry["met"] = bool(row.met(r2["value"], ep["value"], ratio)) and not (
                    ep.get("errors") or r2.get("errors")
                )
        elif row.solo and ep is not None and row.met is not None:
            entry["met"] = bool(row.met(0.0, ep["value"], 0.0)) and not ep.get("errors")
        out.append(entry)
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | registry:2 | Entrepot | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        cells = []
        for who in ("registry2", "entrepot"):
            data = row[who]
            if data is None:
                cells.append("-")
                continue
            text = fmt_value(row["unit"], data["value"], data)
            if data.get("errors"):
                text += f" ({data['errors']} errors)"
            cells.append(text)
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        met = {None: "-", True: "yes", False: "**no**"}[row["met"]]
        lines.append(
            f"| {row['workload']} | {cells[0]} | {cells[1]} | {ratio} | {row['target']} | {met} |"
        )
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "(not found)"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "(unknown)"


def machine() -> dict[str, Any]:
    model = "(unknown)"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "(not installed)"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "granian": version("granian"),
        "entrepot": version("entrepot"),
        "uvloop": version("uvloop"),
        "docker_registry": _first_line([REGISTRY2_BINARY, "--version"]),
        "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0],
        "curl": _first_line(["curl", "--version"]).split(" (")[0],
        "loadavg_at_start": os.getloadavg(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_src_modified": bool(_git("status", "--porcelain", "--", "src")),
    }


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def machine_line(m: dict[str, Any], settings: dict[str, Any]) -> str:
    return (
        f"Entrepot {m['entrepot']} at commit {m['git_commit'] or '?'}"
        f"{' (src/ modified)' if m['git_src_modified'] else ''}. "
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, Granian {m['granian']}, {m['docker_registry']}, {m['wrk']}. "
        f"Servers pinned to CPUs {settings['server_cpus']} (one at a time), load generators to "
        f"CPUs {settings['client_cpus']}; Entrepot with "
        f"{settings['workers'] or 'its default (one per core)'} worker(s); "
        f"wrk {settings['wrk_threads']} thread, {settings['duration']:g} s per row after "
        f"{settings['warmup']:g} s warm-up; load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}."
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
