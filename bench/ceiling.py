"""The framework's ceiling: bare Starlette on Granian answering every request with a constant
manifest-sized response, started like Entrepot (ASGI, uvloop, same worker count, no access
log), to GET and to HEAD. What Entrepot's request rates cannot exceed on this machine;
``Server("ceiling")``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# About the size of the benchmark's manifest, with the headers a registry answers with.
BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}' * 6
HEADERS = {
    "Docker-Content-Digest": "sha256:" + "0" * 64,
    "Docker-Distribution-Api-Version": "registry/2.0",
    "Content-Length": str(len(BODY)),
}


async def constant(request: Request) -> Response:
    # A HEAD gets the GET's headers and no body, as Entrepot answers it.
    body = b"" if request.method == "HEAD" else BODY
    return Response(body, media_type="application/vnd.oci.image.manifest.v1+json", headers=HEADERS)


app = Starlette(routes=[Route("/{path:path}", constant, methods=["GET", "HEAD"])])
