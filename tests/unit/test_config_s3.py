"""registry:2's ``storage.s3`` section: its keys and defaults, REGISTRY_STORAGE_S3_*
overrides, the keys Entrepot cannot honour (warnings naming them) and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrepot.config import Config, ConfigError, load_config
from entrepot.config.check import effective_yaml, summary


def load(tmp_path: Path, storage: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.yml"
    # Replicas share a secret (else a warning, tested in test_check_config).
    path.write_text(f"version: 0.1\nstorage:\n{storage}\nhttp:\n  addr: :5000\n  secret: s\n")
    return load_config(path, env or {})


FULL = """\
  s3:
    accesskey: AK
    secretkey: SK
    region: eu-west-1
    regionendpoint: http://127.0.0.1:7480
    bucket: images
    rootdirectory: /registry
    secure: false
    skipverify: true
    chunksize: 6291456
    encrypt: true
    keyid: alias/registry
  redirect:
    disable: true
"""


def test_registry2_s3_section_loads(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    s3 = config.storage.s3
    assert config.storage.driver == "s3"
    assert s3 is not None
    assert (s3.bucket, s3.region, s3.accesskey, s3.secretkey) == ("images", "eu-west-1", "AK", "SK")
    assert s3.endpoint == "http://127.0.0.1:7480"
    assert s3.path_style  # registry:2 uses path-style URLs once regionendpoint is set
    assert (s3.rootdirectory, s3.skipverify, s3.chunksize) == ("/registry", True, 6291456)
    assert (s3.encrypt, s3.keyid) == (True, "alias/registry")
    assert config.storage.redirect_disabled
    assert config.warnings == ()


def test_defaults_and_secure_picks_the_scheme(tmp_path: Path) -> None:
    s3 = load(tmp_path, "  s3:\n    bucket: b\n    region: us-east-1\n").storage.s3
    assert s3 is not None
    assert s3.endpoint is None and not s3.path_style
    assert (s3.chunksize, s3.secure, s3.encrypt) == (10 * 1024 * 1024, True, False)
    s3 = load(
        tmp_path, "  s3:\n    bucket: b\n    regionendpoint: minio:9000\n    secure: false\n"
    ).storage.s3
    assert s3 is not None and s3.endpoint == "http://minio:9000"
    s3 = load(tmp_path, "  s3:\n    bucket: b\n    regionendpoint: s3.example.com\n").storage.s3
    assert s3 is not None and s3.endpoint == "https://s3.example.com"
    s3 = load(
        tmp_path,
        "  s3:\n    bucket: b\n    regionendpoint: s3.example.com\n    forcepathstyle: false\n",
    ).storage.s3
    assert s3 is not None and not s3.path_style


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "REGISTRY_STORAGE_S3_BUCKET": "from-env",
        "REGISTRY_STORAGE_S3_CHUNKSIZE": "5242880",
        "REGISTRY_STORAGE_S3_SECURE": "false",
    }
    s3 = load(tmp_path, FULL, env).storage.s3
    assert s3 is not None
    assert (s3.bucket, s3.chunksize, s3.secure) == ("from-env", 5242880, False)


def test_keys_that_cannot_be_honoured_warn_by_name(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "  s3:\n    bucket: b\n    region: r\n    v4auth: false\n"
        "    storageclass: REDUCED_REDUNDANCY\n    multipartcopychunksize: 67108864\n"
        "    objectacl: private\n",
    )
    text = "\n".join(config.warnings)
    for name in ("v4auth", "storageclass", "multipartcopychunksize", "objectacl"):
        assert f"storage.s3.{name}" in text, name
    assert len(config.warnings) == 4


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("  s3:\n    region: r\n", "storage.s3.bucket"),
        ("  s3:\n    bucket: b\n", "storage.s3.region"),
        ("  s3:\n    bucket: b\n    region: r\n    chunksize: 1048576\n", "storage.s3.chunksize"),
        ("  s3:\n    bucket: b\n    region: r\n    accesskey: AK\n", "storage.s3.secretkey"),
        ("  s3:\n    bucket: b\n    regionendpoint: ftp://x\n", "storage.s3.regionendpoint"),
    ],
)
def test_bad_s3_sections_name_the_key(tmp_path: Path, storage: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(tmp_path, storage)


def test_check_config_masks_the_secret_and_names_the_bucket(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    shown = effective_yaml(config)
    assert "secretkey: '********'" in shown or "secretkey: ********" in shown
    assert ": SK" not in shown
    assert "bucket: images" in shown
    line = summary(config, None)
    assert "storage s3 at bucket images/registry at http://127.0.0.1:7480;" in line
