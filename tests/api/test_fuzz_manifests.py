"""Property-based tests of manifest pushes (hypothesis): odd JSON (duplicate keys, huge
numbers, deep nesting, wrong media types, invalid UTF-8), pushed with any Content-Type.

A push is either refused (with the invariants of ``fuzz_harness``: spec error body,
nothing stored) or accepted, and then the manifest is one every client can read: strict
UTF-8 JSON with unique keys, schemaVersion 2, sizes a Go int64 holds, annotations that
are strings; it is served back byte for byte, and its subject's referrers list stays a
valid index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.api.fuzz_harness import FUZZ, FuzzRegistry, fuzz_registry

REPO = "fuzz/manifests"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPES = [
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "application/octet-stream",
    "text/plain",
    "application/vnd.oci.image.config.v1+json",
]
CONFIG = b'{"architecture": "amd64", "os": "linux"}'
LAYER = b"layer bytes"
INT64_MAX = 2**63 - 1


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


BASE: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": OCI_MANIFEST,
    "config": _descriptor("application/vnd.oci.image.config.v1+json", CONFIG),
    "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", LAYER)],
}
SUBJECT = json.dumps(BASE).encode()
ARTIFACT = {**BASE, "subject": _descriptor(OCI_MANIFEST, SUBJECT), "artifactType": "a/b"}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
odd_numbers = st.sampled_from(
    ["1e400", "-1", "2.0", "2e0", "99999999999999999999999999", "9223372036854775808", "-0"]
)
FIELDS = ["schemaVersion", "mediaType", "config", "layers", "subject", "annotations"]
DESCRIPTOR_FIELDS = ["mediaType", "digest", "size", "urls", "annotations", "artifactType"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid manifest (or referrer) with one field, or one descriptor field, replaced
    by any JSON value."""
    body = json.loads(json.dumps(draw(st.sampled_from([BASE, ARTIFACT]))))
    value = draw(json_values)
    if draw(st.booleans()):
        body[draw(st.sampled_from([*FIELDS, "artifactType", "manifests"]))] = value
    else:
        target = draw(st.sampled_from(["config", "layers", "subject"]))
        descriptor = body["layers"][0] if target == "layers" else body.get(target, body["config"])
        descriptor[draw(st.sampled_from(DESCRIPTOR_FIELDS))] = value
    return json.dumps(body).encode()


@st.composite
def raw_texts(draw: st.DrawFn) -> bytes:
    """Manifests written as text: a field twice, a number JSON allows but a Go client
    cannot hold, or nesting far deeper than any manifest."""
    text = json.dumps(draw(st.sampled_from([BASE, ARTIFACT])))
    kind = draw(st.sampled_from(["duplicate", "number", "nesting"]))
    if kind == "duplicate":
        field = draw(st.sampled_from(FIELDS))
        other = json.dumps(draw(json_values))
        return ("{" + f'"{field}": {other}, ' + text[1:]).encode()
    if kind == "number":
        where = draw(st.sampled_from(['"schemaVersion": 2', f'"size": {len(CONFIG)}']))
        number = draw(odd_numbers)
        return text.replace(where, where.split(":")[0] + ": " + number, 1).encode()
    depth = draw(st.integers(1, 200_000))
    return text[:-1].encode() + b', "annotations": ' + b"[" * depth + b"]" * depth + b"}"


