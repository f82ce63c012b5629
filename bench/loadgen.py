"""Request-rate load generators: wrk, and ApacheBench (ab) for HEAD.

wrk gets a generated Lua script per workload: it sets the method and headers, and its
``done`` hook prints one ``WRKJSON {...}`` line with wrk's own counters. It defines no
``response`` hook: with one, wrk would keep every response body in memory (256 MiB blobs).

wrk 4.1 cannot measure HEAD: its parser is not told that the response to a HEAD has no
body, so it waits for Content-Length bytes that never come (h2load in HTTP/1.1 mode does
the same). ``ab -i`` (HEAD, HTTP/1.0 with keep-alive) does it right; its rates are lower
than wrk's on the same machine (one thread, more CPU per request), so compare the HEAD
rows by their ratio only, like every row.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# ab allocates its per-request statistics for -n requests up front: a bound well above
# what it can reach on loopback (it stops at -t seconds anyway).
AB_MAX_RATE = 100_000

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(99),
    latency.max))
end
"""


@dataclass
class LoadResult:
    tool: str
    connections: int
    duration_us: int
    requests: int
    bytes: int
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int  # wrk: status >= 400; ab: non-2xx
    timeouts: int
    latency_mean_us: float
    latency_p50_us: int
    latency_p99_us: int
    latency_max_us: int

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.duration_us else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        return (
            self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.status_errors
            + self.timeouts
        )

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["req_per_s"] = round(self.req_per_s, 1)
        out["bytes_per_s"] = round(self.bytes_per_s)
        return out


def lua_script(path: Path, method: str = "GET", headers: dict[str, str] | None = None) -> Path:
    lines = [f'wrk.method = "{method}"']
    for name, value in (headers or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: int,
    cpus: str,
    threads: int = 1,
    timeout: int = 10,
) -> LoadResult:
    """``wrk`` pinned to ``cpus`` for ``duration`` seconds; raises if wrk fails."""
    argv = [
        "taskset", "-c", cpus, "wrk",
        f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s",
        f"--timeout={timeout}s", "-s", str(script), url,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return LoadResult("wrk", connections, **json.loads(line[len("WRKJSON ") :]))
    raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")


def run_ab_head(
    url: str,
    *,
    connections: int,
    duration: int,
    cpus: str,
    headers: dict[str, str] | None = None,
    timeout: int = 10,
) -> LoadResult:
    """``ab -i -k`` (HEAD, keep-alive) pinned to ``cpus`` for ``duration`` seconds."""
    argv = [
        "taskset",
        "-c",
        cpus,
        "ab",
        "-q",
        "-i",
        "-k",
        "-c",
        str(connections),
        "-t",
        str(duration),
        "-n",
        str(AB_MAX_RATE * duration),
        "-s",
        str(timeout),
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    out = proc.stdout

    def field(pattern: str, default: str | None = None) -> str:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            if default is not None:
                return default
            raise RuntimeError(f"ab failed ({proc.returncode}): {out}\n{proc.stderr}")
        return m.group(1)

    seconds = float(field(r"^Time taken for tests:\s+([\d.]+) seconds"))
    failed = int(field(r"^Failed requests:\s+(\d+)"))
    return LoadResult(
        "ab",
        connections,
        duration_us=round(seconds * 1e6),
        requests=int(field(r"^Complete requests:\s+(\d+)")),
        bytes=int(field(r"^Total transferred:\s+(\d+)")),
        connect_errors=0,
        read_errors=failed,  # ab's "failed": connect, receive, length or exceptions
        write_errors=int(field(r"^Write errors:\s+(\d+)", "0")),
        status_errors=int(field(r"^Non-2xx responses:\s+(\d+)", "0")),
        timeouts=0,
        latency_mean_us=float(field(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)")) * 1000,
        # ab prints percentiles only when more than one request completed
        latency_p50_us=int(field(r"^\s+50%\s+(\d+)", "0")) * 1000,
        latency_p99_us=int(field(r"^\s+99%\s+(\d+)", "0")) * 1000,
        latency_max_us=int(field(r"^\s+100%\s+(\d+)", "0")) * 1000,
    )
