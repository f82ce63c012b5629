"""Entrepot never shares its listening address: a port in use, by another Entrepot or by
anything else, is one line naming http.addr and exit code 1, and the server already
there keeps serving alone. A unix socket file nobody listens on (a crashed run's) is
removed, and the server starts on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .servers import REPO_ROOT, ServerFactory, probe, registry_config

pytestmark = pytest.mark.e2e


def serve_until_exit(workdir: Path, port: int) -> tuple[int, str]:
    """Run ``entrepot serve`` on ``port`` to its exit; its exit code and output. (A
    readiness probe would not do: the server already on the port would answer it.)"""
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump(registry_config(workdir / "root", port)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "entrepot", "serve", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_second_entrepot_on_the_same_port_refuses_to_start(
    entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    first = entrepot_factory()
    assert first.port is not None

    code, output = serve_until_exit(tmp_path, first.port)

    assert code == 1, output
    assert output.strip() == (
        f"entrepot: http.addr 127.0.0.1:{first.port} is already in use by another process; "
        "stop it or set another http.addr"
    )
    assert first.running
    assert probe(f"{first.url}/v2/") == 200


def test_a_port_held_by_another_program_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]

        code, output = serve_until_exit(tmp_path, port)

    assert code == 1, output
    assert f"http.addr 127.0.0.1:{port} is already in use" in output
    assert "Traceback" not in output


def test_a_stale_unix_socket_is_removed_and_the_server_answers_on_it() -> None:
    # Short path: unix socket addresses are limited to about 100 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="entrepot-uds-", dir="/tmp"))
    sock = workdir / "registry.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(sock))  # closed, never unlinked: a crashed server's socket file
    config = workdir / "config.yml"
    extra = {"http": {"net": "unix", "addr": str(sock)}}
    config.write_text(yaml.safe_dump(registry_config(workdir / "root", 0, extra)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    log = workdir / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "entrepot", "serve", "--workers", "1", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = None
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
            deadline = time.monotonic() + 30
            while status != 200 and server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
                with contextlib.suppress(httpx.TransportError):
                    status = client.get("http://registry/v2/", timeout=2).status_code
        output = log.read_text()
        assert status == 200, output
        assert f"INFO entrepot.cli removed the stale socket {sock} (nothing listened" in output
        assert "Traceback" not in output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(workdir)