@st.composite
def badly_encoded(draw: st.DrawFn) -> bytes:
    """A valid manifest in another encoding, behind a BOM, or with invalid UTF-8 in it."""
    text = json.dumps(draw(st.sampled_from([BASE, ARTIFACT])), ensure_ascii=False)
    kind = draw(st.sampled_from(["utf-16", "utf-32", "bom", "bytes"]))
    if kind in ("utf-16", "utf-32"):
        return text.encode(kind)
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    data = text.encode()
    position = draw(st.integers(0, len(data)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88"]))
    return data[:position] + junk + data[position:]


def _text(body: dict[str, Any]) -> str:
    return json.dumps(body)


# What the properties found (each refused now; accepted or a 500 before).
NESTED_TOO_DEEPLY = _text(BASE)[:-1] + ', "annotations": ' + "[" * 100_000 + "]" * 100_000 + "}"
URLS_NOT_A_LIST = _text({**BASE, "config": {**BASE["config"], "urls": 5}})
CONFIG_TWICE = '{"config": ' + _text(_descriptor("x/y", b"other")) + ", " + _text(BASE)[1:]
SIZE_OVER_INT64 = _text(BASE).replace(f'"size": {len(CONFIG)}', '"size": 9223372036854775808')
FRACTIONAL_VERSION = _text(BASE).replace('"schemaVersion": 2', '"schemaVersion": 2.0')
NUMBER_ANNOTATION = _text({**ARTIFACT, "annotations": {"org.example": 1}})
NUMBER_ARTIFACT_TYPE = _text({**ARTIFACT, "artifactType": 5})
REGRESSIONS = [
    NESTED_TOO_DEEPLY.encode(),
    URLS_NOT_A_LIST.encode(),
    CONFIG_TWICE.encode(),
    SIZE_OVER_INT64.encode(),
    FRACTIONAL_VERSION.encode(),
    NUMBER_ANNOTATION.encode(),
    NUMBER_ARTIFACT_TYPE.encode(),
    _text(BASE).encode("utf-16"),
    b"\xef\xbb\xbf" + _text(BASE).encode(),
]


bodies = st.one_of(
    mutated(),
    raw_texts(),
    badly_encoded(),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(MEDIA_TYPES),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRegistry]:
    with fuzz_registry(tmp_path_factory.mktemp("fuzz") / "registry") as registry:
        registry.push_blob(REPO, CONFIG)
        registry.push_blob(REPO, LAYER)
        subject = registry.request(
            "PUT",
            f"/v2/{REPO}/manifests/subject",
            headers={"Content-Type": OCI_MANIFEST},
            content=SUBJECT,
        )
        assert subject.status_code == 201, subject.text
        yield registry


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys accepted: {keys}"
    return dict(pairs)


def _check_readable(value: Any) -> None:
    """What a Go client (containerd, registry:2) can decode (null is as good as absent)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "size":
                assert type(item) is int and 0 <= item <= INT64_MAX, f"size {item!r} accepted"
            elif key in ("mediaType", "digest"):
                assert isinstance(item, str), f"{key} {item!r} accepted"
            elif item is None:
                continue
            elif key == "artifactType":
                assert isinstance(item, str), f"{key} {item!r} accepted"
            elif key == "annotations":
                assert isinstance(item, dict), f"annotations {item!r} accepted"
                assert all(isinstance(v, str) for v in item.values()), f"{item!r} accepted"
            elif key == "urls":
                assert isinstance(item, list), f"urls {item!r} accepted"
                assert all(isinstance(url, str) for url in item), f"urls {item!r} accepted"
            _check_readable(item)
    elif isinstance(value, list):
        for item in value:
            _check_readable(item)


def _with_regressions(test: Any) -> Any:
    for body in REGRESSIONS:
        test = example(body=body, content_type=OCI_MANIFEST, by_digest=False)(test)
    return test


@FUZZ
@given(body=bodies, content_type=content_types, by_digest=st.booleans())
@_with_regressions
def test_manifest_push_with_odd_json(
    registry: FuzzRegistry, body: bytes, content_type: str | None, by_digest: bool
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    reference = _digest(body) if by_digest else "odd"
    response = registry.request(
        "PUT", f"/v2/{REPO}/manifests/{reference}", headers=headers, content=body
    )
    if response.status_code != 201:
        assert response.status_code in (400, 404, 413), response.text
        return
    # Accepted: a manifest every client can read, served back as it was pushed.
    parsed = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    assert isinstance(parsed, dict) and type(parsed.get("schemaVersion")) is int
    assert parsed["schemaVersion"] == 2
    _check_readable(parsed)
    digest = response.headers["docker-content-digest"]
    assert digest == _digest(body)
    served = registry.request("GET", f"/v2/{REPO}/manifests/{digest}", headers={"Accept": "*/*"})
    assert served.status_code == 200 and served.content == body
    subject = parsed.get("subject")
    if isinstance(subject, dict):
        referrers = registry.request("GET", f"/v2/{REPO}/referrers/{subject['digest']}")
        assert referrers.status_code == 200
        index = referrers.json()
        assert index["mediaType"] == OCI_INDEX
        _check_readable(index)
