"""Fixtures for end-to-end tests: real servers (registry:2, Entrepot, containerd), real clients.

Servers listen on 127.0.0.1 only, each on a port the OS picks, with a root directory under the
test's tmp_path. A client or server binary that is missing makes its tests skip locally, and
fail when $CI is set (CI installs them all through `make test`).

    registry2              a started Debian docker-registry (distribution v2.8); .url .host .root
    registry2_factory(root=None, config=None)
                           start more of them, e.g. on the root directory another server wrote
    entrepot_server        a started `python -m entrepot serve config.yml`; .url .host .root
    entrepot_factory(root=None, config=None, env=None)
                           start Entrepot on a given root, with extra config (deep-merged);
                           the handle's .kill() is kill -9, .restart() starts it again
    free_port()            a free TCP port on 127.0.0.1
    containerd             the socket path of a private containerd (session-wide)
    ctr                    clients.Ctr on that socket, in a namespace of its own per test
    podman                 clients.Podman with its own vfs storage per test
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import debian_base, servers
from .clients import Ctr, Podman, require
from .servers import (
    ContainerdDaemon,
    ManagedServer,
    ServerFactory,
    find_free_port,
    registry2_binary,
    registry2_server,
)

_E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test, marked or not (`-m "not e2e"` skips them)."""
    for item in items:
        if _E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)
    # The container image's test needs a debootstrapped base image: minutes on a machine that
    # has none cached yet. Build it in the background while the other tests run, and run
    # that test last, so a cold run costs the suite no extra wall time.
    image_tests = [item for item in items if item.path.name == "test_container_image.py"]
    if image_tests:
        items[:] = [item for item in items if item not in image_tests] + image_tests
        debian_base.prebuild_in_background()


def _namespace(request: pytest.FixtureRequest) -> str:
    """A containerd namespace name from the test's name (letters, digits, single dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"e2e-{slug[:60].strip('-') or 'test'}"


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a port nothing listens on (loopback); each call asks the OS again."""
    return find_free_port


# --- registry:2 -------------------------------------------------------------------------------


@pytest.fixture
def registry2_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``start(root=None, *, config=None, port=None, env=None)`` -> a running registry:2.

    With `root`, the server uses that directory as its storage root (to read what another
    server wrote); otherwise a fresh one. `config` is deep-merged into the generated config.yml;
    `env` is added to its environment.
    """
    binary = registry2_binary()
    if binary is None:
        require("docker-registry")
    started: list[ManagedServer] = []

    def start(
        root: Path | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedServer:
        workdir = tmp_path_factory.mktemp("registry2-run")
        server = registry2_server(
            root if root is not None else workdir / "root",
            workdir,
            config=config,
            port=port,
            env=env,
        )
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def registry2(registry2_factory: ServerFactory) -> ManagedServer:
    """A running registry:2 on 127.0.0.1:<free port>, filesystem storage, delete enabled."""
    return registry2_factory()


# --- Entrepot ---------------------------------------------------------------------------------


@pytest.fixture
def entrepot_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """``start(root=None, *, config=None, port=None, env=None)`` -> a running Entrepot.

    Same contract as registry2_factory. The handle can `.kill()` (SIGKILL to the process group),
    `.stop()` (SIGTERM, then SIGKILL) and `.restart(graceful=...)` on the same root and port.
    """
    started: list[ManagedServer] = []

    def start(
        root: Path | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedServer:
        workdir = tmp_path_factory.mktemp("entrepot-run")
        server = servers.entrepot_server(
            root if root is not None else workdir / "root",
            workdir,
            config=config,
            port=port,
            env=env,
        )
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def entrepot_server(entrepot_factory: ServerFactory) -> ManagedServer:
    """A running Entrepot on 127.0.0.1:<free port>, filesystem storage, delete enabled."""
    return entrepot_factory()


# --- clients with state of their own ------------------------------------------------------------


@pytest.fixture(scope="session")
def containerd() -> Iterator[str]:
    """A containerd of the tests' own (config, root, state in a tmp dir); yields its socket."""
    require("containerd", "ctr")
    # Short path: unix socket addresses are limited to about 100 bytes.
    base = Path(tempfile.mkdtemp(prefix="entrepot-ctrd-", dir="/tmp"))
    daemon = ContainerdDaemon(base)
    try:
        daemon.start()
        yield daemon.address
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ctr(containerd: str, request: pytest.FixtureRequest) -> Ctr:
    """ctr on the session's containerd, in a namespace of this test's own."""
    return Ctr(address=containerd, namespace=_namespace(request))


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman (as root) with storage of this test's own, vfs driver."""
    require("podman")
    # podman wants a runroot of at most 50 characters: tmp_path is too long.
    runroot = Path(tempfile.mkdtemp(prefix="entrepot-podman-", dir="/tmp"))
    try:
        yield Podman(root=tmp_path / "podman-root", runroot=runroot)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


