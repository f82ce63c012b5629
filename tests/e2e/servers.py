"""Registry servers as child processes: the reference registry:2 and Entrepot itself.

A ManagedServer writes a registry:2-style config.yml (version 0.1, storage.filesystem, delete
enabled, http.addr on 127.0.0.1), starts the process in its own session (so that a kill reaches
every worker it forked), waits until ``GET /v2/`` answers, and stops it with SIGTERM, then SIGKILL.
Its output goes to a log file, whose tail every failure message carries.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("ENTREPOT_E2E_START_TIMEOUT", "30"))
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    pass


# What the registry2_factory / entrepot_factory fixtures yield: start(root=None, *, config=None,
# port=None[, env=None]) -> a started ManagedServer.
ServerFactory = Callable[..., "ManagedServer"]


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `extra`, recursing into nested mappings; a None value removes a key."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Keys below ``storage`` that are not a driver name (as in registry:2).
_STORAGE_SECTIONS = ("maintenance", "cache", "delete", "redirect", "tag")


def registry_config(
    root: Path, port: int, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The registry:2 config both servers take: filesystem root, delete on, loopback address.
    A storage driver named in ``extra`` (such as ``s3``) replaces the filesystem one."""
    base: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    storage = (extra or {}).get("storage") or {}
    if set(storage) - {"filesystem", *_STORAGE_SECTIONS}:
        del base["storage"]["filesystem"]
    return deep_merge(base, extra or {})


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text if len(text) <= limit else "...\n" + text[-limit:]


class ManagedServer:
    """One registry server process with its config, root directory and log.

    Start it with `start()`; `stop()` is graceful (SIGTERM, then SIGKILL after a timeout),
    `kill()` is a crash (SIGKILL to the whole process group), `restart()` starts it again on the
    same root and the same port.
    """

    def __init__(
        self,
        name: str,
        *,
        argv: Callable[[Path], Sequence[str]],
        root: Path,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.name = name
        self._argv = argv
        self.root = root
        self.workdir = workdir
        self.extra_config = dict(config or {})
        self.env = dict(env or {})
        self.port = port
        self.start_timeout = start_timeout
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)

    # --- addresses ---

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as image references spell a registry."""
        if self.port is None:
            raise RuntimeError(f"{self.name} has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return _tail(self.log_path, limit=1_000_000)

    def __repr__(self) -> str:
        return f"<{self.name} {self.url if self.port else '(not started)'} root={self.root}>"

    # --- lifecycle ---

    def start(self) -> ManagedServer:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        # A port picked by us can be taken by someone else before the server binds it: retry.
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            if not fixed_port:
                self.port = find_free_port()
            try:
                self._spawn_and_wait()
                return self
            except ServerStartError:
                in_use = "address already in use" in _tail(self.log_path).lower()
                if not in_use or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        assert self.port is not None
        config = registry_config(self.root, self.port, self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.argv = list(self._argv(self.config_path))
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except ServerStartError:
            self._kill_group()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {code} before answering GET {self.url}/v2/\n"
                    f"command: {' '.join(self.argv)}\n"
                    f"config: {self.config_path}\n--- output ---\n{_tail(self.log_path)}"
                )
            status = probe(f"{self.url}/v2/")
            if isinstance(status, int):
                if status in (200, 401):
                    return
                last_error = f"HTTP {status}"
            else:
                last_error = status
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} did not answer GET {self.url}/v2/ within "
                    f"{self.start_timeout:.0f}s (last: {last_error})\n"
                    f"config: {self.config_path}\n--- output ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with self.log_path.open("ab") as log:
                    log.write(
                        f"\n=== {self.name} ignored SIGTERM for {timeout}s: SIGKILL\n".encode()
                    )
        self._kill_group()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the server and everything it forked, as a crash would."""
        if self.proc is not None:
            self._kill_group()

    def restart(self, *, graceful: bool = True) -> ManagedServer:
        """Stop (or kill) and start again on the same root, config and port."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


def probe(url: str, timeout: float = 1.0) -> int | str:
    """The HTTP status of GET `url`, or a description of why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def wait_for_v2(server: ManagedServer, status: int, timeout: float = 30.0) -> None:
    """Wait until the server's /v2/ answers ``status`` (a health check's verdict)."""
    deadline = time.monotonic() + timeout
    while probe(f"{server.url}/v2/") != status:
        assert time.monotonic() < deadline, f"/v2/ never answered {status}\n{server.log()}"
        time.sleep(0.2)


