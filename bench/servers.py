"""The servers under test as child processes pinned to CPU cores, and their memory.

registry:2 is Debian's ``docker-registry serve CONFIG``; Entrepot is ``python -m entrepot
serve CONFIG --workers N``. Both get the same registry:2 config.yml (built by
``registry_config``), run under ``taskset -c CPUS`` in their own session, and are stopped
with SIGTERM to their process group (SIGKILL after a timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.clients import parse_cpus

REPO_ROOT = Path(__file__).resolve().parents[1]
REGISTRY2_BINARY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def registry_config(
    root: Path,
    port: int,
    *,
    proxy_url: str | None = None,
    quiet: bool = True,
    storage: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One registry:2 config.yml for both servers.

    ``quiet``: log level warn and no access log, for the servers under test (both would
    otherwise write a line or two per request); the upstream keeps its access log, which
    is how upstream bytes are counted. ``storage``: keys that replace the filesystem
    driver (``s3``, ``redirect``); ``extra``: top-level sections (``redis``).
    """
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn" if quiet else "info", "accesslog": {"disabled": quiet}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            # registry:2's image ships with this cache; Entrepot accepts it.
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "entrepot-bench"},
    }
    if storage is not None:
        del config["storage"]["filesystem"]
        config["storage"].update(storage)
    if proxy_url is not None:
        # registry:2's pull-through block; Entrepot reads the same block.
        config["proxy"] = {"remoteurl": proxy_url}
    config.update(extra or {})
    return config


# Bare Granian apps: the framework ceiling, the push floor, the S3 blob GET floor.
_BARE_APPS = ("ceiling", "floor", "s3floor")


@dataclass
class Server:
    """A server process started by ``start``; ``url`` is ``http://127.0.0.1:PORT``."""

    # "registry2", "entrepot", "upstream", or one of _BARE_APPS (bench/KIND.py)
    kind: str
    root: Path
    workdir: Path
    cpus: str
    workers: int | None = None  # None: Entrepot's default (one per core)
    proxy_url: str | None = None
    quiet: bool = True
    storage: dict[str, Any] | None = None  # registry_config's ``storage``
    extra: dict[str, Any] | None = None  # registry_config's ``extra``
    env: dict[str, str] | None = None  # added to the environment
    name: str = ""  # the log's name when several of one kind run (default: kind)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name or self.kind}.log"

    @property
    def worker_count(self) -> int:
        # Entrepot's default: one per core it may run on, i.e. per CPU taskset gives it.
        return self.workers if self.workers is not None else len(parse_cpus(self.cpus))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self, config_path: Path) -> list[str]:
        if self.kind == "entrepot":
            cmd = [sys.executable, "-m", "entrepot", "serve", str(config_path)]
            if self.workers is not None:
                cmd += ["--workers", str(self.workers)]
        elif self.kind in _BARE_APPS:  # bench/KIND.py, Granian as Entrepot starts it
            cmd = [
                sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop",
                "--workers", str(self.worker_count), "--host", "127.0.0.1",
                "--port", str(self.port), "--no-access-log", f"bench.{self.kind}:app",
            ]  # fmt: skip
        else:
            cmd = [REGISTRY2_BINARY, "serve", str(config_path)]
        return ["taskset", "-c", self.cpus, *cmd]

    def start(self, timeout: float = 60.0) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = registry_config(
            self.root,
            self.port,
            proxy_url=self.proxy_url,
            quiet=self.quiet,
            storage=self.storage,
            extra=self.extra,
        )
        config_path = self.workdir / f"{self.kind}-{self.port}.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = dict(os.environ, **(self.env or {}))
        if self.kind == "entrepot" or self.kind in _BARE_APPS:
            paths = (str(REPO_ROOT / "src"), str(REPO_ROOT), env.get("PYTHONPATH"))
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(config_path),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not answer /v2/:\n{self.log_tail()}")
            time.sleep(0.1)
        if self.kind == "entrepot" or self.kind in _BARE_APPS:
            self._wait_for_workers(deadline)
        return self

    def _wait_for_workers(self, deadline: float) -> None:
        """Granian answers as soon as one worker is up: wait for all of them."""
        while len(process_tree(self.pid)) < 1 + self.worker_count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Granian's workers may outlive a parent killed first: end the group's stragglers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-limit:]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@contextlib.contextmanager
def running(server: Server, timeout: float = 60.0) -> Iterator[Server]:
    server.start(timeout)
    try:
        yield server
    finally:
        server.stop()


# --- memory ---


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int, *, ended: bool = False) -> float:
    """User and system CPU time used so far by ``pid`` and its descendants (each counts
    its threads; a process that ended is no longer counted, unless ``ended``: then each
    process adds the children it has waited for, so the tree's CPU counts once)."""
    ticks = 0
    last = 15 if ended else 13  # utime, stime[, cutime, cstime]
    for p in process_tree(pid):
        fields = _stat_fields(str(p))
        if fields is not None:
            ticks += sum(int(f) for f in fields[11:last])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: str) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after the last ")"
    return stat[stat.rfind(b")") + 2 :].split()


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_rss(pid: int) -> int:
    """VmRSS of one process, in bytes (0 once it is gone)."""
    return _status_kib(pid, "VmRSS:") * 1024


def rss_bytes(pid: int) -> int:
    """VmRSS summed over the process and its descendants."""
    return sum(process_rss(p) for p in process_tree(pid))


def pss_bytes(pid: int) -> int:
    """Proportional set size summed over the tree (shared pages counted once)."""
    return sum(_pss_kib(p) for p in process_tree(pid)) * 1024


class RssSampler:
    """Samples the summed RSS of a process tree in a thread; ``peak`` after ``stop``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            self.processes = max(self.processes, len(pids))
            self.peak = max(self.peak, sum(_status_kib(p, "VmRSS:") for p in pids) * 1024)
            if n % 5 == 0:  # smaps_rollup costs more: every 5th sample
                self.peak_pss = max(self.peak_pss, sum(_pss_kib(p) for p in pids) * 1024)
            n += 1
            self.samples = n
            self._stop.wait(self.interval)