# --- registry:2 behind Docker token auth ----------------------------------------------------------

from .token_issuer import TokenIssuer, TokenRegistry  # noqa: E402  (kept with its fixtures)


@pytest.fixture
def token_registry2_factory(
    registry2_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TokenRegistry]]:
    """``start(root=None, *, config=None, **issuer_options)`` -> a running TokenRegistry.

    A token issuer (token_issuer.TokenIssuer; options such as expires_in=, lifetime=,
    key_header="kid", users=) on 127.0.0.1, and a registry:2 with
    ``auth.token {realm, service: test-registry, issuer: test-issuer, rootcertbundle}`` on it.
    The push credentials are the issuer's first user.
    """
    issuers: list[TokenIssuer] = []

    def start(
        root: Path | None = None, *, config: Mapping[str, Any] | None = None, **options: Any
    ) -> TokenRegistry:
        issuer = TokenIssuer(tmp_path_factory.mktemp("token-issuer"), **options)
        issuers.append(issuer)
        issuer.start()
        server = registry2_factory(
            root, config=servers.deep_merge(issuer.registry_auth_config(), config or {})
        )
        username, password = next(iter(issuer.users.items()))
        return TokenRegistry(server, issuer, username, password)

    yield start
    for issuer in reversed(issuers):
        issuer.stop()


@pytest.fixture
def token_registry2(token_registry2_factory: Callable[..., TokenRegistry]) -> TokenRegistry:
    """registry:2 behind a token issuer: anonymous pull, push as .username/.password (.creds).

    .url .host .root as registry2; .issuer.requests logs every token request; .realm .service.
    """
    return token_registry2_factory()


# --- a slow link to an upstream -----------------------------------------------------------------

from .servers import ThrottledForwarder  # noqa: E402  (kept with its fixture)


@pytest.fixture
def throttled_forwarder() -> Iterator[Callable[..., ThrottledForwarder]]:
    """``start(target_port, *, rate=None, hold_after=None)`` -> a ThrottledForwarder on
    127.0.0.1 (.url, .port, .delivered, .release()) passing the target's responses on at
    `rate` bytes/s, held after `hold_after` bytes until released; stopped after the test."""
    started: list[ThrottledForwarder] = []

    def start(
        target_port: int, *, rate: float | None = None, hold_after: int | None = None
    ) -> ThrottledForwarder:
        forwarder = ThrottledForwarder(target_port, rate=rate, hold_after=hold_after).start()
        started.append(forwarder)
        return forwarder

    yield start
    for forwarder in reversed(started):
        forwarder.stop()


# --- Docker Engine (dockerd) ----------------------------------------------------------------

import contextlib  # noqa: E402  (kept with its fixtures)
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from .clients import DEFAULT_TIMEOUT, ClientError, run  # noqa: E402
from .servers import START_TIMEOUT, STOP_TIMEOUT, ServerStartError  # noqa: E402

# What dockerd needs to run anywhere as root: no storage driver needing mounts of its own, and
# no network setup (no bridge, no iptables); `docker run --network none` still works.
DOCKERD_BASE_CONFIG: Mapping[str, Any] = {
    "storage-driver": "vfs",
    "iptables": False,
    "bridge": "none",
    "ip-forward": False,
    "ip-masq": False,
}


def _dockerd_binary() -> str | None:
    """Debian's dockerd (package docker.io; /usr/sbin may be missing from a non-root PATH)."""
    explicit = os.environ.get("ENTREPOT_E2E_DOCKERD")
    if explicit:
        return explicit
    return shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
    )


def _docker_cli() -> str | None:
    """The docker CLI of the same package as dockerd (/usr/bin/docker) before any other one.

    A newer CLI elsewhere on PATH (such as /usr/local/bin/docker) would negotiate the API
    version down, but the package's own CLI is the pair that Debian tests together.
    """
    explicit = os.environ.get("ENTREPOT_E2E_DOCKER")
    if explicit:
        return explicit
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")


def _processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line mentions `text` (a directory of ours)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if text in cmdline.decode(errors="replace"):
                found.append(int(entry.name))
    return found


