"""The protocol model: digests, the name grammar, manifest parsing that keeps bytes."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.oci import mediatypes as mt
from entrepot.oci.digest import (
    Digest,
    DigestVerifier,
    digest_lines,
    is_digest,
    sorted_digests,
)
from entrepot.oci.errors import HTTP_STATUS, ErrorCode, RegistryError
from entrepot.oci.manifest import MAX_MANIFEST_SIZE, parse_manifest
from entrepot.oci.names import is_valid_tag, validate_name

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text",
    [SHA, "sha512:" + "b" * 128],
)
def test_valid_digests_round_trip(text: str) -> None:
    assert str(Digest.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    ["sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "sha256", ":" + "a" * 64, ""],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(RegistryError) as err:
        Digest.parse(text)
    assert err.value.code is ErrorCode.DIGEST_INVALID


def test_verifier_matches_hashlib_and_copies_independently() -> None:
    verifier = DigestVerifier()
    verifier.update(b"hello ")
    fork = verifier.copy()
    verifier.update(b"world")
    assert str(verifier.digest()) == "sha256:" + hashlib.sha256(b"hello world").hexdigest()
    assert str(fork.digest()) == "sha256:" + hashlib.sha256(b"hello ").hexdigest()
    assert verifier.size == 11
    assert fork.size == 6


def test_trusted_digest_equals_and_hashes_as_a_parsed_one() -> None:
    parsed = Digest.parse(SHA)
    trusted = Digest.trusted("sha256", "a" * 64)
    assert trusted == parsed
    assert hash(trusted) == hash(parsed) == hash(Digest("sha256", "a" * 64))
    assert {parsed: 1}[trusted] == 1
    assert str(trusted) == SHA
    assert trusted != Digest.trusted("sha256", "b" * 64)
    assert repr(trusted) == repr(parsed)


def test_is_digest() -> None:
    assert is_digest(SHA)
    assert not is_digest("latest")


@pytest.mark.parametrize(
    "name",
    ["a", "library/nginx", "a.b_c__d-e--f/g", "x/" * 10 + "y", "0/1"],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a_", "a___b", "a\\b", "a\x00b", "a" * 256],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as err:
        validate_name(name)
    assert err.value.code is ErrorCode.NAME_INVALID


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("latest", True),
        ("v1.2.3-rc_1", True),
        ("_x", True),
        ("-x", False),
        (".x", False),
        ("a" * 128, True),
        ("a" * 129, False),
        ("a:b", False),
    ],
)
def test_tag_grammar(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok


def test_every_error_code_has_a_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert RegistryError(ErrorCode.BLOB_UNKNOWN, "x").status == 404
    assert RegistryError(ErrorCode.SIZE_INVALID, "x", status=413).status == 413


def _oci_manifest(**extra: object) -> bytes:
    body = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": SHA,
            "size": 10,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": SHA, "size": 5},
            {
                "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": "sha256:" + "c" * 64,
                "size": 5,
                "urls": ["https://example.com/x"],
            },
        ],
        **extra,
    }
    return json.dumps(body, indent=7).encode()


def test_parse_keeps_bytes_and_digest() -> None:
    raw = _oci_manifest()
    manifest = parse_manifest(raw, mt.OCI_MANIFEST)
    assert manifest.raw is raw
    assert str(manifest.digest) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest.media_type == mt.OCI_MANIFEST
    # foreign layers with urls are not required to be pushed
    assert [str(d.digest) for d in manifest.required_blobs()] == [SHA, SHA]


def test_media_type_from_header_when_body_has_none() -> None:
    body = json.loads(_oci_manifest())
    del body["mediaType"]
    manifest = parse_manifest(json.dumps(body).encode(), mt.OCI_MANIFEST + "; charset=utf-8")
    assert manifest.media_type == mt.OCI_MANIFEST


def test_media_type_guessed_for_index_without_any() -> None:
    raw = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(raw).media_type == mt.OCI_INDEX


def test_referrer_descriptor_uses_artifact_type_then_config_type() -> None:
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": SHA, "size": 1}
    with_type = parse_manifest(_oci_manifest(subject=subject, artifactType="application/x-sig"))
    assert with_type.subject is not None and str(with_type.subject.digest) == SHA
    assert with_type.referrer_descriptor()["artifactType"] == "application/x-sig"
    without = parse_manifest(_oci_manifest(subject=subject))
    assert without.referrer_descriptor()["artifactType"] == (
        "application/vnd.oci.image.config.v1+json"
    )


def test_oversize_manifest_is_413_size_invalid() -> None:
    with pytest.raises(RegistryError) as err:
        parse_manifest(b" " * (MAX_MANIFEST_SIZE + 1))
    assert err.value.code is ErrorCode.SIZE_INVALID
    assert err.value.status == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"nope",
        b"[]",
        json.dumps({"schemaVersion": 1, "name": "x"}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": {}}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": SHA, "size": -1},
            }
        ).encode(),
    ],
)
def test_malformed_manifests_are_manifest_invalid(raw: bytes) -> None:
    with pytest.raises(RegistryError) as err:
        parse_manifest(raw)
    assert err.value.code is ErrorCode.MANIFEST_INVALID


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sha256", "sha512", "sha", "sha2", "b"]),
            st.text("0123456789abcdef", max_size=4),
        )
    )
)
def test_sorted_digests_is_sorted(pairs: list[tuple[str, str]]) -> None:
    # A collection sorts its unreferenced blobs with it: the order must be sorted()'s.
    digests = [Digest.trusted(*pair) for pair in pairs]
    assert sorted_digests(set(digests)) == sorted(set(digests))
    assert sorted_digests(digests) == sorted(digests)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sha256", "sha512"]),
            st.text("0123456789abcdef", min_size=1, max_size=4),
        )
    ),
    st.sampled_from(["", "blob eligible for deletion: "]),
)
def test_digest_lines_say_each_digest_on_a_line_in_order(
    pairs: list[tuple[str, str]], before: str
) -> None:
    # The journal and the collection's listing: a line per digest, in the order given,
    # algorithms mixed in any order.
    digests = [Digest.trusted(*pair) for pair in pairs]
    text = "\n".join(digest_lines(digests, before))
    assert text.split("\n") == [f"{before}{d}" for d in digests] or (not digests and text == "")
