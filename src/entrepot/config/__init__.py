"""registry:2's configuration (config.yml plus ``REGISTRY_*`` overrides), validated.

``load_config(path)`` returns a frozen ``Config``; see ``loader`` for what is checked
and ``environ`` for how environment overrides work.
"""

from entrepot.config.durations import parse_duration
from entrepot.config.errors import ConfigError
from entrepot.config.httpconf import parse_listen_addr
from entrepot.config.loader import SUPPORTED_STORAGE_DRIVERS, load_config
from entrepot.config.model import (
    AccessRuleConfig,
    AuthConfig,
    BuiltinAuthConfig,
    Config,
    HealthConfig,
    HtpasswdAuthConfig,
    HttpConfig,
    LogConfig,
    ProxyCacheConfig,
    ProxyUpstreamConfig,
    StorageConfig,
    StorageHealth,
    TlsConfig,
    TokenAuthConfig,
    UploadPurging,
)

__all__ = [
    "SUPPORTED_STORAGE_DRIVERS",
    "AccessRuleConfig",
    "AuthConfig",
    "BuiltinAuthConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "HtpasswdAuthConfig",
    "HttpConfig",
    "LogConfig",
    "ProxyCacheConfig",
    "ProxyUpstreamConfig",
    "StorageConfig",
    "StorageHealth",
    "TlsConfig",
    "TokenAuthConfig",
    "UploadPurging",
    "load_config",
    "parse_duration",
    "parse_listen_addr",
]
