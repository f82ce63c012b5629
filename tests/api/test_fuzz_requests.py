"""Property-based tests of the HTTP API (hypothesis): names, references, digests,
``Range``, ``Content-Range`` and query parameters, each against a model of what the spec
says the answer is, and every answer held to the invariants of ``fuzz_harness``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tests.api.fuzz_harness import FUZZ, FuzzRegistry, fuzz_registry

COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
REPO = "fuzz/app"
BLOB = bytes(range(256)) * 4 + b"tail"  # 1028 bytes, every offset distinguishable
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
TAGS = ["1.0", "1.1", "2.0", "latest", "v-3_x"]
REPOSITORIES = [REPO, "alpha", "fuzz/beta", "zeta/z"]
MANIFEST = (
    b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", '
    b'"config": {"mediaType": "application/vnd.oci.image.config.v1+json", '
    b'"digest": "' + BLOB_DIGEST.encode() + b'", "size": 1028}, "layers": []}'
)
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()

ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
any_text = st.text(max_size=40)
valid_names = st.from_regex(NAME_RE, fullmatch=True).filter(lambda name: len(name) <= 255)
hostile_names = st.sampled_from(
    ["", "..", "a/../b", "a//b", "/a", "a/", "A", "a\\b", "a\x00b", "x" * 256, "a/./b"]
)
names = st.one_of(valid_names, hostile_names, any_text)
hex_text = st.text("0123456789abcdefABCDEF", min_size=0, max_size=130)
digests = st.one_of(
    st.builds(
        "{}:{}".format,
        st.sampled_from(["sha256", "sha512", "SHA256", "sha384", "md5", "", "sha256+b64"]),
        hex_text,
    ),
    st.builds("sha256:{}".format, st.text("0123456789abcdef", min_size=64, max_size=64)),
    st.just(BLOB_DIGEST),
    any_text,
)
references = st.one_of(
    st.from_regex(TAG_RE, fullmatch=True), st.sampled_from(TAGS), digests, any_text
)
# Every endpoint under /v2/<name>/ (HEAD of a blob or manifest included).
ENDPOINTS = [
    ("GET", "tags/list"),
    ("GET", "manifests/latest"),
    ("HEAD", "manifests/latest"),
    ("DELETE", "manifests/latest"),
    ("PUT", "manifests/latest"),
    ("GET", f"blobs/{BLOB_DIGEST}"),
    ("HEAD", f"blobs/{BLOB_DIGEST}"),
    ("DELETE", f"blobs/{BLOB_DIGEST}"),
    ("POST", "blobs/uploads/"),
    ("GET", f"referrers/{BLOB_DIGEST}"),
]


def path_part(text: str) -> str:
    """``text`` as it goes in a URL path (slashes kept: they separate name components)."""
    return quote(text, safe="/")


def is_valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None and len(name) <= 255


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRegistry]:
    with fuzz_registry(tmp_path_factory.mktemp("fuzz") / "registry") as registry:
        registry.push_blob(REPO, BLOB)
        for tag in TAGS:
            pushed = registry.request(
                "PUT",
                f"/v2/{REPO}/manifests/{tag}",
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                content=MANIFEST,
            )
            assert pushed.status_code == 201, pushed.text
        for name in REPOSITORIES[1:]:
            registry.push_blob(name, b"x")
        yield registry


@FUZZ
@given(name=names, endpoint=st.sampled_from(ENDPOINTS))
@example(name="a" * 256, endpoint=("GET", "tags/list"))
def test_any_repository_name(registry: FuzzRegistry, name: str, endpoint: tuple[str, str]) -> None:
    assume(name not in REPOSITORIES)  # keep the fixture's content
    method, rest = endpoint
    body = b"not a manifest" if method == "PUT" else None
    response = registry.request(method, f"/v2/{path_part(name)}/{rest}", content=body)
    # The name as the server got it: a client resolves "." and ".." segments first.
    seen = response.request.url.path.removeprefix("/v2/").removesuffix(f"/{rest}")
    if not is_valid_name(seen):
        # Never served, never stored (the invariants also check that nothing was written).
        assert response.status_code >= 400, response.text
    elif response.status_code == 400:
        assert response.json()["errors"][0]["code"] != "NAME_INVALID", seen


@FUZZ
@given(reference=references, method=st.sampled_from(["GET", "HEAD", "DELETE"]))
@example(reference=".INVALID_MANIFEST_NAME", method="GET")
@example(reference="sha256:totallywrong", method="HEAD")
def test_any_manifest_reference(registry: FuzzRegistry, reference: str, method: str) -> None:
    # Escaped separators and NUL are refused anywhere in a path (NAME_INVALID): not here.
    assume(reference not in ("", ".", "..") and not set(reference) & set("/%\\\x00\n"))
    if method == "DELETE":
        assume(reference not in TAGS and reference != MANIFEST_DIGEST)  # keep the fixture
    response = registry.request(method, f"/v2/{REPO}/manifests/{path_part(reference)}")
    if reference in TAGS or reference == MANIFEST_DIGEST:
        assert response.status_code == 200
    elif ":" in reference and DIGEST_RE.fullmatch(reference) is None:
        assert response.status_code == 400  # DIGEST_INVALID (the invariants check the code)
    else:
        # An unknown tag or digest, or a reference that is neither: no such manifest.
        assert response.status_code == 404
        if method != "HEAD":
            assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


@FUZZ
@given(digest=digests, method=st.sampled_from(["GET", "HEAD", "DELETE", "REFERRERS"]))
def test_any_blob_digest(registry: FuzzRegistry, digest: str, method: str) -> None:
    assume(digest not in ("", ".", "..") and not set(digest) & set("/%\\\x00\n"))
    if method == "DELETE":
        assume(digest != BLOB_DIGEST)
    endpoint = "referrers" if method == "REFERRERS" else "blobs"
    response = registry.request(
        "GET" if method == "REFERRERS" else method,
        f"/v2/{REPO}/{endpoint}/{path_part(digest)}",
    )
    if DIGEST_RE.fullmatch(digest) is None:
        assert response.status_code == 400  # DIGEST_INVALID
    elif method == "REFERRERS":
        assert response.status_code == 200
        assert response.json()["manifests"] == []
    elif digest == BLOB_DIGEST:
        assert response.status_code == 200
    else:
        assert response.status_code == 404


def expected_range(header: str, size: int) -> tuple[int, int] | str | None:
    """RFC 9110 for one ``bytes=`` range: (start, end exclusive), None to send the whole
    blob (no range, or one the server must ignore), "416" when unsatisfiable."""
    match = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        return "416" if suffix == 0 else (max(size - suffix, 0), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        return "416"
    return start, size if last == "" else min(int(last) + 1, size)


positions = st.one_of(st.integers(0, len(BLOB) + 3), st.just(10**30))
range_headers = st.one_of(
    st.builds("bytes={}-{}".format, positions, positions),
    st.builds("bytes={}-".format, positions),
    st.builds("bytes=-{}".format, positions),
    st.sampled_from(["bytes=-", "bytes=0-1,3-4", "items=0-1", "bytes = 0-1", "bytes=-0"]),
    ascii_text,
)


@FUZZ
@given(header=range_headers)
@example(header="bytes=5-2")
def test_blob_range_requests(registry: FuzzRegistry, header: str) -> None:
    response = registry.request("GET", f"/v2/{REPO}/blobs/{BLOB_DIGEST}", headers={"Range": header})
    expected = expected_range(header, len(BLOB))
    if expected is None:
        assert response.status_code == 200
        assert response.content == BLOB
    elif isinstance(expected, str):  # "416"
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{len(BLOB)}"
    else:
        start, end = expected
        assert response.status_code == 206, (header, response.status_code)
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(BLOB)}"
        assert response.content == BLOB[start:end]


chunks = st.lists(
    st.tuples(
        st.one_of(
            st.none(),
            st.sampled_from(["at", "at", "before", "after", "too long", "reversed"]),
            ascii_text,
        ),
        st.binary(max_size=64),
    ),
    max_size=4,
)


def content_range(kind: str | None, offset: int, body: bytes) -> str | None:
    """A Content-Range for ``body`` sent at ``offset`` of kind: right ("at"), starting
    before or after where the upload is, claiming more bytes than sent, reversed, or any
    text."""
    end = offset + len(body) - 1
    shapes = {
        "at": f"{offset}-{end}",
        "before": f"{max(offset - 1, 0)}-{end}" if offset else f"{offset + 1}-{end + 2}",
        "after": f"{offset + 2}-{end + 2}",
        "too long": f"{offset}-{end + 5}",
        "reversed": f"{offset + 3}-{offset}",
    }
    if kind is None:
        return None
    return shapes.get(kind, kind)


@settings(FUZZ, max_examples=max(FUZZ.max_examples // 2, 1))
@given(steps=chunks, wrong_digest=st.none() | digests)
@example(steps=[(None, b"abc")], wrong_digest="sha256:" + "0" * 64)
def test_chunked_upload_content_ranges(
    registry: FuzzRegistry, steps: list[tuple[str | None, bytes]], wrong_digest: str | None
) -> None:
    started = registry.request("POST", f"/v2/{REPO}/blobs/uploads/")
    location = started.headers["location"]
    received = b""
    for kind, body in steps:
        header = content_range(kind, len(received), body)
        headers = {"Content-Type": "application/octet-stream"}
        if header is not None:
            headers["Content-Range"] = header
        response = registry.request("PATCH", location, headers=headers, content=body)
        if response.status_code == 202:
            if header:  # (an empty Content-Range is no Content-Range)
                # Accepted only where the upload is.
                parsed = re.fullmatch(r"(?:bytes )?(\d+)-(\d+)(?:/(?:\d+|\*))?", header.strip())
                assert parsed is not None and int(parsed[1]) == len(received), header
            received += body
            location = response.headers["location"]
            assert response.headers["range"] == f"0-{max(len(received) - 1, 0)}"
        else:
            assert header, response.text  # a plain PATCH is always taken
            assert kind not in (None, "at") or (kind == "at" and not body), (kind, response.text)
            assert response.status_code in (400, 416), response.text
        status = registry.request("GET", location)
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{max(len(received) - 1, 0)}"
    digest = "sha256:" + hashlib.sha256(received).hexdigest()
    if wrong_digest is not None and wrong_digest != digest:
        refused = registry.request("PUT", location, params={"digest": wrong_digest})
        assert refused.status_code == 400, refused.text
        if DIGEST_RE.fullmatch(wrong_digest):
            # Not the bytes the client said: the failed upload leaves nothing (registry:2
            # drops it too); the invariants allow that removal, and only that.
            assert registry.request("GET", location).status_code == 404
            return
        # A malformed digest is refused before the upload is touched.
    finished = registry.request("PUT", location, params={"digest": digest})
    assert finished.status_code == 201, finished.text
    assert registry.request("GET", f"/v2/{REPO}/blobs/{digest}").content == received


page_sizes = st.one_of(
    st.integers(0, 8).map(str),
    st.sampled_from(["", "-1", "+1", " 1", "1e3", "0x10", "\u00b2", "\u0663", "9" * 30]),
    any_text,
)


def expected_page(items: list[str], n: str | None, last: str | None) -> list[str] | None:
    """The page the spec asks for, None when ``n`` is not a number (400)."""
    after = sorted(item for item in items if last is None or last == "" or item > last)
    if n is None or n == "":
        return after
    if not (n.isascii() and n.isdigit()):
        return None
    return after[: int(n)]


@FUZZ
@given(
    n=st.none() | page_sizes,
    last=st.none() | st.sampled_from(TAGS + REPOSITORIES) | any_text,
    catalog=st.booleans(),
    ns=st.none() | any_text,
)
@example(n="\u00b2", last=None, catalog=False, ns=None)
def test_pagination_parameters(
    registry: FuzzRegistry, n: str | None, last: str | None, catalog: bool, ns: str | None
) -> None:
    params = {key: value for key, value in (("n", n), ("last", last)) if value is not None}
    path = "/v2/_catalog" if catalog else f"/v2/{REPO}/tags/list"
    if ns is not None and not catalog:
        params["ns"] = ns  # a containerd mirror's namespace: no upstream here, so local
    response = registry.request("GET", path, params=params)
    items = sorted(set(REPOSITORIES)) if catalog else TAGS
    expected = expected_page(items, n, last)
    if expected is None:
        assert response.status_code == 400
        assert response.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
        return
    assert response.status_code == 200, response.text
    listed = response.json()["repositories" if catalog else "tags"]
    assert listed == sorted(listed) and (not last or all(item > last for item in listed))
    assert n is None or n == "" or len(listed) <= int(n)
    if catalog:
        listed = [name for name in listed if name in REPOSITORIES]  # other tests' pushes
        expected = [name for name in expected if name in REPOSITORIES]
        assert listed == expected[: len(listed)]
    else:
        assert listed == expected


upload_params = st.dictionaries(
    st.sampled_from(["digest", "mount", "from"]),
    st.one_of(digests, names, st.just(BLOB_DIGEST), st.just(REPO)),
    max_size=3,
)


@FUZZ
@given(
    params=upload_params, body=st.binary(max_size=32), name=st.sampled_from(["fuzz/other", REPO])
)
def test_upload_query_parameters(
    registry: FuzzRegistry, params: dict[str, str], body: bytes, name: str
) -> None:
    response = registry.request("POST", f"/v2/{name}/blobs/uploads/", params=params, content=body)
    if response.status_code == 201:
        # The body under its digest, or a mounted blob: readable where it says, as itself.
        location = response.headers["location"]
        blob = registry.request("GET", location)
        assert blob.status_code == 200
        assert location.endswith("/sha256:" + hashlib.sha256(blob.content).hexdigest())
    elif response.status_code == 202:
        assert response.headers["location"].startswith(f"/v2/{name}/blobs/uploads/")
