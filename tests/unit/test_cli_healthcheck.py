"""``entrepot healthcheck`` (the container image's HEALTHCHECK) asks ``/health`` where the
configuration says the server listens, and exits 0 only on a 200."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrepot import cli


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        body = b'{"status": "ok"}' if self.status == 200 else b'{"status": "unhealthy"}'
        self.send_response(self.status if self.path.endswith("/health") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def _config(tmp_path: Path, addr: str, extra: str = "") -> str:
    path = tmp_path / "config.yml"
    path.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: {addr}\n{extra}"
    )
    return str(path)


def test_healthy_server_on_a_wildcard_address_is_asked_on_loopback(
    tmp_path: Path,
    health_server: tuple[int, type[_Health]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, handler = health_server
    assert cli.main(["healthcheck", _config(tmp_path, f":{port}", "  prefix: /reg\n")]) == 0
    assert handler.seen == ["/reg/health"]
    assert f"127.0.0.1:{port}/reg/health" in capsys.readouterr().out


def test_unhealthy_storage_is_exit_1_with_the_answer(
    tmp_path: Path,
    health_server: tuple[int, type[_Health]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, handler = health_server
    handler.status = 503
    assert cli.main(["healthcheck", _config(tmp_path, f"127.0.0.1:{port}")]) == 1
    assert "answered 503" in capsys.readouterr().err


def test_nothing_listening_is_exit_1_naming_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", f"127.0.0.1:{port}")  # overrides apply
    assert cli.main(["healthcheck", _config(tmp_path, ":5000")]) == 1
    assert f"no answer from 127.0.0.1:{port}/health" in capsys.readouterr().err