def _mounts_under(base: Path) -> list[str]:
    """Mount points at or under `base`, deepest first (from /proc/self/mountinfo)."""
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(base) or point.startswith(f"{base}/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


class DockerEngine:
    """A private Docker Engine: dockerd on a containerd of its own, everything under `base`.

    `base` must be a short path: the sockets (docker.sock, containerd.sock.ttrpc) live in it.
    dockerd gets its own --data-root, --exec-root, --pidfile and unix socket, and its own
    containerd (servers.ContainerdDaemon): dockerd 20.10 would otherwise use a system containerd
    at /run/containerd/containerd.sock when one runs, and starts its managed one otherwise.
    Calling the engine runs the docker CLI against it: ``engine("pull", "app:1")``.
    """

    def __init__(self, base: Path, config: Mapping[str, Any], *, dockerd: str, docker: str) -> None:
        self.base = base
        self.dockerd = dockerd
        self.docker = docker
        self.socket = base / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.config_path = base / "daemon.json"
        self.log_path = base / "dockerd.log"
        self.containerd = ContainerdDaemon(base / "ctrd")
        self.config = servers.deep_merge(
            {**DOCKERD_BASE_CONFIG, "containerd": self.containerd.address}, config
        )
        self.proc: subprocess.Popen[bytes] | None = None
        if len(str(self.containerd.address)) + len(".ttrpc") > 100:
            raise ValueError(f"socket paths under {base} are too long for unix sockets")

    @property
    def env(self) -> dict[str, str]:
        """The CLI's environment: this engine, and a client config of its own (no credentials
        or settings of the machine's user)."""
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.base / "cli")}

    def __call__(
        self, *args: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; ClientError (with dockerd's log) on failure."""
        try:
            return run([self.docker, *args], timeout=timeout, env=self.env, check=check)
        except ClientError as exc:
            why = "timed out or not found" if exc.returncode is None else ""
            stderr = f"{exc.stderr}\n--- dockerd log ---\n{self.log()[-6000:]}"
            raise ClientError(exc.cmd, exc.returncode, exc.stdout, stderr, why) from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT) -> DockerEngine:
        self.containerd.start()
        self.config_path.write_text(json.dumps(self.config, indent=2))
        argv = [
            self.dockerd,
            "--config-file",
            str(self.config_path),
            "--data-root",
            str(self.base / "data"),
            "--exec-root",
            str(self.base / "exec"),
            "--pidfile",
            str(self.base / "docker.pid"),
            "--host",
            self.host,
        ]
        # No proxy of the machine's: every registry in the tests is on loopback.
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        with self.log_path.open("ab") as log:
            log.write(f"=== start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise ServerStartError(f"dockerd exited with code {code}\n{self.log()[-6000:]}")
            if self.socket.exists():
                check = self("version", "--format", "{{.Server.Version}}", timeout=10, check=False)
                if check.returncode == 0:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"dockerd did not answer on {self.host} within {timeout:.0f}s\n"
                    f"{self.log()[-6000:]}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM dockerd (it stops its containers), then kill whatever is left of ours:
        dockerd's group, containerd, and any shim (shims run in sessions of their own, found by
        our directory in their command line); unmount what dockerd left mounted under `base`."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self.containerd.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        while leftovers := _processes_mentioning(str(self.base)):
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.base} survive SIGKILL: {leftovers}")
            time.sleep(0.1)
        for point in _mounts_under(self.base):
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


@pytest.fixture
def dockerd_factory() -> Iterator[Callable[..., DockerEngine]]:
    """``start(*, registry_mirrors=(), insecure_registries=(), config=None)`` -> a DockerEngine.

    A dockerd of the test's own (see DockerEngine) with daemon.json = DOCKERD_BASE_CONFIG, the
    mirrors (``http://127.0.0.1:PORT``) and insecure registries (``127.0.0.1:PORT``) given, and
    `config` deep-merged. Stopped, with every process it started, at teardown.
    """
    dockerd, docker = _dockerd_binary(), _docker_cli()
    if dockerd is None:
        require("dockerd")
    if docker is None:
        require("docker")
    require("containerd", "ctr", "runc")
    assert dockerd is not None and docker is not None
    engines: list[tuple[DockerEngine, Path]] = []

    def start(
        *,
        registry_mirrors: Sequence[str] = (),
        insecure_registries: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
    ) -> DockerEngine:
        # Short path: unix socket addresses are limited to about 100 bytes.
        base = Path(tempfile.mkdtemp(prefix="entrepot-dockerd-", dir="/tmp"))
        extra = {
            "registry-mirrors": list(registry_mirrors),
            "insecure-registries": list(insecure_registries),
        }
        engine = DockerEngine(
            base, servers.deep_merge(extra, config or {}), dockerd=dockerd, docker=docker
        )
        engines.append((engine, base))
        return engine.start()

    yield start
    for engine, base in reversed(engines):
        try:
            engine.stop()
        finally:
            if not _mounts_under(base):
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dockerd(dockerd_factory: Callable[..., DockerEngine]) -> DockerEngine:
    """A running private Docker Engine with no mirror (see dockerd_factory)."""
    return dockerd_factory()
