"""``garbagecollect``: Entrepot's own (not in registry:2): the server collects garbage on
a schedule, and retention rules for pushed repositories (applied by the schedule and by
``entrepot garbage-collect``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from entrepot.config.errors import ConfigError
from entrepot.config.schema import At, key

__all__ = ["GarbageCollectConfig", "RetentionRuleConfig"]


@dataclass(frozen=True)
class RetentionRuleConfig:
    """One entry of ``garbagecollect.retention``."""

    OWN: ClassVar = True
    repositories: tuple[str, ...] = key(
        "repositories", (), doc="globs of the repositories it applies to: `team/*`, `*`"
    )
    tags: tuple[str, ...] = key(
        "tags", (), doc="globs of the tags it judges (default: every tag): `v*`, `pr-*`"
    )
    keeplatest: int | None = key(
        "keeplatest", None, doc="keep the newest N judged tags (by when each was pushed)"
    )
    keeppulledwithin: float | None = key(
        "keeppulledwithin", None, doc="keep judged tags pulled (by tag) within this period"
    )
    untaggedolderthan: float | None = key(
        "untaggedolderthan", None, doc="delete untagged manifests linked longer ago than this"
    )

    def checked(self, at: At) -> RetentionRuleConfig:
        if not self.repositories:
            raise ConfigError(
                f"config key '{at.key('repositories')}' is required: a list of repository "
                "globs such as team/* or *"
            )
        if self.keeplatest is not None and self.keeplatest < 0:
            raise ConfigError(f"config key '{at.key('keeplatest')}' must not be negative")
        if self.keeplatest is None and self.keeppulledwithin is None:
            if self.untaggedolderthan is None:
                raise ConfigError(
                    f"config key '{at.path}' has no rule: give keeplatest, keeppulledwithin "
                    "or untaggedolderthan"
                )
            if self.tags:
                raise ConfigError(
                    f"config key '{at.key('tags')}' needs keeplatest or keeppulledwithin "
                    "(which tags to keep)"
                )
        return self


@dataclass(frozen=True)
class GarbageCollectConfig:
    """``garbagecollect``: scheduled collection, one worker or replica at a time."""

    OWN: ClassVar = True
    interval_s: float = key(
        "interval",
        0.0,
        doc="how often the server collects (`24h`); 0: never (run `entrepot garbage-collect`)",
    )
    grace_s: float = key(
        "grace", 3600.0, doc="keep what was written or linked this recently (as `--grace`)"
    )
    deleteuntagged: bool = key(
        "deleteuntagged", False, doc="scheduled runs also delete untagged manifests (as `-m`)"
    )
    retention: tuple[RetentionRuleConfig, ...] = key(
        "retention", (), doc="rules deleting old tags and untagged manifests (see Disk space)"
    )

    @property
    def needs_pulls(self) -> bool:
        """Whether a rule keeps tags by pull time (pulls are then recorded)."""
        return any(rule.keeppulledwithin is not None for rule in self.retention)
