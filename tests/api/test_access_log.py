"""Access-log lines name the signed-in user, and every response carries its request id."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from entrepot.http.accesslog import AccessLines, flush_access_lines, write_access_line
from entrepot.http.clientaddr import ClientAddresses
from entrepot.requestinfo import RequestInfo
from tests.api.auth_setup import PASSWORDS, app_client, basic, write_htpasswd


async def test_access_line_names_the_user_and_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    auth = f"  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
    caplog.set_level("INFO", logger="entrepot.access")
    async with app_client(tmp_path, auth) as http:
        response = await http.get(
            "/v2/team/app/tags/list?n=5",
            headers={"Authorization": basic("bob", PASSWORDS["bob"]), "X-Request-Id": "r-1"},
        )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "r-1"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "entrepot.access"]
    assert line.startswith("127.0.0.1 - bob [")
    assert f'"GET /v2/team/app/tags/list?n=5 HTTP/1.1" 404 {len(response.content)} ' in line
    assert " id=r-1 cache=- upstream=-" in line


async def test_access_line_written_by_the_servers_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `entrepot serve` installs (log_setup.py): the line goes straight to its handler.
    stream = io.StringIO()
    access = logging.getLogger("entrepot.access")
    monkeypatch.setattr(access, "handlers", [AccessLines(stream)])
    monkeypatch.setattr(access, "level", logging.INFO)
    async with app_client(tmp_path, "") as http:
        response = await http.get("/v2/team/app/manifests/1", headers={"User-Agent": 'a"b'})
        flush_access_lines()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("127.0.0.1 - - [")
    assert f'"GET /v2/team/app/manifests/1 HTTP/1.1" 404 {len(response.content)} "-" "a%22b" ' in (
        line
    )
    assert line.endswith(f" id={response.headers['x-request-id']} cache=- upstream=-")


def test_access_line_encodes_what_could_forge_a_line_and_takes_the_first_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    access = logging.getLogger("entrepot.access")
    monkeypatch.setattr(access, "handlers", [AccessLines(stream)])
    monkeypatch.setattr(access, "level", logging.INFO)
    scope = {
        "type": "http",
        "method": "HEAD",
        "path": "/v2/a/blobs/x",
        "raw_path": b"/v2/a/blobs/x",
        "query_string": b"",
        "http_version": "1.0",
        "client": ("127.0.0.1", 4000),
        "headers": [
            (b"referer", b""),  # the first, empty: "-"
            (b"referer", b"http://later"),
            (b"user-agent", b'ab \r\n127.0.0.1 - forged \x7f"\xe9'),
            (b"user-agent", b"later"),
        ],
    }
    write_access_line(ClientAddresses(), scope, RequestInfo("r-2"), 200, "0", 0.0012)
    flush_access_lines()
    (line,) = stream.getvalue().splitlines()
    assert (
        '"HEAD /v2/a/blobs/x HTTP/1.0" 200 0 "-" "ab %0D%0A127.0.0.1 - forged %7F%22\xe9" ' in line
    )
    assert line.endswith(" 1.2ms id=r-2 cache=- upstream=-")
