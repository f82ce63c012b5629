"""The pull-through cache when its upstream misbehaves: damaged bytes, a download cut off
midway, an upstream that is unreachable, down, or does not have the image yet.

The upstream is a real registry:2 on loopback, filed in Entrepot's config as the registry
``upstream.test`` (``proxies: [{host: upstream.test, remoteurl: http://127.0.0.1:PORT}]``), so
clients reach it through Entrepot as ``ENTREPOT/upstream.test/NAME``. Whatever the upstream
does, a client of Entrepot never receives a complete body with bytes that do not match the
digest it asked for, and nothing unverified enters the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import clients
from .images import OCI_INDEX, OCI_MANIFEST, build_image, layout_tags
from .servers import ManagedServer, ServerFactory

pytestmark = pytest.mark.e2e

UPSTREAM = "upstream.test"  # the registry name Entrepot files the loopback registry:2 under
STORE = "docker/registry/v2"
MIB = 1024 * 1024
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"
FAST = 5.0  # seconds: "fails fast" for a client of an unreachable upstream


# --- what the tests look at ---------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _proxying(remoteurl: str, **options: Any) -> dict[str, Any]:
    """Entrepot config: one upstream, `upstream.test`, at `remoteurl`."""
    return {"proxies": [{"host": UPSTREAM, "remoteurl": remoteurl, **options}]}


def _blob_path(root: Path, digest: str) -> Path:
    """Where registry:2's layout (Entrepot's too) keeps a blob's bytes."""
    encoded = digest.split(":", 1)[1]
    return root / STORE / "blobs" / "sha256" / encoded[:2] / encoded / "data"


def _stored_digests(root: Path) -> set[str]:
    """Every blob in a store, after checking that each one's bytes hash to its name."""
    found: set[str] = set()
    wrong: list[str] = []
    for data in sorted((root / STORE / "blobs" / "sha256").glob("*/*/data")):
        actual = hashlib.sha256(data.read_bytes()).hexdigest()
        if actual != data.parent.name:
            wrong.append(f"{data}: {data.stat().st_size} bytes hashing to sha256:{actual}")
        found.add(f"sha256:{data.parent.name}")
    assert not wrong, "blobs whose bytes do not match their digest:\n" + "\n".join(wrong)
    return found


def _spool_leftovers(root: Path) -> list[Path]:
    """Files left in any repository's _uploads (a failed cache fill must clean up its spool)."""
    return sorted(
        p for p in (root / STORE / "repositories").glob("**/_uploads/**/*") if p.is_file()
    )


def _assert_nothing_cached(entrepot: ManagedServer, digest: str) -> None:
    assert digest not in _stored_digests(entrepot.root), f"{digest} entered the cache"
    layer_links = list(
        (entrepot.root / STORE / "repositories").glob(f"**/_layers/sha256/{digest[7:]}")
    )
    assert layer_links == [], f"{digest} is linked into a cached repository: {layer_links}"
    # The client can see the failure a moment before the fill has removed its spool file.
    assert _wait_until(lambda: not _spool_leftovers(entrepot.root)), (
        f"a failed fill left its spool behind: {_spool_leftovers(entrepot.root)}"
    )


