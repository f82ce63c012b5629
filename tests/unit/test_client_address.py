"""Who the client is: X-Forwarded-For is believed only from trusted reverse proxies."""

from __future__ import annotations

import pytest

from entrepot.http.clientaddr import ClientAddresses


def scope(peer: str, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 40000), "headers": headers}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], "10.0.0.5", ["203.0.113.9"], "10.0.0.5"),  # nobody trusted: the peer
        (["10.0.0.5"], "192.0.2.1", ["203.0.113.9"], "192.0.2.1"),  # peer not a proxy
        (["10.0.0.5"], "10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        (["10.0.0.0/8"], "10.0.0.5", ["203.0.113.9, 10.1.1.1"], "203.0.113.9"),  # two proxies
        # The client wrote a hop of its own: the right-most untrusted one is believed.
        (["10.0.0.5"], "10.0.0.5", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        (["10.0.0.5"], "10.0.0.5", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),
        (["10.0.0.5"], "10.0.0.5", ["not-an-address"], "10.0.0.5"),
        (["10.0.0.5"], "10.0.0.5", [], "10.0.0.5"),
        (["::1"], "::1", ["2001:db8::7"], "2001:db8::7"),
    ],
)
def test_client_address(trusted: list[str], peer: str, forwarded: list[str], client: str) -> None:
    assert ClientAddresses.trusting(trusted).of(scope(peer, *forwarded)) == client
