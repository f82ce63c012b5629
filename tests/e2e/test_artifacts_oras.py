"""Artifacts with ORAS (the oras-py client, PyPI `oras`): push files as an OCI artifact,
monolithic and chunked, pull them back, and attach a referrer found by the referrers API."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest

from .servers import ServerFactory

pytestmark = pytest.mark.e2e


def _client(host: str) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=host, insecure=True, tls_verify=False)


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_oras_pushes_and_pulls_an_artifact_and_a_referrer(
    entrepot_factory: ServerFactory, tmp_path: Path, chunked: bool
) -> None:
    entrepot = entrepot_factory()
    client = _client(entrepot.host)
    payload = tmp_path / "sbom.json"
    payload.write_bytes(b'{"packages": []}' * 5000)
    chunk_size = 16 * 1024  # several PATCHes for the chunked variant
    pushed = client.push(
        target=f"{entrepot.host}/team/artifacts:v1",
        files=[str(payload)],
        manifest_annotations={"org.example.kind": "sbom"},
        do_chunked=chunked,
        chunk_size=chunk_size,
        disable_path_validation=True,
    )
    assert pushed.status_code == 201, pushed.text

    out = tmp_path / "out"
    files = client.pull(target=f"{entrepot.host}/team/artifacts:v1", outdir=str(out))
    assert [Path(f).read_bytes() for f in files] == [payload.read_bytes()]

    with httpx.Client(base_url=entrepot.url) as http:
        head = http.head(
            "/v2/team/artifacts/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        subject_digest = head.headers["docker-content-digest"]
        manifest = http.get(
            "/v2/team/artifacts/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == subject_digest
        assert manifest.json()["annotations"]["org.example.kind"] == "sbom"

    signature = tmp_path / "signature.txt"
    signature.write_text("signed")
    attached = client.push(
        target=f"{entrepot.host}/team/artifacts:sig",
        files=[str(signature)],
        subject=oras.oci.Subject(
            mediaType="application/vnd.oci.image.manifest.v1+json",
            digest=subject_digest,
            size=len(manifest.content),
        ),
        disable_path_validation=True,
    )
    assert attached.status_code == 201, attached.text
    assert attached.headers.get("OCI-Subject") == subject_digest
    with httpx.Client(base_url=entrepot.url) as http:
        referrers = http.get(f"/v2/team/artifacts/referrers/{subject_digest}").json()
    assert len(referrers["manifests"]) == 1
