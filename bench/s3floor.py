"""The S3 blob GET floor: a bare ASGI app on Granian that answers every GET with one S3
object read through obstore, started like Entrepot (ASGI, uvloop, same worker count, no
access log); ``Server("s3floor")``. What a blob GET with ``storage.redirect.disable``
cannot beat on this machine with Entrepot's stack, however little the registry does:
one GET to S3, each piece obstore hands over sent on unchanged (no copy, no Starlette,
no checks). ``ENTREPOT_BENCH_S3FLOOR`` names the object: "ENDPOINT BUCKET KEY" (the
bench's test user's credentials, path-style, as bench/s3.py's servers).
"""

from __future__ import annotations

import os

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


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/v2/":  # Server.start's readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
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
