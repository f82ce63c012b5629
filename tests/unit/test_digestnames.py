"""A walk child checks a folder's names, and a manifest's digests, in one match where they
are all well formed; whatever they hold, the answer must be the one-by-one check's."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from entrepot.registry.digestnames import digest_names, is_digest_at, parse_pair, parse_pairs
from entrepot.registry.manifestrefs import manifest_ref_pairs

HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2
# Encoded parts, well formed or nearly: wrong length or case, a newline, a "/" joining two.
ENCODED = st.sampled_from(
    [HEX64, HEX128, HEX64[:-1], HEX64.upper(), f"{HEX64}\n", f"{HEX64}/{HEX64}", "", "x"]
) | st.text(alphabet="0123456789abcdefA/\n:", max_size=70)
TEXTS = st.builds(
    lambda algorithm, encoded: f"{algorithm}:{encoded}" if algorithm else encoded,
    st.sampled_from(["sha256", "sha512", "md5", "SHA256", ""]),
    ENCODED,
) | st.sampled_from([f"sha256:{HEX64}/sha256:{HEX64}", f"sha256:{HEX64}/", "/"])


@given(st.sampled_from(["sha256", "sha512", "md5"]), st.lists(ENCODED, max_size=6))
@example("sha256", [HEX64, HEX64])
@example("sha256", [f"{HEX64}/{HEX64}"])  # one name that joined looks like two
@example("sha256", [HEX64, ""])
def test_a_folders_digest_names_are_those_checked_one_by_one(
    algorithm: str, names: list[str]
) -> None:
    assert digest_names(algorithm, names) == [n for n in names if is_digest_at(algorithm, n)]


@given(st.lists(TEXTS, max_size=6))
@example([f"sha256:{HEX64}", f"sha512:{HEX128}"])
@example([f"sha256:{HEX64}/sha256:{HEX64}"])  # one text that joined looks like two
@example([f"sha256:{HEX64}\n"])  # Digest.parse takes a trailing newline: so do these
@example([f"sha256:{HEX64.upper()}", f"sha256:{HEX64}"])
def test_a_manifests_digests_are_those_parsed_one_by_one(texts: list[str]) -> None:
    expected = [pair for text in texts if (pair := parse_pair(text)) is not None]
    assert parse_pairs(texts) == expected


def test_a_manifest_with_one_odd_digest_keeps_its_good_ones_in_order() -> None:
    layers = [f"sha256:{HEX64[::-1]}", 7, f"SHA256:{HEX64}", f"sha512:{HEX128}"]
    manifest = {
        "config": {"digest": f"sha256:{HEX64}"},
        "layers": [*({"digest": d} for d in layers), "junk"],
        "subject": {"digest": f"sha256:{HEX64}"},
    }
    references, children, subject = manifest_ref_pairs(json.dumps(manifest).encode())
    assert references == [("sha256", HEX64), ("sha256", HEX64[::-1]), ("sha512", HEX128)]
    assert children == []
    assert subject == ("sha256", HEX64)


def test_an_index_refers_to_its_children_and_a_schema1_manifest_to_its_layers() -> None:
    index = {"manifests": [{"digest": f"sha256:{HEX64}"}, {"digest": f"sha512:{HEX128}"}]}
    pairs = [("sha256", HEX64), ("sha512", HEX128)]
    assert manifest_ref_pairs(json.dumps(index).encode()) == (pairs, pairs, None)
    schema1 = {"fsLayers": [{"blobSum": f"sha256:{HEX64}"}, {"blobSum": "nope"}]}
    assert manifest_ref_pairs(json.dumps(schema1).encode()) == ([("sha256", HEX64)], [], None)
