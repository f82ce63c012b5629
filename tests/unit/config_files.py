"""Loading a config.yml written for a test: a minimal file and the keys a test adds; the
files it names (a self-signed certificate and its key)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from entrepot.config import Config, ConfigError, load_config

STORAGE = "storage:\n  filesystem:\n    rootdirectory: /srv/registry\n"


def load(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> Config:
    """Version 0.1, STORAGE and ``extra`` (whose own ``storage`` section replaces STORAGE),
    loaded with the variables in ``env`` alone."""
    extra = textwrap.dedent(extra)
    storage = "" if extra.startswith("storage:") else STORAGE
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\n" + storage + extra)
    return load_config(path, env or {})


def error_of(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> str:
    """The config error that ``load`` raises."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, env)
    return str(info.value)


def tls_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name)
    builder = builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
    builder = builder.not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
    certificate, key_file = directory / "cert.pem", directory / "key.pem"
    certificate.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return certificate, key_file
