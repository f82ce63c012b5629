"""registry:2's configuration (config.yml plus ``REGISTRY_*`` overrides), validated.

``load_config(path)`` returns a frozen ``Config``; ``schema`` says how each key is
declared once, ``loader`` what is checked and ``environ`` how environment overrides work.
"""

from entrepot.config.authconf import (
    AccessRuleConfig,
    AuthConfig,
    BuiltinAuthConfig,
    HtpasswdAuthConfig,
    TokenAuthConfig,
)
from entrepot.config.durations import parse_duration
from entrepot.config.environ import (
    CONFIG_ENV,
    CONFIGURATION_PATH_ENV,
    METRICS_DIR_ENV,
    SECRET_ENV,
)
from entrepot.config.errors import ConfigError
from entrepot.config.httpconf import parse_listen_addr
from entrepot.config.loader import load_config
from entrepot.config.model import Config, LogConfig
from entrepot.config.proxies import ProxyUpstreamConfig
from entrepot.config.proxycache import ProxyCacheConfig

__all__ = [
    "CONFIGURATION_PATH_ENV",
    "CONFIG_ENV",
    "METRICS_DIR_ENV",
    "SECRET_ENV",
    "AccessRuleConfig",
    "AuthConfig",
    "BuiltinAuthConfig",
    "Config",
    "ConfigError",
    "HtpasswdAuthConfig",
    "LogConfig",
    "ProxyCacheConfig",
    "ProxyUpstreamConfig",
    "TokenAuthConfig",
    "load_config",
    "parse_duration",
    "parse_listen_addr",
]
