"""What an operator reads when the S3 bucket cannot be reached: obstore's text, cut to the
reason, and for two common mistakes what to change."""

from __future__ import annotations

from datetime import timedelta

import obstore
import pytest
from obstore.store import S3Store

from entrepot.storage.s3stream import reason

FAST = {"max_retries": 0, "retry_timeout": timedelta(seconds=2)}


def _error_listing(store: S3Store) -> BaseException:
    with pytest.raises(Exception) as info:
        obstore.list_with_delimiter(store, "x/")
    return info.value


def test_a_port_nothing_listens_on_names_regionendpoint() -> None:
    store = S3Store(
        "b",
        endpoint="http://127.0.0.1:9",
        region="us-east-1",
        client_options={"allow_http": True},
        retry_config=FAST,  # type: ignore[arg-type]
        access_key_id="a",
        secret_access_key="s",
    )
    assert reason(_error_listing(store)) == (
        "connection refused: check storage.s3.regionendpoint (its host and port)"
    )


def test_no_credentials_says_which_keys_to_set() -> None:
    # What obstore raises without credentials: it asked the cloud instance metadata
    # service for some (recorded: a test talks to loopback only, never to that address).
    recorded = Exception(
        "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token in "
        "2.37ms - Server returned non-2xx status code: 403 Forbidden: resolve_deny: denied "
        "destination\n\nDebug source:\nGeneric {...}"
    )
    assert reason(recorded) == (
        "no S3 credentials: set storage.s3.accesskey and secretkey (or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY); no cloud instance metadata service gave any"
    )
