"""The clients of the soak (bench/soak.py): each one loops over a weighted mix of registry
workflows, over plain HTTP, and checks every answer.

Writes never race with checks that could not tell the outcome: every client pushes, moves
tags and deletes only in its own repository (``soak/c<N>``), so it knows what each pull
must return. Clients share two read-only sets: stable images pushed before the load
(``soak/stable``, pulled by tag and by digest, tags of ``soak/moving`` moved among them by
every client: a pull by such a tag must return one of them), and upstream images in the
registry:2 behind the pull-through cache (one more published every few seconds, so pulls
of uncached images go on for the whole run). Every pulled blob is hashed and sized.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
UPSTREAM_HOST = "upstream.soak.test"
CHUNK = 64 * 1024
MOVING_TAGS = ("a", "b", "c", "d")


class Unexpected(Exception):
    """An answer the workflow did not allow: a failed request. ``spec_error``: the answer
    was an error status with a body in the distribution spec's error format."""

    def __init__(self, message: str, spec_error: bool = False) -> None:
        super().__init__(message)
        self.spec_error = spec_error


def is_spec_error(response: httpx.Response) -> bool:
    if response.status_code < 400:
        return False
    try:
        errors = response.json()["errors"]
        return all(isinstance(e["code"], str) and "message" in e for e in errors) and bool(errors)
    except (ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class Failure:
    op: str
    at: float  # time.monotonic()
    kind: str  # "spec" (a spec error answer), "transport" (no answer), "wrong" (anything else)
    message: str


@dataclass(frozen=True)
class Image:
    digest: str
    manifest: bytes
    blobs: tuple[tuple[str, int], ...]  # (digest, size): the config, then the layers


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)  # op -> HTTP requests
    workflows: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # op -> workflow seconds
    errors: list[Failure] = field(default_factory=list)
    blobs_pulled: int = 0
    blobs_verified: int = 0
    bytes_pulled: int = 0

    def fail(self, op: str, exc: Exception) -> None:
        self.failures[op] += 1
        if isinstance(exc, Unexpected):
            kind = "spec" if exc.spec_error else "wrong"
        else:
            kind = "transport" if isinstance(exc, httpx.TransportError) else "wrong"
        self.errors.append(Failure(op, time.monotonic(), kind, f"{type(exc).__name__}: {exc}"))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_image(rng: random.Random, layers: int, max_layer: int) -> tuple[Image, dict[str, bytes]]:
    """A random image: a small JSON config and ``layers`` random layers."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": rng.random()}).encode()
    contents = [config] + [rng.randbytes(rng.randint(1, max_layer)) for _ in range(layers)]
    blobs = tuple((sha256(c), len(c)) for c in contents)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blobs[0][0], "size": blobs[0][1]},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in blobs[1:]],
        }
    ).encode()
    return Image(sha256(manifest), manifest, blobs), {
        d: c for (d, _), c in zip(blobs, contents, strict=True)
    }


class Registry:
    """The distribution-spec workflows the clients run, each request counted under ``op``."""

    def __init__(self, http: httpx.AsyncClient, stats: Stats) -> None:
        self.http = http
        self.stats = stats

    async def request(
        self, op: str, method: str, url: str | httpx.URL, expect: tuple[int, ...], **kw: object
    ) -> httpx.Response:
        self.stats.requests[op] += 1
        response = await self.http.request(method, url, **kw)  # type: ignore[arg-type]
        if response.status_code not in expect:
            raise Unexpected(
                f"{method} {httpx.URL(url).path} -> {response.status_code} {response.text[:300]}",
                is_spec_error(response),
            )
        return response

    async def push_blob(self, op: str, repo: str, content: bytes, *, chunked: bool) -> None:
        digest = sha256(content)
        head = await self.request(op, "HEAD", f"/v2/{repo}/blobs/{digest}", (200, 404))
        if head.status_code == 200:
            return
        started = await self.request(op, "POST", f"/v2/{repo}/blobs/uploads/", (202,))
        location = httpx.URL(started.headers["Location"])
        if chunked:
            for start in range(0, len(content), CHUNK):
                piece = content[start : start + CHUNK]
                patched = await self.request(
                    op,
                    "PATCH",
                    location,
                    (202,),
                    content=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{start + len(piece) - 1}",
                    },
                )
                location = httpx.URL(patched.headers["Location"])
            body = b""
        else:
            body = content
        await self.request(
            op,
            "PUT",
            location.copy_merge_params({"digest": digest}),
            (201,),
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )

    async def push_image(
        self, op: str, repo: str, tag: str, image: Image, contents: dict[str, bytes], chunked: bool
    ) -> None:
        for digest, _ in image.blobs:
            await self.push_blob(op, repo, contents[digest], chunked=chunked)
        await self.put_manifest(op, repo, tag, image)

    async def put_manifest(self, op: str, repo: str, reference: str, image: Image) -> None:
        put = await self.request(
            op,
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            (201,),
            content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if put.headers.get("Docker-Content-Digest") != image.digest:
            raise Unexpected(f"PUT manifest {repo}:{reference} answered another digest")

    async def pull(self, op: str, repo: str, reference: str, allowed: set[str] | None) -> str:
        """Pull the manifest and every blob, verifying each; the manifest's digest."""
        response = await self.request(
            op, "GET", f"/v2/{repo}/manifests/{reference}", (200,), headers={"Accept": OCI_MANIFEST}
        )
        digest = sha256(response.content)
        if response.headers.get("Docker-Content-Digest") != digest:
            raise Unexpected(f"{repo}:{reference}: Docker-Content-Digest is not the body's")
        if reference.startswith("sha256:") and digest != reference:
            raise Unexpected(f"{repo}@{reference}: got a manifest of digest {digest}")
        if allowed is not None and digest not in allowed:
            raise Unexpected(f"{repo}:{reference}: {digest} was never pushed under that tag")
        manifest = json.loads(response.content)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            await self.pull_blob(op, repo, descriptor["digest"], descriptor["size"])
        return digest

    async def pull_blob(self, op: str, repo: str, digest: str, size: int) -> None:
        response = await self.request(op, "GET", f"/v2/{repo}/blobs/{digest}", (200,))
        self.stats.blobs_pulled += 1
        if len(response.content) != size or sha256(response.content) != digest:
            raise Unexpected(f"{repo}@{digest}: blob of {len(response.content)} bytes is not it")
        self.stats.blobs_verified += 1
        self.stats.bytes_pulled += size


