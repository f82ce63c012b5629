"""``storage.s3``: registry:2's S3 driver options (its names and defaults), mapped to the
storage layer's ``S3Settings`` by the root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, absolute_url, key

__all__ = ["S3StorageConfig"]

MiB = 1024 * 1024
MIN_CHUNKSIZE = 5 * MiB  # S3's smallest multipart part
_STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "NONE")


@dataclass(frozen=True)
class S3StorageConfig:
    """``storage.s3``."""

    NOT_IMPLEMENTED: ClassVar = (
        "objectacl",
        "useragent",
        "usedualstack",
        "accelerate",
        "loglevel",
    )
    bucket: str = key("bucket", "", doc="the bucket (it must exist)")
    region: str = key("region", "", doc="AWS region (`us-east-1` when `regionendpoint` is set)")
    regionendpoint: str | None = key(
        "regionendpoint", None, doc="endpoint of an S3-compatible server (radosgw, MinIO, ...)"
    )
    forcepathstyle: bool | None = key(
        "forcepathstyle", None, doc="path-style URLs (default: on when `regionendpoint` is set)"
    )
    accesskey: str | None = key(
        "accesskey",
        None,
        doc="else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, then ~/.aws/credentials",
    )
    secretkey: str | None = key("secretkey", None, secret=True, doc="with `accesskey`")
    sessiontoken: str | None = key("sessiontoken", None, secret=True, doc="temporary credentials")
    rootdirectory: str = key("rootdirectory", "", doc="key prefix of the registry:2 layout")
    secure: bool = key("secure", True, doc="https to the endpoint (when it has no scheme)")
    skipverify: bool = key("skipverify", False, doc="do not verify the endpoint's TLS certificate")
    v4auth: bool = key("v4auth", True, doc="AWS signature v4 (the only one Entrepot speaks)")
    chunksize: int = key("chunksize", 10 * MiB, doc="multipart part size (at least 5 MiB)")
    multipartcopychunksize: int = key(
        "multipartcopychunksize", 32 * MiB, doc="accepted; moves use one server-side copy"
    )
    multipartcopymaxconcurrency: int = key(
        "multipartcopymaxconcurrency", 100, doc="accepted; moves use one server-side copy"
    )
    multipartcopythresholdsize: int = key(
        "multipartcopythresholdsize", 32 * MiB, doc="accepted; moves use one server-side copy"
    )
    encrypt: bool = key(
        "encrypt", False, doc="server-side encryption (SSE-S3, or SSE-KMS with `keyid`)"
    )
    keyid: str | None = key("keyid", None, doc="KMS key id for `encrypt`")
    storageclass: str = key(
        "storageclass", "STANDARD", doc="only `STANDARD` (the bucket's default) is honoured"
    )

    def checked(self, at: At) -> S3StorageConfig:
        if not self.bucket:
            raise ConfigError(f"config key '{at.key('bucket')}' is required for the s3 driver")
        if not self.region and not self.regionendpoint:
            raise ConfigError(
                f"config key '{at.key('region')}' is required for the s3 driver "
                f"(or set '{at.key('regionendpoint')}' for an S3-compatible server)"
            )
        if self.regionendpoint and "://" in self.regionendpoint:
            absolute_url(at.key("regionendpoint"), self.regionendpoint, "http://127.0.0.1:7480")
        if self.chunksize < MIN_CHUNKSIZE:
            raise ConfigError(
                f"config key '{at.key('chunksize')}' must be at least {MIN_CHUNKSIZE} "
                f"(5 MiB, S3's smallest part), got {self.chunksize}"
            )
        if bool(self.accesskey) != bool(self.secretkey):
            raise ConfigError(
                f"config keys '{at.key('accesskey')}' and '{at.key('secretkey')}' go together"
            )
        if not self.v4auth:
            at.warn(
                f"config key '{at.key('v4auth')}: false' is not supported and is ignored; "
                "Entrepot signs every request with AWS signature v4"
            )
        if self.storageclass.upper() not in ("STANDARD", "NONE"):
            at.warn(
                f"config key '{at.key('storageclass')}: {self.storageclass}' is not supported "
                "and is ignored; objects get the bucket's default storage class"
            )
        for name, default in (
            ("multipartcopychunksize", 32 * MiB),
            ("multipartcopymaxconcurrency", 100),
            ("multipartcopythresholdsize", 32 * MiB),
        ):
            if getattr(self, name) != default:
                at.warn(
                    f"config key '{at.key(name)}' is not used and is ignored: Entrepot moves "
                    "an object with one server-side copy (up to 5 GiB)"
                )
        return self

    @property
    def endpoint(self) -> str | None:
        """``regionendpoint`` with its scheme (``secure`` picks it when it has none)."""
        if not self.regionendpoint:
            return None
        if "://" in self.regionendpoint:
            return self.regionendpoint.rstrip("/")
        return f"{'https' if self.secure else 'http'}://{self.regionendpoint.rstrip('/')}"

    @property
    def path_style(self) -> bool:
        return self.forcepathstyle if self.forcepathstyle is not None else bool(self.regionendpoint)