# --- the two kinds of server --------------------------------------------------------------------


def registry2_binary() -> str | None:
    """Debian's docker-registry (distribution/distribution v2), or $ENTREPOT_E2E_REGISTRY2."""
    explicit = os.environ.get("ENTREPOT_E2E_REGISTRY2")
    if explicit:
        return explicit
    return shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )


def registry2_server(
    root: Path,
    workdir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedServer:
    binary = registry2_binary() or "docker-registry"
    base_extra: dict[str, Any] = {
        "http": {"secret": "entrepot-e2e"},  # no random per-start secret, no warning about it
        "storage": {"maintenance": {"uploadpurging": {"enabled": False}}},
    }
    return ManagedServer(
        "registry:2",
        argv=lambda cfg: [binary, "serve", str(cfg)],
        root=root,
        workdir=workdir,
        config=deep_merge(base_extra, config or {}),
        port=port,
        env=env,
    )


def entrepot_server(
    root: Path,
    workdir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedServer:
    """``python -m entrepot serve CONFIG`` with this interpreter and this work tree's src/."""
    pythonpath = os.pathsep.join(
        p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    return ManagedServer(
        "entrepot",
        argv=lambda cfg: [sys.executable, "-m", "entrepot", "serve", str(cfg)],
        root=root,
        workdir=workdir,
        config=config,
        port=port,
        # One worker unless a test asks for more (ENTREPOT_WORKERS in ``env``): counts of
        # upstream requests and tokens are per process. Tests with several workers, and the
        # default of one per core, are explicit (test_proxy_coalescing, test_workers).
        env={
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": pythonpath,
            "ENTREPOT_WORKERS": "1",
            **(env or {}),
        },
    )


# --- containerd ---------------------------------------------------------------------------------

_CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


class ContainerdDaemon:
    """A private containerd: its own config, root, state and socket under `base`.

    `base` should be a short path (a unix socket path has a limit of about 100 bytes).
    Nothing of the machine's own containerd (/run/containerd, /var/lib/containerd) is used.
    """

    def __init__(self, base: Path, *, binary: str = "containerd") -> None:
        self.base = base
        self.binary = binary
        self.config_path = base / "config.toml"
        self.log_path = base / "containerd.log"
        self.address = str(base / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> ContainerdDaemon:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_CONTAINERD_CONFIG.format(base=self.base))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(self.config_path)],
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"containerd exited with code {code}\n--- output ---\n{_tail(self.log_path)}"
                )
            if Path(self.address).exists():
                check = subprocess.run(
                    ["ctr", "--address", self.address, "version"],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=10,
                    check=False,
                )
                if check.returncode == 0:
                    return self
                last = check.stderr.decode(errors="replace")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"containerd did not answer on {self.address} within {timeout:.0f}s: {last}\n"
                    f"--- output ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)


# --- access logs --------------------------------------------------------------------------------

_ACCESS_LINE = re.compile(
    r'^(?P<addr>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "(?P<method>[A-Z]+) (?P<target>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)


@dataclass(frozen=True)
class AccessLogEntry:
    """One request from a server's access log (Apache combined format, as registry:2 and
    Entrepot write it). `target` is the request target with its query; `path` without it."""

    method: str
    target: str
    status: int
    size: int | None
    agent: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)


def access_log(server: ManagedServer) -> list[AccessLogEntry]:
    """Every request the server logged so far, oldest first.

    registry:2 writes the line once the response is complete (an aborted one included), so
    a request still being answered is not listed yet: see `wait_for_requests`.
    """
    try:
        text = server.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        match = _ACCESS_LINE.match(line)
        if match is None:
            continue
        size = match.group("size")
        entries.append(
            AccessLogEntry(
                method=match.group("method"),
                target=match.group("target"),
                status=int(match.group("status")),
                size=None if size == "-" else int(size),
                agent=match.group("agent") or "",
            )
        )
    return entries


def requests_to(
    server: ManagedServer, method: str, path: str, *, status: int | None = None
) -> list[AccessLogEntry]:
    """The logged requests with this method and path (query ignored), optionally status."""
    return [
        entry
        for entry in access_log(server)
        if entry.method == method
        and entry.path == path
        and (status is None or entry.status == status)
    ]


def blob_gets(server: ManagedServer, repo: str, digest: str) -> list[AccessLogEntry]:
    """The logged ``GET /v2/REPO/blobs/DIGEST`` requests (the downloads of that blob)."""
    return requests_to(server, "GET", f"/v2/{repo}/blobs/{digest}")


def settled_access_log(
    server: ManagedServer, *, quiet: float = 0.3, timeout: float = 10.0
) -> list[AccessLogEntry]:
    """The access log once no new line has appeared for `quiet` seconds (a response that was
    just sent is logged a moment later)."""
    deadline = time.monotonic() + timeout
    entries = access_log(server)
    while True:
        time.sleep(quiet)
        again = access_log(server)
        if len(again) == len(entries) or time.monotonic() > deadline:
            return again
        entries = again


# --- a slow link ----------------------------------------------------------------------------------


class ThrottledForwarder:
    """A TCP forwarder on 127.0.0.1 between a client (Entrepot) and a target (an upstream).

    Requests go through at full speed. The target's answers are passed on at `rate` bytes per
    second (None: as fast as they come), and with `hold_after`, held once that many bytes were
    delivered (over all connections) until `release()`: an upstream download that is
    certainly still in progress while a test does something. `delivered` counts the bytes
    passed on so far. Put its `url` where the target's would be (an Entrepot ``remoteurl``);
    the target still logs every request itself. `connections` counts the connections
    accepted (the client's attempts to reach the target).
    """

    def __init__(
        self,
        target_port: int,
        *,
        rate: float | None = None,
        hold_after: int | None = None,
        chunk: int = 64 * 1024,
    ) -> None:
        self.target_port = target_port
        self.rate = rate
        self.hold_after = hold_after
        self.chunk = chunk
        self.delivered = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._released = threading.Event()
        self._holding = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="forwarder", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def holding(self) -> bool:
        """Answers are being held back (`hold_after` reached, not released yet)."""
        return self._holding.is_set() and not self._released.is_set()

    def wait_until_holding(self, timeout: float = 30.0) -> bool:
        return self._holding.wait(timeout) and not self._released.is_set()

    def start(self) -> ThrottledForwarder:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let held answers go on (for good)."""
        self._released.set()

    def stop(self) -> None:
        self._closed.set()
        self._released.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)  # to notice stop() between connections
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            client.settimeout(None)
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, answers: bool) -> None:
        started = time.monotonic()
        sent = 0
        try:
            while not self._closed.is_set():
                data = source.recv(self.chunk)
                if not data:
                    break
                if answers:
                    self._wait_if_held(len(data))
                dest.sendall(data)
                if not answers:
                    continue
                with self._lock:
                    self.delivered += len(data)
                sent += len(data)
                if self.rate is not None:
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _wait_if_held(self, size: int) -> None:
        if self.hold_after is None:
            return
        with self._lock:
            over = self.delivered + size > self.hold_after
        if over and not self._released.is_set():
            self._holding.set()
            self._released.wait()  # stop() releases too
