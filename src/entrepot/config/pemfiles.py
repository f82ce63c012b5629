"""PEM certificate files a configuration names (``http.tls.clientcas``,
``auth.token.rootcertbundle``), read as the workers will read them: a file they cannot
load stopped every worker (a Rust panic in Granian's TLS, a traceback in the token
verifier), so it is refused with the configuration instead."""

from __future__ import annotations

from pathlib import Path

from entrepot.config.errors import ConfigError


def require_certificates(key_path: str, file: Path, holds: str) -> None:
    """ConfigError unless ``file`` holds PEM certificates that all load; ``holds`` says
    what they should be, for the message."""
    from cryptography import x509  # only for configurations that name such a file

    try:
        pem = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"config key '{key_path}': cannot read {file}: {exc.strerror or type(exc).__name__}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(f"config key '{key_path}': {file} holds no PEM certificate; {holds}")
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(
            f"config key '{key_path}': {file} holds a certificate that cannot be read ({exc}); "
            f"{holds}"
        ) from None
