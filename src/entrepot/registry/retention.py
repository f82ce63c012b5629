"""Retention rules for pushed repositories: which tags garbage collection deletes, and
from what age it deletes untagged manifests.

A rule applies to the repositories its globs match and judges the tags its tag globs
match: it keeps the newest ``keep_latest`` of them (by when each was last pushed) and
those pulled within ``keep_pulled_within``. A tag is deleted only when some rule judges
it and no rule keeps it; a tag no rule judges, or one pushed within the grace window,
stays. ``untagged_older_than`` deletes the untagged manifests linked longer ago than
that (with several rules, the longest age wins). What a kept tag reaches (index children,
referrers) is kept by the collector's mark.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.gcscan import RepoScan
from entrepot.registry.pulls import TagPulls, load_times
from entrepot.registry.storecalls import Limited, each


@dataclass(frozen=True)
class RetentionRule:
    repositories: tuple[str, ...]
    tags: tuple[str, ...] = ("*",)
    keep_latest: int | None = None
    keep_pulled_within: float | None = None  # seconds
    untagged_older_than: float | None = None  # seconds

    def applies_to(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.repositories)

    def judges(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags)

    @property
    def judges_tags(self) -> bool:
        return self.keep_latest is not None or self.keep_pulled_within is not None

    @property
    def needs_pulls(self) -> bool:
        return self.keep_pulled_within is not None


@dataclass(frozen=True, slots=True)
class TagFacts:
    tag: str
    digest: Digest
    pushed_at: float  # the tag's link mtime: when it was last pushed
    pulled_at: float | None  # the last recorded pull by tag


def rules_for(name: str, rules: Iterable[RetentionRule]) -> list[RetentionRule]:
    return [rule for rule in rules if rule.applies_to(name)]


def condemned_tags(
    facts: Sequence[TagFacts], rules: Sequence[RetentionRule], now: float, fresh_after: float
) -> set[str]:
    """The tags the ``rules`` (those of one repository) delete."""
    judged: set[str] = set()
    kept: set[str] = set()
    for rule in rules:
        if not rule.judges_tags:
            continue
        mine = [f for f in facts if rule.judges(f.tag)]
        judged |= {f.tag for f in mine}
        if rule.keep_latest is not None:
            newest = sorted(mine, key=lambda f: (f.pushed_at, f.tag), reverse=True)
            kept |= {f.tag for f in newest[: rule.keep_latest]}
        if rule.keep_pulled_within is not None:
            since = now - rule.keep_pulled_within
            kept |= {f.tag for f in mine if f.pulled_at is not None and f.pulled_at >= since}
    fresh = {f.tag for f in facts if f.pushed_at > fresh_after}
    return judged - kept - fresh


def untagged_age(rules: Sequence[RetentionRule]) -> float | None:
    """From what age the ``rules`` of one repository delete untagged manifests."""
    ages = [r.untagged_older_than for r in rules if r.untagged_older_than is not None]
    return max(ages) if ages else None


@dataclass
class RetentionPlan:
    """What the rules delete in each repository: tags (with what each pointed at when
    read) and the age from which untagged manifests go."""

    tags: dict[str, dict[str, Digest]] = field(default_factory=dict)
    untagged_age: dict[str, float] = field(default_factory=dict)
    kept_fresh: int = 0  # tags the rules delete, but pushed within the grace window


async def plan_retention(
    store: Limited,
    scans: Iterable[RepoScan],
    rules: Sequence[RetentionRule],
    now: float,
    fresh_after: float,
) -> RetentionPlan:
    """Read what the rules need (each judged tag's push time, and the pull record when a
    rule asks: registry/pulls.py) and decide."""
    plan = RetentionPlan()
    pulls: TagPulls = {}
    if any(rule.needs_pulls for rule in rules):
        pulls = (await load_times(store.driver)).by_tag

    async def repository(scan: RepoScan) -> None:
        mine = rules_for(scan.name, rules)
        age = untagged_age(mine)
        if age is not None:
            plan.untagged_age[scan.name] = age
        judging = [r for r in mine if r.judges_tags]
        if not judging:
            return
        judged = [t for t in scan.tags if any(r.judges(t) for r in judging)]

        async def facts(tag: str) -> TagFacts | None:
            info = await store.stat(layout.tag_current_link(scan.name, tag))
            if info is None:
                return None
            pulled = pulls.get((scan.name, tag))
            return TagFacts(tag, scan.tags[tag], info.mtime, pulled)

        found = [f for f in await each(judged, facts) if f is not None]
        doomed = condemned_tags(found, judging, now, fresh_after)
        plan.kept_fresh += len(condemned_tags(found, judging, now, math.inf) - doomed)
        if doomed:
            plan.tags[scan.name] = {t: scan.tags[t] for t in doomed}

    await each(list(scans), repository)
    return plan
