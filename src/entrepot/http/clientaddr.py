"""The client's address: the peer's, or, when the peer is a trusted reverse proxy
(``http.trustedproxies``), the one its ``X-Forwarded-For`` names. Only trusted proxies
are believed: anyone else could write any address there to dodge sign-in limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class ClientAddresses:
    trusted: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def trusting(cls, networks: Iterable[str]) -> ClientAddresses:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def _is_trusted(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in net for net in self.trusted)

    def of(self, scope: Scope) -> str:
        peer = scope.get("client")
        address = str(peer[0]) if peer else "unknown"
        if not self.trusted or not self._is_trusted(address):
            return address
        forwarded: list[str] = []
        for key, value in scope.get("headers", ()):
            if key == b"x-forwarded-for":
                forwarded += [hop.strip() for hop in value.decode("latin-1").split(",")]
        # The right-most hop that is not one of our proxies is the client; hops further
        # left were written by the client itself and prove nothing.
        for hop in reversed(forwarded):
            if not self._is_trusted(hop):
                return hop if _address(hop) is not None else address
        return address
