"""What every property test of the HTTP API checks on every answer, and a registry that
serves one whole property test (hypothesis runs many examples against it).

Invariants, for any request at all:
- never a 5xx;
- never a stack trace in a body;
- a refused request (4xx) changes nothing in storage (a snapshot of the whole tree, names
  and file contents, before and after);
- every error body is the spec's: ``{"errors": [{"code", "message", "detail"}]}`` with a
  code from the spec's table (plus the few registry:2 codes clients know, listed below),
  answered with the status the code goes with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, settings

from entrepot.registry import layout
from tests.api.oci_client import OciClient, local_client

T = TypeVar("T")

# distribution-spec "Error Codes" (code-1 .. code-14), with the statuses its endpoint
# table gives them (SIZE_INVALID is 413 for a body over a limit, UNSUPPORTED 400 or 405).
SPEC_CODES: dict[str, frozenset[int]] = {
    "BLOB_UNKNOWN": frozenset({404}),
    "BLOB_UPLOAD_INVALID": frozenset({400}),
    "BLOB_UPLOAD_UNKNOWN": frozenset({404}),
    "DIGEST_INVALID": frozenset({400}),
    "MANIFEST_BLOB_UNKNOWN": frozenset({400}),
    "MANIFEST_INVALID": frozenset({400}),
    "MANIFEST_UNKNOWN": frozenset({404}),
    "NAME_INVALID": frozenset({400}),
    "NAME_UNKNOWN": frozenset({404}),
    "SIZE_INVALID": frozenset({400, 413}),
    "UNAUTHORIZED": frozenset({401}),
    "DENIED": frozenset({403}),
    "UNSUPPORTED": frozenset({400, 405}),
    "TOOMANYREQUESTS": frozenset({429}),
}
# registry:2's codes that clients know (and the conformance suite lists TAG_INVALID).
REGISTRY2_CODES: dict[str, frozenset[int]] = {
    "TAG_INVALID": frozenset({400}),
    "RANGE_INVALID": frozenset({416}),
    "PAGINATION_NUMBER_INVALID": frozenset({400}),
}
ERROR_STATUSES = {**SPEC_CODES, **REGISTRY2_CODES}
_TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")

# Property tests here: a modest number of examples, no per-example deadline (the machine
# is shared), and one registry for all examples of a test.
FUZZ = settings(
    max_examples=int(os.environ.get("ENTREPOT_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def snapshot(root: Path) -> dict[str, str]:
    """Every directory and file under ``root``; files by size and modification time (a
    write changes one or the other, and a stat is cheaper than reading every file)."""
    tree: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        if os.path.relpath(folder, root) == "entrepot":
            # The catalog's snapshot is a derived cache, saved in the background after an
            # earlier (accepted) catalog request: it may land while a later one is refused.
            dirs[:] = [d for d in dirs if d != "catalog"]
        if os.path.relpath(folder, root) == os.path.dirname(layout.LINKS_WRITTEN):
            # A count, not content: an upload begun counts, though its end is refused.
            files = [f for f in files if f != os.path.basename(layout.LINKS_WRITTEN)]
        for name in dirs:
            tree[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            tree[os.path.relpath(path, root)] = f"{stat.st_size} {stat.st_mtime_ns}"
    return tree


def check_error_body(response: httpx.Response) -> None:
    """A 4xx body in the spec's format, with a known code that goes with the status."""
    where = f"{response.request.method} {response.request.url}: {response.status_code}"
    assert response.headers.get("content-type", "").startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"errors"}, f"{where}: {body}"
    errors = body["errors"]
    assert isinstance(errors, list) and errors, f"{where}: {body}"
    for error in errors:
        assert isinstance(error, dict), f"{where}: {body}"
        assert set(error) <= {"code", "message", "detail"} and "code" in error, f"{where}: {body}"
        assert isinstance(error.get("message", ""), str), f"{where}: {body}"
        code = error["code"]
        assert code in ERROR_STATUSES, f"{where}: code {code!r} is not in the spec's table"
        assert response.status_code in ERROR_STATUSES[code], f"{where}: {code} with this status"


def check_answer(
    response: httpx.Response, before: Mapping[str, str], after: Mapping[str, str]
) -> None:
    """The invariants every answer holds."""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    text = response.content.decode("utf-8", "replace")
    for marker in _TRACE_MARKERS:
        assert marker not in text, f"{where}: stack trace in the body: {text[:500]}"
    if response.status_code >= 400:
        changed = sorted(set(before.items()) ^ set(after.items()))
        failed_upload = _failed_upload(response)
        if failed_upload is not None:
            # Only removals, and only of that upload's files.
            changed = [
                (path, state)
                for path, state in changed
                if path in after or f"/_uploads/{failed_upload}" not in f"/{path}"
            ]
        uploads = _refused_monolithic_uploads(response)
        if uploads is not None:
            # Its session was made, then dropped: the empty folders above it may stay (as
            # registry:2 leaves them), nothing else.
            changed = [
                (path, state)
                for path, state in changed
                if not (state == "dir" and path in after and uploads.startswith(path))
            ]
        assert not changed, (
            f"{where}: refused with {response.status_code}, storage changed: {changed}"
        )
        if response.request.method == "HEAD":
            assert response.content == b""
        else:
            check_error_body(response)


def _refused_monolithic_uploads(response: httpx.Response) -> str | None:
    """The repository's ``_uploads`` folder when ``response`` refused a monolithic upload
    (a POST with its digest) for that digest."""
    path = response.request.url.path
    if response.request.method != "POST" or not path.endswith("/blobs/uploads/"):
        return None
    if response.status_code != 400 or response.json()["errors"][0]["code"] != "DIGEST_INVALID":
        return None
    name = path.removeprefix("/v2/").removesuffix("/blobs/uploads/")
    return layout.uploads_dir(name)


def _failed_upload(response: httpx.Response) -> str | None:
    """The upload id when ``response`` refused to close an upload for its digest."""
    path = response.request.url.path
    if response.request.method != "PUT" or "/blobs/uploads/" not in path:
        return None
    if response.status_code != 400 or response.json()["errors"][0]["code"] != "DIGEST_INVALID":
        return None
    return path.rsplit("/", 1)[-1]


class FuzzRegistry:
    """The real app over a filesystem registry, with its own event loop so that sync
    hypothesis tests can drive it; ``request`` checks the invariants on every answer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self._serving: AbstractAsyncContextManager[OciClient] = local_client(root)
        self.client = self.run(self._serving.__aenter__())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self._serving.__aexit__(None, None, None))
        self.loop.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        before = snapshot(self.root)
        response = self.run(
            self.client.http.request(method, url, params=params, headers=headers, content=content)
        )
        check_answer(response, before, snapshot(self.root))
        return response

    def push_blob(self, name: str, data: bytes) -> str:
        """Push ``data`` (checked like any request); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self.request("POST", f"/v2/{name}/blobs/uploads/")
        assert started.status_code == 202, started.text
        finished = self.request(
            "PUT", started.headers["location"], params={"digest": digest}, content=data
        )
        assert finished.status_code == 201, finished.text
        return digest


@contextmanager
def fuzz_registry(root: Path) -> Iterator[FuzzRegistry]:
    registry = FuzzRegistry(root)
    try:
        yield registry
    finally:
        registry.close()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()