def _upstream_requests(upstream: ManagedServer, path: str) -> int:
    """How many GET/HEAD of `path` Entrepot sent to a registry:2 (counted in its access log)."""
    line = re.compile(rf'"(?:GET|HEAD) {re.escape(path)} HTTP/[0-9.]+" .*"entrepot/[^"]*"$')
    return sum(1 for entry in upstream.log().splitlines() if line.search(entry))


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _error_codes(response: httpx.Response) -> list[str]:
    try:
        return [str(e.get("code")) for e in response.json()["errors"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _get_manifest(entrepot: ManagedServer, name: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"{entrepot.url}/v2/{name}/manifests/{reference}",
        headers={"Accept": MANIFEST_ACCEPT},
        timeout=30,
    )


@dataclass(frozen=True)
class Download:
    """What a client got for a blob GET: the status, the announced length, the bytes that
    arrived, and the transport error that ended the body early, if one did."""

    status: int
    content_length: int | None
    body: bytes
    error: httpx.TransportError | None

    def describe(self) -> str:
        ending = f"then {type(self.error).__name__}: {self.error}" if self.error else "complete"
        return (
            f"HTTP {self.status}, Content-Length {self.content_length}, "
            f"{len(self.body)} bytes (sha256:{hashlib.sha256(self.body).hexdigest()}), {ending}"
        )


def _download(url: str, headers: Mapping[str, str] | None = None) -> Download:
    body = bytearray()
    status, length, error = 0, None, None
    try:
        with httpx.stream("GET", url, headers=dict(headers or {}), timeout=30) as response:
            status = response.status_code
            announced = response.headers.get("content-length")
            length = int(announced) if announced is not None else None
            for chunk in response.iter_raw():
                body += chunk
    except httpx.TransportError as exc:
        if status == 0:
            raise  # no response at all: not what these tests are about
        error = exc
    return Download(status, length, bytes(body), error)


def _assert_refused(download: Download, digest: str) -> None:
    """The client of a damaged upstream blob got an error status or a body cut short, never a
    complete body, and so never bytes it could take for the blob."""
    assert not isinstance(download.error, httpx.TimeoutException), (
        f"Entrepot left the client hanging: {download.describe()}"
    )
    if download.error is None:
        assert download.status >= 400, (
            f"GET {digest} through Entrepot succeeded with bytes the upstream damaged: "
            f"{download.describe()}"
        )
    else:
        assert download.content_length is None or len(download.body) < download.content_length


# --- damage done to an upstream's storage --------------------------------------------------------


def _flip_one_bit(path: Path) -> bytes:
    """Bit rot: the same length, one bit different, in the middle. Returns the good bytes."""
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x01
    path.write_bytes(damaged)
    return good


def _cut_in_half(path: Path) -> bytes:
    """A file cut short (a disk filled up, a copy interrupted). Returns the good bytes."""
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return good


DAMAGES: dict[str, Callable[[Path], bytes]] = {"bit-flip": _flip_one_bit, "truncated": _cut_in_half}


# --- 1, 2: damaged blobs upstream ----------------------------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_upstream_layer_is_never_served_nor_cached(
    damage: str, registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=21, layer_sizes=(256 * 1024,), label="damaged")
    clients.push(image.ref, registry2.host, "e2e/damaged", "v1")
    entrepot = entrepot_factory(config=_proxying(registry2.url))
    layer = image.images["linux/amd64"].layers[0].descriptor.digest
    upstream_file = _blob_path(registry2.root, layer)
    good = DAMAGES[damage](upstream_file)
    blob_path = f"/v2/e2e/damaged/blobs/{layer}"
    url = f"{entrepot.url}/v2/{UPSTREAM}/e2e/damaged/blobs/{layer}"

    _assert_refused(_download(url), layer)
    _assert_nothing_cached(entrepot, layer)

    # A puller does not silently end up with the damaged layer.
    with pytest.raises(clients.ClientError) as pull:
        clients.pull_to_layout(entrepot.host, f"{UPSTREAM}/e2e/damaged", "v1", tmp_path / "bad")
    assert "blob" in pull.value.stderr, pull.value  # it failed on a blob, not on anything else
    _assert_nothing_cached(entrepot, layer)

    # The upstream is repaired: Entrepot asks it again (it kept nothing) and serves good bytes.
    upstream_file.write_bytes(good)
    before = _upstream_requests(registry2, blob_path)
    head = httpx.head(url, timeout=30)
    assert head.status_code == 200, head.text
    assert int(head.headers["content-length"]) == len(good)
    assert _wait_until(lambda: _upstream_requests(registry2, blob_path) > before), (
        "HEAD through Entrepot did not reach the upstream: something of the damaged blob is cached"
    )
    fixed = _download(url)
    assert (fixed.status, fixed.error) == (200, None), fixed.describe()
    assert _digest(fixed.body) == layer
    clients.pull_to_layout(entrepot.host, f"{UPSTREAM}/e2e/damaged", "v1", tmp_path / "good")
    assert layout_tags(tmp_path / "good")["latest"] == image.digest
    assert layer in _stored_digests(entrepot.root)


def test_range_of_a_damaged_upstream_blob_is_never_served(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    """A client fetching part of an uncached blob (resuming, or fetching chunks in parallel)
    gets no range of bytes that were never verified: the first half of a blob whose middle
    byte went bad upstream is not a 206 with those bytes."""
    image = build_image(tmp_path / "src", seed=22, layer_sizes=(256 * 1024,), label="ranged")
    clients.push(image.ref, registry2.host, "e2e/ranged", "v1")
    entrepot = entrepot_factory(config=_proxying(registry2.url))
    layer = image.images["linux/amd64"].layers[0].descriptor.digest
    good = _flip_one_bit(_blob_path(registry2.root, layer))
    half = len(good) // 2

    url = f"{entrepot.url}/v2/{UPSTREAM}/e2e/ranged/blobs/{layer}"
    part = _download(url, {"Range": f"bytes=0-{half}"})
    if part.error is None and part.status < 300:
        assert part.body == good[: half + 1], (
            f"Range GET bytes=0-{half} of {layer} through Entrepot answered with bytes the "
            f"upstream damaged (never verified): {part.describe()}"
        )
    _assert_nothing_cached(entrepot, layer)


def test_damaged_upstream_manifest_is_never_served_nor_cached(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "src", seed=23, label="manifest")
    clients.push(image.ref, registry2.host, "e2e/badmanifest", "v1")
    entrepot = entrepot_factory(config=_proxying(registry2.url))
    upstream_file = _blob_path(registry2.root, image.digest)
    good = upstream_file.read_bytes()
    # Still valid JSON of the same length (registry:2 serves it), but not the tagged digest.
    assert b'"manifest"' in good
    upstream_file.write_bytes(good.replace(b'"manifest"', b'"manifesT"'))

    response = _get_manifest(entrepot, f"{UPSTREAM}/e2e/badmanifest", "v1")
    assert response.status_code >= 500, (response.status_code, response.content)
    assert _error_codes(response) == ["UNAVAILABLE"], response.text
    assert image.digest not in _stored_digests(entrepot.root)
    tag_dir = entrepot.root / STORE / "repositories" / UPSTREAM / "e2e/badmanifest/_manifests/tags"
    assert not tag_dir.exists() or not any(tag_dir.iterdir())

    upstream_file.write_bytes(good)
    response = _get_manifest(entrepot, f"{UPSTREAM}/e2e/badmanifest", "v1")
    assert response.status_code == 200, response.text
    assert _digest(response.content) == image.digest
    assert response.headers["docker-content-digest"] == image.digest


# --- 3: an upstream that goes away midway --------------------------------------------------------


class CuttingRelay:
    """A TCP relay on 127.0.0.1 in front of an upstream, on an event loop of its own thread.

    While `cut_after` is set, a connection closes (both sides) once that many response bytes
    have passed through it, as if the upstream had died midway; `cuts` counts those. With
    `cut_after` None it relays faithfully.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after: int | None = None
        self.cuts = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttingRelay:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_in, upstream_out = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:
            client_out.close()
            return
        pumps = [
            asyncio.create_task(self._pump(client_in, upstream_out, responses=False)),
            asyncio.create_task(self._pump(upstream_in, client_out, responses=True)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_out, upstream_out):
                writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, responses: bool
    ) -> None:
        passed = 0
        with contextlib.suppress(OSError):
            while data := await source.read(64 * 1024):
                limit = self.cut_after if responses else None
                if limit is not None and passed + len(data) > limit:
                    sink.write(data[: max(limit - passed, 0)])
                    await sink.drain()
                    self.cuts += 1
                    return
                sink.write(data)
                await sink.drain()
                passed += len(data)


@pytest.fixture
def relay_factory() -> Iterator[Callable[[ManagedServer], CuttingRelay]]:
    relays: list[CuttingRelay] = []

    def start(upstream: ManagedServer) -> CuttingRelay:
        assert upstream.port is not None
        relay = CuttingRelay(upstream.port).start()
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.stop()


def _push_blob(registry: ManagedServer, name: str, data: bytes) -> str:
    """A monolithic blob upload (POST, then PUT with the bytes); the blob's digest."""
    digest = _digest(data)
    with httpx.Client(base_url=registry.url, timeout=60) as http:
        started = http.post(f"/v2/{name}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]  # keeps its own query (_state): append to it
        done = http.put(
            f"{location}{'&' if '?' in location else '?'}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
    return digest


def test_upstream_gone_midway_through_a_blob(
    registry2: ManagedServer,
    entrepot_factory: ServerFactory,
    relay_factory: Callable[[ManagedServer], CuttingRelay],
) -> None:
    data = random.Random("entrepot-e2e-cut").randbytes(32 * MIB)
    digest = _push_blob(registry2, "e2e/big", data)
    relay = relay_factory(registry2)
    entrepot = entrepot_factory(config=_proxying(relay.url, readtimeout="10s"))
    url = f"{entrepot.url}/v2/{UPSTREAM}/e2e/big/blobs/{digest}"
    blob_path = f"/v2/e2e/big/blobs/{digest}"

    relay.cut_after = 4 * MIB
    cut = _download(url)
    assert relay.cuts >= 1, f"the relay never cut the download: {cut.describe()}"
    _assert_refused(cut, digest)
    _assert_nothing_cached(entrepot, digest)

    relay.cut_after = None
    whole = _download(url)
    assert (whole.status, whole.error) == (200, None), whole.describe()
    assert len(whole.body) == len(data)
    assert _digest(whole.body) == digest
    assert digest in _stored_digests(entrepot.root)

    # Cached now: the next client is served without the upstream.
    assert _wait_until(lambda: _upstream_requests(registry2, blob_path) >= 2)
    before = _upstream_requests(registry2, blob_path)
    again = _download(url)
    assert (again.status, again.error, _digest(again.body)) == (200, None, digest)
    time.sleep(0.2)
    assert _upstream_requests(registry2, blob_path) == before


# --- 4: an upstream unreachable from the start ---------------------------------------------------


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


@contextlib.contextmanager
def _blackholed_port() -> Iterator[int]:
    """A loopback port whose connections never complete: a listener with a full accept
    queue that never accepts drops every new SYN (Linux), as a firewall that drops would."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        time.sleep(0.1)
        probe = stack.enter_context(socket.socket())
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            pytest.skip("this kernel completes connections to a full accept queue: no black hole")
        yield port


UNREACHABLE: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
    "refused": _closed_port,
    "blackholed": _blackholed_port,
}


@pytest.mark.parametrize("how", sorted(UNREACHABLE))
def test_upstream_unreachable_from_the_start(
    how: str, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    with UNREACHABLE[how]() as port:
        # The operator's setup: the same endpoint is the registry they push to and the mirror
        # (registry-mirrors) of an upstream, which is out of reach today.
        config = _proxying(f"http://127.0.0.1:{port}", connecttimeout="1s", mirror=True)
        entrepot = entrepot_factory(config=config)
        assert httpx.get(f"{entrepot.url}/v2/", timeout=10).status_code == 200

        # Uncached content of the upstream fails fast, saying the upstream is unavailable.
        for name in (f"{UPSTREAM}/e2e/app", "e2e/mirrored"):
            started = time.monotonic()
            response = _get_manifest(entrepot, name, "v1")
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (name, response.status_code, response.text)
            assert _error_codes(response) == ["UNAVAILABLE"], response.text
            assert elapsed < FAST, f"GET {name}:v1 took {elapsed:.1f}s"
        blob = "sha256:" + "ab" * 32
        started = time.monotonic()
        response = httpx.get(f"{entrepot.url}/v2/{UPSTREAM}/e2e/app/blobs/{blob}", timeout=30)
        assert (response.status_code, _error_codes(response)) == (503, ["UNAVAILABLE"])
        assert time.monotonic() - started < FAST
        started = time.monotonic()
        with pytest.raises(clients.ClientError) as pull:
            clients.pull_to_layout(entrepot.host, f"{UPSTREAM}/e2e/app", "v1", tmp_path / "up")
        assert time.monotonic() - started < FAST, pull.value
        assert "503" in pull.value.stderr, pull.value

        # What is pushed here is served from here, upstream or no upstream.
        image = build_image(tmp_path / "src", seed=24, label="local")
        clients.push(image.ref, entrepot.host, "e2e/local", "v1")
        clients.pull_to_layout(entrepot.host, "e2e/local", "v1", tmp_path / "back")
        assert layout_tags(tmp_path / "back")["latest"] == image.digest


# --- 5: serving stale tags while the upstream is down --------------------------------------------


def test_cached_tag_is_served_stale_while_the_upstream_is_down(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    first = build_image(tmp_path / "first", seed=25, label="stale")
    second = build_image(tmp_path / "second", seed=26, label="stale")
    clients.push(first.ref, registry2.host, "e2e/stale", "v1")
    ttl = 1.0
    entrepot = entrepot_factory(
        config=_proxying(registry2.url, tagttl=f"{ttl:g}s", connecttimeout="1s")
    )
    name = f"{UPSTREAM}/e2e/stale"
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull1")
    assert layout_tags(tmp_path / "pull1")["latest"] == first.digest

    registry2.stop()
    time.sleep(ttl + 0.3)
    response = _get_manifest(entrepot, name, "v1")
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == first.digest
    assert _digest(response.content) == first.digest
    # A whole pull works from the cache alone.
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull2")
    assert layout_tags(tmp_path / "pull2")["latest"] == first.digest
    assert _wait_until(
        lambda: re.search(r"serving stale .*e2e/stale:v1", entrepot.log()) is not None
    ), "no log line about serving e2e/stale:v1 stale"

    started = time.monotonic()
    response = _get_manifest(entrepot, name, "never-pulled")
    assert time.monotonic() - started < FAST
    assert (response.status_code, _error_codes(response)) == (503, ["UNAVAILABLE"]), response.text

    # The upstream comes back with a new image under the same tag.
    registry2.start()
    clients.push(second.ref, registry2.host, "e2e/stale", "v1")
    time.sleep(ttl + 0.3)
    response = _get_manifest(entrepot, name, "v1")
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == second.digest
    clients.pull_to_layout(entrepot.host, name, "v1", tmp_path / "pull3")
    assert layout_tags(tmp_path / "pull3")["latest"] == second.digest


# --- 6: an upstream 404 is remembered for negativettl --------------------------------------------


def test_upstream_404_is_remembered_for_negativettl(
    registry2: ManagedServer, entrepot_factory: ServerFactory, tmp_path: Path
) -> None:
    negative_ttl = 5.0
    image = build_image(tmp_path / "src", seed=27, label="late")
    entrepot = entrepot_factory(config=_proxying(registry2.url, negativettl=f"{negative_ttl:g}s"))
    name, path = f"{UPSTREAM}/e2e/late", "/v2/e2e/late/manifests/v1"
    # The image is upstream already under another tag, so that making `v1` appear upstream
    # later is one quick manifest PUT, well within negativettl even on a busy machine.
    clients.push(image.ref, registry2.host, "e2e/late", "v0")
    manifest = httpx.get(
        f"{registry2.url}/v2/e2e/late/manifests/v0", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert manifest.status_code == 200, manifest.text

    asked = time.monotonic()
    response = _get_manifest(entrepot, name, "v1")
    answered = time.monotonic()
    assert response.status_code == 404, response.text
    assert _error_codes(response) == ["MANIFEST_UNKNOWN"]
    first = response.json()["errors"][0]
    assert first["message"].startswith("not found upstream at ")
    assert first["detail"] == {"reference": "v1"}
    assert _wait_until(lambda: _upstream_requests(registry2, path) >= 1)
    upstream_before = _upstream_requests(registry2, path)

    tagged = httpx.put(
        f"{registry2.url}{path}",
        content=manifest.content,
        headers={"Content-Type": manifest.headers["content-type"]},
    )
    assert tagged.status_code == 201, tagged.text
    response = _get_manifest(entrepot, name, "v1")
    within = time.monotonic() - asked
    assert within < negative_ttl, f"tagging took too long ({within:.1f}s) to test negativettl"
    assert response.status_code == 404, response.text
    assert _error_codes(response) == ["MANIFEST_UNKNOWN"]
    # Remembered: the same words and detail, saying so.
    remembered = response.json()["errors"][0]
    assert remembered == {**first, "message": f"{first['message']} (remembered: negativettl)"}
    time.sleep(0.2)
    assert _upstream_requests(registry2, path) == upstream_before, (
        "Entrepot asked the upstream again within negativettl"
    )

    time.sleep(max(answered + negative_ttl + 0.2 - time.monotonic(), 0))
    response = _get_manifest(entrepot, name, "v1")
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == image.digest
    assert _upstream_requests(registry2, path) > upstream_before
