"""Entrepot under failure: a server killed mid-push, a client gone mid-upload, a lying client.

Whatever happens, what a client can see stays consistent: a blob is visible only once all of
its bytes arrived and hash to its digest, a tag only once its manifest was accepted, and the
server comes back on the same root serving everything that had been completed.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from . import clients
from .images import (
    OCI_INDEX,
    OCI_MANIFEST,
    assert_layout_holds,
    build_image,
)
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
STORE = "docker/registry/v2"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_files(root: Path) -> set[str]:
    """Every file under blobs/ (relative paths), whatever it is."""
    blobs = root / STORE / "blobs"
    return {str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file()}


def _blob_store_problems(root: Path) -> list[str]:
    """Every blob under the root whose content does not hash to its directory name."""
    problems = []
    for data in sorted((root / STORE / "blobs/sha256").glob("*/*/data")):
        actual = hashlib.sha256(data.read_bytes()).hexdigest()
        if actual != data.parent.name:
            problems.append(f"{data}: {data.stat().st_size} bytes hashing to sha256:{actual}")
    return problems


def _error_codes(response: httpx.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]


def _start_upload(http: httpx.Client, repo: str) -> str:
    """POST a new upload session; its path (the Location, made relative)."""
    response = http.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    location = urlsplit(response.headers["location"])
    return location.path + (f"?{location.query}" if location.query else "")


def _with_query(location: str, query: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}{query}"


# --- kill -9 mid-push -------------------------------------------------------------------------


def _wait_for_upload_bytes(
    root: Path, repo: str, minimum: int, push: subprocess.Popen[bytes], timeout: float = 60.0
) -> int:
    """Poll the repository's in-progress uploads until one holds `minimum` bytes; its size."""
    uploads = root / STORE / "repositories" / repo / "_uploads"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for data in uploads.glob("*/data"):
            try:
                size = data.stat().st_size
            except FileNotFoundError:
                continue
            if size >= minimum:
                return size
        if push.poll() is not None:
            break
        time.sleep(0.002)
    out, err = push.communicate()
    raise AssertionError(
        f"no upload under {uploads} reached {minimum} bytes (push exit code {push.returncode})\n"
        f"--- skopeo stdout ---\n{out.decode(errors='replace')}\n"
        f"--- skopeo stderr ---\n{err.decode(errors='replace')}"
    )


