"""``storage.s3``: registry:2's S3 driver options, with its names and defaults. The root
turns them into the storage layer's ``S3Settings`` (adding AWS credentials from the
environment or ~/.aws/credentials when ``accesskey`` is not set)."""

from __future__ import annotations

from dataclasses import dataclass

from entrepot.config.errors import ConfigError
from entrepot.config.sections import Section, absolute_url

__all__ = ["S3StorageConfig", "parse_s3"]

MiB = 1024 * 1024
MIN_CHUNKSIZE = 5 * MiB  # S3's smallest multipart part
_COPY_KEYS = {
    "multipartcopychunksize": 32 * MiB,
    "multipartcopymaxconcurrency": 100,
    "multipartcopythresholdsize": 32 * MiB,
}


@dataclass(frozen=True)
class S3StorageConfig:
    bucket: str
    region: str = ""
    regionendpoint: str | None = None
    forcepathstyle: bool | None = None
    accesskey: str | None = None
    secretkey: str | None = None
    sessiontoken: str | None = None
    rootdirectory: str = ""
    secure: bool = True
    skipverify: bool = False
    chunksize: int = 10 * MiB
    encrypt: bool = False
    keyid: str | None = None

    @property
    def endpoint(self) -> str | None:
        """``regionendpoint`` with a scheme (``secure`` picks it when it has none)."""
        if not self.regionendpoint:
            return None
        if "://" in self.regionendpoint:
            return self.regionendpoint.rstrip("/")
        return f"{'https' if self.secure else 'http'}://{self.regionendpoint.rstrip('/')}"

    @property
    def path_style(self) -> bool:
        """Path-style URLs: ``forcepathstyle``, by default on with a ``regionendpoint``
        (as registry:2's driver does)."""
        if self.forcepathstyle is not None:
            return self.forcepathstyle
        return bool(self.regionendpoint)


def parse_s3(section: Section) -> S3StorageConfig:
    """Read ``storage.s3``; keys Entrepot cannot honour are warnings that name them."""
    forcepathstyle = section.take("forcepathstyle")
    if forcepathstyle is not None and not isinstance(forcepathstyle, bool):
        raise ConfigError(f"config key '{section.key('forcepathstyle')}' must be true or false")
    config = S3StorageConfig(
        bucket=section.get_str("bucket") or "",
        region=section.get_str("region") or "",
        regionendpoint=section.get_str("regionendpoint"),
        forcepathstyle=forcepathstyle,
        accesskey=section.get_str("accesskey"),
        secretkey=section.get_str("secretkey"),
        sessiontoken=section.get_str("sessiontoken"),
        rootdirectory=section.get_str("rootdirectory") or "",
        secure=section.get_bool("secure", True),
        skipverify=section.get_bool("skipverify", False),
        chunksize=section.get_int("chunksize", 10 * MiB),
        encrypt=section.get_bool("encrypt", False),
        keyid=section.get_str("keyid"),
    )
    if not config.bucket:
        raise ConfigError(f"config key '{section.key('bucket')}' is required for storage.s3")
    if not config.region and not config.regionendpoint:
        raise ConfigError(
            f"config key '{section.key('region')}' is required for storage.s3 "
            f"(or '{section.key('regionendpoint')}' for an S3-compatible server)"
        )
    if config.regionendpoint and "://" in config.regionendpoint:
        absolute_url(section.key("regionendpoint"), config.regionendpoint, "http://host:7480")
    if config.chunksize < MIN_CHUNKSIZE:
        raise ConfigError(
            f"config key '{section.key('chunksize')}' must be at least {MIN_CHUNKSIZE} "
            f"(5 MiB, S3's smallest part), got {config.chunksize}"
        )
    if bool(config.accesskey) != bool(config.secretkey):
        raise ConfigError(
            f"config keys '{section.key('accesskey')}' and '{section.key('secretkey')}' go together"
        )
    if not section.get_bool("v4auth", True):
        section.warnings.append(
            f"config key '{section.key('v4auth')}: false' is not supported and is ignored; "
            "Entrepot signs every request with AWS signature v4"
        )
    storageclass = section.get_str("storageclass") or "STANDARD"
    if storageclass.upper() not in ("STANDARD", "NONE"):
        section.warnings.append(
            f"config key '{section.key('storageclass')}: {storageclass}' is not supported and "
            "is ignored; objects get the bucket's default storage class"
        )
    for name, default in _COPY_KEYS.items():
        if section.get_int(name, default) != default:
            section.warnings.append(
                f"config key '{section.key(name)}' is not used and is ignored: Entrepot moves "
                "an object with one server-side copy (up to 5 GiB)"
            )
    return config