@dataclass
class Shared:
    """What every client may read; ``upstream`` grows while the soak runs."""

    stable: list[Image]
    moving: dict[str, set[str]]  # soak/moving tag -> the digests it may point at
    upstream: list[tuple[str, Image]] = field(default_factory=list)  # (repo, image), tag "v"


class Client:
    """One client: its own repository, a seeded random mix of workflows."""

    WEIGHTS = {
        "push_monolithic": 12,
        "push_chunked": 8,
        "pull_tag": 16,
        "pull_digest": 12,
        "pull_through": 16,
        "tag_move": 10,
        "delete": 8,
    }

    def __init__(self, number: int, registry: Registry, shared: Shared, max_layer: int) -> None:
        self.repo = f"soak/c{number}"
        self.registry = registry
        self.shared = shared
        self.max_layer = max_layer
        self.rng = random.Random(number)
        self.mine: dict[str, Image] = {}  # tag -> image, in this client's repository
        self.serial = 0

    async def run(self, deadline: float) -> None:
        ops, weights = zip(*self.WEIGHTS.items(), strict=True)
        stats = self.registry.stats
        while time.monotonic() < deadline:
            op = self.rng.choices(ops, weights)[0]
            began = time.monotonic()
            try:
                await getattr(self, op)()
            except (Unexpected, httpx.HTTPError, KeyError, ValueError) as exc:
                stats.fail(op, exc)
            else:
                stats.workflows[op] += 1
                stats.latencies.setdefault(op, []).append(time.monotonic() - began)

    async def _push(self, op: str, chunked: bool) -> None:
        image, contents = make_image(self.rng, self.rng.randint(1, 3), self.max_layer)
        self.serial += 1
        tag = f"t{self.serial}"
        await self.registry.push_image(op, self.repo, tag, image, contents, chunked)
        self.mine[tag] = image
        if len(self.mine) > 8:  # keep what the client remembers (and the store) small
            await self._delete_tag(op, next(iter(self.mine)))

    async def push_monolithic(self) -> None:
        await self._push("push_monolithic", chunked=False)

    async def push_chunked(self) -> None:
        await self._push("push_chunked", chunked=True)

    async def pull_tag(self) -> None:
        if self.mine and self.rng.random() < 0.5:
            tag, image = self.rng.choice(list(self.mine.items()))
            await self.registry.pull("pull_tag", self.repo, tag, {image.digest})
            return
        tag = self.rng.choice(MOVING_TAGS)
        await self.registry.pull("pull_tag", "soak/moving", tag, self.shared.moving[tag])

    async def pull_digest(self) -> None:
        image = self.rng.choice(self.shared.stable)
        await self.registry.pull("pull_digest", "soak/stable", image.digest, None)

    async def pull_through(self) -> None:
        # Half the time one of the newest upstream images: often not cached yet.
        upstream = self.shared.upstream
        pick = upstream[-1 - self.rng.randrange(min(3, len(upstream)))]
        if self.rng.random() < 0.5:
            pick = self.rng.choice(upstream)
        repo, image = pick
        reference = "v" if self.rng.random() < 0.5 else image.digest
        await self.registry.pull("pull_through", f"{UPSTREAM_HOST}/{repo}", reference, None)

    async def tag_move(self) -> None:
        if self.mine and self.rng.random() < 0.5:
            # Retag one of this client's images and check the tag follows.
            tag = self.rng.choice(list(self.mine))
            image = self.rng.choice(list(self.mine.values()))
            await self.registry.put_manifest("tag_move", self.repo, tag, image)
            self.mine[tag] = image
            await self.registry.pull("tag_move", self.repo, tag, {image.digest})
            return
        tag = self.rng.choice(MOVING_TAGS)
        image = self.rng.choice(self.shared.stable)
        await self.registry.put_manifest("tag_move", "soak/moving", tag, image)

    async def delete(self) -> None:
        if not self.mine:
            await self.push_monolithic()
            return
        await self._delete_tag("delete", self.rng.choice(list(self.mine)))

    async def _delete_tag(self, op: str, tag: str) -> None:
        """Delete the tag's manifest (by digest, as registry:2 allows), then check it is gone,
        by digest and by every tag that pointed at it."""
        image = self.mine.pop(tag)
        gone = [t for t, i in self.mine.items() if i.digest == image.digest]
        for t in gone:
            del self.mine[t]
        await self.registry.request(
            op, "DELETE", f"/v2/{self.repo}/manifests/{image.digest}", (202,)
        )
        for reference in [image.digest, tag, *gone]:
            await self.registry.request(op, "GET", f"/v2/{self.repo}/manifests/{reference}", (404,))


async def publish_upstream(
    upstream: httpx.AsyncClient, shared: Shared, stats: Stats, deadline: float, every: float
) -> None:
    """Push a new image to the upstream every ``every`` seconds (tag ``v`` of a new repo)."""
    registry = Registry(upstream, stats)
    rng = random.Random(-1)
    while time.monotonic() < deadline:
        await publish_one(registry, shared, rng)
        await asyncio.sleep(every)


async def publish_one(registry: Registry, shared: Shared, rng: random.Random) -> None:
    image, contents = make_image(rng, 2, 256 * 1024)
    repo = f"up/img{len(shared.upstream)}"
    try:
        await registry.push_image("upstream_publish", repo, "v", image, contents, chunked=False)
    except (Unexpected, httpx.HTTPError) as exc:
        registry.stats.fail("upstream_publish", exc)
        return
    shared.upstream.append((repo, image))
