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

from . import servers
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
    """``start(root=None, *, config=None, port=None)`` -> a running registry:2.

    With `root`, the server uses that directory as its storage root (to read what another
    server wrote); otherwise a fresh one. `config` is deep-merged into the generated config.yml.
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
    ) -> ManagedServer:
        workdir = tmp_path_factory.mktemp("registry2-run")
        server = registry2_server(
            root if root is not None else workdir / "root", workdir, config=config, port=port
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
