"""Error bodies: every error, the framework's own included, is a spec error body."""

from __future__ import annotations

import pytest

from tests.api.oci_client import OciClient, error_code


@pytest.mark.parametrize(
    "name",
    [
        "UPPER/case",
        "a..b",
        "-leading",
        "trailing-",
        "double//slash",
        "a/.hidden/b",
        "x" * 256,
        "name_",
    ],
)
async def test_invalid_repository_names(client: OciClient, name: str) -> None:
    # spec: <name> grammar; NAME_INVALID
    response = await client.http.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 400, response.text
    assert error_code(response) == "NAME_INVALID"


@pytest.mark.parametrize(
    "raw_path",
    ["/v2/a%2F..%2Fb/tags/list", "/v2/a%00b/tags/list", "/v2/a%2e%2e/tags/list"],
)
async def test_escaped_separators_are_refused(client: OciClient, raw_path: str) -> None:
    response = await client.http.get(raw_path)
    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


async def test_unknown_endpoint_has_an_error_body(client: OciClient) -> None:
    response = await client.http.get("/not-v2")
    assert response.status_code == 404
    assert response.json()["errors"][0]["message"]


async def test_unsupported_method_on_endpoint(client: OciClient) -> None:
    response = await client.http.post("/v2/app/tags/list")
    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"


async def test_errors_carry_the_api_version_header(client: OciClient) -> None:
    response = await client.http.get("/v2/app/manifests/latest")
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.headers["content-type"] == "application/json"
