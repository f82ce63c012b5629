"""``redis``: registry:2's Redis section. Entrepot uses it to coordinate cache fills
across replicas (one upstream download for the whole fleet, see the README); registry:2
used it for its blob descriptor cache. The keys are registry:2's (2.x): ``addr``,
``password``, ``db``, the three timeouts (durations; 0 is none), ``pool`` and
``tls.enabled``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, key

__all__ = ["RedisConfig", "RedisPool"]

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisPool:
    """``redis.pool``."""

    maxidle: int = key("maxidle", 0, doc="accepted; idle connections are kept open")
    maxactive: int = key("maxactive", 0, doc="connections per worker at most (0: no limit)")
    idletimeout_s: float = key("idletimeout", 0.0, doc="accepted; idle connections are kept open")


@dataclass(frozen=True)
class RedisTls:
    """``redis.tls``."""

    enabled: bool = key("enabled", False, doc="TLS to the Redis server")


@dataclass(frozen=True)
class RedisConfig:
    """``redis``."""

    NOT_IMPLEMENTED: ClassVar = ("addrs", "maxidleconns", "poolsize", "connmaxidletime")
    addr: str = key("addr", "", doc="`host:port` of the Redis server (required)")
    password: str | None = key("password", None, secret=True, doc="Redis AUTH password")
    db: int = key("db", 0, doc="database number")
    dialtimeout_s: float = key("dialtimeout", 0.0, doc="connecting (0: no limit)")
    readtimeout_s: float = key("readtimeout", 0.0, doc="waiting for an answer (0: no limit)")
    writetimeout_s: float = key("writetimeout", 0.0, doc="sending a command (0: no limit)")
    pool: RedisPool = key("pool", factory=RedisPool, doc="")
    tls: RedisTls = key("tls", factory=RedisTls, doc="")

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0].strip("[]") if ":" in self.addr else self.addr

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1]) if ":" in self.addr else DEFAULT_PORT

    def checked(self, at: At) -> RedisConfig:
        if not self.addr:
            raise ConfigError(
                f"config key '{at.key('addr')}' is required with a redis section "
                "(host:port of the Redis server)"
            )
        if ":" in self.addr:
            port = self.addr.rsplit(":", 1)[1]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"config key '{at.key('addr')}': {self.addr!r} has no valid port; "
                    "use host:port, such as 127.0.0.1:6379"
                )
        if self.db < 0:
            raise ConfigError(f"config key '{at.key('db')}' must not be negative")
        return self
