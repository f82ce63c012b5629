"""Replicas whose ``http.secret`` differs, behind a load balancer: an upload opened on one
and continued on the other is unknown there (registry:2's answer), and the server says
why in one rate-limited warning, naming the repository and the upload."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from entrepot.config import load_config
from entrepot.http import uploads
from entrepot.root import create_app
from tests.api.auth_setup import PASSWORDS, basic, write_htpasswd
from tests.api.oci_client import error_code

ALICE = {"Authorization": basic("alice", PASSWORDS["alice"])}


def replica(tmp_path: Path, secret: str) -> httpx.AsyncClient:
    """One replica over the shared storage root, with its own ``http.secret``."""
    config = tmp_path / f"config-{secret}.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: :5000\n  secret: {secret}\n"
        f"auth:\n  htpasswd:\n    realm: r\n    path: {tmp_path / 'htpasswd'}\n"
    )
    app = create_app(load_config(config))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry.test", headers=ALICE
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "entrepot.http.uploads"]


@pytest.fixture(autouse=True)
def fresh_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "_foreign_states", uploads._ForeignStates())


async def test_an_upload_signed_by_another_secret_is_unknown_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_htpasswd(tmp_path / "htpasswd")
    caplog.set_level("WARNING", logger="entrepot.http.uploads")
    async with replica(tmp_path, "one") as first, replica(tmp_path, "two") as second:
        started = await first.post("/v2/team/app/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["location"]
        upload_id = started.headers["docker-upload-uuid"]
        moved = await second.patch(location, content=b"data")
        assert moved.status_code == 404
        assert error_code(moved) == "BLOB_UPLOAD_UNKNOWN"
        assert warnings(caplog) == [
            f"upload state for team/app upload {upload_id} has a signature this server did "
            "not make: do all replicas share http.secret?"
        ]
        # Without a _state there is no signature to doubt: a 404, no warning.
        bare = await second.patch(f"/v2/team/app/blobs/uploads/{upload_id}", content=b"x")
        assert bare.status_code == 404
        assert len(warnings(caplog)) == 1
        # The replica that signed it still takes it.
        kept = await first.patch(location, content=b"data")
        assert kept.status_code == 202


async def test_a_flood_of_foreign_upload_states_is_one_warning_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_htpasswd(tmp_path / "htpasswd")
    caplog.set_level("WARNING", logger="entrepot.http.uploads")
    now = [1000.0]
    monkeypatch.setattr(uploads, "_foreign_states", uploads._ForeignStates(lambda: now[0]))
    async with replica(tmp_path, "one") as first, replica(tmp_path, "two") as second:
        location = (await first.post("/v2/team/app/blobs/uploads/")).headers["location"]
        for _ in range(20):
            response = await second.patch(location, content=b"x")
            assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
        assert len(warnings(caplog)) == 1
        now[0] += uploads.STATE_WARNING_INTERVAL
        await second.patch(location, content=b"x")
        said = warnings(caplog)
        assert len(said) == 2
        assert said[1].endswith("(19 more since the last warning)")
