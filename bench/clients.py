"""Clients other than wrk: the push client (httpx) and concurrent downloads (curl).

The push client does what docker/skopeo do for one layer: a monolithic upload (POST, then
one PUT with the whole body and ``?digest=``) or a chunked one (POST, PATCHes of a fixed
size with ``Content-Range``, a final empty PUT with ``?digest=``). The same code runs
against both servers, pinned to the same cores (``os.sched_setaffinity`` of the bench
process around the push).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.fixtures import MiB, PushLayer
from bench.rawhttp import RawClient

SEND_STEP = 4 * MiB  # bytes per write of a streamed body


@contextlib.contextmanager
def pinned(cpus: str) -> Iterator[None]:
    """Run the calling process on ``cpus`` ("0-1", "0,1") for the duration of the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, parse_cpus(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def parse_cpus(cpus: str) -> set[int]:
    out: set[int] = set()
    for part in cpus.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


@dataclass
class PushResult:
    mode: str
    seconds: float
    size: int
    digest: str
    requests: int
    client_cpu_s: float  # CPU time of this client (its thread) during the push

    @property
    def bytes_per_s(self) -> float:
        return self.size / self.seconds


# (status, headers, body text)
Answer = tuple[int, Mapping[str, str], str]
# (method, absolute URL, headers, offset, count) -> the answer to one request whose body is
# ``count`` bytes of the layer from ``offset``.
Send = Callable[[str, httpx.URL, dict[str, str], int, int], Answer]


def httpx_sender(client: httpx.Client, layer: PushLayer) -> Send:
    """Requests through ``client``; bodies from the layer's memory map: a PATCH's in one
    piece, the monolithic PUT's streamed in SEND_STEP pieces."""
    view = layer.map

    def send(
        method: str, url: httpx.URL, headers: dict[str, str], offset: int, count: int
    ) -> Answer:
        def body() -> Iterator[bytes]:
            for at in range(offset, offset + count, SEND_STEP):
                yield view[at : min(at + SEND_STEP, offset + count)]

        resp = client.request(
            method,
            url,
            content=body() if method == "PUT" and count else view[offset : offset + count],
            headers={**headers, "Content-Length": str(count)},
        )
        return resp.status_code, resp.headers, resp.text

    return send


def raw_sender(client: RawClient, layer: PushLayer) -> Send:
    """Requests on ``client``'s socket; bodies sent from the layer file by sendfile."""
    file = layer.file

    def send(
        method: str, url: httpx.URL, headers: dict[str, str], offset: int, count: int
    ) -> Answer:
        resp = client.request(
            method, url.raw_path.decode(), headers, file=file, offset=offset, count=count
        )
        return resp.status, resp.headers, resp.text

    return send


def _location(base: str, url: httpx.URL, method: str, response: Answer) -> httpx.URL:
    status, headers, text = response
    if status not in (201, 202):
        raise RuntimeError(f"{method} {url}: {status} {text[:300]}")
    return httpx.URL(base).join(headers["location"])


def push_blob(
    client: httpx.Client | Send,
    base: str,
    repo: str,
    layer: PushLayer,
    digest: str,
    chunk: int | None,
    *,
    verify: bool = True,
) -> PushResult:
    """Push the layer file as it is now (its digest given) to ``repo``; ``chunk`` None is
    a monolithic upload. Returns the time from the POST to the final 201. ``verify``:
    check the pushed blob with a HEAD afterwards (not the floor, which keeps nothing)."""
    send = httpx_sender(client, layer) if isinstance(client, httpx.Client) else client
    size = layer.size
    octets = {"Content-Type": "application/octet-stream"}
    requests = 0
    cpu = time.thread_time()
    start = time.perf_counter()
    url = httpx.URL(f"{base}/v2/{repo}/blobs/uploads/")
    url = _location(base, url, "POST", send("POST", url, {}, 0, 0))
    requests += 1
    if chunk is None:
        final = url.copy_add_param("digest", digest)
        resp = send("PUT", final, octets, 0, size)
        requests += 1
    else:
        for offset in range(0, size, chunk):
            end = min(offset + chunk, size)
            ranged = {**octets, "Content-Range": f"{offset}-{end - 1}"}
            url = _location(base, url, "PATCH", send("PATCH", url, ranged, offset, end - offset))
            requests += 1
        final = url.copy_add_param("digest", digest)
        resp = send("PUT", final, {}, 0, 0)
        requests += 1
    seconds = time.perf_counter() - start
    cpu = time.thread_time() - cpu
    status, headers, text = resp
    if status != 201:
        raise RuntimeError(f"push to {base}: final PUT answered {status} {text}")
    got = headers.get("docker-content-digest")
    if got != digest:
        raise RuntimeError(f"push to {base}: Docker-Content-Digest {got}, expected {digest}")
    if verify:
        status, headers, _ = send("HEAD", httpx.URL(f"{base}/v2/{repo}/blobs/{digest}"), {}, 0, 0)
        if status != 200 or int(headers.get("content-length", -1)) != size:
            raise RuntimeError(f"push to {base}: HEAD after push answered {status}")
    return PushResult(
        "monolithic" if chunk is None else f"chunked {chunk // MiB} MiB",
        seconds,
        size,
        digest,
        requests,
        cpu,
    )


@dataclass
class DownloadResult:
    clients: int
    seconds: float  # wall time until the last client is done
    sizes: list[int]
    statuses: list[int]
    client_seconds: list[float]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


def parallel_downloads(
    url: str,
    clients: int,
    cpus: str,
    *,
    headers: dict[str, str] | None = None,
    limit_rate: str | None = None,
    timeout: float = 600,
) -> DownloadResult:
    """``clients`` curl processes fetching ``url`` at once, bodies to /dev/null."""
    argv = [
        "taskset",
        "-c",
        cpus,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if limit_rate:
        argv += ["--limit-rate", limit_rate]
    argv.append(url)
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    seconds = time.perf_counter() - start
    statuses, sizes, times = [], [], []
    for out in outputs:
        code, size, total = out.split()
        statuses.append(int(code))
        sizes.append(int(size))
        times.append(float(total))
    return DownloadResult(clients, seconds, sizes, statuses, times)


def fetch_digest(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, int]:
    """GET ``url`` streaming: (status, sha256 digest of the body, size)."""
    hasher = hashlib.sha256()
    size = 0
    with client.stream("GET", url, headers=headers) as resp:
        for chunk in resp.iter_bytes(4 * MiB):
            hasher.update(chunk)
            size += len(chunk)
        return resp.status_code, "sha256:" + hasher.hexdigest(), size


def dd_fsync(directory: Path, size: int, repeats: int = 3) -> dict[str, object]:
    """This disk's durable write speed: ``dd if=/dev/zero bs=1M conv=fsync`` of ``size``
    bytes into ``directory`` (where the servers write), the median of ``repeats`` runs."""
    target = directory / "dd-fsync.bin"
    speeds = []
    try:
        for _ in range(repeats):
            t = time.monotonic()
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size // MiB}",
                 "conv=fsync", "status=none"],
                check=True,
            )  # fmt: skip
            speeds.append(size / (time.monotonic() - t))
            target.unlink()
    finally:
        target.unlink(missing_ok=True)
    speeds.sort()
    return {"value": speeds[len(speeds) // 2], "runs_bytes_per_s": [round(v) for v in speeds]}
