"""The push floor: bare Starlette on Granian receiving upload bodies, started like Entrepot
(ASGI, uvloop, same worker count, no access log). What a push cannot beat on this
machine however little the registry does with the bytes; ``Server("floor")``.

It answers the push client's requests as a registry would (POST 202 with a Location,
PATCH 202, PUT 201 echoing ``?digest=``) and keeps nothing: every body is read to its end
and dropped, with no disk and no state. ``ENTREPOT_BENCH_FLOOR=sha256`` also hashes each
body, in a thread while the next bytes arrive (as Entrepot does), still without disk.
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

keep_heap_for_bodies()
HASH = os.environ.get("ENTREPOT_BENCH_FLOOR", "drop") == "sha256"
_BATCH = 4 << 20  # bytes hashed per thread hop, like Entrepot's uploads


async def _receive(request: Request) -> int:
    """Read the body to its end; return its size (and hash it when HASH)."""
    size = 0
    if not HASH:
        async for chunk in request.stream():
            size += len(chunk)
        return size
    hasher = hashlib.sha256()
    batch: list[bytes] = []
    batch_size = 0
    hashing: asyncio.Future[None] | None = None

    def hash_parts(parts: list[bytes]) -> None:
        for part in parts:
            hasher.update(part)

    async def flush() -> None:
        nonlocal hashing, batch, batch_size
        if hashing is not None:
            await hashing
        hashing = asyncio.ensure_future(asyncio.to_thread(hash_parts, batch))
        batch, batch_size = [], 0

    async for chunk in request.stream():
        size += len(chunk)
        batch.append(chunk)
        batch_size += len(chunk)
        if batch_size >= _BATCH:
            await flush()
    await flush()
    if hashing is not None:
        await hashing
    return size


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


async def start(request: Request) -> Response:
    name = request.path_params["name"]
    headers = {"Location": _location(name, secrets.token_hex(16)), "Range": "0-0"}
    return Response(b"", status_code=202, headers=headers)


async def patch(request: Request) -> Response:
    name, upload_id = request.path_params["name"], request.path_params["upload_id"]
    size = await _receive(request)
    end = request.headers.get("content-range", f"0-{size - 1}").split("-")[-1]
    headers = {"Location": _location(name, upload_id), "Range": f"0-{end}"}
    return Response(b"", status_code=202, headers=headers)


async def put(request: Request) -> Response:
    await _receive(request)
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
