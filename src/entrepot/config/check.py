"""What ``entrepot check-config`` and ``serve`` check beyond the file itself (the TLS
files; the storage is probed by the root), and what the configuration amounts to."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from entrepot.config.errors import ConfigError
from entrepot.config.model import Config
from entrepot.config.pemfiles import require_certificates
from entrepot.config.schema import effective

__all__ = ["check_tls_files", "effective_yaml", "summary"]


def check_tls_files(config: Config) -> None:
    """The TLS files are readable, and the certificate and key belong together."""
    tls = config.http.tls
    if tls is None:
        return
    named = [("http.tls.certificate", tls.certificate), ("http.tls.key", tls.key)]
    named += [(f"http.tls.clientcas[{i}]", ca) for i, ca in enumerate(tls.clientcas)]
    for key_path, file in named:
        if not os.access(file, os.R_OK) or not file.is_file():
            raise ConfigError(f"config key '{key_path}': cannot read file {file}")
    _check_tls_pair(tls.certificate, tls.key)
    for index, ca in enumerate(tls.clientcas):  # Granian's TLS panics on a bad one
        require_certificates(
            f"http.tls.clientcas[{index}]",
            ca,
            "it must hold the certificates of the CAs that sign client certificates",
        )


def _check_tls_pair(certificate: Path, key: Path) -> None:
    """The TLS library would only say "PEM lib" or "key values mismatch"."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
    except ValueError:
        raise ConfigError(
            f"config key 'http.tls.certificate': {certificate} holds no PEM certificate"
        ) from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"config key 'http.tls.key': {key} holds no unencrypted PEM private key"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(
            f"config key 'http.tls.key': the key in {key} does not match "
            f"the certificate in {certificate} (key values mismatch)"
        )


def effective_yaml(config: Config) -> str:
    """The configuration in effect (defaults and ``REGISTRY_*`` included), secrets masked."""
    return yaml.safe_dump(effective(config), sort_keys=False, default_flow_style=False)


def summary(config: Config, path: str | None) -> str:
    """One line: which file, storage, address, auth mode and upstreams; no secrets."""
    http = config.http
    if http.unix_socket is not None:
        address = f"unix:{http.unix_socket}"
    else:
        host = f"[{http.host}]" if ":" in http.host else http.host
        address = f"{'https' if http.tls else 'http'}://{host}:{http.port}{http.prefix}"
    upstreams = [
        u.host
        + (" (mirror)" if u.mirror else "")
        + (" (offline)" if u.offline else "")
        + "".join(f" (also {a})" for a in u.aliases)
        for u in config.proxies
    ]
    s3 = config.storage.s3
    where = (
        f"bucket {s3.bucket}{'/' + s3.rootdirectory.strip('/') if s3.rootdirectory else ''}"
        f" at {s3.endpoint or 'AWS ' + (s3.region or 'us-east-1')}"
        if s3 is not None
        else config.storage.rootdirectory
    )
    return (
        f"config {Path(path).resolve() if path else '(built-in defaults)'}; "
        f"storage {config.storage.driver} at {where}; "
        f"listening on {address}; auth {config.auth.mode if config.auth else 'none'}; "
        f"upstreams {', '.join(upstreams) or 'none'}"
    )