def test_kill_9_mid_push_then_restart(entrepot_factory: ServerFactory, tmp_path: Path) -> None:
    server = entrepot_factory()
    done = build_image(tmp_path / "done", seed=31, label="done")
    clients.push(done.ref, server.host, "e2e/crash/done", "v1")
    # One incompressible 64 MiB layer: the push takes long enough to be caught mid-upload.
    big = build_image(tmp_path / "big", seed=32, layer_sizes=(64 * MIB,), label="big")
    big_layer = big.images["linux/amd64"].layers[0].descriptor

    push = subprocess.Popen(
        [
            "skopeo",
            "--policy",
            clients._policy_file(),
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
            big.ref,
            f"docker://{server.host}/e2e/crash/big:v1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        arrived = _wait_for_upload_bytes(server.root, "e2e/crash/big", MIB, push)
        server.kill()
        _, err = push.communicate(timeout=60)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    assert arrived < big_layer.size
    assert push.returncode != 0, f"the push finished before the kill: {err.decode()}"

    server.start()  # same root, same port
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v2/").status_code == 200
        assert "e2e/crash/done" in http.get("/v2/_catalog").json()["repositories"]
        # The interrupted image is nowhere to be seen: no tag, no manifest, no partial layer.
        response = http.get("/v2/e2e/crash/big/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert response.status_code == 404, response.text
        assert _error_codes(response) == ["MANIFEST_UNKNOWN"]
        response = http.head(f"/v2/e2e/crash/big/manifests/{big.digest}")
        assert response.status_code == 404
        assert http.head(f"/v2/e2e/crash/big/blobs/{big_layer.digest}").status_code == 404
        tags = http.get("/v2/e2e/crash/big/tags/list")
        assert tags.status_code == 404 or "v1" not in (tags.json().get("tags") or [])
    hex_digest = big_layer.digest.split(":", 1)[1]
    assert not (server.root / STORE / "blobs/sha256" / hex_digest[:2] / hex_digest).exists()
    assert _blob_store_problems(server.root) == []

    # What was complete before the crash is served as it was.
    assert clients.inspect_digest(server.host, "e2e/crash/done", "v1") == done.digest
    back = tmp_path / "back-done"
    clients.pull_to_layout(server.host, "e2e/crash/done", "v1", back, dest_tag="v1")
    assert_layout_holds(back, "v1", done)

    # And the interrupted image can simply be pushed again.
    clients.push(big.ref, server.host, "e2e/crash/big", "v1")
    raw = clients.inspect_raw(server.host, "e2e/crash/big", "v1")
    assert raw == big.blob(big.digest)
    with httpx.Client(base_url=server.url) as http:
        for digest in big.images["linux/amd64"].blob_digests:
            response = http.head(f"/v2/e2e/crash/big/blobs/{digest}")
            assert response.status_code == 200, digest
            assert int(response.headers["content-length"]) == len(big.blob(digest))
    assert _blob_store_problems(server.root) == []
    assert clients.list_tags(server.host, "e2e/crash/big") == ["v1"]


# --- a client that goes away mid-upload -------------------------------------------------------


def _send_truncated(
    server: ManagedServer,
    method: str,
    target: str,
    declared: int,
    body: bytes,
    received: Callable[[], bool],
) -> None:
    """Send a request that declares `declared` bytes of body, send only `body`, and hang up.

    Before hanging up, wait (briefly) until `received()` says the server has written some of
    the bytes, so the disconnect happens while the server is in the middle of the body.
    """
    host, port = server.host.split(":")
    head = (
        f"{method} {target} HTTP/1.1\r\n"
        f"Host: {server.host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not received():
            time.sleep(0.005)
    # The socket is closed here, long before `declared` bytes were sent.


def _has_bytes(*paths: Path) -> bool:
    return any(path.is_file() and path.stat().st_size > 0 for path in paths)


def _settled_upload_size(http: httpx.Client, location: str, timeout: float = 10.0) -> str:
    """The upload's Range once the server is done with the interrupted request.

    While the server still handles the broken request the answer may move; it must end up
    at the state before that request, and stay there.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        response = http.get(location)
        assert response.status_code == 204, response.text
        last = response.headers["range"]
        if last == "0-0":
            time.sleep(0.2)
            again = http.get(location)
            assert again.status_code == 204, again.text
            return str(again.headers["range"])
        time.sleep(0.05)
    return last


def test_client_disconnect_mid_upload_leaves_nothing(
    entrepot_server: ManagedServer, tmp_path: Path
) -> None:
    server = entrepot_server
    repo = "e2e/disconnect"
    declared = 10 * MIB
    full = hashlib.shake_256(b"entrepot disconnect").digest(declared)
    sent = full[:MIB]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        before = _blob_files(server.root)

        # A chunked upload whose PATCH stops after 1 MiB of the 10 MiB it announced.
        location = _start_upload(http, repo)
        upload_id = urlsplit(location).path.rsplit("/", 1)[1]
        upload_data = server.root / STORE / "repositories" / repo / "_uploads" / upload_id / "data"
        _send_truncated(server, "PATCH", location, declared, sent, lambda: _has_bytes(upload_data))
        assert _settled_upload_size(http, location) == "0-0"
        assert upload_data.stat().st_size == 0, "bytes of the broken PATCH were kept"
        # A monolithic PUT that stops after 1 MiB: no blob either.
        put_target = _with_query(location, f"digest={_digest(full)}")
        _send_truncated(server, "PUT", put_target, declared, sent, lambda: _has_bytes(upload_data))
        assert _settled_upload_size(http, location) == "0-0"
        assert upload_data.stat().st_size == 0, "bytes of the broken PUT were kept"
        # A single-request POST ?digest= that stops after 1 MiB: its session goes away too.
        uploads = upload_data.parent.parent
        _send_truncated(
            server,
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={_digest(full)}",
            declared,
            sent,
            lambda: _has_bytes(*uploads.glob("*/data")),
        )
        deadline = time.monotonic() + 10
        while {p.name for p in uploads.iterdir()} != {upload_id}:
            assert time.monotonic() < deadline, f"sessions left: {sorted(uploads.iterdir())}"
            time.sleep(0.05)

        for digest in (_digest(sent), _digest(full)):
            assert http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        assert _blob_files(server.root) == before

        # The session is intact: the client can resume from the last good offset and finish.
        response = http.patch(
            location,
            content=full,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"0-{declared - 1}",
            },
        )
        assert response.status_code == 202, response.text
        assert response.headers["range"] == f"0-{declared - 1}"
        response = http.put(_with_query(location, f"digest={_digest(full)}"))
        assert response.status_code == 201, response.text
        response = http.head(f"/v2/{repo}/blobs/{_digest(full)}")
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == declared
    assert _blob_store_problems(server.root) == []
    assert _blob_files(server.root) - before == {
        f"sha256/{_digest(full)[7:9]}/{_digest(full)[7:]}/data"
    }


# --- a client whose bytes do not match its digest ---------------------------------------------


def test_wrong_digest_is_rejected_and_stores_nothing(
    entrepot_server: ManagedServer,
) -> None:
    repo = "e2e/liar"
    data = hashlib.shake_256(b"entrepot liar").digest(256 * 1024)
    claimed = _digest(b"something else entirely")
    with httpx.Client(base_url=entrepot_server.url, timeout=30) as http:
        before = _blob_files(entrepot_server.root)

        # POST, then a monolithic PUT carrying the bytes and a digest that is not theirs.
        location = _start_upload(http, repo)
        response = http.put(
            _with_query(location, f"digest={claimed}"),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 400, response.text
        assert _error_codes(response) == ["DIGEST_INVALID"]

        # The same lie as a single POST ?digest= request.
        response = http.post(
            f"/v2/{repo}/blobs/uploads/?digest={claimed}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 400, response.text
        assert _error_codes(response) == ["DIGEST_INVALID"]

        # And after a chunked PATCH, with a bodiless closing PUT.
        location = _start_upload(http, repo)
        response = http.patch(
            location, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert response.status_code == 202, response.text
        response = http.put(_with_query(location, f"digest={claimed}"))
        assert response.status_code == 400, response.text
        assert _error_codes(response) == ["DIGEST_INVALID"]

        for digest in (claimed, _digest(data)):
            assert http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        assert _blob_files(entrepot_server.root) == before == set()

        # The honest request right after goes through.
        response = http.post(
            f"/v2/{repo}/blobs/uploads/?digest={_digest(data)}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        assert http.get(f"/v2/{repo}/blobs/{_digest(data)}").content == data
