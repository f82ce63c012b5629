"""The push floor: bare Starlette on Granian receiving upload bodies, started like Entrepot
(ASGI, uvloop, same worker count, no access log). What a push cannot beat on this
machine however little the registry does with the bytes; ``Server("floor")``.

It answers the push client's requests as a registry would (POST 202 with a Location,
PATCH 202, PUT 201 echoing ``?digest=``) and keeps nothing: every body is read to its end
and dropped, with no disk and no state. ``ENTREPOT_BENCH_FLOOR=sha256`` also hashes each
body, in a thread while the next bytes arrive (as Entrepot does, by its ``pump_batches``),
still without disk.
``ENTREPOT_BENCH_FLOOR=disk`` hashes each body and writes it, in another thread at the
same time, to a file per upload under ``ENTREPOT_BENCH_FLOOR_DIR`` (appended by each
PATCH), written back as it goes (``entrepot.storage.writeback``, as Entrepot's uploads)
and fsynced once at the PUT, then left there as Entrepot's blobs are (the bench removes its
data directory; an unlink in the request would time the freeing of the blocks): the bytes
hashed and made durable, with none of Entrepot's layout, links or verification.
Its workers set malloc as Entrepot's do (``entrepot.heap``), so that the floor is not
slowed by what Entrepot already avoids.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from entrepot.heap import keep_heap_for_bodies
from entrepot.registry.streams import pump_batches
from entrepot.storage.writeback import Writeback

keep_heap_for_bodies()
MODE = os.environ.get("ENTREPOT_BENCH_FLOOR", "drop")
HASH = MODE in ("sha256", "disk")
DISK_DIR = os.environ.get("ENTREPOT_BENCH_FLOOR_DIR", "") if MODE == "disk" else ""
_BATCH = 4 << 20  # bytes hashed per thread hop, like Entrepot's uploads


class _File:
    """An upload's file in DISK_DIR: appended, written back as it goes, synced at the end."""

    def __init__(self, upload_id: str) -> None:
        path = os.path.join(DISK_DIR, upload_id)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.writeback = Writeback(self.size)

    def write(self, parts: list[bytes]) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(self.fd, view) :]
            self.size += len(part)
        self.writeback.written(self.fd, self.size)

    def close(self, final: bool) -> None:
        try:
            if final:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


async def _receive(request: Request, upload_id: str = "", final: bool = False) -> int:
    """Read the body to its end; return its size (and hash it when HASH; with DISK_DIR,
    write it to the upload's file, which ``final`` syncs). Received in
    batches while the previous one is consumed, by Entrepot's own ``pump_batches``."""
    size = 0
    if not HASH:
        async for chunk in request.stream():
            size += len(chunk)
        return size
    hasher = hashlib.sha256()
    writes = DISK_DIR and upload_id.isalnum()  # the floor's own hex ids, never a path
    file = await asyncio.to_thread(_File, upload_id) if writes else None

    def hash_parts(parts: list[bytes]) -> None:
        for part in parts:
            hasher.update(part)

    async def consume(parts: list[bytes]) -> None:
        nonlocal size
        size += sum(len(part) for part in parts)
        if file is None:
            await asyncio.to_thread(hash_parts, parts)
        else:
            await asyncio.gather(
                asyncio.to_thread(hash_parts, parts), asyncio.to_thread(file.write, parts)
            )

    try:
        await pump_batches(request.stream(), consume, min_batch=_BATCH)
    finally:
        if file is not None:
            await asyncio.to_thread(file.close, final)
    return size


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


async def start(request: Request) -> Response:
    name = request.path_params["name"]
    headers = {"Location": _location(name, secrets.token_hex(16)), "Range": "0-0"}
    return Response(b"", status_code=202, headers=headers)


async def patch(request: Request) -> Response:
    name, upload_id = request.path_params["name"], request.path_params["upload_id"]
    size = await _receive(request, upload_id)
    end = request.headers.get("content-range", f"0-{size - 1}").split("-")[-1]
    headers = {"Location": _location(name, upload_id), "Range": f"0-{end}"}
    return Response(b"", status_code=202, headers=headers)


async def put(request: Request) -> Response:
    await _receive(request, request.path_params["upload_id"], final=True)
    digest = request.query_params.get("digest", "")
    headers = {
        "Location": f"/v2/{request.path_params['name']}/blobs/{digest}",
        "Docker-Content-Digest": digest,
    }
    return Response(b"", status_code=201, headers=headers)


async def base(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


app = Starlette(
    routes=[
        Route("/v2/", base, methods=["GET"]),
        Route("/v2/{name:path}/blobs/uploads/", start, methods=["POST"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", patch, methods=["PATCH"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", put, methods=["PUT"]),
    ]
)
