"""The S3 blob GET floor: a bare ASGI app on Granian that answers every GET with one S3
object read through obstore, started like Entrepot (ASGI, uvloop, same worker count, no
access log); ``Server("s3floor")``. What a blob GET with ``storage.redirect.disable``
cannot beat on this machine with Entrepot's stack, however little the registry does:
one GET to S3, each piece obstore hands over sent on unchanged (no copy, no Starlette,
no checks). ``ENTREPOT_BENCH_S3FLOOR`` names the object: "ENDPOINT BUCKET KEY" (the
bench's test user's credentials, path-style, as bench/s3.py's servers).
``ENTREPOT_BENCH_S3FLOOR_CLIENT=aiohttp`` streams it with aiohttp from a presigned URL
instead (one session per worker, 1 MiB reads): whether obstore is the limit.
"""

from __future__ import annotations

import os
from datetime import timedelta

import aiohttp
import obstore
from obstore.store import S3Store
from starlette.types import Receive, Scope, Send
from tests.cephs3 import ACCESS_KEY, REGION, SECRET_KEY

from entrepot.heap import keep_heap_for_bodies

keep_heap_for_bodies()  # as Entrepot's workers
_ENDPOINT, _BUCKET, _KEY = os.environ.get("ENTREPOT_BENCH_S3FLOOR", "- - -").split()
_STORE = S3Store(
    _BUCKET,
    config={
        "endpoint": _ENDPOINT,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "virtual_hosted_style_request": False,
    },
    client_options={"allow_http": True},
)
_PIECE = 256 << 10  # as Entrepot's S3 reads (storage/s3stream.py, MIN_PIECE)
_CLIENT = os.environ.get("ENTREPOT_BENCH_S3FLOOR_CLIENT", "obstore")
_AIOHTTP_PIECE = 1 << 20
_session: aiohttp.ClientSession | None = None  # made in the worker, on its loop


async def _aiohttp_body(send: Send) -> None:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(read_bufsize=_AIOHTTP_PIECE, auto_decompress=False)
    url = await obstore.sign_async(_STORE, "GET", _KEY, timedelta(minutes=20))
    async with _session.get(url) as resp:
        resp.raise_for_status()
        headers = [
            (b"content-length", str(resp.content_length).encode()),
            (b"content-type", b"application/octet-stream"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for piece in resp.content.iter_chunked(_AIOHTTP_PIECE):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/v2/":  # Server.start's readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    if _CLIENT == "aiohttp":
        await _aiohttp_body(send)
        return
    result = await obstore.get_async(_STORE, _KEY)
    headers = [
        (b"content-length", str(result.meta["size"]).encode()),
        (b"content-type", b"application/octet-stream"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async for piece in result.stream(min_chunk_size=_PIECE):
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
