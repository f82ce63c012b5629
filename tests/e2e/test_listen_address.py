"""Entrepot never shares its listening address: a port in use, by another Entrepot or by
anything else, is one line naming http.addr and exit code 1, and the server already
there keeps serving alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
